"""Training curves: the jsonl logs (the source of truth) and TensorBoard scalars beside them.

:class:`JsonlWriter` appends the rows of ``iterations.jsonl`` / ``epochs.jsonl`` (rank 0, flushed
per line so a killed run keeps its log); :func:`truncate_log` drops the rows of epochs a killed
run did not finish before it resumes.

:class:`TensorBoardCurves` takes the very rows training writes to ``iterations.jsonl`` and
``epochs.jsonl`` and, when the optional ``tensorboard`` package is installed
(``pip install "pointparse[tensorboard]"``), writes each numeric value as a scalar through
``torch.utils.tensorboard.SummaryWriter``; without the package (or with ``log_dir=None``, as on
ranks other than 0) every method is a no-op. Nothing reads these files back: ``pointparse report``
keeps reading the jsonl logs.

Layout under ``log_dir`` (point ``tensorboard --logdir`` at it, or at the cache's ``train/``
folder to compare runs)::

    log_dir/iterations/events.out.tfevents.*   tags iteration/<key>, step = global iteration
    log_dir/epochs/events.out.tfevents.*       tags epoch/<key>,     step = epoch (0-based)

``<key>`` is the jsonl key unchanged (``loss``, ``ce``, ``pdml``, ``lr``, ``lr_head``,
``dis_pos``, ``dis_neg``, ``active_triples``, ``triples_per_step``, ``ext_accuracy``,
``ext_coverage``, ``ext_pixels_per_image``, ``val_miou``, ...). ``None`` values, strings and the
counters ``epoch`` / ``iter`` are skipped; booleans are written as 0/1. A resumed run writes its
event files anew from the jsonl rows it keeps (:func:`rewrite_event_log`), so the killed attempt's
events never show an epoch twice.

Usage in the training loop (rank 0 passes a folder, other ranks ``None``)::

    from .curves import TensorBoardCurves, rewrite_event_log

    rewrite_event_log(out_dir / "tensorboard", ...)  # a resumed run: its kept rows only
    curves = TensorBoardCurves(out_dir / "tensorboard" if rt.is_main else None)
    try:
        ...  # per logged iteration, beside iter_log.write(row):
        curves.log_iteration(epoch * len(loader) + it, row)
        ...  # per epoch, beside epoch_log.write(row):
        curves.log_epoch(epoch, row)
    finally:
        curves.close()
"""

from __future__ import annotations

import json
import math
import numbers
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .io import atomic_file

__all__ = ["JsonlWriter", "TensorBoardCurves", "nan_to_none", "rewrite_event_log", "tensorboard_available",
           "truncate_log"]

#: row keys that are the x axis, not a curve
STEP_KEYS = frozenset({"epoch", "iter"})


def _summary_writer_class():
    """``torch.utils.tensorboard.SummaryWriter``, or None when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises ImportError (or ModuleNotFoundError) without tensorboard
        return None
    return SummaryWriter


def tensorboard_available() -> bool:
    """Whether TensorBoard event files can be written here (the ``tensorboard`` package imports)."""
    return _summary_writer_class() is not None


def scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """The numeric values of a log row as floats: ``None``, strings, containers and the step
    counters (``epoch``, ``iter``) are left out, booleans become 0.0 / 1.0."""
    out = {}
    for key, value in row.items():
        if key in STEP_KEYS or value is None or isinstance(value, (str, bytes)):
            continue
        if isinstance(value, bool):
            out[key] = float(value)
        elif isinstance(value, numbers.Real):
            out[key] = float(value)
        elif hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalar
            v = value.item()
            if isinstance(v, numbers.Real):
                out[key] = float(v)
    return out


class TensorBoardCurves:
    """Scalars of the training logs as TensorBoard events under ``log_dir`` (see module doc).

    ``log_dir=None`` or a missing ``tensorboard`` package: :attr:`enabled` is False and every
    method does nothing. ``start_epoch`` / ``start_step``: where a resumed run picks up (epoch
    and global iteration); events of an earlier, killed attempt at or after them are purged.
    Writers are opened on first use, so an unused logger leaves no files.
    """

    def __init__(self, log_dir: str | Path | None, start_epoch: int = 0, start_step: int = 0):
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self._writer_cls = _summary_writer_class() if log_dir is not None else None
        self.enabled = self._writer_cls is not None
        self._purge = {"iterations": int(start_step), "epochs": int(start_epoch)}
        self._writers: dict[str, Any] = {}

    def _writer(self, kind: str):
        w = self._writers.get(kind)
        if w is None:
            purge = self._purge[kind]
            w = self._writer_cls(log_dir=str(self.log_dir / kind), purge_step=purge if purge > 0 else None,
                                 flush_secs=30)
            self._writers[kind] = w
        return w

    def _log(self, kind: str, prefix: str, step: int, row: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        values = scalars(row)
        if not values:
            return
        w = self._writer(kind)
        for key, value in values.items():
            if math.isnan(value):
                continue  # the jsonl writes NaN as null; no point either
            w.add_scalar(f"{prefix}/{key}", value, global_step=int(step))

    def log_iteration(self, step: int, row: Mapping[str, Any]) -> None:
        """One ``iterations.jsonl`` row at global iteration ``step`` (tags ``iteration/<key>``)."""
        self._log("iterations", "iteration", step, row)

    def log_epoch(self, epoch: int, row: Mapping[str, Any]) -> None:
        """One ``epochs.jsonl`` row (or validation metrics) at ``epoch`` (tags ``epoch/<key>``);
        flushes both event files so a killed run keeps its curves up to the last epoch."""
        self._log("epochs", "epoch", epoch, row)
        self.flush()

    def flush(self) -> None:
        for w in self._writers.values():
            w.flush()

    def close(self) -> None:
        """Flush and close the event files; the logger can be closed more than once."""
        for w in self._writers.values():
            w.close()
        self._writers.clear()
        self.enabled = False

    def __enter__(self) -> TensorBoardCurves:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class JsonlWriter:
    """Append-only JSONL log (rank 0 only); flushed per line so a killed run keeps its log."""

    def __init__(self, path: Path | None):
        self.fh = open(path, "a", encoding="utf-8") if path is not None else None

    def write(self, row: dict) -> None:
        if self.fh is not None:
            self.fh.write(json.dumps(row, sort_keys=True, default=_json_default) + "\n")
            self.fh.flush()

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()


def truncate_log(path: Path, start_epoch: int) -> None:
    """Drop the rows of epochs >= ``start_epoch`` (those a killed run did not finish) before resuming."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the kill
            continue
        if isinstance(row, dict) and isinstance(row.get("epoch", 0), int) and row.get("epoch", 0) < start_epoch:
            keep.append(line)
    with atomic_file(path) as tmp:
        tmp.write_text("".join(l + "\n" for l in keep), encoding="utf-8")


def rewrite_event_log(log_dir: Path, iterations: Path, epochs: Path, steps_per_epoch: int) -> None:
    """Write a resumed run's event files anew from its jsonl rows (already truncated to the epochs
    it keeps). A killed attempt's event files can hold an epoch its checkpoint did not keep (the
    kill fell between the two writes); left beside the resumed run's, that epoch appears twice,
    and ``purge_step`` cannot hide it when the run restarts at epoch 0. Nothing to do for a run
    that never wrote events (a fresh run, or no ``tensorboard`` package then)."""
    if not log_dir.exists():
        return
    shutil.rmtree(log_dir)
    with TensorBoardCurves(log_dir) as curves:
        for row in _rows(iterations):
            curves.log_iteration(int(row["epoch"]) * steps_per_epoch + int(row.get("iter", 0)), row)
        for row in _rows(epochs):
            curves._log("epochs", "epoch", int(row["epoch"]), row)


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _json_default(v):
    if isinstance(v, float) and math.isnan(v):
        return None
    if torch.is_tensor(v):
        return v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    raise TypeError(type(v).__name__)


def nan_to_none(d: dict) -> dict:
    """A log row with NaN floats as None (JSON null)."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}
