"""Dataset readers: one registry of dataset kinds, each yielding image, class mask, instances.

Conventions (every reader converts to these, whatever the on-disk format):

* image: ``uint8`` [H, W, 3] RGB;
* class mask: ``uint8`` [H, W] with class ids ``0..C-1`` and ``IGNORE_INDEX`` (255) for
  unlabelled pixels (ADE20K's 0 "other", PASCAL-Context's background under the 59-class
  protocol, COCO crowd regions, VOC boundaries);
* instances: ``int32`` [H, W], 0 = no instance, ``>0`` = instance id unique within the image,
  or ``None`` when the dataset has no instance annotation (make-points then falls back to
  connected components of each class).

Class names, palettes and protocols are described by YAML files in the repository's top-level
``datasets/`` folder (installed as ``pointparse.descriptors``).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, ClassVar

import cv2
import numpy as np
import yaml

from .. import IGNORE_INDEX
from ..errors import ConfigError, DataError, unknown_choice
from ..io import image_size, list_images, read_image, read_json, read_label, read_rgb_label


@dataclass(frozen=True)
class DatasetInfo:
    """What a model trained on a dataset needs to know: classes, colours and the protocol name.

    ``protocol`` names the evaluation protocol explicitly (e.g. ``pascal-context-59``) and is
    written into every metrics file, because 59- and 60-class PASCAL-Context numbers differ by
    about 5 mIoU and are often confused.
    """

    name: str
    protocol: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int = IGNORE_INDEX

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "protocol": self.protocol,
            "classes": list(self.classes),
            "palette": [list(c) for c in self.palette],
            "ignore_index": self.ignore_index,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetInfo":
        return cls(
            name=d["name"],
            protocol=d["protocol"],
            classes=tuple(d["classes"]),
            palette=tuple(tuple(int(v) for v in c) for c in d["palette"]),
            ignore_index=int(d.get("ignore_index", IGNORE_INDEX)),
        )


def default_palette(n: int) -> tuple[tuple[int, int, int], ...]:
    """The PASCAL VOC bit-interleaved colour map, extended to ``n`` colours (``n <= 255``).

    Class 0 gets VOC's black like any class; ignore (255) is drawn in the map's own entry 255,
    (224, 224, 192) (:data:`pointparse.io.IGNORE_COLOUR`), which the map gives no other index,
    so no class shares the ignore colour in figures or palette PNGs.
    """
    out = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return tuple(out)


def descriptor_path(name: str) -> Path:
    """Path of ``datasets/<name>.yaml`` (installed as package data of ``pointparse.descriptors``)."""
    try:
        base = resources.files("pointparse.descriptors")
        p = Path(str(base.joinpath(f"{name}.yaml")))
    except ModuleNotFoundError:  # running from a source tree that was not installed
        p = Path(__file__).resolve().parents[2] / "datasets" / f"{name}.yaml"
    return p


def load_descriptor(name: str) -> dict:
    """The parsed descriptor ``datasets/<name>.yaml``."""
    p = descriptor_path(name)
    if not p.exists():
        raise DataError(p, f"dataset descriptor {name!r} is not installed")
    with open(p, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _read_text(path: Path, what: str) -> list[str]:
    """Lines of a small UTF-8 text file; a missing or undecodable file is a DataError."""
    if not path.is_file():
        raise DataError(path, f"{what} does not exist")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (UnicodeDecodeError, OSError) as exc:
        raise DataError(path, f"cannot read {what} as UTF-8 text ({exc.__class__.__name__})") from None


def parse_classes_file(path: Path) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...] | None]:
    """Read a classes file for the plain-folder layout.

    Accepted line forms (``#`` starts a comment, blank lines skipped):

    * ``name`` — ids are the line order 0, 1, 2, ...;
    * ``id name`` or ``id name r:g:b`` (also ``r,g,b``) — ids must be 0..C-1 in order; a line
      with id 255 is the ignore label and is skipped. Names may contain spaces
      (``3 traffic light 250:170:30``).

    Returns the class names and the palette (``None`` unless every class has a colour).
    """
    names: list[str] = []
    colours: list[tuple[int, int, int] | None] = []
    for lineno, raw in enumerate(_read_text(path, "classes file (one class name per line, or 'id name [r:g:b]')"), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if parts[0].isdigit():
            cid = int(parts[0])
            if cid == IGNORE_INDEX:
                continue
            rest = parts[1:]
            if not rest:
                raise DataError(path, f"line {lineno}: expected 'id name [r:g:b]', got {raw!r}")
            if cid != len(names):
                raise DataError(path, f"line {lineno}: class ids must be 0..C-1 in order; expected {len(names)}, got {cid}")
            colour = None
            # the last token is a colour when it looks like one, so names may contain spaces
            if len(rest) >= 2 and re.fullmatch(r"[0-9:,]+", rest[-1]) and re.search(r"[:,]", rest[-1]):
                token = rest.pop()
                vals = re.split(r"[:,]", token)
                if len(vals) != 3 or not all(v.isdigit() and int(v) < 256 for v in vals):
                    raise DataError(path, f"line {lineno}: colour must be r:g:b with 0..255 values, got {token!r}")
                colour = tuple(int(v) for v in vals)
            names.append(" ".join(rest))
            colours.append(colour)
        else:
            names.append(line)
            colours.append(None)
    if not names:
        raise DataError(path, "classes file lists no classes")
    if len(names) > IGNORE_INDEX:
        raise DataError(path, f"{len(names)} classes; at most {IGNORE_INDEX} fit in uint8 masks beside the ignore label")
    dupes = sorted(n for n, c in Counter(names).items() if c > 1)
    if dupes:
        raise DataError(path, f"class name(s) {dupes} listed more than once; names must be unique")
    palette = tuple(colours) if all(c is not None for c in colours) else None  # type: ignore[arg-type]
    return tuple(names), palette


@dataclass
class Sample:
    """One loaded example. ``image`` is ``None`` when only labels were asked for."""

    name: str
    image: np.ndarray | None
    mask: np.ndarray
    instances: np.ndarray | None


@dataclass
class Instances:
    """The clickable instances of one image (``K`` of them), as :func:`pointparse.points.find_instances`
    gives them.

    ``classes`` int64 [K]; ``boxes`` int64 [K, 4] as half-open ``(y0, x0, y1, x1)``, tight around
    the instance; ``areas`` int64 [K] (pixels); ``crops[k]`` bool [y1-y0, x1-x0], True on the
    instance's pixels. Only crops are kept, never one full-image mask per instance.
    """

    classes: np.ndarray
    boxes: np.ndarray
    areas: np.ndarray
    crops: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.classes)

    def crop(self, k: int) -> np.ndarray:
        return self.crops[k]

    @classmethod
    def from_list(cls, found: list) -> "Instances":
        """From ``(class, (y0, x0, y1, x1), area, crop)`` tuples, in that order."""
        if not found:
            return cls(np.zeros(0, np.int64), np.zeros((0, 4), np.int64), np.zeros(0, np.int64), [])
        return cls(
            classes=np.array([f[0] for f in found], np.int64),
            boxes=np.array([f[1] for f in found], np.int64),
            areas=np.array([f[2] for f in found], np.int64),
            crops=[f[3] for f in found],
        )


@dataclass
class ClickInstances:
    """What make-points needs of one image, given by a reader that knows its instances without
    the generic search (:meth:`SegmentationDataset.click_instances`)."""

    name: str
    height: int
    width: int
    labelled_pixels: int  # mask pixels that are not 255
    instances: Instances


class SegmentationDataset:
    """Base reader. Subclasses fill ``self.names`` and implement the ``_paths`` hooks.

    Construction validates the layout (folders exist, every image has its mask, the split is not
    empty) so bad input stops before any work; per-file problems (corrupt file, size mismatch,
    class id out of range) raise :class:`DataError` naming the file when that file is read.
    """

    kind: ClassVar[str] = ""
    #: extra constructor options accepted from the CLI/pipelines, name -> help text
    options: ClassVar[dict[str, str]] = {}

    def __init__(self, root: str | Path, split: str, info: DatasetInfo):
        self.root = Path(root)
        self.split = split
        self.info = info
        self.names: list[str] = []

    # -- hooks ---------------------------------------------------------------------------------
    def image_path(self, i: int) -> Path:
        raise NotImplementedError

    def mask_path(self, i: int) -> Path | None:
        """Path of the dense class mask, or ``None`` when the split has no dense labels."""
        raise NotImplementedError

    def instance_path(self, i: int) -> Path | None:
        return None

    def _decode_mask(self, i: int) -> np.ndarray:
        """Raw mask → ``uint8`` class ids with 255 ignore (before range validation)."""
        raw = read_label(self.mask_path(i))
        return raw.astype(np.uint8) if raw.max(initial=0) <= 255 else raw  # range check follows

    def _decode_instances(self, i: int, mask: np.ndarray) -> np.ndarray | None:
        p = self.instance_path(i)
        if p is None:
            return None
        inst = read_label(p).astype(np.int32, copy=False)  # 16-bit maps are int32 already
        if inst.shape != mask.shape:
            raise DataError(p, f"instance map is {inst.shape[1]}x{inst.shape[0]} but the mask is {mask.shape[1]}x{mask.shape[0]}")
        return inst

    # -- public API ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.names)

    @property
    def has_dense_labels(self) -> bool:
        return len(self) > 0 and self.mask_path(0) is not None

    @property
    def has_instances(self) -> bool:
        return len(self) > 0 and self.instance_path(0) is not None

    def files(self) -> list[Path]:
        """Every file this dataset split reads; the cache fingerprints these."""
        out: list[Path] = []
        for i in range(len(self)):
            out.append(self.image_path(i))
            for p in (self.mask_path(i), self.instance_path(i)):
                if p is not None:
                    out.append(p)
        return out + self.extra_files()

    def extra_files(self) -> list[Path]:
        """Annotation files shared by the split (a COCO json, a classes file)."""
        return []

    def image_size(self, i: int) -> tuple[int, int]:
        return image_size(self.image_path(i))

    def load_image(self, i: int) -> np.ndarray:
        return read_image(self.image_path(i))

    def load_mask(self, i: int) -> np.ndarray:
        """Class ids ``uint8`` [H, W]; raises :class:`DataError` on ids outside the classes."""
        p = self.mask_path(i)
        if p is None:
            raise DataError(self.root, f"split {self.split!r} has no dense ground truth")
        mask = self._decode_mask(i)
        vals = _invalid_ids(mask, self.info.num_classes)
        if vals:
            raise DataError(
                p,
                f"class id(s) {vals} outside the dataset's {self.info.num_classes} classes "
                f"(0..{self.info.num_classes - 1}, {IGNORE_INDEX} = ignore)",
            )
        return mask.astype(np.uint8, copy=False)

    def load_instances(self, i: int, mask: np.ndarray | None = None) -> np.ndarray | None:
        if mask is None:
            mask = self.load_mask(i)
        return self._decode_instances(i, mask)

    def load(self, i: int, with_image: bool = True, check_size: bool = True, with_instances: bool = True) -> Sample:
        """Load one example; the mask must match its image's size.

        ``with_instances=False`` skips decoding the instance map (``instances`` is then ``None``):
        only click simulation needs it, and it is a third file per image.
        """
        mask = self.load_mask(i)
        image = self.load_image(i) if with_image else None
        if check_size:
            h, w = image.shape[:2] if image is not None else self.image_size(i)
            if mask.shape != (h, w):
                raise self._size_mismatch(i, mask.shape, (h, w))
        return Sample(self.names[i], image, mask, self.load_instances(i, mask) if with_instances else None)

    def click_instances(self, i: int, min_area: int) -> ClickInstances | None:
        """A shortcut for make-points: image ``i``'s instances straight from the annotation, equal to
        what :func:`pointparse.points.find_instances` finds on ``load(i, with_image=False)``, with
        the same checks and errors. ``None`` (the default) = no shortcut, make-points searches the
        loaded maps."""
        return None

    def _size_mismatch(self, i: int, mask_hw: tuple[int, int], image_hw: tuple[int, int]) -> DataError:
        return DataError(
            self.mask_path(i),
            f"mask is {mask_hw[1]}x{mask_hw[0]} but its image {self.image_path(i).name} is {image_hw[1]}x{image_hw[0]}",
        )

    def _require_nonempty(self, where: Path) -> None:
        if not self.names:
            raise DataError(where, f"no images found for split {self.split!r}: the dataset is empty")


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(path, f"{what} folder does not exist")
    return path


def _pair_by_stem(images: list[Path], label_dir: Path, what: str, required: bool = True,
                  orphans: bool = False) -> dict[str, Path]:
    """Map image stem → label PNG in ``label_dir``; a missing label is an error naming the image
    (and with ``orphans``, a label PNG without an image is an error naming the label)."""
    labels = {p.stem: p for p in label_dir.iterdir() if p.suffix.lower() == ".png"} if label_dir.is_dir() else {}
    if orphans and len(labels) > len(images):
        stems = {img.stem for img in images}
        lone = sorted(stem for stem in labels if stem not in stems)
        more = f" ({len(lone)} {what}s have none)" if len(lone) > 1 else ""
        raise DataError(labels[lone[0]], f"{what} has no image (expected {lone[0]}.jpg or .png beside the split's "
                                         f"images in {images[0].parent}){more}")
    out = {}
    for img in images:
        lab = labels.get(img.stem)
        if lab is None:
            if required:
                raise DataError(img, f"image has no {what} (expected {label_dir / (img.stem + '.png')})")
            continue
        out[img.stem] = lab
    return out



def _lut(pairs: dict[int, int]) -> np.ndarray:
    """A 256-entry ``uint8`` look-up table raw value → class id, 255 everywhere else."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for raw, cid in pairs.items():
        lut[raw] = cid
    return lut


def _apply_lut(raw: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """``lut[raw]`` as ``uint8`` [H, W]; ``raw`` must already lie in 0..255.

    cv2.LUT is ~8x faster than numpy fancy indexing on uint8 masks (0.05 vs 0.35 ms at 512²),
    which matters when make-points costs little more than decoding.
    """
    if raw.dtype == np.uint8 and raw.ndim == 2 and raw.size:
        return cv2.LUT(raw, lut)
    return lut[raw.astype(np.uint8)]


def _invalid_ids(label: np.ndarray, num_valid: int) -> list[int]:
    """Up to ten sorted values of ``label`` [H, W] outside ``0..num_valid-1`` and 255 (ignore).

    Empty when the label is valid; a single ``max`` decides that in the common case.
    """
    if label.size == 0 or int(label.max()) < num_valid:
        return []
    bad = (label >= num_valid) & (label != IGNORE_INDEX)
    return sorted(int(v) for v in np.unique(label[bad]))[:10] if bad.any() else []


def _check_raw_range(raw: np.ndarray, valid_max: int, path: Path, convention: str) -> None:
    """Raise naming ``path`` when a raw label exceeds ``valid_max`` (before any remapping)."""
    if raw.max(initial=0) > valid_max:
        vals = sorted(int(v) for v in np.unique(raw[raw > valid_max]))[:10]
        raise DataError(path, f"label value(s) {vals} outside 0..{valid_max} ({convention})")


# -- plain folder -------------------------------------------------------------------------------


class FolderDataset(SegmentationDataset):
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
        _require_dir(root, "dataset root")
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
        self._lut = _lut({old: new for new, old in enumerate(keep)}) if ignored else None
        self._n_raw = len(names)
        pal = palette or default_palette(len(names))
        info = DatasetInfo(
            name=root.resolve().name,
            protocol=f"folder-{len(keep)}" + (f"-ignore-{'+'.join(ignored)}" if ignored else ""),
            classes=tuple(names[k] for k in keep),
            palette=tuple(pal[k] for k in keep),
        )
        super().__init__(root, split, info)
        img_dir = _split_dir(_require_dir(root / "images", "images"), split)
        mask_root = root / "masks" if (root / "masks").is_dir() else root / "labels"
        mask_dir = _split_dir(mask_root, split) if mask_root.is_dir() else None
        inst_root = root / "instances"
        inst_dir = _split_dir(inst_root, split) if inst_root.is_dir() else None
        images = list_images(img_dir)
        self.names = [p.stem for p in images]
        self._images = images
        self._require_nonempty(img_dir)
        if len(set(self.names)) != len(self.names):
            dupes = sorted(n for n, c in Counter(self.names).items() if c > 1)[:5]
            raise DataError(img_dir, f"several images share the file stem(s) {dupes}; names must be unique")
        self._masks = _pair_by_stem(images, mask_dir, "mask", orphans=True) if mask_dir is not None else None
        self._inst = _pair_by_stem(images, inst_dir, "instance map") if inst_dir is not None else None

    def image_path(self, i: int) -> Path:
        return self._images[i]

    def mask_path(self, i: int) -> Path | None:
        return None if self._masks is None else self._masks[self.names[i]]

    def instance_path(self, i: int) -> Path | None:
        return None if self._inst is None else self._inst[self.names[i]]

    def extra_files(self) -> list[Path]:
        return [p for p in (self.root / "classes.txt", self.root / "palette.txt") if p.exists()]

    def _decode_mask(self, i: int) -> np.ndarray:
        p = self.mask_path(i)
        raw = read_label(p)
        vals = _invalid_ids(raw, self._n_raw)
        if vals:
            raise DataError(p, f"class id(s) {vals} outside the dataset's {self._n_raw} classes "
                               f"(0..{self._n_raw - 1}, {IGNORE_INDEX} = ignore)")
        if self._lut is not None:
            return _apply_lut(raw, self._lut)
        return raw if raw.flags.writeable else raw.copy()  # PIL's own array of an "L" PNG is read-only


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
    for lineno, raw in enumerate(_read_text(path, "palette file"), 1):
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


# -- ADE20K SceneParsing ------------------------------------------------------------------------

#: accepted split names -> ADEChallengeData2016 folder names
ADE20K_SPLITS = {"train": "training", "val": "validation", "test": "testing"}
#: the ADE instance challenge annotates 100 "thing" categories (R channel 1..100)
ADE20K_INSTANCE_CATEGORIES = 100


def ade20k_instances(rgb: np.ndarray, mask: np.ndarray, path: Path | None = None) -> np.ndarray:
    """Instance ids from an ADE instance-challenge PNG, made consistent with the class mask.

    ``rgb`` is the ``uint8`` [H, W, 3] file: R = instance category (1..100, 0 = none), G = instance
    id. An instance is a distinct (R, G) pair with R > 0. Its class in the 150-class protocol is
    the majority label of the class ``mask`` ([H, W] ``uint8``, 255 = ignore) under it, which
    needs no category mapping table. Pixels of the instance that the class mask labels otherwise
    (ignore, or another class where the two annotation releases disagree) are dropped from the
    instance, so every instance is class-pure and any click inside it carries its class; an
    instance with no labelled pixel disappears. Returns ``int32`` [H, W], 0 = no instance,
    ids 1..N numbered in (R, G) order. Stuff classes have no instances (0) in this map.
    """
    r = rgb[..., 0]
    if int(r.max(initial=0)) > ADE20K_INSTANCE_CATEGORIES:
        vals = sorted(int(v) for v in np.unique(r[r > ADE20K_INSTANCE_CATEGORIES]))[:10]
        raise DataError(
            path or "<instance map>",
            f"red channel value(s) {vals} outside 0..{ADE20K_INSTANCE_CATEGORIES}: not an ADE instance-challenge "
            "annotation (R = category 1..100, G = instance id)",
        )
    inst = np.zeros(mask.shape, dtype=np.int32)
    fg = r > 0
    if not fg.any():
        return inst
    key = r[fg].astype(np.int32) * 256 + rgb[..., 1][fg]
    _, idx = np.unique(key, return_inverse=True)
    n = int(idx.max()) + 1
    labels = mask[fg].astype(np.int64)
    counts = np.bincount(idx * 256 + labels, minlength=n * 256).reshape(n, 256)
    counts[:, IGNORE_INDEX] = 0
    majority = counts.argmax(axis=1)
    keep = (labels == majority[idx]) & (counts.max(axis=1) > 0)[idx]
    # renumber the surviving instances 1..M so ids stay dense
    _, new = np.unique(idx[keep], return_inverse=True)
    vals = np.zeros(idx.shape, dtype=np.int32)
    vals[keep] = new.astype(np.int32) + 1
    inst[fg] = vals
    return inst


class ADE20KDataset(SegmentationDataset):
    """ADE20K SceneParsing (``ADEChallengeData2016``), protocol ``ade20k-150``::

        ADEChallengeData2016/images/{training,validation}/ADE_*.jpg
        ADEChallengeData2016/annotations/{training,validation}/ADE_*.png          uint8, 0..150
        ADEChallengeData2016/annotations_instance/{training,validation}/ADE_*.png optional, RGB

    ``root`` is the ``ADEChallengeData2016`` folder or its parent; ``train``/``val``/``test`` are
    aliases of ``training``/``validation``/``testing`` (``testing`` may lack annotations).
    Labels: raw 0 ("other", not one of the 150 classes) → 255 ignore, raw k in 1..150 → k-1
    (mmsegmentation's ``reduce_zero_label``). Any other raw value is an error, which also catches
    masks that were already reduced to 0..149 + 255. Instances (when ``annotations_instance/``
    exists, as released with the Places instance challenge) come from :func:`ade20k_instances`.
    """

    kind = "ade20k"
    NUM_RAW_CLASSES = 150

    def __init__(self, root: str | Path, split: str = "train"):
        root = Path(root)
        _require_dir(root, "dataset root")
        base = root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root
        sub = ADE20K_SPLITS.get(split, split)
        super().__init__(base, sub, DatasetInfo.from_dict(load_descriptor("ade20k")))
        img_dir = base / "images" / sub
        if not img_dir.is_dir():
            raise DataError(
                img_dir,
                f"images folder for split {split!r} does not exist; root must be ADEChallengeData2016 or its "
                "parent, splits are training/validation (aliases train/val)",
            )
        self._images = list_images(img_dir)
        self.names = [p.stem for p in self._images]
        self._require_nonempty(img_dir)
        ann_dir = base / "annotations" / sub
        if ann_dir.is_dir():
            self._masks: dict[str, Path] | None = _pair_by_stem(self._images, ann_dir, "annotation")
        elif sub == "testing":
            self._masks = None
        else:
            raise DataError(ann_dir, "annotations folder does not exist")
        inst_dir = base / "annotations_instance" / sub
        self._inst = _pair_by_stem(self._images, inst_dir, "instance annotation") if inst_dir.is_dir() else None
        self._lut = _lut({k: k - 1 for k in range(1, self.NUM_RAW_CLASSES + 1)})

    def image_path(self, i: int) -> Path:
        return self._images[i]

    def mask_path(self, i: int) -> Path | None:
        return None if self._masks is None else self._masks[self.names[i]]

    def instance_path(self, i: int) -> Path | None:
        return None if self._inst is None else self._inst[self.names[i]]

    def _decode_mask(self, i: int) -> np.ndarray:
        p = self.mask_path(i)
        raw = read_label(p)
        _check_raw_range(raw, self.NUM_RAW_CLASSES, p, "ADE20K SceneParsing: 0 = other, 1..150 = classes")
        return _apply_lut(raw, self._lut)

    def _decode_instances(self, i: int, mask: np.ndarray) -> np.ndarray | None:
        p = self.instance_path(i)
        if p is None:
            return None
        rgb = read_rgb_label(p)
        if rgb.shape[:2] != mask.shape:
            raise DataError(p, f"instance map is {rgb.shape[1]}x{rgb.shape[0]} but the mask is {mask.shape[1]}x{mask.shape[0]}")
        return ade20k_instances(rgb, mask, p)


# -- PASCAL-Context -----------------------------------------------------------------------------

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
        _require_dir(root, "dataset root")
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
        img_dir = _require_dir(base / "JPEGImages", "JPEGImages")
        mask_dir = _require_dir(base / "SegmentationClassContext", "SegmentationClassContext")
        ids: list[str] = []
        seen: set[str] = set()
        for lineno, raw in enumerate(_read_text(list_file, "split list"), 1):
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
            self._lut = _lut({k: k - 1 for k in range(1, self.NUM_RAW_CLASSES + 1)})
        else:
            self._lut = _lut({k: k for k in range(self.NUM_RAW_CLASSES + 1)})

    def image_path(self, i: int) -> Path:
        return self._img_dir / f"{self.names[i]}.jpg"

    def mask_path(self, i: int) -> Path | None:
        return self._mask_dir / f"{self.names[i]}.png"

    def extra_files(self) -> list[Path]:
        return [self.root / "ImageSets" / "SegmentationContext" / f"{self.split}.txt"]

    def _decode_mask(self, i: int) -> np.ndarray:
        p = self.mask_path(i)
        raw = read_label(p)
        _check_raw_range(raw, self.NUM_RAW_CLASSES, p, "PASCAL-Context converter output: 0 = background, 1..59 = classes")
        return _apply_lut(raw, self._lut)


# -- COCO instances json ------------------------------------------------------------------------


#: up to this many annotations per image, the ones whose boxes meet are found by comparing all pairs
_PAIRWISE_BOXES = 1024

#: longest run value (characters) pycocotools decodes without overflowing its 32-bit shifts
_RLE_MAX_CHARS = 6


def _rle_crops(strings: list[bytes], h: int, w: int) -> list:
    """Decode the COCO compressed RLE ``strings`` of one ``h`` x ``w`` image, each into its box only.

    One entry per string: ``(area, y0, x0, crop_t)`` with ``crop_t`` bool [bw, bh] the *transposed*
    box tight around the mask's pixels (a view into one buffer shared by the image's masks;
    ``crop_t.T`` is the mask in the box), ``(0, 0, 0, None)`` for an
    empty mask, or ``None`` when the string is not a well-formed RLE of ``h * w`` pixels (the
    caller decodes it with pycocotools then).

    The format (pycocotools' ``rleToString``): run lengths alternate 0s and 1s down the columns
    (column-major), the first run counts 0s; each is written in 5-bit groups, low bits first, as
    characters ``48 + group`` with bit 0x20 = "more groups follow" and, in the last group, bit
    0x10 = negative; from the third run on a run is stored as the difference to the run two
    before. All strings are decoded together in a few vectorised passes, and every mask's runs
    are cut at column ends and placed into its own box, so the work is proportional to the runs
    and box areas, never to the image size per mask.
    """
    S = len(strings)
    out = [None] * S
    if S == 0:
        return out
    lens = np.fromiter((len(s) for s in strings), np.int64, S)
    keep = np.flatnonzero(lens > 0)
    if len(keep) == 0:
        return out
    if len(keep) < S:
        strings = [strings[j] for j in keep.tolist()]
        lens = lens[keep]
    c = np.frombuffer(b"".join(strings), np.uint8).astype(np.int64) - 48
    n = len(c)
    s_end = np.cumsum(lens) - 1                    # last char of each string
    s_start = s_end - lens + 1
    bad_char = (c < 0) | (c > 63)
    endv = (c & 0x20) == 0
    trunc = ~endv[s_end]                           # a string ending inside a value
    endv[s_end] = True                             # values never run across strings
    vend = np.flatnonzero(endv)
    vstart = np.empty_like(vend)
    vstart[0] = 0
    vstart[1:] = vend[:-1] + 1
    vlen = vend - vstart + 1
    k = np.arange(n, dtype=np.int64) - np.repeat(vstart, vlen)
    x = np.add.reduceat((c & 0x1F) << (5 * np.minimum(k, 11)), vstart)
    neg = (c[vend] & 0x10) != 0
    x[neg] |= -(np.int64(1) << (5 * np.minimum(vlen[neg], 12)))
    # values per string, and each value's index m within its string
    nv = np.add.reduceat(endv.astype(np.int64), s_start)
    first = np.cumsum(nv) - nv
    sid = np.repeat(np.arange(len(strings)), nv)
    m = np.arange(len(x), dtype=np.int64) - first[sid]
    odd = (m & 1) == 1
    zo = np.where(odd, x, 0)
    ze = np.where(~odd & (m > 0), x, 0)
    co, ce = np.cumsum(zo), np.cumsum(ze)
    co -= np.repeat(co[first] - zo[first], nv)
    ce -= np.repeat(ce[first] - ze[first], nv)
    cnts = np.where(m == 0, x, np.where(odd, co, ce))   # pycocotools: x += cnts[m-2] for m > 2
    # per-string checks
    bad = (np.add.reduceat(bad_char.astype(np.int64), s_start) > 0) | trunc
    bad |= np.add.reduceat((vlen > _RLE_MAX_CHARS).astype(np.int64), first) > 0
    bad |= np.add.reduceat(((cnts < 0) | (cnts >= 1 << 32)).astype(np.int64), first) > 0
    total = np.add.reduceat(cnts, first)
    area = np.add.reduceat(np.where(odd, cnts, 0), first)
    bad |= total != h * w
    # one-runs of good strings, as [S, E) flat column-major positions
    cnts[bad[sid]] = 0
    pos = np.cumsum(cnts) - cnts
    pos -= np.repeat(pos[first], nv)
    one = odd & (cnts > 0) & ~bad[sid]
    rs, rlen, rsid = pos[one], cnts[one], sid[one]
    re_ = rs + rlen
    cs, ce_ = rs // h, (re_ - 1) // h
    wrap = ce_ > cs
    ys = np.where(wrap, 0, rs % h)
    ye = np.where(wrap, h - 1, (re_ - 1) % h)
    for j in np.flatnonzero(~bad & (area == 0)).tolist():
        out[keep[j]] = (0, 0, 0, None)
    for j in np.flatnonzero(bad).tolist():
        out[keep[j]] = None
    if len(rs) == 0:
        return out
    # runs of each layer are contiguous, in layer order
    lstart = np.flatnonzero(np.r_[True, rsid[1:] != rsid[:-1]])
    lid = rsid[lstart]                               # the strings with pixels
    x0 = cs[lstart]
    lend = np.r_[lstart[1:], len(rs)] - 1
    x1 = ce_[lend] + 1
    y0 = np.minimum.reduceat(ys, lstart)
    y1 = np.maximum.reduceat(ye, lstart) + 1
    bw, bh = x1 - x0, y1 - y0
    size = bw * bh
    base = np.cumsum(size) - size
    # split runs into column pieces
    ncol = ce_ - cs + 1
    rid = np.repeat(np.arange(len(rs)), ncol)
    col = cs[rid] + (np.arange(len(rid)) - np.repeat(np.cumsum(ncol) - ncol, ncol))
    py0 = np.where(col == cs[rid], rs[rid] % h, 0)
    py1 = np.where(col == ce_[rid], (re_[rid] - 1) % h + 1, h)
    li = np.repeat(np.arange(len(lstart)), np.diff(np.r_[lstart, len(rs)]))[rid]
    st = base[li] + (col - x0[li]) * bh[li] + (py0 - y0[li])
    en = st + (py1 - py0)
    seg = np.empty(2 * len(st) + 1, np.int64)
    seg[0] = st[0]
    seg[2:-1:2] = st[1:] - en[:-1]
    seg[1:-1:2] = py1 - py0
    seg[-1] = int(size.sum()) - en[-1]
    pat = np.zeros(len(seg), np.uint8)
    pat[1::2] = 1
    flat = np.repeat(pat, seg).view(np.bool_)
    keep, area = keep.tolist(), area.tolist()
    for j, b, n, cw, ch, y, x in zip(lid.tolist(), base.tolist(), size.tolist(), bw.tolist(), bh.tolist(),
                                     y0.tolist(), x0.tolist()):
        out[keep[j]] = (area[j], y, x, flat[b:b + n].reshape(cw, ch))
    return out


class CocoDataset(SegmentationDataset):
    """COCO-style instance annotations (any json in that format), protocol ``coco-<K>``::

        root/annotations/instances_{split}2017.json    option ann_file (relative to root or absolute)
        root/{split}2017/<file_name>                   option image_dir; file_name may hold subfolders

    Categories are renumbered 0..K-1 in category-id order (names from the json; palette
    :func:`default_palette`). The class mask holds things only: pixels no annotation covers are
    255, and so are crowd regions. Polygons and (un)compressed RLE decode exactly as
    ``pycocotools.coco.COCO.annToMask`` does. Annotations are painted from the largest area to
    the smallest so small objects stay visible where masks overlap; crowd regions take part in
    that order as 255. Instances: one id per non-crowd annotation (1..N in json order).
    """

    kind = "coco"
    options = {
        "ann_file": "instances json, relative to root (default annotations/instances_<split>2017.json)",
        "image_dir": "folder that the json's file_name entries are relative to (default <split>2017)",
    }

    def __init__(self, root: str | Path, split: str = "train", ann_file: str | None = None, image_dir: str | None = None):
        root = Path(root)
        _require_dir(root, "dataset root")
        ann = _under(root, ann_file or f"annotations/instances_{split}2017.json")
        if not ann.is_file():
            hint = "" if ann_file else "; set the ann_file option for another layout"
            raise DataError(ann, f"COCO annotation file does not exist{hint}")
        img_dir = _under(root, image_dir or f"{split}2017")
        if not img_dir.is_dir():
            hint = "" if image_dir else "; set the image_dir option for another layout"
            raise DataError(img_dir, f"image folder does not exist{hint}")
        data = read_json(ann)
        self.ann_file, self.image_dir = ann, img_dir
        cats = self._categories(data)
        info = DatasetInfo(
            name=root.resolve().name,
            protocol=f"coco-{len(cats)}",
            classes=tuple(c[1] for c in cats),
            palette=default_palette(len(cats)),
        )
        super().__init__(root, split, info)
        self._cat_index = {cid: k for k, (cid, _) in enumerate(cats)}
        self._images = self._image_entries(data)
        self.names = [Path(im["file_name"]).stem for im in self._images]
        self._require_nonempty(ann)
        if len(set(self.names)) != len(self.names):
            dupes = sorted(n for n, c in Counter(self.names).items() if c > 1)[:5]
            raise DataError(ann, f"several images share the file stem(s) {dupes}; names must be unique")
        missing = [self.image_path(i) for i in range(len(self)) if not self.image_path(i).is_file()]
        if missing:
            more = f" ({len(missing)} of {len(self)} listed images are missing)" if len(missing) > 1 else ""
            raise DataError(missing[0], f"image listed in {ann} does not exist{more}")
        self._anns = self._group_annotations(data)
        self._last: tuple[int, np.ndarray, np.ndarray] | None = None

    # -- json validation -----------------------------------------------------------------------
    def _categories(self, data) -> list[tuple[int, str]]:
        if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
            raise DataError(self.ann_file, "not a COCO instances json: needs lists 'images', 'annotations' and 'categories'")
        cats = []
        for c in data["categories"]:
            if not isinstance(c, dict) or not isinstance(c.get("id"), int) or "name" not in c:
                raise DataError(self.ann_file, f"category entry {c!r} needs an integer 'id' and a 'name'")
            cats.append((c["id"], str(c["name"])))
        cats.sort()
        ids = [c[0] for c in cats]
        if len(set(ids)) != len(ids):
            raise DataError(self.ann_file, "two categories share an id")
        if not cats:
            raise DataError(self.ann_file, "the json lists no categories")
        if len(cats) > IGNORE_INDEX:
            raise DataError(self.ann_file, f"{len(cats)} categories; at most {IGNORE_INDEX} fit in uint8 masks beside the ignore label")
        return cats

    def _image_entries(self, data) -> list[dict]:
        out, seen = [], set()
        for im in data["images"]:
            if not isinstance(im, dict) or not all(k in im for k in ("id", "file_name", "height", "width")):
                raise DataError(self.ann_file, f"image entry {str(im)[:120]} needs 'id', 'file_name', 'height' and 'width'")
            if not all(isinstance(im[k], int) and im[k] > 0 for k in ("height", "width")):
                raise DataError(self.ann_file, f"image {im['id']!r}: height and width must be positive integers")
            if im["id"] in seen:
                raise DataError(self.ann_file, f"image id {im['id']!r} is listed twice")
            seen.add(im["id"])
            out.append(im)
        return out

    def _group_annotations(self, data) -> dict:
        by_image: dict = {im["id"]: [] for im in self._images}
        for a in data["annotations"]:
            if not isinstance(a, dict) or "image_id" not in a or "category_id" not in a:
                raise DataError(self.ann_file, f"annotation {str(a)[:120]} needs 'image_id' and 'category_id'")
            aid = a.get("id", "?")
            if a["image_id"] not in by_image:
                raise DataError(self.ann_file, f"annotation {aid} refers to image_id {a['image_id']!r}, which 'images' does not list")
            if a["category_id"] not in self._cat_index:
                raise DataError(self.ann_file, f"annotation {aid} has category_id {a['category_id']!r}, which 'categories' does not list")
            if "segmentation" not in a:
                raise DataError(self.ann_file, f"annotation {aid} has no 'segmentation' (polygons or RLE are needed for masks)")
            by_image[a["image_id"]].append(a)
        return by_image

    # -- hooks ---------------------------------------------------------------------------------
    def image_path(self, i: int) -> Path:
        return self.image_dir / self._images[i]["file_name"]

    def mask_path(self, i: int) -> Path | None:
        """The json: the masks are painted from it."""
        return self.ann_file

    def instance_path(self, i: int) -> Path | None:
        return self.ann_file

    def files(self) -> list[Path]:
        return [self.image_path(i) for i in range(len(self))] + self.extra_files()

    def extra_files(self) -> list[Path]:
        return [self.ann_file]

    def _size_mismatch(self, i: int, mask_hw: tuple[int, int], image_hw: tuple[int, int]) -> DataError:
        im = self._images[i]
        return DataError(
            self.image_path(i),
            f"image is {image_hw[1]}x{image_hw[0]} but {self.ann_file.name} lists it (id {im['id']}) as {mask_hw[1]}x{mask_hw[0]}",
        )

    def _rle_and_area(self, ann: dict, h: int, w: int):
        """(compressed RLE, pixel area) built the way ``COCO.annToRLE`` does; None if no polygon."""
        from pycocotools import mask as mask_utils  # deferred: only this reader needs it

        segm = ann["segmentation"]
        try:
            if isinstance(segm, list):
                if not segm:
                    return None
                rle = mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
            elif isinstance(segm, dict) and isinstance(segm.get("counts"), list):
                rle = mask_utils.frPyObjects(segm, h, w)
            elif isinstance(segm, dict) and "counts" in segm and "size" in segm:
                rle = segm
            else:
                raise ValueError(f"unsupported segmentation {str(segm)[:80]}")
            if [int(v) for v in rle["size"]] != [h, w]:
                raise ValueError(f"RLE size {rle['size']} differs from the image's {h}x{w} (height x width)")
            area = int(mask_utils.area(rle))
        except Exception as exc:  # pycocotools raises bare Exception on unsupported input
            raise DataError(self.ann_file, f"annotation {ann.get('id', '?')}: cannot decode segmentation ({exc})") from None
        return rle, area

    def _layers(self, i: int) -> tuple[int, int, list]:
        """(H, W, layers) of image ``i``: its annotations in painting order (largest pixel area first,
        json order among equals) as ``(id, class, y0, x0, crop_t, area)``; ``id`` 0 and class 255
        for crowd regions; ``crop_t`` bool [w, h] is the annotation's tight box *transposed*
        (RLE runs go down the columns). Each RLE is decoded once, into its box only
        (:func:`_rle_crops`); one that is not a well-formed RLE of the image's size is decoded by
        pycocotools, as before."""
        from pycocotools import mask as mask_utils

        im = self._images[i]
        h, w = int(im["height"]), int(im["width"])
        hw = [h, w]
        entries = []  # [area or None, order, rle, iid, class]
        next_id = 1
        for order, ann in enumerate(self._anns[im["id"]]):
            crowd = bool(ann.get("iscrowd", 0))
            iid = 0
            if not crowd:  # ids follow json order whether or not the mask is empty
                iid, next_id = next_id, next_id + 1
            segm = ann["segmentation"]
            if (type(segm) is dict and type(segm.get("counts")) in (str, bytes) and segm.get("size") == hw
                    and type(segm["size"][0]) is int and type(segm["size"][1]) is int):
                rle, area = segm, None  # compressed RLE of the right size: the decoder gives its area
            else:  # polygons, uncompressed RLE, anything odd: pycocotools, and its errors
                decoded = self._rle_and_area(ann, h, w)
                if decoded is None:
                    continue
                rle, area = decoded
            entries.append([area, order, rle, iid, IGNORE_INDEX if crowd else self._cat_index[ann["category_id"]]])
        counts = [e[2]["counts"] for e in entries]
        crops = _rle_crops([c.encode("utf-8") if type(c) is str else c for c in counts], h, w)
        for e, got in zip(entries, crops):
            if got is None or (e[0] is not None and got[0] != e[0]):  # not an RLE the decoder vouches for
                if e[0] is None:
                    try:
                        e[0] = int(mask_utils.area(e[2]))
                    except Exception as exc:  # pycocotools raises bare Exception on unsupported input
                        raise DataError(self.ann_file, f"annotation {self._anns[im['id']][e[1]].get('id', '?')}: "
                                                       f"cannot decode segmentation ({exc})") from None
                sel = mask_utils.decode(e[2]).astype(bool)
                x, y, bw, bh = cv2.boundingRect(sel.view(np.uint8))
                got = (int(np.count_nonzero(sel)), y, x, sel[y:y + bh, x:x + bw].T) if bw else (0, 0, 0, None)
            elif e[0] is None:
                e[0] = got[0]
            e.append(got)
        entries.sort(key=lambda e: (-e[0], e[1]))
        return h, w, [(iid, cls, got[1], got[2], got[3], got[0]) for _, _, _, iid, cls, got in entries if got[0]]

    @staticmethod
    def _paint_ids_t(h: int, w: int, layers: list) -> np.ndarray:
        """The instance map of painted ``layers``, transposed: [W, H] (crowd regions paint 0), in the
        smallest unsigned type that holds the ids (painting and reading it back is memory-bound)."""
        top = max((layer[0] for layer in layers), default=0)
        inst_t = np.zeros((w, h), dtype=np.uint8 if top < 256 else np.uint16 if top < 65536 else np.int32)
        for iid, _, y0, x0, crop_t, _ in layers:
            bw, bh = crop_t.shape
            np.copyto(inst_t[x0:x0 + bw, y0:y0 + bh], iid, where=crop_t)
        return inst_t

    def _paint(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        h, w, layers = self._layers(i)
        inst = self._paint_ids_t(h, w, layers).T.astype(np.int32, order="C")
        # every pixel's class is that of the last annotation painted over it: a look-up of its id
        # (crowd regions and pixels no annotation covers have id 0 and class 255)
        table = np.full(len(self._anns[self._images[i]["id"]]) + 1, IGNORE_INDEX, np.uint8)
        for iid, cls, *_ in layers:
            if iid:
                table[iid] = cls
        return table[inst], inst

    def click_instances(self, i: int, min_area: int) -> ClickInstances | None:
        """Each non-crowd annotation's visible pixels (those no later-painted annotation covers).

        Only annotations whose box meets another's are painted, and only those whose box meets a
        later-painted one's are read back (inside their own box); the others are visible whole.
        """
        h, w, layers = self._layers(i)
        image_hw = self.image_size(i)
        if (h, w) != image_hw:
            raise self._size_mismatch(i, (h, w), image_hw)
        min_area = max(int(min_area), 1)
        n = len(layers)
        if 1 < n <= _PAIRWISE_BOXES:
            x0, y0 = np.array([layer[3] for layer in layers]), np.array([layer[2] for layer in layers])
            x1 = x0 + np.array([layer[4].shape[0] for layer in layers])
            y1 = y0 + np.array([layer[4].shape[1] for layer in layers])
            meets = ((x0[:, None] < x1[None]) & (x0[None] < x1[:, None]) &
                     (y0[:, None] < y1[None]) & (y0[None] < y1[:, None]))
            np.fill_diagonal(meets, False)
            covered = np.triu(meets).any(axis=1).tolist()  # a later annotation may hide some pixels
            inst_t = self._paint_ids_t(h, w, [layer for layer, m in zip(layers, meets.any(axis=1).tolist()) if m])
        else:
            covered = [n > 1] * n
            inst_t = self._paint_ids_t(h, w, layers) if n > 1 else None
        found, labelled = [], 0
        for (iid, cls, y0, x0, crop_t, area), hidden in zip(layers, covered):
            if not iid:  # crowd
                continue
            if not hidden:
                labelled += area
                if area >= min_area:
                    bw, bh = crop_t.shape
                    found.append((iid, cls, (y0, x0, y0 + bh, x0 + bw), area, np.ascontiguousarray(crop_t.T)))
                continue
            bw, bh = crop_t.shape
            vis = inst_t[x0:x0 + bw, y0:y0 + bh] == iid
            seen = cv2.countNonZero(vis.view(np.uint8))
            labelled += seen
            if seen < min_area:
                continue
            if seen < area:  # partly covered: the box may shrink
                y, x, bh, bw = cv2.boundingRect(vis.view(np.uint8))  # transposed: x is the row
                vis, y0, x0 = vis[x:x + bw, y:y + bh], y0 + y, x0 + x
            found.append((iid, cls, (y0, x0, y0 + bh, x0 + bw), seen, np.ascontiguousarray(vis.T)))
        found.sort(key=lambda f: f[0])  # instance-id order, as find_instances gives
        return ClickInstances(self.names[i], h, w, labelled, Instances.from_list([f[1:] for f in found]))

    def _decode_mask(self, i: int) -> np.ndarray:
        mask, inst = self._paint(i)
        self._last = (i, mask, inst)  # load() asks for the instances next: paint once
        return mask

    def _decode_instances(self, i: int, mask: np.ndarray) -> np.ndarray | None:
        last = self._last
        if last is not None and last[0] == i:
            return last[2]
        return self._paint(i)[1]


def _under(root: Path, p: str | Path) -> Path:
    p = Path(p)
    return p if p.is_absolute() else root / p


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
