"""Checkpoints: ``model.pt`` / ``checkpoint.pt`` written atomically and read back with
``torch.load(..., weights_only=True)``; a file that is not a usable pointparse checkpoint is one
:class:`DataError` naming it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from .datasets import DatasetInfo
from .errors import ConfigError, DataError
from .io import checked_file
from .model import IMAGENET_MEAN, IMAGENET_STD, ModelConfig, PointParseNet, build_model

CHECKPOINT_FORMAT = "pointparse-checkpoint-v1"


def unwrap(model: torch.nn.Module) -> PointParseNet:
    return model.module if hasattr(model, "module") else model


def save_checkpoint(path: Path, obj: dict) -> None:
    """Atomic ``torch.save``: a killed run never leaves a truncated checkpoint. Written through a
    file object, so the zip's inner folder is ``archive/`` and not the random temporary file name:
    the same weights give the same bytes, and so the same evaluate/ablation keys (which fingerprint
    a checkpoint by its bytes) when a run is repeated."""
    with checked_file(path) as fh:  # a full disk: one DataError saying how much the file needed
        torch.save(obj, fh)


def load_checkpoint(path: str | Path) -> dict:
    """Load a pointparse checkpoint with ``weights_only=True`` (a file that tries to run code is refused)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint file does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, refused globals, truncated files
        raise DataError(path, f"not a loadable pointparse checkpoint ({exc.__class__.__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise DataError(path, f"not a pointparse checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    return obj


def model_from_checkpoint(ckpt: dict, path: str | Path | None = None) -> tuple[PointParseNet, DatasetInfo]:
    """Rebuild the network (no ImageNet download) and its dataset info from a loaded checkpoint.

    A checkpoint with missing keys, weights of the wrong shapes or a class list that does not
    match its head is one :class:`DataError` naming ``path`` (the file it was loaded from)."""
    try:
        mcfg = dict(ckpt["model_config"])
        mcfg["weights"] = "none"
        model = build_model(ModelConfig.from_dict(mcfg))
        model.load_state_dict(ckpt["model"])
        info = DatasetInfo.from_dict(ckpt["info"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, ConfigError) as exc:
        said = " ".join(str(exc).split())  # load_state_dict lists every key over several lines
        said = said if len(said) <= 400 else said[:400] + " ..."
        raise DataError(path or "checkpoint", f"not a usable pointparse checkpoint ({exc.__class__.__name__}: "
                                              f"{said})") from None
    if info.num_classes != model.num_classes:
        raise DataError(path or "checkpoint", f"its class list has {info.num_classes} classes ({info.protocol}) "
                                              f"but its classifier predicts {model.num_classes}")
    return model, info


def model_checkpoint(model, cfg, info: DatasetInfo, epochs_done: int) -> dict:
    """What ``model.pt`` holds: weights, model and train configs (``cfg``: the run's
    :class:`~pointparse.train_config.TrainConfig`, stored as a dict), class list, normalisation, epochs."""
    m = unwrap(model)
    return {
        "format": CHECKPOINT_FORMAT,
        "model": {k: v.detach().cpu() for k, v in m.state_dict().items()},
        "model_config": m.config.to_dict(),
        "train_config": dataclasses.asdict(cfg),
        "info": info.to_dict(),
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "epochs": epochs_done,
    }
