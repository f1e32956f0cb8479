"""Training and evaluation end to end on tiny synthetic scenes (CPU)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pointparse.cache import StageCache
from pointparse.errors import ConfigError, DataError
from pointparse.evaluate import EvalConfig
from pointparse.simulate import MakePointsConfig
from pointparse.dataspec import DatasetSpec, open_spec
from pointparse.stages.evaluate import run_evaluate
from pointparse.stages.make_points import run_make_points
from pointparse.stages.train import run_train
from pointparse.checkpoint import load_checkpoint
from pointparse.objective import compute_losses
from pointparse.train import train
from pointparse.train_config import TrainConfig
from pointparse.transforms import AugmentConfig, TrainSamples, collate

SYN = {"seed": 3, "size": 64, "splits": {"train": 8, "val": 4}}
SPEC = DatasetSpec(kind="synthetic", split="train", options=SYN)


def tiny_cfg(**kw) -> TrainConfig:
    base = dict(backbone="efficientnet_lite0", weights="none", epochs=2, batch_size=4, crop_size=48, workers=0,
                lr=1e-3, log_every=1)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return StageCache(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def points_dir(cache):
    return run_make_points(SPEC, MakePointsConfig(workers=0), cache, progress=False).path


def _points(points_dir):
    from pointparse.points import load_points

    ps = load_points(points_dir)
    return {n: ps.points(n) for n in ps.names}


def test_train_and_evaluate_stage(cache, points_dir):
    cfg = tiny_cfg(extension="score+region", threshold=0.5)
    res = run_train(SPEC, cfg, cache, points=points_dir, val_split="val", eval_cfg=EvalConfig(workers=0),
                    progress=False)
    for f in ("model.pt", "checkpoint.pt", "epochs.jsonl", "iterations.jsonl", "distances.npz", "metrics.json",
              "per_class_iou.csv", "confusion.npy", "manifest.json"):
        assert (res.path / f).is_file(), f
    rows = [json.loads(l) for l in (res.path / "epochs.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    for r in rows:
        assert math.isfinite(r["loss"]) and r["triples_per_step"] > 0 and r["dis_pos"] > 0
        assert r["ext_accuracy"] is None or 0.0 <= r["ext_accuracy"] <= 1.0
        assert r["ext_pixels_per_image"] >= 0
    with np.load(res.path / "distances.npz") as z:
        assert {"pos_0", "neg_0", "pos_1", "neg_1"} <= set(z.files)
    m = json.loads((res.path / "metrics.json").read_text())
    assert m["protocol"] and m["num_classes"] == 9 and 0.0 <= m["pixel_acc"] <= 1.0
    # TensorBoard scalars beside the jsonl logs (the tensorboard extra is part of dev)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    epochs = EventAccumulator(str(res.path / "tensorboard" / "epochs")).Reload()
    tags = set(epochs.Tags()["scalars"])
    assert {"epoch/loss", "epoch/dis_pos", "epoch/ext_pixels_per_image", "epoch/lr", "epoch/val_miou"} <= tags
    assert [e.step for e in epochs.Scalars("epoch/loss")] == [0, 1]
    assert epochs.Scalars("epoch/val_miou")[0].value == pytest.approx(m["miou"])
    iters = EventAccumulator(str(res.path / "tensorboard" / "iterations")).Reload()
    assert "iteration/loss" in iters.Tags()["scalars"]
    # a second identical call is a cache hit
    again = run_train(SPEC, cfg, cache, points=points_dir, val_split="val", eval_cfg=EvalConfig(workers=0),
                      progress=False)
    assert again.cached and again.path == res.path
    # evaluate stage on the checkpoint gives the same numbers as the end-of-training evaluation
    ev = run_evaluate(res.path, SPEC.with_split("val"), EvalConfig(workers=0), cache, progress=False)
    m2 = json.loads((ev.path / "metrics.json").read_text())
    assert json.loads((ev.path / "manifest.json").read_text())["dataset_spec"]["split"] == "val"
    assert m2["miou"] == pytest.approx(m["miou"]) and m2["pixel_acc"] == pytest.approx(m["pixel_acc"])
    ckpt = load_checkpoint(res.path / "model.pt")
    assert ckpt["info"]["classes"][0] and ckpt["normalization"]["mean"]


def test_resume_gives_identical_weights(cache, points_dir, tmp_path):
    ds = open_spec(SPEC, cache)
    pts = _points(points_dir)
    cfg = tiny_cfg(epochs=2, extension="region")
    train(cfg, ds, pts, tmp_path / "full", progress=False)
    train(cfg, ds, pts, tmp_path / "killed", progress=False, stop_after_epochs=1)
    assert not (tmp_path / "killed" / "model.pt").exists()
    assert load_checkpoint(tmp_path / "killed" / "checkpoint.pt")["next_epoch"] == 1
    train(cfg, ds, pts, tmp_path / "killed", progress=False)  # resumes at epoch 1
    a = load_checkpoint(tmp_path / "full" / "model.pt")["model"]
    b = load_checkpoint(tmp_path / "killed" / "model.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    lines = (tmp_path / "killed" / "epochs.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [0, 1]


def test_full_supervision_and_cpu_autocast(cache):
    ds = open_spec(SPEC, cache)
    cfg = tiny_cfg(supervision="full", pdml=False, amp="bf16", epochs=1)
    from pointparse.model import IMAGENET_MEAN, IMAGENET_STD, build_model

    samples = TrainSamples(ds, None, AugmentConfig(48), IMAGENET_MEAN, IMAGENET_STD)
    batch = collate([samples[i] for i in range(2)])
    model = build_model(cfg.model_config(ds.info.num_classes))
    res = compute_losses(model, batch, cfg, 0, None, torch.bfloat16)
    res.loss.backward()
    assert torch.isfinite(res.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_crop_without_clicks_still_trains(cache, points_dir):
    ds = open_spec(SPEC, cache)
    pts = {n: (np.zeros((0, 2), np.int64), np.zeros((0,), np.int64)) for n in ds.names}
    cfg = tiny_cfg(extension="score+region")
    from pointparse.model import IMAGENET_MEAN, IMAGENET_STD, build_model

    samples = TrainSamples(ds, pts, AugmentConfig(48), IMAGENET_MEAN, IMAGENET_STD)
    batch = collate([samples[i] for i in range(2)])
    assert batch["points_cls"].numel() == 0 and (batch["points"] == 255).all()
    model = build_model(cfg.model_config(ds.info.num_classes))
    res = compute_losses(model, batch, cfg, 0, torch.Generator().manual_seed(0), None)
    res.loss.backward()
    assert res.loss.item() == 0.0 and res.triples == 0


def test_clicks_move_with_the_image(cache, points_dir):
    """After scale/crop/flip every kept click still lands on a pixel of its class."""
    ds = open_spec(SPEC, cache)
    pts = _points(points_dir)
    samples = TrainSamples(ds, pts, AugmentConfig(40, 0.7, 1.3, True), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), seed=1)
    checked = 0
    for epoch in range(3):
        samples.set_epoch(epoch)
        for i in range(len(samples)):
            s = samples[i]
            xy = s["points_xy"].round().long()
            dense = s["dense"]
            for (x, y), c in zip(xy.tolist(), s["points_cls"].tolist()):
                # nearest-neighbour label resizing can move region borders by a pixel: look around
                win = dense[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2]
                assert (win == c).any()
                checked += 1
    assert checked > 20


def test_points_from_another_dataset_is_refused(cache, tmp_path):
    other = DatasetSpec(kind="folder", root=str(_two_class_folder(tmp_path / "other")))
    pdir = run_make_points(other, MakePointsConfig(workers=0), cache, progress=False).path
    with pytest.raises(DataError, match="another dataset"):
        run_train(SPEC, tiny_cfg(epochs=1), cache, points=pdir, progress=False)


def test_bad_train_config_lists_choices():
    with pytest.raises(ConfigError, match="score\\+region"):
        TrainConfig(extension="bogus")
    with pytest.raises(ConfigError, match="full supervision"):
        TrainConfig(supervision="full", pdml=True)


def _two_class_folder(root: Path) -> Path:
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("a\nb\n")
    for i in range(2):
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "images" / f"x{i}.png")
        m = np.zeros((32, 32), np.uint8)
        m[8:20, 8:20] = 1
        Image.fromarray(m).save(root / "masks" / f"x{i}.png")
    return root


@pytest.mark.slow
def test_torchrun_gloo_two_processes(cache, points_dir):
    """The multi-process path (torchrun + gloo on CPU) trains and evaluates like one process."""
    cfg = tiny_cfg(epochs=1, extension="score+region")
    res = run_train(SPEC, cfg, cache, points=points_dir, val_split="val", gpus=2,
                    eval_cfg=EvalConfig(workers=0), progress=False)
    assert (res.path / "model.pt").is_file() and (res.path / "metrics.json").is_file()
    rows = [json.loads(l) for l in (res.path / "epochs.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["triples_per_step"] > 0


def test_loaders_run_in_the_main_process_on_cpu_unless_told(cache, monkeypatch):
    from pointparse.pool import loader_workers

    monkeypatch.setattr("pointparse.pool.worker_count", lambda workers: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert loader_workers(None, torch.device("cpu")) == 0
    assert loader_workers(None, torch.device("cuda")) == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # 8 GPU processes share 16 cores
    assert loader_workers(None, torch.device("cuda")) == 2
    assert loader_workers(3, torch.device("cpu")) == 3
    for make in (lambda: EvalConfig(workers=-1), lambda: tiny_cfg(workers=-1)):
        with pytest.raises(ConfigError, match="workers"):
            make()
    # evaluation reads image and mask only; the instance map is for make-points
    ds = open_spec(SPEC.with_split("val"), cache)
    assert ds.load(0).instances is not None and ds.load(0, with_instances=False).instances is None


# ------------------------------------------------------------------------------------------------
# a label set beside the clicks (issue 22)
# ------------------------------------------------------------------------------------------------


def _label_set(ds, folder: Path, every: int | None = 2):
    """A label set of ``ds``: its ground truth, every ``every``-th row 255 (``None``: none)."""
    from pointparse.labelset import LabelSetWriter

    w = LabelSetWriter(folder, ds.info, ds.split, "test")
    for i, name in enumerate(ds.names):
        lab = ds.load_mask(i).copy()
        if every:
            lab[1::every] = 255
        w.write(name, lab)
    return w.finish(ds)


def test_label_set_labels_move_with_the_image(cache, tmp_path):
    """The labels take the image's scale, crop (with 255 on the padding) and flip: a label set equal
    to the ground truth stays equal to ``dense`` in every augmented sample."""
    ds = open_spec(SPEC, cache)
    ls = _label_set(ds, tmp_path / "ls", every=None)  # the ground truth itself
    samples = TrainSamples(ds, _points_of(cache), AugmentConfig(80, 0.6, 1.4, True), (0.5,) * 3, (0.5,) * 3,
                           seed=2, labels=ls.label)
    padded = 0
    for epoch in range(2):
        samples.set_epoch(epoch)
        for i in range(len(samples)):
            s = samples[i]
            assert torch.equal(s["labels"], s["dense"])
            padded += int((~s["valid"]).sum() > 0 and (s["labels"][~s["valid"]] == 255).all())
    assert padded > 0
    batch = collate([samples[i] for i in range(3)])
    assert batch["labels"].shape == batch["dense"].shape and batch["labels"].dtype == torch.int64
    assert "labels" not in collate([TrainSamples(ds, _points_of(cache), AugmentConfig(48), (0.5,) * 3,
                                                 (0.5,) * 3)[0]])


def _points_of(cache):
    return _points(run_make_points(SPEC, MakePointsConfig(workers=0), cache, progress=False).path)


class _FullResolution(torch.nn.Module):
    """Logits that are a parameter at the input's resolution, so each pixel's gradient is its own."""

    def __init__(self, shape):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.randn(shape, generator=torch.Generator().manual_seed(0)))

    def forward(self, images):
        return {"logits": self.logits * 1.0}


def test_a_step_with_labels_and_clicks():
    """The loss is the click CE plus label_weight x the label set's pixel-mean CE, and the label
    term's gradient reaches the logits at the labelled pixels only."""
    B, C, S = 2, 4, 12
    g = torch.Generator().manual_seed(1)
    points = torch.full((B, S, S), 255, dtype=torch.long)
    points[0, 2, 3], points[1, 7, 5] = 1, 3
    labels = torch.full((B, S, S), 255, dtype=torch.long)
    labels[0, :4, :6] = torch.randint(0, C, (4, 6), generator=g)
    labels[1, 9:, :] = 2
    batch = {"image": torch.zeros(B, 3, S, S), "points": points, "dense": torch.full((B, S, S), 255),
             "valid": torch.ones(B, S, S, dtype=torch.bool), "labels": labels}
    cfg = TrainConfig(weights="none", pdml=False, label_weight=0.7)

    def step(batch):
        model = _FullResolution((B, C, S, S))
        res = compute_losses(model, batch, cfg, 0, None, None)
        res.loss.backward()
        return res, model.logits.grad

    with_labels, grad_with = step(batch)
    without, grad_without = step({k: v for k, v in batch.items() if k != "labels"})
    logits = _FullResolution((B, C, S, S)).logits.detach()
    expected = torch.nn.functional.cross_entropy(logits, labels, ignore_index=255)
    assert with_labels.label_ce == pytest.approx(float(expected), rel=1e-5) and without.label_ce == 0.0
    total = float(without.loss.detach()) + 0.7 * float(expected)
    assert float(with_labels.loss.detach()) == pytest.approx(total, rel=1e-5)
    assert with_labels.ce == without.ce  # the clicks' CE is untouched
    reached = (grad_with - grad_without).abs().sum(1) > 0
    assert torch.equal(reached, labels != 255)


def test_training_with_a_label_set(cache, points_dir, tmp_path):
    ds = open_spec(SPEC, cache)
    ls = _label_set(ds, tmp_path / "ls")
    row = train(tiny_cfg(epochs=1, pdml=False), ds, _points(points_dir), tmp_path / "run", progress=False, labels=ls)
    assert row["label_ce"] > 0 and row["labels_accuracy"] == 1.0 and 0.3 < row["labels_coverage"] < 0.7
    it = json.loads((tmp_path / "run" / "iterations.jsonl").read_text().splitlines()[0])
    assert it["label_ce"] > 0
    with pytest.raises(ConfigError, match="trains beside the clicks"):
        train(tiny_cfg(supervision="full", pdml=False), ds, None, tmp_path / "full", progress=False, labels=ls)


def test_the_train_key_includes_the_label_set_and_label_weight_only_with_one(cache, points_dir, tmp_path):
    from pointparse.stages.base import Upstream
    from pointparse.stages.train import Train

    pts = Upstream("make-points", "1" * 64, points_dir)
    labels = Upstream("pseudo-labels", "2" * 64, tmp_path)

    def key(labels=None, **kw):
        return Train(SPEC, tiny_cfg(**kw), cache, pts, labels=labels).key()

    assert key() == key(label_weight=3.0)  # nothing to weigh: the keys of runs without labels stay
    assert key(labels) != key() and key(labels) != key(labels, label_weight=3.0)
    assert key(Upstream("pseudo-labels", "3" * 64, tmp_path)) != key(labels)
    with pytest.raises(ConfigError, match="drop one of them"):
        Train(SPEC, tiny_cfg(supervision="full", pdml=False), cache, None, labels=labels).key()
    with pytest.raises(ConfigError, match="label_weight must be a finite number >= 0"):
        tiny_cfg(label_weight=-1)
