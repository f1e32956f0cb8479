"""One inference entry: a trained checkpoint loaded and ready to run.

:meth:`Predictor.from_checkpoint` is the one place that goes from a checkpoint reference (a
train artefact key or key prefix when a cache is given, a train artefact folder, or a
``model.pt`` file) to a network in eval mode on its device, its :class:`DatasetInfo` and the
input normalisation it was trained with. The checkpoint is loaded with ``weights_only=True``
(:func:`pointparse.checkpoint.load_checkpoint`); anything unusable in it is one :class:`DataError`
naming the file. Evaluate, predict, export, the extension ablation and the report's
qualitative grid all load their models here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .cache import StageCache
from .checkpoint import load_checkpoint, model_from_checkpoint
from .datasets import DatasetInfo
from .errors import DataError
from .outputs import MANIFEST, check_intact
from .runtime import resolve_device
from .transforms import normalise


@dataclass
class Predictor:
    """A checkpoint's network in eval mode on ``device``, with what inference needs besides it."""

    model: nn.Module
    info: DatasetInfo
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    path: Path
    device: torch.device
    model_config: dict[str, Any]
    train_config: dict[str, Any]

    @classmethod
    def from_checkpoint(cls, ref: str | Path, device: str | torch.device = "auto",
                        cache: StageCache | None = None) -> "Predictor":
        """Load ``ref`` (a ``.pt`` file, a folder holding ``model.pt``, or — with ``cache`` — a train
        artefact key or unique key prefix) onto ``device`` (``auto``, ``cpu``, ``cuda[:N]`` or a
        :class:`torch.device`)."""
        path = resolve_checkpoint(ref, cache)
        ckpt = load_checkpoint(path)
        model, info = model_from_checkpoint(ckpt, path)
        mean, std = _normalization(ckpt, path)
        _check_finite_weights(model, path)
        dev = resolve_device(device)
        model.to(dev).eval()
        return cls(model, info, mean, std, path, dev, dict(ckpt["model_config"]),
                   dict(ckpt.get("train_config") or {}) if isinstance(ckpt.get("train_config"), dict) else {})

    def normalise(self, image: np.ndarray) -> torch.Tensor:
        """uint8 ``[H, W, 3]`` RGB → float32 ``[1, 3, H, W]`` on ``device``, ``(x/255 - mean) / std``."""
        return normalise(image, self.mean, self.std).unsqueeze(0).to(self.device)


def _normalization(ckpt: dict, path: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The checkpoint's ``normalization`` mean/std (three floats each), or one DataError naming ``path``."""
    try:
        norm = ckpt["normalization"]
        mean, std = tuple(float(v) for v in norm["mean"]), tuple(float(v) for v in norm["std"])
        if len(mean) != 3 or len(std) != 3:
            raise ValueError("not three values each")
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(path, f"checkpoint has no usable 'normalization' mean/std ({exc.__class__.__name__})") from None
    # a std of 0 or NaN makes every input NaN, and then every prediction class 0: an mIoU that looks real
    if not all(np.isfinite(mean)) or not all(np.isfinite(s) and s > 0 for s in std):
        raise DataError(path, f"checkpoint normalization must be finite with std > 0, got mean {list(mean)} "
                              f"std {list(std)}")
    return mean, std


def _check_finite_weights(model: nn.Module, path: Path) -> None:
    """NaN or infinite weights (a diverged or damaged run) predict one class everywhere while every
    command would still report numbers: refuse them before use, naming the first bad tensor."""
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise DataError(path, f"checkpoint weight {name!r} holds NaN or infinite values (a diverged run?); "
                                  "it cannot predict anything")


def resolve_checkpoint(ref: str | Path, cache: StageCache | None = None) -> Path:
    """The model.pt of ``ref``: a .pt file, a folder holding model.pt, or (with ``cache``) a train
    artefact key or unique key prefix. The one resolver behind every command that takes a checkpoint
    (:meth:`pointparse.predictor.Predictor.from_checkpoint`, evaluate, the ablation, predict, export).
    A checkpoint inside a finished artefact (a key, its folder or the file in it) must still be the
    one its manifest records, byte for byte: a same-size edit must not be used silently."""
    p = Path(ref)
    if p.is_file():
        if (p.parent / MANIFEST).is_file():  # the model.pt of a finished artefact: still what it wrote?
            check_intact(p.parent)
        return p
    if p.is_dir() and (p / "model.pt").is_file():
        if (p / MANIFEST).is_file():
            check_intact(p)
        return p / "model.pt"
    if cache is None:
        raise DataError(p, "folder has no model.pt (not a finished train artefact?)" if p.is_dir()
                        else "checkpoint file does not exist")
    d = cache.find(ref, stage="train")
    if not (d / "model.pt").is_file():
        raise DataError(d, "train artefact has no model.pt (unfinished run?)")
    return d / "model.pt"
