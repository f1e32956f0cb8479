"""The click formats: name → reader, writer and whether the format is a folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import unknown_choice
from .readers import (ReadResult, read_coco, read_cvat, read_label_studio, read_sparse_png, read_text,
                      read_wtp)
from .writers import (ExportView, write_coco, write_cvat, write_label_studio, write_sparse_png, write_text,
                      write_wtp)


@dataclass(frozen=True)
class ClickFormat:
    """One entry of :data:`CLICK_FORMATS`: a reader, a writer and whether the format is a folder."""

    name: str
    description: str
    read: Callable[[Path], ReadResult]
    write: Callable[[ExportView, Path], None]
    folder: bool = False


CLICK_FORMATS: dict[str, ClickFormat] = {f.name: f for f in (
    ClickFormat("label-studio", "Label Studio JSON export (KeyPointLabels)", read_label_studio, write_label_studio),
    ClickFormat("cvat", "CVAT for images 1.1 XML (points)", read_cvat, write_cvat),
    ClickFormat("coco", "COCO json with point_coords/point_labels (detectron2 PointSup)", read_coco, write_coco),
    ClickFormat("wtp", "What's the Point click json {image: [{x, y, cls, rank}]}", read_wtp, write_wtp),
    ClickFormat("text", "one line per image: name cls,y,x cls,y,x ...", read_text, write_text),
    ClickFormat("sparse-png", "folder of <name>.png label maps, 255 off the clicks", read_sparse_png,
                write_sparse_png, folder=True),
)}


def get_format(name: str) -> ClickFormat:
    """The format called ``name``; a :class:`~pointparse.errors.ConfigError` listing the valid ones otherwise."""
    if name not in CLICK_FORMATS:
        raise unknown_choice("click format", name, CLICK_FORMATS)
    return CLICK_FORMATS[name]
