"""Click file readers: one per format, each giving the clicks as written plus the entries it
could not read (checking them against a dataset is :mod:`pointparse.clicks.importer`'s job).

Coordinates. The artefact stores integer pixel indices ``(x, y)`` = (column, row); pixel
``(x, y)`` covers the continuous square ``[x, x+1) × [y, y+1)`` whose centre is
``(x + 0.5, y + 0.5)``. Continuous tool coordinates are turned into the index of the pixel that
contains them (``floor``, :func:`pixel_index`); a coordinate lying exactly on the far image edge
(``x == width``, as a tool allows at 100 %) belongs to the last pixel. Exports of continuous
formats write pixel centres, which floor back to the same index, so round trips are exact.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import IGNORE_INDEX
from ..errors import DataError
from ..images import read_label
from ..io import read_json

# -- raw clicks as read from a file ---------------------------------------------------------------


@dataclass
class RawClick:
    """One click as a reader found it, before it is checked against the dataset.

    ``image``: the tool's image reference; ``x``/``y``: pixel indices (column, row), already
    converted from the tool's coordinates; ``label``: tool class name (``str``) or id (``int``);
    ``where``: the entry's position in the file, for error messages; ``size``: ``(height,
    width)`` the file says the image has, when it says; ``shown``: the coordinates as written.
    """

    image: str
    x: int
    y: int
    label: str | int
    where: str
    size: tuple[int, int] | None = None
    shown: str = ""


@dataclass
class ReadResult:
    """A reader's output: the clicks, and the entries it could not read (one message each)."""

    clicks: list[RawClick]
    problems: list[str]


def pixel_index(v: Any, n: int | None = None) -> int:
    """Index of the pixel containing continuous coordinate ``v``; ``v == n`` (far edge) → ``n - 1``.

    Raises ``ValueError`` for a non-number or a non-finite value.
    """
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"coordinate {v!r} is not a number")
    if not math.isfinite(v):
        raise ValueError(f"coordinate {v!r} is not finite")
    i = math.floor(v)
    if n is not None and v == n:
        return int(n) - 1
    return int(i)


def _number(text: str) -> int | float:
    """A coordinate written as text (``"12"``, ``"12.50"``) → number; ``ValueError`` otherwise."""
    try:
        return int(text)
    except ValueError:
        return float(text)


# -- readers --------------------------------------------------------------------------------------


def _ls_image_ref(task: dict) -> str | None:
    data = task.get("data")
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("image"), str):
        return data["image"]
    strings = [v for v in data.values() if isinstance(v, str)]
    return strings[0] if len(strings) == 1 else None


def read_label_studio(path: Path) -> ReadResult:
    """Label Studio JSON export (``[task, ...]``), ``keypointlabels`` results of the annotations.

    Each result's ``value.x``/``value.y`` are percentages (0-100) of ``original_width`` /
    ``original_height`` measured from the image's top-left corner, so the pixel is
    ``floor(x / 100 * original_width)`` (100 % → the last pixel). The image is the task's
    ``data.image`` (or its only string field). Every annotation that is not ``was_cancelled``
    is read (the clicks of several annotators all count); ``predictions`` and results of other
    types (rectangles, polygons) are ignored; pre-1.0 exports' ``completions`` are read like
    ``annotations``. A result must carry exactly one label; rotated images
    (``image_rotation`` ≠ 0) are refused.
    """
    doc = read_json(path)
    tasks = doc if isinstance(doc, list) else [doc] if isinstance(doc, dict) and "data" in doc else None
    if tasks is None:
        raise DataError(path, "not a Label Studio JSON export: expected a list of tasks with 'data' and 'annotations'")
    clicks, problems = [], []
    for t, task in enumerate(tasks):
        if not isinstance(task, dict):
            problems.append(f"task #{t}: not an object")
            continue
        tid = task.get("id", f"#{t}")
        ref = _ls_image_ref(task)
        anns = task.get("annotations", task.get("completions", []))
        if not isinstance(anns, list):
            problems.append(f"task {tid}: 'annotations' is not a list")
            continue
        for a, ann in enumerate(anns):
            if not isinstance(ann, dict) or ann.get("was_cancelled"):
                continue
            for r, res in enumerate(ann.get("result") or []):
                if not isinstance(res, dict) or res.get("type") != "keypointlabels":
                    continue
                where = f"task {tid} annotation {a} result {r}"
                if ref is None:
                    problems.append(f"task {tid}: cannot tell which 'data' field is the image (expected data.image)")
                    break
                value = res.get("value") or {}
                if not isinstance(value, dict):
                    problems.append(f"{where}: 'value' must be an object with x, y and keypointlabels, "
                                    f"got {value!r:.60}")
                    continue
                labels = value.get("keypointlabels")
                try:
                    ow, oh = int(res["original_width"]), int(res["original_height"])
                    x_pct, y_pct = value["x"], value["y"]
                    if ow < 1 or oh < 1:
                        raise ValueError
                    x = pixel_index(x_pct / 100.0 * ow, ow)
                    y = pixel_index(y_pct / 100.0 * oh, oh)
                except (KeyError, TypeError, ValueError):
                    problems.append(f"{where}: needs value.x, value.y (percent) and original_width/original_height")
                    continue
                if res.get("image_rotation") not in (None, 0, 0.0):
                    problems.append(f"{where}: image_rotation {res['image_rotation']} is not supported")
                    continue
                if not isinstance(labels, list) or len(labels) != 1 or not isinstance(labels[0], str):
                    problems.append(f"{where}: needs exactly one label in value.keypointlabels, got {labels!r}")
                    continue
                clicks.append(RawClick(ref, x, y, labels[0], where, (oh, ow), f"({x_pct}%, {y_pct}%)"))
    return ReadResult(clicks, problems)


def read_cvat(path: Path) -> ReadResult:
    """CVAT for images 1.1 XML: ``<image name width height>`` holding ``<points label points>``.

    ``points`` is ``"x1,y1;x2,y2;..."`` in pixels with the origin at the image's top-left corner
    (a point inside pixel ``i`` has ``i <= x < i + 1``); each point is one click of the shape's
    label, at pixel ``floor(x)`` (``x == width`` → the last pixel). Other shapes (boxes,
    polygons, skeletons) are ignored. "CVAT for video" exports (tracks) are refused.
    """
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise DataError(path, f"not valid XML ({exc})") from None
    except OSError as exc:
        raise DataError(path, f"cannot read file ({exc.__class__.__name__})") from None
    if root.tag != "annotations":
        raise DataError(path, f"not a CVAT XML export: root element is <{root.tag}>, expected <annotations>")
    images = root.findall("image")
    if not images and root.find("track") is not None:
        raise DataError(path, "a 'CVAT for video' export (tracks); export the task as 'CVAT for images 1.1'")
    clicks, problems = [], []
    for k, image in enumerate(images):
        name = image.get("name")
        try:
            w, h = int(image.get("width")), int(image.get("height"))
        except (TypeError, ValueError):
            w = h = None
        if not name:
            problems.append(f"<image> #{k}: has no name attribute")
            continue
        size = (h, w) if h and w else None
        for s, shape in enumerate(image.findall("points")):
            label = shape.get("label")
            where = f"<image name={name!r}> <points> #{s}"
            if not label:
                problems.append(f"{where}: has no label")
                continue
            for pair in (shape.get("points") or "").split(";"):
                parts = pair.split(",")
                try:
                    if len(parts) != 2:
                        raise ValueError
                    xf, yf = float(parts[0]), float(parts[1])
                    x, y = pixel_index(xf, w), pixel_index(yf, h)
                except ValueError:
                    problems.append(f"{where}: points must be 'x,y;x,y;...', got {shape.get('points')!r}")
                    break
                clicks.append(RawClick(name, x, y, label, where, size, f"({parts[0]}, {parts[1]})"))
    return ReadResult(clicks, problems)


def read_coco(path: Path) -> ReadResult:
    """COCO json whose annotations carry ``point_coords`` [[x, y], ...] and ``point_labels``.

    The detectron2 PointSup layout (also what make-points writes): ``point_coords`` are pixel
    indices, x first (detectron2's mapper adds 0.5 to reach centres); float coordinates are
    floored. ``point_labels`` 1 marks a point on the instance, 0 a negative point, which is not
    a click and is skipped. The label is the category's ``name`` from ``categories`` (falling
    back to the integer ``category_id`` when the file has no categories). The image is the
    image entry's ``name`` or the stem of its ``file_name``; ``height``/``width`` are checked
    against the dataset.
    """
    doc = read_json(path)
    if not (isinstance(doc, dict) and isinstance(doc.get("images"), list) and isinstance(doc.get("annotations"), list)):
        raise DataError(path, "not a COCO json: expected an object with 'images' and 'annotations' lists")
    cats: dict[int, str] = {}
    for c in doc.get("categories") or []:
        try:
            cats[int(c["id"])] = str(c["name"])
        except (KeyError, TypeError, ValueError):
            raise DataError(path, "every category needs an integer 'id' and a 'name'") from None
    images: dict[int, tuple[str, tuple[int, int] | None]] = {}
    problems: list[str] = []
    for j, im in enumerate(doc["images"]):
        try:
            iid = int(im["id"])
            ref = str(im["name"]) if "name" in im else str(im["file_name"])
        except (KeyError, TypeError, ValueError):
            problems.append(f"images[{j}]: needs an integer 'id' and a 'file_name' (or 'name')")
            continue
        try:
            size = (int(im["height"]), int(im["width"]))
        except (KeyError, TypeError, ValueError):
            size = None
        images[iid] = (ref, size)
    clicks: list[RawClick] = []
    for j, ann in enumerate(doc["annotations"]):
        where = f"annotations[{j}]"
        try:
            iid, cid = int(ann["image_id"]), int(ann["category_id"])
            coords = ann["point_coords"]
            labels = ann.get("point_labels", [1] * len(coords))
            if not isinstance(coords, list) or not isinstance(labels, list) or len(labels) != len(coords):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            problems.append(f"{where}: needs 'image_id', 'category_id', 'point_coords' [[x, y], ...] "
                            "and as many 'point_labels'")
            continue
        if iid not in images:
            problems.append(f"{where}: refers to image id {iid}, which 'images' does not list")
            continue
        ref, size = images[iid]
        label: str | int = cats[cid] if cid in cats else cid
        if cats and cid not in cats:
            problems.append(f"{where}: category id {cid} is not in 'categories'")
            continue
        for p, lab in zip(coords, labels):
            if lab not in (0, 1):
                problems.append(f"{where}: point_labels must be 0 or 1, got {lab!r}")
                break
            if lab == 0:
                continue
            try:
                if not isinstance(p, (list, tuple)) or len(p) != 2:  # {"x": .., "y": ..} is no [x, y] either
                    raise ValueError
                x = pixel_index(p[0], size[1] if size else None)
                y = pixel_index(p[1], size[0] if size else None)
            except (TypeError, ValueError, IndexError):
                problems.append(f"{where}: point {p!r} is not [x, y]")
                break
            clicks.append(RawClick(ref, x, y, label, where, size, f"({p[0]}, {p[1]})"))
    return ReadResult(clicks, problems)


def read_wtp(path: Path) -> ReadResult:
    """"What's the Point" click json: ``{image name: [{"x", "y", "cls", "rank"}, ...]}``.

    As released by Bearman et al. for PASCAL VOC 2012 (``pascal2012_trainval_main.json``):
    ``x``/``y`` are integer pixel indices (the original code writes ``label[y, x] = cls``) and
    ``cls`` an integer class id in the dataset's own numbering — for VOC ``0`` = background,
    ``1..20`` the objects, which are the 0-based ids of a dataset whose first class is
    background; other numberings need a class map (keys are the ids as text, e.g. ``"15":
    person``). ``cls`` may also be a class name. ``rank`` (the click's order) is not used.
    """
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise DataError(path, "not a What's-the-Point click json: expected {image name: [{x, y, cls}, ...]}")
    clicks, problems = [], []
    for name, pts in doc.items():
        if not isinstance(pts, list):
            problems.append(f"{name!r}: expected a list of clicks, got {type(pts).__name__}")
            continue
        for k, p in enumerate(pts):
            where = f"{name!r}[{k}]"
            try:
                x, y, cls = pixel_index(p["x"]), pixel_index(p["y"]), p["cls"]
                if isinstance(cls, bool) or not isinstance(cls, (int, str)):
                    raise ValueError
            except (KeyError, TypeError, ValueError):
                problems.append(f"{where}: needs numeric 'x', 'y' and an integer (or name) 'cls', got {p!r}")
                continue
            clicks.append(RawClick(str(name), x, y, cls, where))
    return ReadResult(clicks, problems)


def read_text(path: Path) -> ReadResult:
    """One line per image: ``name cls,y,x cls,y,x ...`` (note: row ``y`` before column ``x``).

    ``name`` is an image name or file name (no spaces); ``cls`` an integer class id (or a class
    name without commas or spaces); ``y``/``x`` integer pixel indices (floats are floored).
    Blank lines and lines starting with ``#`` are skipped; a line with a name only lists an
    image without clicks.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot read as UTF-8 text ({exc.__class__.__name__})") from None
    clicks, problems = [], []
    for lineno, line in enumerate(lines, 1):
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        name = tokens[0]
        for tok in tokens[1:]:
            parts = tok.split(",")
            try:
                if len(parts) != 3 or not parts[0]:
                    raise ValueError
                cls: str | int = int(parts[0]) if re.fullmatch(r"\d+", parts[0]) else parts[0]
                y, x = pixel_index(_number(parts[1])), pixel_index(_number(parts[2]))
            except ValueError:
                problems.append(f"line {lineno}: expected cls,y,x, got {tok!r}")
                continue
            clicks.append(RawClick(name, x, y, cls, f"line {lineno}"))
    return ReadResult(clicks, problems)


def read_sparse_png(path: Path) -> ReadResult:
    """A folder of ``<name>.png`` single-channel label maps: each pixel other than 255 is a click.

    The pixel's value is its integer class id; clicks come in raster order (row by row). The
    map's size is checked against the dataset image.
    """
    if not path.is_dir():
        raise DataError(path, "sparse-png clicks are a folder of <name>.png label maps")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".png")
    if not files:
        raise DataError(path, "folder holds no .png label maps")
    clicks, problems = [], []
    for f in files:
        try:
            lab = read_label(f)
        except DataError as exc:
            problems.append(f"{f.name}: {exc.problem}")
            continue
        ys, xs = np.nonzero(lab != IGNORE_INDEX)
        for y, x in zip(ys.tolist(), xs.tolist()):
            clicks.append(RawClick(f.stem, x, y, int(lab[y, x]), f.name, lab.shape[:2]))
    return ReadResult(clicks, problems)
