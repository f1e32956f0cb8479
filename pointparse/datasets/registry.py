"""The dataset kinds (:data:`DATASET_KINDS`) and :func:`open_dataset`, which opens one by name."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import ConfigError, unknown_choice
from .ade20k import ADE20KDataset
from .base import SegmentationDataset
from .coco import CocoDataset
from .folder import FolderDataset
from .pascal_context import PascalContextDataset


#: dataset kind -> reader class; ``open_dataset`` looks kinds up here.
DATASET_KINDS: dict[str, Callable[..., SegmentationDataset]] = {
    FolderDataset.kind: FolderDataset,
    ADE20KDataset.kind: ADE20KDataset,
    PascalContextDataset.kind: PascalContextDataset,
    CocoDataset.kind: CocoDataset,
}


def open_dataset(kind: str, root: str | Path, split: str = "train", **options) -> SegmentationDataset:
    """Open a dataset split by kind name; an unknown kind or option lists the valid ones."""
    if kind not in DATASET_KINDS:
        raise unknown_choice("dataset kind", kind, DATASET_KINDS)
    cls = DATASET_KINDS[kind]
    allowed = getattr(cls, "options", {})
    extra = [k for k in options if k not in allowed]
    if extra:
        valid = ", ".join(sorted(allowed)) or "none"
        raise ConfigError(f"dataset kind {kind!r} takes no option(s) {extra}; valid options: {valid}")
    return cls(root, split=split, **options)
