"""Import: check the clicks a reader found against a dataset split and write the points artefact.

Images. A tool's image reference (a file name, a relative path, a URL, a Label Studio upload
name ``<8 hex>-<file>``) is matched to the dataset split by its file stem. Images of the split
that the file does not mention get no clicks (``stats.json`` lists them); training accepts that.

Classes. A click label (a tool's class name, or an integer id in the integer formats) resolves
to a dataset class, in this order: the class map (``{tool label: dataset class name or id}``,
``null`` drops the click), then an exact dataset class name, then (integer labels only) a
0-based dataset class id. Every label that resolves to nothing is listed in one error.

Every other problem (malformed entry, image not in the split, click outside its image, an image
size in the file that differs from the dataset's) is collected and reported in one
:class:`~pointparse.errors.DataError` naming the file and listing the offending entries.
"""

from __future__ import annotations

import re
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from .. import IGNORE_INDEX
from ..datasets import DatasetInfo, SegmentationDataset
from ..errors import DataError
from ..points import write_points_artefact
from .formats import get_format
from .readers import RawClick

#: offending entries shown in one error message (the count of the rest follows)
MAX_LISTED = 20
SOURCE = "human"


# -- class names ----------------------------------------------------------------------------------


def load_class_map(path: str | Path) -> dict[str, str | int | None]:
    """A class-map file (YAML or JSON): ``{tool label: dataset class name | id | null}``.

    Keys are taken as text (``15: person`` maps the integer label 15); ``null`` drops the
    clicks of that label.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "class map file does not exist")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DataError(path, f"class map is not valid YAML/JSON ({exc.__class__.__name__})") from None
    if not isinstance(doc, dict) or not doc:
        raise DataError(path, "class map must be a mapping {tool label: dataset class}")
    out: dict[str, str | int | None] = {}
    for k, v in doc.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, (str, int))):
            raise DataError(path, f"class map entry {k!r}: value must be a class name, an id or null, got {v!r}")
        out[str(k)] = v
    return out


def resolve_class_map(class_map: dict | None, info: DatasetInfo, source: str | Path) -> dict[str, int | None]:
    """Class map values → dataset class ids (``None`` = drop); a value that is not a dataset class
    is an error naming ``source`` and listing the classes."""
    if not class_map:
        return {}
    index = {n: c for c, n in enumerate(info.classes)}
    out, bad = {}, []
    for k, v in class_map.items():
        if v is None:
            out[str(k)] = None
        elif isinstance(v, str) and v in index:
            out[str(k)] = index[v]
        elif isinstance(v, int) and not isinstance(v, bool) and 0 <= v < info.num_classes:
            out[str(k)] = v
        else:
            bad.append(f"{k!r} -> {v!r}")
    if bad:
        raise DataError(source, f"class map target(s) {', '.join(bad)} are not classes of {info.name} "
                                f"({info.protocol}); classes: {', '.join(info.classes)}")
    return out


def resolve_labels(clicks: list[RawClick], info: DatasetInfo, mapping: dict[str, int | None],
                   path: Path) -> np.ndarray:
    """Class id per click (−1 = dropped by the class map); every unresolvable label in one error."""
    index = {n: c for c, n in enumerate(info.classes)}
    out = np.empty(len(clicks), np.int64)
    unmapped: Counter = Counter()
    for k, click in enumerate(clicks):
        key = str(click.label)  # class-map keys are text: 15 and '15' are one label
        if key in mapping:
            cid = mapping[key]
            out[k] = -1 if cid is None else cid
        elif isinstance(click.label, str) and click.label in index:
            out[k] = index[click.label]
        elif isinstance(click.label, int) and 0 <= click.label < info.num_classes:
            out[k] = click.label
        else:
            unmapped[click.label] += 1
    if unmapped:
        listed = ", ".join(f"{lab!r} ({n} click{'s' if n > 1 else ''})" for lab, n in
                           sorted(unmapped.items(), key=lambda kv: str(kv[0])))
        raise DataError(path, f"label(s) {listed} are neither classes of {info.name} ({info.protocol}) nor in the "
                              f"class map; classes: {', '.join(info.classes)}. Map tool labels to classes with a "
                              "class map file (--class-map, YAML: 'tool label: class name', null drops a label)")
    return out


# -- matching images ------------------------------------------------------------------------------

_LS_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-(.+)$")


def _candidate_names(ref: str) -> list[str]:
    """Names an image reference may stand for, most specific first."""
    ref = str(ref)
    parsed = urllib.parse.urlparse(ref)
    query = urllib.parse.parse_qs(parsed.query)
    path = query["d"][0] if "d" in query else urllib.parse.unquote(parsed.path) if parsed.scheme else ref
    path = path.replace("\\", "/")
    base = path.rsplit("/", 1)[-1]
    stem = base.rsplit(".", 1)[0] if "." in base else base
    out = [ref, base, stem]
    m = _LS_UPLOAD_PREFIX.match(stem)
    if m:  # Label Studio prefixes uploaded files with 8 hex digits and a dash
        out.append(m.group(1))
    return out


def match_images(refs: list[str], dataset: SegmentationDataset) -> dict[str, int | None]:
    """Dataset index of each distinct image reference (``None`` = not in the split)."""
    index = {n: i for i, n in enumerate(dataset.names)}
    out: dict[str, int | None] = {}
    for ref in refs:
        if ref in out:
            continue
        out[ref] = next((index[c] for c in _candidate_names(ref) if c in index), None)
    return out


# -- import ---------------------------------------------------------------------------------------


@dataclass
class _ImageClicks:
    """Duck-types :func:`pointparse.points.points_stats`'s per-image record."""

    name: str
    height: int
    width: int
    xy: np.ndarray
    classes: np.ndarray
    labelled_pixels: int


def _listing(problems: list[str]) -> str:
    shown = problems[:MAX_LISTED]
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return "\n  " + "\n  ".join(shown) + more


def _labelled_pixels(dataset: SegmentationDataset, i: int, h: int, w: int) -> int:
    """Mask pixels that are not 255, as make-points counts them; the image area without masks."""
    if not dataset.has_dense_labels:
        return h * w
    mask = dataset.load_mask(i)
    return int(mask.size - np.count_nonzero(mask == IGNORE_INDEX))


def import_clicks(path: str | Path, fmt: str, dataset: SegmentationDataset,
                  class_map: dict | str | Path | None = None, out_dir: str | Path = ".",
                  progress: bool = False) -> dict:
    """Read human clicks in format ``fmt``, validate them against ``dataset`` and write the artefact.

    ``class_map`` is a mapping (or the path of a YAML/JSON file) from tool labels to dataset
    classes (module docstring). ``out_dir`` must exist (the stage cache passes a temporary
    folder). Writes ``points.json`` (every image of the split, in dataset order; annotations in
    file order with ``source: "human"``; ``bbox`` is the clicked pixel ``[x, y, 1, 1]`` since a
    click has no extent, and there is no ``instance_area``), ``points.csv`` and ``stats.json``
    (``labelled_pixels`` counts non-255 mask pixels, or every image pixel when the split has no
    masks). Returns the stats dict. Any invalid click raises one :class:`DataError` naming
    ``path`` and listing the offending entries; nothing is written then.
    """
    path = Path(path)
    spec = get_format(fmt)
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise DataError(out_dir, "output folder does not exist")
    if not path.exists():
        raise DataError(path, "click file does not exist")
    if not spec.folder and path.is_dir():
        raise DataError(path, f"format {fmt!r} reads a file, not a folder")
    info = dataset.info
    map_source: str | Path = path
    if isinstance(class_map, (str, Path)):
        map_source = Path(class_map)
        class_map = load_class_map(class_map)
    class_map = {str(k): v for k, v in class_map.items()} if class_map else None
    mapping = resolve_class_map(class_map, info, map_source)

    read = spec.read(path)
    classes = resolve_labels(read.clicks, info, mapping, path)
    problems = list(read.problems)
    matched = match_images([c.image for c in read.clicks], dataset)
    sizes: dict[int, tuple[int, int]] = {}

    def size_of(i: int) -> tuple[int, int]:
        if i not in sizes:
            sizes[i] = dataset.image_size(i)
        return sizes[i]

    per_image: dict[int, list[tuple[int, int, int]]] = {}
    for click, cid in zip(read.clicks, classes):
        i = matched[click.image]
        if i is None:
            problems.append(f"{click.where}: image {click.image!r} is not in {info.name} split {dataset.split!r}")
            continue
        h, w = size_of(i)
        name = dataset.names[i]
        if click.size is not None and tuple(click.size) != (h, w):
            problems.append(f"{click.where}: the file gives image {name!r} as {click.size[1]}x{click.size[0]} "
                            f"but the dataset image is {w}x{h}")
            continue
        if not (0 <= click.x < w and 0 <= click.y < h):
            written = f" (written {click.shown})" if click.shown else ""
            problems.append(f"{click.where}: click at pixel x={click.x}, y={click.y}{written} lies outside "
                            f"image {name!r} ({w}x{h})")
            continue
        if cid >= 0:
            per_image.setdefault(i, []).append((click.x, click.y, int(cid)))
    if problems:
        raise DataError(path, f"{len(problems)} invalid click entr{'y' if len(problems) == 1 else 'ies'} "
                              f"({fmt}):{_listing(problems)}")
    if not per_image:
        dropped = f"; the class map drops all {len(read.clicks)} read" if read.clicks else ""
        raise DataError(path, f"no clicks to import ({fmt}){dropped}: nothing to train on for {info.name} split "
                              f"{dataset.split!r}")

    images = []
    for i in tqdm(range(len(dataset)), desc="import-clicks", unit="img", disable=not progress):
        h, w = size_of(i)
        arr = np.asarray(per_image.get(i, []), np.int64).reshape(-1, 3)
        images.append(_ImageClicks(dataset.names[i], h, w, arr[:, :2].copy(), arr[:, 2].copy(),
                                   _labelled_pixels(dataset, i, h, w)))
    meta = {
        "split": getattr(dataset, "split", None),
        "source": SOURCE,
        "format": fmt,
        "class_map": class_map or None,
    }
    return write_points_artefact(out_dir, dataset, images, meta, source=SOURCE)
