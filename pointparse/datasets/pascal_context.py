"""The PASCAL-Context reader (``kind: pascal-context``): mmsegmentation's converted layout under
the 59-class (default) or 60-class protocol."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError, unknown_choice
from .base import SegmentationDataset, check_raw_range, label_lut, require_dir
from .classes import DatasetInfo, load_descriptor, read_text


#: option value -> descriptor / protocol name
PASCAL_CONTEXT_PROTOCOLS = {"59": "pascal-context-59", "60": "pascal-context-60"}


class PascalContextDataset(SegmentationDataset):
    """PASCAL-Context as written by mmsegmentation's converter (Detail API)::

        VOC2010/JPEGImages/<id>.jpg
        VOC2010/SegmentationClassContext/<id>.png           uint8, 0 = background, 1..59 = classes
        VOC2010/ImageSets/SegmentationContext/{train,val}.txt

    ``root`` is ``VOC2010`` or its parent (``VOCdevkit``). Protocol ``59`` (default, the paper's,
    ``pascal-context-59``): background → 255 ignore, k → k-1. Protocol ``60``
    (``pascal-context-60``): background kept as class 0, ids unchanged; its mIoU is about 5 points
    lower, so the protocol name travels into every metrics file. No instance annotation (None).
    """

    kind = "pascal-context"
    options = {"protocol": "59 (default; background ignored, the paper's protocol) or 60 (background = class 0)"}
    NUM_RAW_CLASSES = 59

    def __init__(self, root: str | Path, split: str = "train", protocol: str | int = "59"):
        protocol = str(protocol).strip()
        if protocol not in PASCAL_CONTEXT_PROTOCOLS:
            raise unknown_choice("PASCAL-Context protocol", protocol, PASCAL_CONTEXT_PROTOCOLS)
        root = Path(root)
        require_dir(root, "dataset root")
        base = root / "VOC2010" if (root / "VOC2010").is_dir() else root
        super().__init__(base, split, DatasetInfo.from_dict(load_descriptor(PASCAL_CONTEXT_PROTOCOLS[protocol])))
        self.protocol = protocol
        list_file = base / "ImageSets" / "SegmentationContext" / f"{split}.txt"
        if not list_file.is_file():
            raise DataError(
                list_file,
                f"split list for {split!r} does not exist; root must be VOC2010 or its parent, prepared with "
                "mmsegmentation's tools/dataset_converters/pascal_context.py",
            )
        img_dir = require_dir(base / "JPEGImages", "JPEGImages")
        mask_dir = require_dir(base / "SegmentationClassContext", "SegmentationClassContext")
        ids: list[str] = []
        seen: set[str] = set()
        for lineno, raw in enumerate(read_text(list_file, "split list"), 1):
            iid = raw.strip()
            if not iid:
                continue
            if iid in seen:
                raise DataError(list_file, f"line {lineno}: id {iid!r} is listed twice")
            seen.add(iid)
            for path, what in ((img_dir / f"{iid}.jpg", "image"), (mask_dir / f"{iid}.png", "mask")):
                if not path.is_file():
                    raise DataError(list_file, f"line {lineno}: id {iid!r} has no {what} ({path} does not exist)")
            ids.append(iid)
        self.names = ids
        self._img_dir, self._mask_dir = img_dir, mask_dir
        self._require_nonempty(list_file)
        if protocol == "59":
            self._lut = label_lut({k: k - 1 for k in range(1, self.NUM_RAW_CLASSES + 1)})
        else:
            self._lut = label_lut({k: k for k in range(self.NUM_RAW_CLASSES + 1)})

    def image_path(self, i: int) -> Path:
        return self._img_dir / f"{self.names[i]}.jpg"

    def mask_path(self, i: int) -> Path | None:
        return self._mask_dir / f"{self.names[i]}.png"

    def extra_files(self) -> list[Path]:
        return [self.root / "ImageSets" / "SegmentationContext" / f"{self.split}.txt"]

    def _check_raw(self, raw: np.ndarray, path: Path) -> None:
        check_raw_range(raw, self.NUM_RAW_CLASSES, path, "PASCAL-Context converter output: 0 = background, 1..59 = classes")
