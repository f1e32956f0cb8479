"""A partial training run before it resumes: what a kill leaves is resumed, anything else is damage.

A kill leaves a ``<key>.partial`` folder whose files were each written whole (checkpoints and
``distances.npz`` atomically, log rows one line at a time, the last maybe cut short). Anything
else there (a checkpoint of another model or run, ``next_epoch`` beyond the run's epochs, a
garbage or pickled ``distances.npz``, a log line that is not a row) would fail every rerun until
``--force``, or worse, "finish" a run that never trained (``next_epoch: 999``). The train stage
calls :func:`restart_if_damaged` before it resumes: one line ``<path>: <what is wrong>; starting
this run afresh``, and the folder is emptied, so the rerun trains from scratch.

The checks load what resuming loads, the way it loads it (weights into this run's model, the
optimiser state into its optimiser), so a partial run they pass is one :func:`pointparse.train.train`
can resume.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from .checkpoint import load_checkpoint
from .errors import DataError
from .keys import canonical_json
from .model import build_model
from .train import make_optimizer
from .train_config import TrainConfig

#: TrainConfig fields that may differ between two attempts of one run (not part of its cache key)
_NOT_IN_KEY = frozenset({"workers", "device", "log_every", "weights", "label_weight"})
_DISTANCE_KEY = re.compile(r"(pos|neg)_\d+")


def restart_if_damaged(run_dir: Path, cfg: TrainConfig, num_classes: int, echo: Callable[[str], None]) -> bool:
    """Empty ``run_dir`` when :func:`damage` finds something wrong in it, saying what in one line;
    True when it did."""
    found = damage(run_dir, cfg, num_classes)
    if found is None:
        return False
    path, problem = found
    echo(f"{path}: {problem}; starting this run afresh")
    for entry in run_dir.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    return True


def damage(run_dir: Path, cfg: TrainConfig, num_classes: int) -> tuple[Path, str] | None:
    """The first file of a partial run that a resume could not use, and what is wrong with it."""
    checks = [(run_dir / "checkpoint.pt", lambda p: checkpoint_problem(p, cfg, num_classes)),
              (run_dir / "distances.npz", distances_problem),
              (run_dir / "epochs.jsonl", log_problem),
              (run_dir / "iterations.jsonl", log_problem)]
    for path, check in checks:
        if path.exists() or path.is_symlink():
            problem = check(path)
            if problem:
                return path, problem
    return None


def checkpoint_problem(path: Path, cfg: TrainConfig, num_classes: int) -> str | None:
    """Why ``checkpoint.pt`` cannot resume this run (``cfg`` on ``num_classes`` classes), or None."""
    try:
        state = load_checkpoint(path)
    except DataError as exc:
        return exc.problem
    missing = [k for k in ("model", "optimizer", "next_epoch") if k not in state]
    if missing:
        return f"resumable checkpoint lacks {', '.join(missing)}"
    n = state["next_epoch"]
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= cfg.epochs:
        return f"next_epoch {n!r} lies outside this run's {cfg.epochs} epochs"
    theirs = state.get("train_config")
    if isinstance(theirs, dict):
        ours = dataclasses.asdict(cfg)
        for name in sorted(set(ours) & set(theirs) - _NOT_IN_KEY):
            if canonical_json(theirs[name]) != canonical_json(ours[name]):
                return (f"a checkpoint of another run ({name} {theirs[name]!r}; this run's is "
                        f"{ours[name]!r})")
    try:
        model = build_model(dataclasses.replace(cfg.model_config(num_classes), weights="none"))
        model.load_state_dict(state["model"])
        make_optimizer(model, cfg).load_state_dict(state["optimizer"])
    except Exception as exc:  # shapes, missing keys, parameter groups: whatever torch says
        said = " ".join(str(exc).split())
        return f"its weights do not fit this run's model ({exc.__class__.__name__}: {said[:300]})"
    return None


def distances_problem(path: Path) -> str | None:
    """Why ``distances.npz`` is not what training writes (numeric ``pos_E`` / ``neg_E`` arrays), or None."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                return "not an .npz archive of distances"
            for key in z.files:
                if not _DISTANCE_KEY.fullmatch(key):
                    return f"holds {key!r}, not pos_<epoch> / neg_<epoch> distances"
                if z[key].dtype.kind not in "fiu":
                    return f"{key} holds {z[key].dtype} values, not distances"
    except AttributeError:  # np.load gave a plain array (an .npy file): no context manager
        return "not an .npz archive of distances"
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        return f"not a readable .npz archive of distances ({exc.__class__.__name__}: {str(exc)[:200]})"
    return None


def log_problem(path: Path) -> str | None:
    """Why a jsonl training log holds something other than rows (objects with an integer
    ``epoch``), or None. A last line without its newline is one a kill cut: resuming drops it."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return f"unreadable log ({exc.__class__.__name__}: {exc})"
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # no newline after it: cut by the kill
                continue
            return f"line {i + 1} is not JSON ({line[:40]!r})"
        if not isinstance(row, dict) or isinstance(row.get("epoch"), bool) or not isinstance(row.get("epoch"), int):
            return f"line {i + 1} ({line[:40]!r}) is not a log row (an object with an integer epoch)"
    return None
