"""Human clicks in and out: annotation-tool formats ⇄ the points artefact.

:func:`import_clicks` reads the clicks of an annotation tool, checks every one against a dataset
split (image present, click inside it, class known) and writes the same artefact files as
make-points (``points.json`` with ``source: "human"``, ``points.csv``, ``stats.json``), so
:func:`pointparse.points.load_points` and training read it unchanged. :func:`export_points`
writes any points artefact (simulated or human) back out in one of the same formats, so clicks
can be reviewed or corrected in a tool and imported again; ``import(export(x)) == x``.

Formats (registry :data:`CLICK_FORMATS`):

=================  ==========================================================================
``label-studio``   Label Studio JSON export, ``KeyPointLabels`` results (percent coordinates)
``cvat``           CVAT for images 1.1 XML, ``<points>`` shapes (pixel coordinates)
``coco``           COCO json with ``point_coords``/``point_labels`` (detectron2 PointSup)
``wtp``            "What's the Point" (Bearman et al., ECCV 2016) click json
                   ``{image: [{"x", "y", "cls", "rank"}]}``
``text``           one line per image: ``name cls,y,x cls,y,x ...``
``sparse-png``     a folder of ``<name>.png`` label maps, the class at each click, 255 elsewhere
=================  ==========================================================================

Coordinates. The artefact stores integer pixel indices ``(x, y)`` = (column, row); pixel
``(x, y)`` covers the continuous square ``[x, x+1) × [y, y+1)`` whose centre is
``(x + 0.5, y + 0.5)``. Continuous tool coordinates are turned into the index of the pixel that
contains them (``floor``); a coordinate lying exactly on the far image edge (``x == width``, as a
tool allows at 100 %) belongs to the last pixel. Exports of continuous formats write pixel
centres, which floor back to the same index, so round trips are exact.

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

import dataclasses
import hashlib
import math
import re
import urllib.parse
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml
from tqdm import tqdm

from . import IGNORE_INDEX
from .datasets import DatasetInfo, SegmentationDataset
from .errors import DataError, unknown_choice
from .io import (atomic_file, atomic_out_dir, check_out_dir, read_json, read_label, safe_name, write_json,
                 write_label_png)
from .points import PointSet, load_points, write_points_artefact

IMPORT_STAGE = "import-clicks"
#: bumped whenever the import-clicks output would change for the same inputs
IMPORT_STAGE_VERSION = 1
#: offending entries shown in one error message (the count of the rest follows)
MAX_LISTED = 20
SOURCE = "human"


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
            if len(labels) != len(coords):
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
                if len(p) != 2:
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


# -- writers --------------------------------------------------------------------------------------


@dataclass
class ExportView:
    """What every writer needs from a points artefact (clicks in artefact order)."""

    info: DatasetInfo
    names: list[str]
    file_names: dict[str, str]
    sizes: dict[str, tuple[int, int]]
    points: PointSet
    doc: dict

    def clicks(self, name: str) -> list[tuple[int, int, int]]:
        """``[(x, y, class id), ...]`` of one image."""
        xy, cls = self.points.points(name)
        return [(int(a), int(b), int(c)) for (a, b), c in zip(xy, cls)]


def write_label_studio(view: ExportView, out: Path) -> None:
    """One task per image (``data.image`` = the image's file name relative to the dataset root),
    one annotation holding a ``keypointlabels`` result per click at the pixel centre in percent."""
    tasks = []
    for t, name in enumerate(view.names, 1):
        h, w = view.sizes[name]
        result = [{
            "id": f"{t}-{k}",
            "type": "keypointlabels",
            "from_name": "label",
            "to_name": "image",
            "original_width": w,
            "original_height": h,
            "image_rotation": 0,
            "value": {"x": 100.0 * (x + 0.5) / w, "y": 100.0 * (y + 0.5) / h, "width": 1.0,
                      "keypointlabels": [view.info.classes[c]]},
        } for k, (x, y, c) in enumerate(view.clicks(name))]
        tasks.append({"id": t, "data": {"image": view.file_names[name]},
                      "annotations": [{"id": t, "result": result, "was_cancelled": False}],
                      "predictions": []})
    write_json(out, tasks)


def write_cvat(view: ExportView, out: Path) -> None:
    """CVAT for images 1.1 XML, one ``<points>`` shape per click at the pixel centre, the
    dataset's classes listed as the task's labels."""
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    task = ET.SubElement(ET.SubElement(root, "meta"), "task")
    ET.SubElement(task, "name").text = view.info.name
    ET.SubElement(task, "size").text = str(len(view.names))
    ET.SubElement(task, "mode").text = "annotation"
    labels = ET.SubElement(task, "labels")
    for cname, rgb in zip(view.info.classes, view.info.palette):
        lab = ET.SubElement(labels, "label")
        ET.SubElement(lab, "name").text = cname
        ET.SubElement(lab, "color").text = "#{:02x}{:02x}{:02x}".format(*rgb)
        ET.SubElement(lab, "type").text = "points"
        ET.SubElement(lab, "attributes")
    for i, name in enumerate(view.names):
        h, w = view.sizes[name]
        im = ET.SubElement(root, "image", id=str(i), name=view.file_names[name], width=str(w), height=str(h))
        for x, y, c in view.clicks(name):
            ET.SubElement(im, "points", label=view.info.classes[c], source="manual", occluded="0",
                          points=f"{x + 0.5:.2f},{y + 0.5:.2f}", z_order="0")
    ET.indent(root)
    with atomic_file(out) as tmp:
        ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=True)


def write_coco(view: ExportView, out: Path) -> None:
    """The artefact's ``points.json`` itself: it already is PointSup COCO (provenance kept)."""
    write_json(out, view.doc)


def write_wtp(view: ExportView, out: Path) -> None:
    """``{name: [{"x", "y", "cls", "rank"}]}`` with ``cls`` the 0-based dataset class id and
    ``rank`` the click's 1-based position in its image; images without clicks get ``[]``."""
    doc = {name: [{"x": x, "y": y, "cls": c, "rank": k + 1} for k, (x, y, c) in enumerate(view.clicks(name))]
           for name in view.names}
    write_json(out, doc)


def write_text(view: ExportView, out: Path) -> None:
    """``name cls,y,x ...`` per image (0-based class ids), in artefact order."""
    lines = [" ".join([name] + [f"{c},{y},{x}" for x, y, c in view.clicks(name)]) for name in view.names]
    with atomic_file(out) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_sparse_png(view: ExportView, out: Path) -> None:
    """A folder of ``<name>.png`` palette PNGs: the class at each click, 255 elsewhere."""
    palette = np.asarray(view.info.palette, np.uint8)
    names = [safe_name(name, view.points.path) for name in view.names]  # names come from a file: untrusted
    with atomic_out_dir(out, "export-points") as tmp:
        for name in names:
            write_label_png(tmp / f"{name}.png", view.points.label_map(name), palette=palette)


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
    if name not in CLICK_FORMATS:
        raise unknown_choice("click format", name, CLICK_FORMATS)
    return CLICK_FORMATS[name]


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


def click_file_fingerprint(path: str | Path) -> str:
    """sha256 of a click file's bytes (a folder: of its files' relative names and bytes)."""
    path = Path(path)
    h = hashlib.sha256()
    if not path.exists():
        raise DataError(path, "click file does not exist")
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    if not files:
        raise DataError(path, "folder is empty")
    for f in files:
        h.update((f.relative_to(path).as_posix() if path.is_dir() else "").encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def run_import_clicks(path: str | Path, fmt: str, spec, cache, class_map: dict | str | Path | None = None,
                      force: bool = False, content_hash: bool = False, progress: bool = True):
    """The ``import-clicks`` stage: key = format + class map contents + click file bytes + dataset.

    ``spec`` is a :class:`pointparse.stages.DatasetSpec`, ``cache`` a
    :class:`pointparse.cache.StageCache`. Returns the :class:`~pointparse.cache.StageResult`;
    the artefact folder is accepted wherever a make-points folder is (``--points``).
    """
    from .stages import dataset_fingerprint, open_spec

    get_format(fmt)
    path = Path(path)
    if isinstance(class_map, (str, Path)):
        class_map = load_class_map(class_map)
    class_map = {str(k): v for k, v in class_map.items()} if class_map else None
    ds = open_spec(spec, cache, progress)
    params = {"format": fmt, "class_map": class_map or None}
    inputs = {"clicks": click_file_fingerprint(path), "dataset": dataset_fingerprint(spec, ds, content_hash)}

    def build(tmp: Path) -> dict:
        stats = import_clicks(path, fmt, ds, class_map, tmp, progress=progress)
        return {"summary": {k: stats[k] for k in ("num_images", "num_points")},
                "dataset_spec": dataclasses.asdict(spec), "click_file": str(path)}

    return cache.run(IMPORT_STAGE, IMPORT_STAGE_VERSION, params, inputs, build, force=force)


# -- export ---------------------------------------------------------------------------------------


def export_view(points_dir: str | Path) -> ExportView:
    """Load a points artefact (folder or ``points.json``) for the writers."""
    ps = load_points(points_dir)
    doc = read_json(ps.path)
    file_names = {}
    for im in doc["images"]:
        name = str(im["name"]) if "name" in im else Path(str(im["file_name"])).stem
        file_names[name] = str(im.get("file_name") or name)
    return ExportView(ps.info, list(ps.names), file_names, dict(ps.image_sizes), ps, doc)


def export_points(points_dir: str | Path, fmt: str, out_path: str | Path) -> Path:
    """Write the clicks of a points artefact in format ``fmt`` to ``out_path`` (a folder for
    ``sparse-png``, a file otherwise; written atomically). Class ids become the dataset's class
    names in the name-based formats and stay 0-based ids in ``wtp``/``text``/``sparse-png``."""
    spec = get_format(fmt)
    out_path = Path(out_path)
    if not spec.folder and out_path.is_dir():
        raise DataError(out_path, f"format {fmt!r} writes a file, but this is a folder")
    if spec.folder:
        # the folder is replaced as a whole (no stale maps), so only a new, empty or earlier export
        check_out_dir(out_path, "export-points")
    spec.write(export_view(points_dir), out_path)
    return out_path
