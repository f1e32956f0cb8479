"""What a dataset's classes are: :class:`DatasetInfo`, the default palette, the YAML descriptors
of the fixed-class datasets and the classes file of a plain folder.

The descriptors are the repository's top-level ``datasets/*.yaml`` (installed as the package
``pointparse.descriptors``; not this package).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from .. import IGNORE_INDEX
from ..errors import DataError


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
        """The description a file holds (points.json, a checkpoint); ``ValueError`` when its palette
        does not give every class one colour (a short one would colour classes by a wrong index)."""
        info = cls(
            name=d["name"],
            protocol=d["protocol"],
            classes=tuple(d["classes"]),
            palette=tuple(tuple(int(v) for v in c) for c in d["palette"]),
            ignore_index=int(d.get("ignore_index", IGNORE_INDEX)),
        )
        if len(info.palette) != len(info.classes) or not all(len(c) == 3 and all(0 <= v <= 255 for v in c)
                                                             for c in info.palette):
            raise ValueError(f"palette has {len(info.palette)} colours for {len(info.classes)} classes "
                             "(one 'r, g, b' of 0..255 per class)")
        return info


def default_palette(n: int) -> tuple[tuple[int, int, int], ...]:
    """The PASCAL VOC bit-interleaved colour map, extended to ``n`` colours (``n <= 255``).

    Class 0 gets VOC's black like any class; ignore (255) is drawn in the map's own entry 255,
    (224, 224, 192) (:data:`pointparse.images.IGNORE_COLOUR`), which the map gives no other index,
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
        p = Path(__file__).resolve().parents[2] / "datasets" / f"{name}.yaml"  # <repo>/datasets/
    return p


def load_descriptor(name: str) -> dict:
    """The parsed descriptor ``datasets/<name>.yaml``."""
    p = descriptor_path(name)
    if not p.exists():
        raise DataError(p, f"dataset descriptor {name!r} is not installed")
    with open(p, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def read_text(path: Path, what: str) -> list[str]:
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
    for lineno, raw in enumerate(read_text(path, "classes file (one class name per line, or 'id name [r:g:b]')"), 1):
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
