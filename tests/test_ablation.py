"""Table 5 (extension methods compared): per-method correctness on scenes with known ground truth,
parallel == serial, per-row caching, the CLI, and bad input stopped before any work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from pointparse import IGNORE_INDEX
from pointparse.cache import StageCache
from pointparse.checkpoint import CHECKPOINT_FORMAT
from pointparse.cli.ablate import ablate_extension_cmd
from pointparse.datasets import DatasetInfo
from pointparse.dataspec import DatasetSpec, open_spec
from pointparse.errors import ConfigError, DataError
from pointparse.extension.ablation import ExtensionCounts, Network, extension_row, iter_extended, online_labels
from pointparse.extension.kmeans import DenseFeatures, UpsampledFeatures, kmeans_extension, rgbxy_features
from pointparse.extension.methods import AblationConfig, AblationRow, AblationTrainConfig, build_grid
from pointparse.extension.offline import OfflineJob as _OfflineJob
from pointparse.extension.offline import run_offline_job as _run_offline_job
from pointparse.extension.superpixel import superpixel_count, superpixel_segments
from pointparse.extension.table import TABLE_COLUMNS
from pointparse.model import ModelConfig, build_model
from pointparse.points import load_points
from pointparse.simulate import MakePointsConfig
from pointparse.stages.ablate_extension import AblateExtension, run_ablation
from pointparse.stages.base import KeyUnknown, Upstream
from pointparse.stages.make_points import run_make_points
from pointparse.stages.train import run_train
from pointparse.train_config import TrainConfig

SYN = {"seed": 3, "size": 64, "splits": {"train": 8, "val": 4}}
TRAIN = DatasetSpec(kind="synthetic", split="train", options=SYN)
VAL = DatasetSpec(kind="synthetic", split="val", options=SYN)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return StageCache(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def val_points(cache):
    return run_make_points(VAL, MakePointsConfig(workers=0), cache, progress=False).path


@pytest.fixture(scope="module")
def train_points(cache):
    return run_make_points(TRAIN, MakePointsConfig(workers=0), cache, progress=False).path


@pytest.fixture(scope="module")
def checkpoint(cache, train_points):
    cfg = TrainConfig(weights="none", epochs=1, batch_size=4, crop_size=48, workers=0)
    return run_train(TRAIN, cfg, cache, points=train_points, progress=False).path / "model.pt"


# -- the methods on hand-made scenes --------------------------------------------------------------


def test_region_accuracy_matches_hand_count():
    # 6x6 scene: columns 0-2 class 0, columns 3-5 class 1, one ignore pixel at (1, 1)
    gt = np.zeros((6, 6), np.uint8)
    gt[:, 3:] = 1
    gt[1, 1] = IGNORE_INDEX
    clicks = np.full((6, 6), IGNORE_INDEX, np.uint8)
    clicks[2, 2] = 0  # 3x3 square rows 1-3, cols 1-3: col 3 is wrong (3 px), (1,1) not evaluated
    clicks[4, 5] = 1  # clipped square rows 3-5, cols 4-5: 6 px, all right
    labels = online_labels(AblationRow("region", None, 3), clicks, None)
    expected = np.full((6, 6), IGNORE_INDEX, np.uint8)
    expected[1:4, 1:4] = 0
    expected[3:6, 4:6] = 1
    np.testing.assert_array_equal(labels, expected)
    counts = ExtensionCounts(2)
    counts.add(labels, clicks, gt)
    s = counts.summary()
    # new = 8 + 5 = 13; evaluated = 13 - 1 (ignore) = 12; correct = 4 + 5 = 9
    assert (s["new_pixels"], s["evaluated"], s["correct"]) == (13, 12, 9)
    assert s["accuracy"] == 9 / 12
    assert s["coverage"] == (8 + 6) / 35
    assert s["new_pixels_per_image"] == 13
    pc = counts.per_class(["a", "b"])
    assert (pc[0]["evaluated"], pc[0]["correct"], pc[1]["evaluated"], pc[1]["correct"]) == (7, 4, 5, 5)
    assert (pc[0]["covered"], pc[1]["covered"]) == (5, 3 + 6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_score_region_stays_inside_squares_and_clicked_classes(seed):
    g = torch.Generator().manual_seed(seed)
    c, h, w, r = 5, 24, 20, 5
    probs = torch.softmax(3 * torch.randn(1, c, h, w, generator=g), dim=1)
    clicks = np.full((h, w), IGNORE_INDEX, np.uint8)
    rng = np.random.default_rng(seed)
    for _ in range(4):
        clicks[rng.integers(h), rng.integers(w)] = rng.choice([1, 3])  # classes 0, 2, 4 never clicked
    squares = np.zeros((h, w), bool)
    for y, x in zip(*np.nonzero(clicks != IGNORE_INDEX)):
        squares[max(0, y - r // 2):y + r // 2 + 1, max(0, x - r // 2):x + r // 2 + 1] = True
    for t in (0.0, 0.3, 0.6):
        labels = online_labels(AblationRow("score+region", t, r), clicks, probs)
        labelled = labels != IGNORE_INDEX
        assert not (labelled & ~squares).any()
        assert set(np.unique(labels[labelled])) <= {1, 3}
        assert labelled.sum() > np.count_nonzero(clicks != IGNORE_INDEX) or t > 0.0


def test_superpixel_with_one_click_per_superpixel_copies_labels_exactly():
    rng = np.random.default_rng(0)
    image = np.kron(rng.integers(0, 255, (4, 4, 3)), np.ones((16, 16, 1))).astype(np.uint8)
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    segs = superpixel_segments(image, 25)  # 25 clicks -> 200 superpixels asked for
    ids = np.unique(segs)
    assert superpixel_count(len(ids)) == superpixel_count(25) == 200  # the method recomputes these segments
    truth = (ids % 3).astype(np.uint8)[np.searchsorted(ids, segs)]  # each superpixel's class
    clicks = np.full(segs.shape, IGNORE_INDEX, np.uint8)
    for s in ids:
        y, x = np.argwhere(segs == s)[0]
        clicks[y, x] = truth[y, x]
    labels, info = _run_offline_job(_OfflineJob("superpixel", clicks, image))
    assert info["superpixels"] == len(ids)
    np.testing.assert_array_equal(labels, truth)
    counts = ExtensionCounts(3)
    counts.add(labels, clicks, truth)
    assert counts.summary()["accuracy"] == 1.0 and counts.summary()["coverage"] == 1.0


def test_superpixel_with_clicks_of_two_classes_uses_the_nearest_click():
    image = np.zeros((64, 64, 3), np.uint8)  # flat: SLIC's superpixels are a grid
    segs = superpixel_segments(image, 1)
    s = segs[20, 20]
    ys, xs = np.nonzero(segs == s)
    clicks = np.full(segs.shape, IGNORE_INDEX, np.uint8)
    clicks[ys.min(), xs.min()] = 0
    clicks[ys.max(), xs.max()] = 1
    labels, _ = _run_offline_job(_OfflineJob("superpixel", clicks, image))
    d0 = (ys - ys.min()) ** 2 + (xs - xs.min()) ** 2
    d1 = (ys - ys.max()) ** 2 + (xs - xs.max()) ** 2
    np.testing.assert_array_equal(labels[ys, xs], np.where(d1 < d0, 1, 0))
    assert (labels[segs != s] == IGNORE_INDEX).all()


def test_kmeans_with_a_single_click_labels_every_pixel_with_its_class():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (18, 22, 3), dtype=np.uint8)
    clicks = np.full((18, 22), IGNORE_INDEX, np.uint8)
    clicks[5, 7] = 4
    emb = rng.normal(size=(8, 3, 4)).astype(np.float32)
    for job in (_OfflineJob("kmeans", clicks, image, None, "rgbxy"), _OfflineJob("kmeans", clicks, None, emb)):
        labels, info = _run_offline_job(job)
        assert (labels == 4).all() and info["kmeans_iterations"] >= 1


def test_kmeans_separates_two_colours_and_upsampled_features_are_exact():
    image = np.zeros((16, 16, 3), np.uint8)
    image[:, 8:] = 255
    clicks = np.full((16, 16), IGNORE_INDEX, np.uint8)
    clicks[3, 2], clicks[12, 13] = 0, 1
    labels, _ = kmeans_extension(rgbxy_features(image), clicks)
    assert (labels[:, :8] == 0).all() and (labels[:, 8:] == 1).all()
    # the factorised bilinear features equal explicitly upsampled ones
    f = torch.randn(6, 3, 5, generator=torch.Generator().manual_seed(0))
    up = UpsampledFeatures(f, (13, 17))
    dense = DenseFeatures(F.interpolate(f[None], size=(13, 17), mode="bilinear", align_corners=False)[0].permute(1, 2, 0))
    centres = torch.randn(3, 6, generator=torch.Generator().manual_seed(1))
    assign = torch.randint(0, 3, (13, 17), generator=torch.Generator().manual_seed(2))
    ys, xs = np.array([0, 5, 12]), np.array([16, 3, 0])
    torch.testing.assert_close(up.dots(centres), dense.dots(centres), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(up.cluster_sums(assign, 3), dense.cluster_sums(assign, 3), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(up.at(ys, xs), dense.at(ys, xs), rtol=1e-5, atol=1e-5)
    assert torch.equal(up.nearest(centres), dense.nearest(centres))


def test_grid_defaults_to_table5_and_rejects_unknown_methods():
    labels = [r.label for r in build_grid()]
    assert labels == ["superpixel", "kmeans", "score t=0.7", "region r=5", "score+region t=0.5 r=5",
                      "score+region t=0.6 r=5", "score+region t=0.7 r=5", "score+region t=0.8 r=5",
                      "score+region t=0.9 r=5"] + [f"agree t={t} r=5" for t in (0.5, 0.6, 0.7, 0.8, 0.9)]
    assert [r.label for r in build_grid(["score+region", "region"], [0.6], 3)] == ["score+region t=0.6 r=3", "region r=3"]
    with pytest.raises(ConfigError, match="valid choices: agree, kmeans, region, sam, score, score\\+region, superpixel"):
        build_grid(["slic"])
    with pytest.raises(ConfigError, match="threshold"):
        build_grid(["score"], [1.5])


# -- over a dataset split -------------------------------------------------------------------------


def test_parallel_equals_serial(cache, val_points, checkpoint):
    ds = open_spec(VAL, cache)
    ps = load_points(val_points)
    net = Network(checkpoint, "cpu")
    for row, feats in ((AblationRow("superpixel"), "embeddings"), (AblationRow("kmeans"), "rgbxy"),
                       (AblationRow("kmeans"), "embeddings")):
        serial = [(i, lab) for i, _, _, lab, _ in iter_extended(ds, ps.label_map, row, feats, net, workers=0)]
        parallel = [(i, lab) for i, _, _, lab, _ in iter_extended(ds, ps.label_map, row, feats, net, workers=2)]
        assert [i for i, _ in serial] == [i for i, _ in parallel] == list(range(len(ds)))
        for (_, a), (_, b) in zip(serial, parallel):
            np.testing.assert_array_equal(a, b)
        assert any((lab != IGNORE_INDEX).sum() > 10 for _, lab in serial)


def test_adding_a_threshold_reruns_only_that_row(cache, val_points, checkpoint):
    calls = []

    def spy(dataset, points, row, cfg, network, out_dir, progress=False):
        calls.append(row.label)
        return extension_row(dataset, points, row, cfg, network, out_dir, progress)

    def go(thresholds):
        cfg = AblationConfig(methods=("region", "score+region"), thresholds=thresholds, workers=0, examples=1)
        return run_ablation(checkpoint, VAL, val_points, cfg, cache, progress=False, row_builder=spy)

    first = go((0.7,))
    assert calls == ["region r=5", "score+region t=0.7 r=5"] and not first.table.cached
    calls.clear()
    second = go((0.6, 0.7))
    assert calls == ["score+region t=0.6 r=5"]
    assert [r.cached for r in second.rows] == [True, False, True] and not second.table.cached
    assert list(second.frame["threshold"].fillna(-1)) == [-1, 0.6, 0.7]
    calls.clear()
    third = go((0.6, 0.7))
    assert calls == [] and third.table.cached and third.table.path == second.table.path


def test_the_plan_gives_the_keys_the_run_writes(cache, val_points, checkpoint, train_points):
    """One key computation: the table's plan (a dry run) and the rows' runs agree; with --train
    the table's key is known only after the trainings ran."""
    cfg = AblationConfig(methods=("region", "score"), thresholds=(0.8,), workers=0, examples=0)
    points = Upstream.find(val_points, cache, "make-points")
    stage = AblateExtension(VAL, cfg, cache, points, Upstream("train", None, checkpoint))
    planned = stage.key()
    res = run_ablation(checkpoint, VAL, val_points, cfg, cache, progress=False)
    assert res.table.key == planned
    unbuilt = AblateExtension(VAL, cfg, cache, points, Upstream("train", "0" * 64, None))
    with pytest.raises(KeyUnknown):
        unbuilt.key()  # score needs the checkpoint's bytes
    region_only = AblateExtension(VAL, AblationConfig(methods=("region",)), cache, points, Upstream("train", None, None))
    assert region_only.key()  # region needs no checkpoint: known without it
    train = AblationTrainConfig(points=str(train_points))
    with pytest.raises(KeyUnknown):
        AblateExtension(VAL, cfg, cache, points, Upstream("train", None, checkpoint), train).key()


def test_cli_writes_table5(cache, val_points, checkpoint, tmp_path):
    args = [str(checkpoint), "--points", str(val_points), "--dataset", "synthetic", "--split", "val",
            "--option", "seed=3", "--option", "size=64", "--option", "splits={train: 8, val: 4}",
            "--examples", "1", "--cache-dir", str(cache.root), "--out", str(tmp_path / "out"), "--quiet"]
    res = CliRunner().invoke(ablate_extension_cmd, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "14 rows" in res.output and "score+region" in res.output and "extension_acc" in res.output
    out = tmp_path / "out"
    frame = pd.read_csv(out / "extension_table.csv")
    assert list(frame.columns) == [c for c in TABLE_COLUMNS if c not in ("miou", "pixel_acc")]
    assert list(frame["method"]) == ["superpixel", "kmeans", "score", "region"] + ["score+region"] * 5 + ["agree"] * 5
    # accuracy is undefined (NaN) exactly when a method extended nothing (a 1-epoch model is
    # rarely confident enough for the score rows)
    acc, new = frame["extension_acc"], frame["new_pixels_per_image"]
    assert (acc.between(0, 1) | (acc.isna() & (new == 0))).all() and acc.notna().any()
    assert frame["coverage"].between(0, 1).all()
    # a higher threshold never labels more pixels inside the same squares
    sr = frame[frame["method"] == "score+region"]["new_pixels_per_image"].to_numpy()
    assert (np.diff(sr) <= 0).all()
    region = frame[frame["method"] == "region"].iloc[0]
    assert (sr <= region["new_pixels_per_image"]).all()
    # agree keeps a subset of region's pixels with region's labels: never more pixels than the
    # arg-max reading at the same threshold, and its accuracy is region's on that subset
    agree = frame[frame["method"] == "agree"]["new_pixels_per_image"].to_numpy()
    assert (agree <= sr).all() and (np.diff(agree) <= 0).all()
    per_class = pd.read_csv(out / "per_class_accuracy.csv")
    assert len(per_class) == 14 * 9 and {"class", "accuracy", "coverage"} <= set(per_class.columns)
    examples = sorted(p.name for p in (out / "examples").glob("*.png"))
    assert len(examples) == 14 and "agree-t0.7-r5_" in " ".join(examples)
    assert Image.open(out / "examples" / examples[0]).size == (64, 64)


def test_cli_train_adds_miou(cache, val_points, train_points, checkpoint):
    args = [str(checkpoint), "--points", str(val_points), "--option", "seed=3", "--option", "size=64",
            "--option", "splits={train: 8, val: 4}", "--methods", "superpixel,region", "--train",
            "--train-points", str(train_points), "--epochs", "1", "--batch-size", "4", "--crop-size", "48",
            "--train-workers", "0", "--workers", "0", "--examples", "0", "--cache-dir", str(cache.root), "-q"]
    res = CliRunner().invoke(ablate_extension_cmd, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    table = next(cache.root.glob("ablate-extension/*/*/extension_table.csv"), None)
    frames = [pd.read_csv(p) for p in cache.root.glob("ablate-extension/*/*/extension_table.csv")]
    frame = next(f for f in frames if "miou" in f.columns)
    assert table is not None and list(frame.columns) == list(TABLE_COLUMNS)
    assert frame["miou"].between(0, 1).all() and frame["pixel_acc"].between(0, 1).all()
    # the superpixel labels became a label set (the extension-labels stage) trained beside the clicks
    labels = list(cache.root.glob("extension-labels/*/*/labels/*.png"))
    assert len(labels) == 8
    trains = [json.loads(p.read_text()) for p in cache.root.glob("train/*/*/manifest.json")]
    lab_keys = {json.loads(p.read_text())["key"] for p in cache.root.glob("extension-labels/*/*/manifest.json")}
    with_labels = [t for t in trains if t["inputs"].get("labels") in lab_keys]
    assert with_labels and all(t["params"]["train"]["label_weight"] == 1.0 and "points" in t["inputs"]
                               for t in with_labels)


# -- bad input ------------------------------------------------------------------------------------


def _never(*a, **k):
    raise AssertionError("a row was computed despite bad input")


def _folder(root: Path, classes: str, masks: bool = True) -> Path:
    (root / "images" / "val").mkdir(parents=True)
    (root / "classes.txt").write_text(classes)
    if masks:
        (root / "masks" / "val").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "images" / "val" / f"im{i}.png")
        if masks:
            m = np.zeros((32, 32), np.uint8)
            m[8:24, 8:24] = 1
            Image.fromarray(m).save(root / "masks" / "val" / f"im{i}.png")
    return root


def test_checkpoint_with_other_classes_is_refused(cache, val_points, tmp_path):
    model = build_model(ModelConfig(num_classes=2, weights="none"))
    info = DatasetInfo("other", "folder-2", ("a", "b"), ((0, 0, 0), (255, 255, 255)))
    path = tmp_path / "other.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "model_config": model.config.to_dict(),
                "train_config": {}, "info": info.to_dict(),
                "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}, "epochs": 1}, path)
    with pytest.raises(DataError, match="other.pt: the checkpoint predicts 2 classes"):
        run_ablation(path, VAL, val_points, AblationConfig(), cache, progress=False, row_builder=_never)


def test_points_from_another_split_or_dataset_are_refused(cache, train_points, checkpoint, tmp_path):
    cfg = AblationConfig(methods=("region",))
    with pytest.raises(DataError, match=r"points.json: holds none of the 4 images of split 'val' \(it was made for split 'train'"):
        run_ablation(checkpoint, VAL, train_points, cfg, cache, progress=False, row_builder=_never)
    other = DatasetSpec(kind="synthetic", split="val", options={**SYN, "size": 48})
    other_points = run_make_points(other, MakePointsConfig(workers=0), cache, progress=False).path
    with pytest.raises(DataError, match="points.json: image .* is 48x48 in the points but 64x64"):
        run_ablation(checkpoint, VAL, other_points, cfg, cache, progress=False, row_builder=_never)
    two = DatasetSpec(kind="folder", root=str(_folder(tmp_path / "two", "0 bg\n1 fg\n")), split="val")
    two_points = run_make_points(two, MakePointsConfig(workers=0), cache, progress=False).path
    with pytest.raises(DataError, match="points.json: the points' classes .* do not match"):
        run_ablation(checkpoint, VAL, two_points, cfg, cache, progress=False, row_builder=_never)


def test_split_without_dense_ground_truth_is_refused(cache, val_points, checkpoint, tmp_path):
    root = _folder(tmp_path / "clicks-only", "0 bg\n1 fg\n", masks=False)
    spec = DatasetSpec(kind="folder", root=str(root), split="val")
    with pytest.raises(DataError, match=r"clicks-only: split 'val' has no dense ground truth"):
        run_ablation(checkpoint, spec, val_points, AblationConfig(), cache, progress=False, row_builder=_never)
    res = CliRunner().invoke(ablate_extension_cmd, [str(checkpoint), "--points", str(val_points), "--dataset", "folder",
                                                    "--root", str(root), "--cache-dir", str(cache.root)])
    assert res.exit_code == 1 and "has no dense ground truth" in res.output and "Traceback" not in res.output


def test_copy_table_never_replaces_a_folder_it_did_not_write(tmp_path):
    """`ablate-extension --out DIR` on someone's non-empty folder is refused; an earlier copy is
    replaced (issue 15, item 2)."""
    from types import SimpleNamespace

    from pointparse.extension.table import copy_table
    from pointparse.errors import DataError

    table = tmp_path / "table"
    table.mkdir()
    (table / "extension_table.csv").write_text("method\nregion\n")
    (table / "manifest.json").write_text(json.dumps({"stage": "ablate-extension"}))
    res = SimpleNamespace(table=SimpleNamespace(path=table))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(DataError, match="not an earlier output of ablate-extension"):
        copy_table(res, mine)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    copy_table(res, tmp_path / "out")
    copy_table(res, tmp_path / "out")
    assert (tmp_path / "out" / "extension_table.csv").is_file()


def test_a_split_view_reads_instances_through_its_reader(tmp_path):
    """SplitView forwards every reading method: an ADE20K-style reader decodes its own instance
    maps, so the view must not fall back to the base class's plain PNG reading."""
    from pointparse.extension.ablation import SplitView

    class Reader:
        names = ["a", "b", "c"]
        root, split, info = tmp_path, "val", None

        def load_instances(self, i, mask=None):
            return ("instances", i)

        def click_instances(self, i, min_area):
            return ("clicks", i, min_area)

    view = SplitView(Reader(), [2, 0])
    assert view.names == ["c", "a"]
    assert view.load_instances(0) == ("instances", 2)
    assert view.click_instances(1, 16) == ("clicks", 0, 16)
