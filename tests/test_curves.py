"""TensorBoard curves: the jsonl rows of training come back from the event files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import pointparse.curves as curves_mod
from pointparse.curves import TensorBoardCurves, scalars

ITER_ROWS = [{"epoch": 0, "iter": i, "loss": 2.0 - 0.1 * i, "ce": 1.5, "pdml": 0.5 - 0.01 * i, "triples": 12,
              "dis_pos": 3.0, "dis_neg": None, "lr": 2.5e-3} for i in range(3)]
EPOCH_ROWS = [{"epoch": e, "loss": 1.9 - e, "ce": 1.4, "pdml": 0.4, "triples_per_step": 10.0, "dis_pos": 2.5,
               "dis_neg": 4.0, "active_triples": 0.9, "lr": 2.5e-3, "lr_head": 2.5e-2, "time_s": 1.0,
               "images_per_s": 8.0, "extension_active": e >= 1, "ext_pixels_per_image": 100.0 * e,
               "ext_accuracy": None if e == 0 else 0.6, "ext_coverage": 0.1 * e, "val_miou": 0.2 + 0.05 * e}
              for e in range(2)]


def _read(folder: Path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_rows_come_back_as_scalars(tmp_path: Path):
    pytest.importorskip("tensorboard")
    with TensorBoardCurves(tmp_path / "tb") as curves:
        assert curves.enabled
        for row in ITER_ROWS:
            curves.log_iteration(10 + row["iter"], row)
        for row in EPOCH_ROWS:
            curves.log_epoch(row["epoch"], row)
    it = _read(tmp_path / "tb" / "iterations")
    assert set(it) == {f"iteration/{k}" for k in ("loss", "ce", "pdml", "triples", "dis_pos", "lr")}
    assert [s for s, _ in it["iteration/loss"]] == [10, 11, 12]
    np.testing.assert_allclose([v for _, v in it["iteration/loss"]], [2.0, 1.9, 1.8], rtol=1e-6)
    ep = _read(tmp_path / "tb" / "epochs")
    assert {"epoch/loss", "epoch/lr_head", "epoch/dis_neg", "epoch/active_triples", "epoch/ext_coverage",
            "epoch/ext_pixels_per_image", "epoch/val_miou", "epoch/extension_active"} <= set(ep)
    assert "epoch/epoch" not in ep
    assert ep["epoch/ext_accuracy"] == [(1, pytest.approx(0.6))]  # None at epoch 0 is skipped
    assert [s for s, _ in ep["epoch/val_miou"]] == [0, 1]
    np.testing.assert_allclose([v for _, v in ep["epoch/val_miou"]], [0.2, 0.25], rtol=1e-6)
    assert [v for _, v in ep["epoch/extension_active"]] == [0.0, 1.0]


def test_a_resumed_run_hides_the_killed_attempts_later_steps(tmp_path: Path):
    pytest.importorskip("tensorboard")
    first = TensorBoardCurves(tmp_path / "tb")
    for e in range(3):  # killed after epoch 2 was logged but before its checkpoint
        first.log_iteration(e * 4, {"loss": 10.0 + e})
        first.log_epoch(e, {"loss": 10.0 + e})
    first.close()
    second = TensorBoardCurves(tmp_path / "tb", start_epoch=2, start_step=8)
    second.log_iteration(8, {"loss": 1.0})
    second.log_epoch(2, {"loss": 1.0})
    second.close()
    assert _read(tmp_path / "tb" / "epochs")["epoch/loss"] == [(0, 10.0), (1, 11.0), (2, 1.0)]
    assert _read(tmp_path / "tb" / "iterations")["iteration/loss"] == [(0, 10.0), (4, 11.0), (8, 1.0)]


def test_no_op_without_a_folder_or_without_tensorboard(tmp_path: Path, monkeypatch):
    off = TensorBoardCurves(None)
    off.log_iteration(0, ITER_ROWS[0])
    off.log_epoch(0, EPOCH_ROWS[0])
    off.close()
    assert not off.enabled

    monkeypatch.setattr(curves_mod, "_summary_writer_class", lambda: None)
    missing = TensorBoardCurves(tmp_path / "tb")
    assert not missing.enabled and not curves_mod.tensorboard_available()
    missing.log_iteration(0, ITER_ROWS[0])
    missing.log_epoch(0, EPOCH_ROWS[0])
    missing.close()
    assert not (tmp_path / "tb").exists()


def test_scalars_keeps_numbers_only():
    row = {"epoch": 3, "iter": 7, "loss": np.float32(0.5), "n": np.int64(4), "ok": True, "name": "x",
           "none": None, "t": 2}
    assert scalars(row) == {"loss": 0.5, "n": 4.0, "ok": 1.0, "t": 2.0}
