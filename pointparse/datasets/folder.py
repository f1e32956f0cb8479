"""The plain-folder reader (``kind: folder``): images, id masks and optional instance maps in
folders, classes in ``classes.txt``; also the layout :mod:`pointparse.synthetic` writes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..images import list_images
from .base import StemPairedDataset, check_class_ids, label_lut, pair_by_stem, require_dir
from .classes import DatasetInfo, default_palette, parse_classes_file, read_text


class FolderDataset(StemPairedDataset):
    """A plain folder of images and masks (also what :mod:`pointparse.synthetic` writes)::

        root/classes.txt               one name per line, or 'id name [r:g:b]' (see parse_classes_file)
        root/palette.txt               optional, 'r g b' per class when classes.txt has no colours
        root/images/[split/]*.jpg|png
        root/masks/[split/]*.png       class ids 0..C-1, 255 = ignore ('labels/' is accepted too)
        root/instances/[split/]*.png   optional, 0 = none, >0 instance id (8- or 16-bit)

    The split subfolder is used when it exists; a folder without any subfolders is a single flat
    split, so both ``images/train/`` and a flat ``images/`` work, but asking for a split that a
    split-organised folder lacks is an error (not a silent fallback to another split). A missing
    ``masks/`` (and ``labels/``) folder means the split has no dense labels (human clicks only).
    ``ignore_classes`` turns named classes into ignore (e.g. LabelMeFacade's "various" under the
    8-class protocol) and renumbers the rest in order.
    """

    kind = "folder"
    options = {"ignore_classes": "comma-separated class names to treat as ignore (255)"}

    def __init__(self, root: str | Path, split: str = "train", ignore_classes: str | list[str] | None = None):
        root = Path(root)
        require_dir(root, "dataset root")
        names, palette = parse_classes_file(root / "classes.txt")
        if palette is None and (root / "palette.txt").exists():
            palette = _read_palette(root / "palette.txt", len(names))
        ignored = _as_list(ignore_classes)
        unknown = [n for n in ignored if n not in names]
        if unknown:
            raise ConfigError(f"ignore_classes {unknown} are not classes of {root / 'classes.txt'}; classes: {', '.join(names)}")
        keep = [k for k, n in enumerate(names) if n not in ignored]
        if not keep:
            raise ConfigError(f"ignore_classes {ignored} leaves no class of {root / 'classes.txt'} to learn")
        # no class ignored: ids are already 0..C-1 once validated, so no remapping pass
        self._lut = label_lut({old: new for new, old in enumerate(keep)}) if ignored else None
        self._n_raw = len(names)
        pal = palette or default_palette(len(names))
        info = DatasetInfo(
            name=root.resolve().name,
            protocol=f"folder-{len(keep)}" + (f"-ignore-{'+'.join(ignored)}" if ignored else ""),
            classes=tuple(names[k] for k in keep),
            palette=tuple(pal[k] for k in keep),
        )
        super().__init__(root, split, info)
        img_dir = _split_dir(require_dir(root / "images", "images"), split)
        mask_root = root / "masks" if (root / "masks").is_dir() else root / "labels"
        mask_dir = _split_dir(mask_root, split) if mask_root.is_dir() else None
        inst_root = root / "instances"
        inst_dir = _split_dir(inst_root, split) if inst_root.is_dir() else None
        images = list_images(img_dir)
        self.names = [p.stem for p in images]
        self._images = images
        self._require_nonempty(img_dir)
        self._require_unique_names(img_dir)
        self._masks = pair_by_stem(images, mask_dir, "mask", orphans=True) if mask_dir is not None else None
        self._inst = pair_by_stem(images, inst_dir, "instance map") if inst_dir is not None else None

    def extra_files(self) -> list[Path]:
        return [p for p in (self.root / "classes.txt", self.root / "palette.txt") if p.exists()]

    def _check_raw(self, raw: np.ndarray, path: Path) -> None:
        check_class_ids(raw, self._n_raw, path)  # the ids of classes.txt, before ignore_classes


def _as_list(v: str | list[str] | None) -> list[str]:
    if v is None or v == "":
        return []
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]
    return list(v)


def _split_dir(base: Path, split: str) -> Path:
    """``base/split`` when it exists, else ``base`` itself when it holds no subfolders (flat)."""
    sub = base / split
    if sub.is_dir():
        return sub
    splits = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if splits:
        raise DataError(sub, f"split folder does not exist; {base} has split folder(s): {', '.join(splits)}")
    return base


def _read_palette(path: Path, n: int) -> tuple[tuple[int, int, int], ...]:
    rows = []
    for lineno, raw in enumerate(read_text(path, "palette file"), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        vals = re.split(r"[\s:,]+", line)
        if len(vals) != 3 or not all(v.isdigit() and int(v) < 256 for v in vals):
            raise DataError(path, f"line {lineno}: expected 'r g b' with values 0..255, got {raw!r}")
        rows.append(tuple(int(v) for v in vals))
    if len(rows) < n:
        raise DataError(path, f"palette has {len(rows)} colours for {n} classes")
    return tuple(rows[:n])  # type: ignore[return-value]
