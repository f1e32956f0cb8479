"""Pseudo-labels (issue 22): confidence rules, the label maps they give, combination with another
label set, resumption, and the stage's key."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pointparse import IGNORE_INDEX
from pointparse.cache import StageCache
from pointparse.cli.main import main
from pointparse.confidence import (BINS_PER_NAT, SCORE_BINS, bin_of, class_thresholds, probability_of, score_bins,
                                   top_share_bins)
from pointparse.datasets import FolderDataset
from pointparse.errors import ConfigError
from pointparse.images import write_image, write_label_png
from pointparse.labelset import LabelSetWriter, check_label_set, label_quality, load_label_set
from pointparse.points import PointSet
from pointparse.predictor import Predictor
from pointparse import pseudo_labels as pl
from pointparse.pseudo_labels import PseudoLabelConfig, pseudo_label_image, write_pseudo_labels

# ------------------------------------------------------------------------------------------------
# the score and the rules
# ------------------------------------------------------------------------------------------------


def test_the_score_ranks_pixels_a_float32_probability_cannot_tell_apart():
    # logit gaps of 20 and 25: both read p = 1.0 in float32, their scores differ by 5 nats
    logits = torch.tensor([[20.0, 25.0, 2.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    probs = logits.softmax(0)[:, None, :]  # [C=3, 1, 3]
    assert probs[0, 0, 0] == probs[0, 0, 1] == 1.0
    pred, bins = score_bins(probs)
    assert pred[0].tolist() == [0, 0, 0]
    s = [-np.log(2.0) + g for g in (20.0, 25.0)]  # 1 - p = 2 e^-g
    assert bins[0, 0] == int(s[0] * BINS_PER_NAT) and bins[0, 1] == min(int(s[1] * BINS_PER_NAT), SCORE_BINS - 1)
    # p = e^2 / (e^2 + 2): its bin holds -ln(1 - p)
    p = np.exp(2.0) / (np.exp(2.0) + 2)
    assert bins[0, 2] == bin_of(p) and probability_of(bin_of(p)) <= p < probability_of(bin_of(p) + 1)


def _hist(counts: dict[tuple[int, float], int], C: int = 3) -> np.ndarray:
    h = np.zeros((C, SCORE_BINS), np.int64)
    for (c, p), n in counts.items():
        h[c, bin_of(p)] += n
    return h


def test_rules_thresholds_and_rare_classes():
    # class 0: 1000 confident pixels; class 1 (rare): 10 pixels, never above 0.8; class 2: never predicted
    h = _hist({(0, 0.99): 600, (0, 0.95): 400, (1, 0.8): 4, (1, 0.6): 6})
    glob = class_thresholds("global", h, 0.9, 0.5)
    assert (glob == bin_of(0.9)).all()
    top = class_thresholds("top-share", h, 0.9, 0.5)
    assert top[0] == bin_of(0.99)           # 600 of 1000 from the top bin: at least half
    assert top[1] == bin_of(0.6)            # 4 of 10 in the top bin is not half: the next one down
    assert top[2] == SCORE_BINS             # never predicted: nothing to keep
    per = class_thresholds("per-class", h, 0.9, 0.5)
    assert per[0] == bin_of(0.9) and per[1] == bin_of(0.6)  # global where it keeps more, else the share
    ada = class_thresholds("adaptive", h, 0.9, 0.5)
    assert ada[0] == bin_of(0.9) and ada[1] < ada[0] and ada[2] == bin_of(0.9)
    # the global rule drops the rare class altogether, top-share and per-class keep it
    assert bin_of(0.8) < glob[1] and bin_of(0.8) >= top[1] and bin_of(0.8) >= per[1]
    with pytest.raises(ConfigError, match="valid choices: adaptive, global, per-class, top-share"):
        class_thresholds("otsu", h, 0.9, 0.5)


def test_top_share_counts_reach_the_share():
    rng = np.random.default_rng(0)
    h = np.zeros((2, SCORE_BINS), np.int64)
    h[0, rng.integers(0, SCORE_BINS, 5000)] += 1
    h[1, :] = 0
    for share in (0.1, 0.5, 1.0):
        t = top_share_bins(h, share)
        assert h[0, t[0]:].sum() >= share * h[0].sum() > h[0, t[0] + 1:].sum()
        assert t[1] == SCORE_BINS


# ------------------------------------------------------------------------------------------------
# one image
# ------------------------------------------------------------------------------------------------


def test_one_image_clicks_win_and_combination_rules():
    pred = np.array([[0, 0, 1, 1]], np.uint8)
    bins = np.array([[900, 100, 900, 100]], np.int64)
    t = np.array([500, 500, 500])
    clicks = np.array([[255, 2, 255, 255]], np.uint8)
    lab, keep = pseudo_label_image(pred, bins, t, clicks)
    assert keep.tolist() == [[True, False, True, False]]
    assert lab.tolist() == [[0, 2, 1, 255]]  # the click's class over an unconfident prediction
    other = np.array([[0, 1, 2, 1]], np.uint8)
    assert pseudo_label_image(pred, bins, t, clicks, other, "intersect")[0].tolist() == [[0, 2, 255, 255]]
    assert pseudo_label_image(pred, bins, t, clicks, other, "fill")[0].tolist() == [[0, 2, 1, 1]]
    # agree: the other set where the arg-max agrees (any confidence), confident pixels where it is silent
    other = np.array([[255, 255, 2, 1]], np.uint8)
    assert pseudo_label_image(pred, bins, t, clicks, other, "agree")[0].tolist() == [[0, 2, 255, 1]]


def test_config_checks():
    with pytest.raises(ConfigError, match="combine rule.*agree, fill, intersect, none"):
        PseudoLabelConfig(combine="union")
    with pytest.raises(ConfigError, match="threshold must be in"):
        PseudoLabelConfig(threshold=1.0)
    with pytest.raises(ConfigError, match="share must be in"):
        PseudoLabelConfig(share=0)
    with pytest.raises(ConfigError, match="scales"):
        PseudoLabelConfig(scales="0.75,x")
    assert PseudoLabelConfig(scales=[0.75, 1, 1.25]).scales == (0.75, 1.0, 1.25)
    # windows bounded as evaluate's: a 1-pixel window would run the network once per pixel
    with pytest.raises(ConfigError, match=r"window must be 0 \(whole image\) or in \[16, 4096\], got 1"):
        PseudoLabelConfig(window=1)
    with pytest.raises(ConfigError, match="window must be 0"):
        PseudoLabelConfig(window=100_000)
    with pytest.raises(ConfigError, match="window_stride 300 is larger than window 256"):
        PseudoLabelConfig(window=256, window_stride=300)
    assert PseudoLabelConfig(window=256, window_stride=128).window == 256
    with pytest.raises(ConfigError, match="needs another label set"):
        pl.check_combine(PseudoLabelConfig(combine="fill"), False)
    with pytest.raises(ConfigError, match="set combine"):
        pl.check_combine(PseudoLabelConfig(), True)


# ------------------------------------------------------------------------------------------------
# a split, with a network whose predictions the images spell out
# ------------------------------------------------------------------------------------------------

H, W, C = 8, 12, 3


class SpelledNet(torch.nn.Module):
    """Per pixel: class = round(R / 20), logit gap = G / 10 (inputs are ``rgb / 255``: mean 0, std 1)."""

    output_stride = 1

    def forward(self, x):
        rgb = x * 255.0
        cls = torch.round(rgb[:, 0] / 20).long().clamp(0, C - 1)
        gap = rgb[:, 1] / 10
        return {"logits": torch.nn.functional.one_hot(cls, C).permute(0, 3, 1, 2).float() * gap[:, None]}


def _gap(p: float) -> float:
    """The logit gap giving max probability ``p`` over C classes: e^g / (e^g + C - 1) = p."""
    return float(np.log(p * (C - 1) / (1 - p)))


def _scene(root: Path, n: int = 3) -> tuple[FolderDataset, PointSet]:
    """Left half class 0 at p = 0.99; right half class 1 (rare, unsure: p from 0.5 to 0.8 along the
    columns) of which the ground truth says the last column is class 2; one click of class 2 on
    the left half and one of class 1 on the right."""
    (root / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("0 a 10:20:30\n1 b 40:50:60\n2 c 70:80:90\n")
    xy, cls, names = {}, {}, []
    for i in range(n):
        img = np.zeros((H, W, 3), np.uint8)
        img[:, :6, 1] = round(_gap(0.99) * 10)
        img[:, 6:, 0] = 20
        for k, x in enumerate(range(6, 12)):
            img[:, x, 1] = round(_gap(0.5 + 0.06 * k) * 10)
        gt = np.zeros((H, W), np.uint8)
        gt[:, 6:] = 1
        gt[:, 11] = 2
        gt[0, 0] = IGNORE_INDEX
        write_image(root / "images" / "train" / f"im{i}.png", img)
        write_label_png(root / "masks" / "train" / f"im{i}.png", gt)
        names.append(f"im{i}")
        xy[f"im{i}"] = np.array([[1, 1 + i], [7, 2]], np.int64)
        cls[f"im{i}"] = np.array([2, 1], np.int64)
    ds = FolderDataset(root, "train")
    return ds, PointSet(ds.info, names, {n: (H, W) for n in names}, root / "points.json", {}, xy, cls)


def _predictor(ds, path: Path = Path("spelled.pt")) -> Predictor:
    return Predictor(SpelledNet().eval(), ds.info, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), path, torch.device("cpu"), {}, {})


@pytest.fixture
def scene(tmp_path):
    return _scene(tmp_path / "data")


def test_global_rule_keeps_confident_pixels_and_clicks_only(scene, tmp_path):
    ds, pts = scene
    ls = write_pseudo_labels(_predictor(ds), ds, pts, PseudoLabelConfig(rule="global", threshold=0.9, flip=False),
                             tmp_path / "out", progress=False)
    check_label_set(ls, ds)
    lab = ls.label("im0")
    assert (lab[:, :6][lab[:, :6] != 2] == 0).all() and lab[1, 1] == 2    # confident half, and its click
    assert lab[2, 7] == 1 and (np.delete(lab[:, 6:].ravel(), 2 * 6 + 1) == IGNORE_INDEX).all()  # only the click
    s = ls.summary
    assert s["per_class"]["b"]["kept_share"] == 0.0 and s["per_class"]["a"]["kept_share"] == 1.0
    assert s["per_class"]["c"]["threshold"] is None  # never predicted
    # the summary's quality numbers are label_quality's over the split
    gt = ds.load_mask(0)
    q = label_quality(lab, pts.label_map("im0"), gt, C)
    assert s["accuracy"] == pytest.approx(q["correct"].sum() / q["new"].sum())
    assert s["coverage"] == pytest.approx(q["covered"].sum() / q["gt"].sum())
    assert s["prediction_accuracy"] == pytest.approx((H * W - 1 - H) / (H * W - 1))  # all but column 11
    assert not (tmp_path / "out" / "scratch").exists()


@pytest.mark.parametrize("rule", ["top-share", "per-class"])
def test_a_rare_unsure_class_keeps_its_most_confident_pixels(scene, tmp_path, rule):
    ds, pts = scene
    cfg = PseudoLabelConfig(rule=rule, threshold=0.9, share=0.5, flip=False)
    ls = write_pseudo_labels(_predictor(ds), ds, pts, cfg, tmp_path / "out", progress=False)
    lab = ls.label("im1")
    # class 1's three most confident columns of six (p 0.68, 0.74, 0.80) are kept, the rest not
    assert (lab[:, 9:] == 1).all() and (lab[:, 6:9][lab[:, 6:9] != 1] == IGNORE_INDEX).all()
    assert ls.summary["per_class"]["b"]["kept_share"] == 0.5
    assert ls.summary["per_class"]["b"]["threshold"] == pytest.approx(0.68, abs=0.02)
    assert ls.summary["per_class"]["b"]["accuracy"] == 2 / 3  # column 11 is class 2 in the ground truth
    assert ls.summary["per_class"]["c"]["accuracy"] is None   # given at its clicks only: no new pixel


def test_combined_with_another_label_set(scene, tmp_path):
    ds, pts = scene
    w = LabelSetWriter(tmp_path / "sam", ds.info, "train", "sam")
    for name in ds.names:
        other = np.full((H, W), IGNORE_INDEX, np.uint8)
        other[:, 4:8] = 1  # disagrees with the confident left half at columns 4-5, agrees at 6-7
        w.write(name, other)
    sam = w.finish(ds)
    cfg = PseudoLabelConfig(rule="global", threshold=0.9, combine="intersect", flip=False)
    lab = write_pseudo_labels(_predictor(ds), ds, pts, cfg, tmp_path / "i", sam, progress=False).label("im2")
    clicks = pts.label_map("im2") != IGNORE_INDEX
    assert (lab[~clicks] == IGNORE_INDEX).all()  # confident left half, other set right: never both
    cfg = PseudoLabelConfig(rule="global", threshold=0.9, combine="agree", flip=False)
    lab = write_pseudo_labels(_predictor(ds), ds, pts, cfg, tmp_path / "a", sam, progress=False).label("im2")
    assert (lab[:, :4][~clicks[:, :4]] == 0).all() and (lab[:, 4:6] == IGNORE_INDEX).all()
    assert (lab[:, 6:8][~clicks[:, 6:8]] == 1).all() and (lab[:, 8:][~clicks[:, 8:]] == IGNORE_INDEX).all()
    with pytest.raises(ConfigError, match="needs another label set"):
        write_pseudo_labels(_predictor(ds), ds, pts, cfg, tmp_path / "x", None, progress=False)


def test_flip_and_scales_average_probabilities(scene, tmp_path):
    """A per-pixel network predicts the same under a flip; at other scales the bilinear resize
    mixes columns, so only the labels' layout (not their exact values) is compared."""
    ds, pts = scene
    base = write_pseudo_labels(_predictor(ds), ds, pts, PseudoLabelConfig(rule="global", flip=False),
                               tmp_path / "a", progress=False)
    flip = write_pseudo_labels(_predictor(ds), ds, pts, PseudoLabelConfig(rule="global", flip=True),
                               tmp_path / "b", progress=False)
    for n in ds.names:
        np.testing.assert_array_equal(base.label(n), flip.label(n))
    ms = write_pseudo_labels(_predictor(ds), ds, pts, PseudoLabelConfig(rule="global", scales=(0.5, 1.0, 2.0)),
                             tmp_path / "c", progress=False)
    assert (ms.label("im0")[:, :4] != IGNORE_INDEX).all() and ms.summary["scales"] == [0.5, 1.0, 2.0]


def test_a_killed_run_resumes_without_predicting_again(scene, tmp_path, monkeypatch):
    ds, pts = scene
    cfg = PseudoLabelConfig(rule="top-share", share=0.3, flip=False)
    calls = []
    real = pl._Network.__call__

    def dying(self, image):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real(self, image)

    monkeypatch.setattr(pl._Network, "__call__", dying)
    with pytest.raises(KeyboardInterrupt):
        write_pseudo_labels(_predictor(ds), ds, pts, cfg, tmp_path / "out", progress=False)
    assert len(calls) == 2 and (tmp_path / "out" / "scratch").is_dir()
    calls.clear()
    monkeypatch.setattr(pl._Network, "__call__", lambda self, image: (calls.append(1), real(self, image))[1])
    resumed = write_pseudo_labels(_predictor(ds), ds, pts, cfg, tmp_path / "out", progress=False)
    assert len(calls) == 1  # only the image the killed run had not predicted
    fresh = write_pseudo_labels(_predictor(ds), ds, pts, cfg, tmp_path / "fresh", progress=False)
    for n in ds.names:
        np.testing.assert_array_equal(resumed.label(n), fresh.label(n))
    assert resumed.summary["per_class"] == fresh.summary["per_class"]
    # a killed run's maps of another network are not reused
    other = tmp_path / "other.pt"
    other.write_bytes(b"another network")
    calls.clear()
    monkeypatch.setattr(pl._Network, "__call__", dying)
    with pytest.raises(KeyboardInterrupt):
        write_pseudo_labels(_predictor(ds, other), ds, pts, cfg, tmp_path / "out2", progress=False)
    calls.clear()
    monkeypatch.setattr(pl._Network, "__call__", lambda self, image: (calls.append(1), real(self, image))[1])
    write_pseudo_labels(_predictor(ds), ds, pts, cfg, tmp_path / "out2", progress=False)
    assert len(calls) == 3


def test_a_split_without_dense_masks_has_no_quality_numbers(tmp_path):
    ds, pts = _scene(tmp_path / "data")
    shutil.rmtree(tmp_path / "data" / "masks")
    ds = FolderDataset(tmp_path / "data", "train")
    assert not ds.has_dense_labels
    ls = write_pseudo_labels(_predictor(ds), ds, pts, PseudoLabelConfig(flip=False), tmp_path / "out", progress=False)
    assert ls.summary["accuracy"] is None and ls.summary["labelled_share"] > 0


# ------------------------------------------------------------------------------------------------
# the stage
# ------------------------------------------------------------------------------------------------

SYN = {"seed": 4, "size": 40, "splits": {"train": 3, "val": 2}}


def _checkpoint(path: Path, seed: int, info) -> Path:
    from pointparse.checkpoint import model_checkpoint, save_checkpoint
    from pointparse.model import build_model
    from pointparse.train_config import TrainConfig

    cfg = TrainConfig(weights="none", pdml=False)
    torch.manual_seed(seed)
    model = build_model(cfg.model_config(info.num_classes))
    save_checkpoint(path, model_checkpoint(model, cfg, info, 0))
    return path


@pytest.fixture(scope="module")
def stage_inputs(tmp_path_factory):
    from pointparse.dataspec import DatasetSpec, open_spec
    from pointparse.simulate import MakePointsConfig
    from pointparse.stages.make_points import run_make_points

    tmp = tmp_path_factory.mktemp("stage")
    cache = StageCache(tmp / "cache")
    spec = DatasetSpec(kind="synthetic", split="train", options=SYN)
    points = run_make_points(spec, MakePointsConfig(workers=0), cache, progress=False)
    info = open_spec(spec, cache).info
    return cache, spec, points, _checkpoint(tmp / "a" / "model.pt", 0, info), _checkpoint(tmp / "b" / "model.pt", 1, info)


def test_the_stage_key_follows_checkpoint_bytes_rule_and_points_not_device(stage_inputs, tmp_path):
    from pointparse.stages.base import Upstream
    from pointparse.stages.pseudo_labels import PseudoLabels, run_pseudo_labels

    cache, spec, points, ck_a, ck_b = stage_inputs
    up = Upstream.of(points)

    def key(ck, **kw):
        return PseudoLabels(ck, spec, PseudoLabelConfig(**kw), cache, up).key()

    k = key(ck_a)
    assert key(ck_b) != k and key(ck_a, rule="global") != k and key(ck_a, share=0.4) != k
    assert key(ck_a, scales=(0.75, 1, 1.25)) != k and key(ck_a, device="cpu") == k
    copy = tmp_path / "copy" / "model.pt"  # the same bytes elsewhere: the same key
    copy.parent.mkdir()
    copy.write_bytes(ck_a.read_bytes())
    assert key(copy) == k
    other_points = Upstream(up.stage, "0" * 64, up.path)
    assert PseudoLabels(ck_a, spec, PseudoLabelConfig(), cache, other_points).key() != k

    res = run_pseudo_labels(ck_a, spec, points.path, PseudoLabelConfig(device="cpu"), cache, progress=False)
    assert res.key == k and not res.cached
    ls = load_label_set(res.path)
    assert ls.split == "train" and ls.source == "pseudo-labels" and len(ls.names) == 3
    s = res.manifest["summary"]
    assert 0.0 <= s["accuracy"] <= 1.0 and 0.0 <= s["coverage"] <= 1.0 and "per_class" in s
    assert set(s["per_class"]) == set(ls.classes)
    # clicked pixels carry their click's class
    from pointparse.points import load_points

    ps = load_points(points.path)
    for n in ps.names:
        xy, cls = ps.points(n)
        assert (ls.label(n)[xy[:, 1], xy[:, 0]] == cls).all()
    assert run_pseudo_labels(ck_a, spec, points.path, PseudoLabelConfig(), cache, progress=False).cached
    # a pseudo-label set is a label set the next round can name
    again = run_pseudo_labels(ck_b, spec, points.path, PseudoLabelConfig(combine="intersect"), cache,
                              labels=res.key[:10], progress=False)
    assert again.manifest["inputs"]["labels"] == res.key


def test_the_command(stage_inputs):
    cache, spec, points, ck_a, _ = stage_inputs
    args = ["pseudo-labels", str(ck_a), "--points", points.key[:10], "--option", "seed=4", "--option", "size=40",
            "--option", "splits={train: 3, val: 2}", "--cache-dir", str(cache.root), "-q", "--rule", "top-share",
            "--share", "0.3", "--no-flip"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "pseudo-labels: wrote artefact" in r.output and "% of the pixels labelled" in r.output
    assert "new pixels" in r.output
    r = CliRunner().invoke(main, args + ["--combine", "fill"])
    assert r.exit_code != 0 and "needs another label set" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, args + ["--rule", "otsu"])
    assert r.exit_code != 0 and "unknown confidence rule 'otsu'" in r.output
    r = CliRunner().invoke(main, args + ["--labels", points.key[:10], "--combine", "fill"])
    assert r.exit_code != 0 and "no pseudo-labels or extension-labels artefact" in r.output
    r = CliRunner().invoke(main, args + ["--window", "32", "--window-stride", "40"])
    assert r.exit_code != 0 and "window_stride 40 is larger than window 32" in r.output
    r = CliRunner().invoke(main, args + ["--window", "32", "--window-stride", "16"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((Path(re.search(r"artefact (\S+)", r.output)[1]) / "manifest.json").read_text())
    assert manifest["params"]["window_stride"] == 16
