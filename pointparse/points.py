"""The points artefact: the clicks of one dataset split, simulated or human, as training reads them.

make-points (:mod:`pointparse.simulate`) and import-clicks (:mod:`pointparse.clicks`) both write
it with :func:`write_points_artefact`; :func:`load_points` reads and checks it (:class:`PointSet`).

* ``points.json``: COCO-style, one line. Coordinates are integer pixel indices, ``x`` (column)
  first, as in detectron2's PointSup (its mapper adds 0.5 to reach pixel centres). Category ids
  are the dataset's 0-based contiguous class indices; detectron2's ``load_coco_json`` maps sorted
  category ids to contiguous ids, which for ``0..C-1`` is the identity (it only logs that ids are
  not in ``[1, C]``). Annotations also carry ``bbox`` (``[x, y, w, h]`` of the instance; of the
  clicked pixel for a human click) and ``iscrowd: 0``, which detectron2's annotation transforms
  require, and ``source`` (``"simulated"`` or ``"human"``). ``info`` holds the dataset's
  :class:`~pointparse.datasets.DatasetInfo`, so training needs no other file.
* ``points.csv``: one row per click (image, x, y, class id and name, instance area, source).
* ``stats.json``: the summary of :func:`points_stats`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import IGNORE_INDEX
from .datasets import DatasetInfo, SegmentationDataset
from .errors import DataError
from .io import atomic_file, read_json, write_json

POINTS_JSON = "points.json"
POINTS_CSV = "points.csv"
STATS_JSON = "stats.json"


def point_label_map(xy: np.ndarray, classes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Sparse label map uint8 [H, W]: the class at each click ``(x, y)``, 255 everywhere else.

    Where two clicks share a pixel the later one wins.
    """
    out = np.full((int(height), int(width)), IGNORE_INDEX, np.uint8)
    xy = np.asarray(xy, np.int64).reshape(-1, 2)
    classes = np.asarray(classes, np.int64).reshape(-1)
    if len(xy) != len(classes):
        raise ValueError(f"{len(xy)} points but {len(classes)} classes")
    if len(xy):
        if (xy < 0).any() or (xy[:, 0] >= width).any() or (xy[:, 1] >= height).any():
            raise ValueError(f"point coordinates outside the {width}x{height} image")
        if (classes < 0).any() or (classes >= IGNORE_INDEX).any():
            raise ValueError("point classes must be 0..254")
        out[xy[:, 1], xy[:, 0]] = classes.astype(np.uint8)
    return out


# -- writing -----------------------------------------------------------------------------------


def _relative_image_path(dataset: SegmentationDataset, i: int, root: Path | None, resolved: Path | None) -> str:
    """The image's path relative to the dataset ``root`` (its name when outside it).

    Readers build image paths from their root, so a lexical comparison settles almost every
    image; only the others are resolved (``resolved`` = the resolved root), which costs a few
    system calls per image (~90 us: a fifth of the whole artefact's writing time).
    """
    p = Path(dataset.image_path(i))
    if root is not None:
        try:
            return p.relative_to(root).as_posix()
        except ValueError:
            pass
        try:
            return p.resolve().relative_to(resolved).as_posix()
        except ValueError:
            pass
    return p.name


#: one annotation of points.json, keys sorted: simulated (instance area and box) and human clicks
_SIMULATED_JSON = ('{"bbox": [%d, %d, %d, %d], "category_id": %d, "id": %d, "image_id": %d, "instance_area": %d, '
                   '"iscrowd": 0, "point_coords": [[%d, %d]], "point_labels": [1], "source": %s}')
_HUMAN_JSON = ('{"bbox": [%d, %d, %d, %d], "category_id": %d, "id": %d, "image_id": %d, "iscrowd": 0, '
               '"point_coords": [[%d, %d]], "point_labels": [1], "source": %s}')


def write_points_artefact(out_dir: Path, dataset: SegmentationDataset, images: list, meta: dict,
                          source: str) -> dict:
    """Write ``points.json``, ``points.csv`` and ``stats.json`` for the clicks of ``images``.

    One record per image of ``dataset`` (same order) with ``name``, ``height``, ``width``, ``xy``
    int [K, 2] (x, y), ``classes`` int [K] and ``labelled_pixels``; simulated clicks also carry
    ``areas`` [K] and ``boxes`` [K, 4] (x, y, w, h) of their instances, human clicks have neither
    (their ``bbox`` is the clicked pixel and ``instance_area`` is left out / NA). ``meta`` joins
    the dataset description under ``info``. Returns the stats dict.
    """
    info = dataset.info
    coco_images, annotations = [], []  # annotations: their json text, one string each
    root = getattr(dataset, "root", None)
    root = Path(root) if root is not None else None
    resolved = root.resolve() if root is not None else None  # once: resolving is a few syscalls
    src = json.dumps(source, ensure_ascii=False)
    for i, p in enumerate(images):
        coco_images.append({"id": i + 1, "name": p.name, "file_name": _relative_image_path(dataset, i, root, resolved),
                            "height": p.height, "width": p.width})
        areas, boxes = getattr(p, "areas", None), getattr(p, "boxes", None)
        first, xys, classes = len(annotations) + 1, p.xy.tolist(), p.classes.tolist()
        bbs = boxes.tolist() if boxes is not None else [[x, y, 1, 1] for x, y in xys]
        if areas is not None:
            annotations.extend(_SIMULATED_JSON % (*bb, c, first + k, i + 1, a, x, y, src)
                               for k, ((x, y), c, a, bb) in enumerate(zip(xys, classes, areas.tolist(), bbs)))
        else:
            annotations.extend(_HUMAN_JSON % (*bb, c, first + k, i + 1, x, y, src)
                               for k, ((x, y), c, bb) in enumerate(zip(xys, classes, bbs)))
    doc = {
        "info": {**info.to_dict(), **meta, "category_ids": "0-based contiguous class indices",
                 "coordinates": "integer pixel indices [x, y], x first"},
        "images": coco_images,
        "categories": [{"id": c, "name": name} for c, name in enumerate(info.classes)],
    }
    # One line, keys sorted, as io.write_json(indent=None) writes it (a test holds the two equal);
    # "annotations" sorts first, and its records are formatted directly: building and encoding a
    # dict per click cost more than finding the clicks on COCO
    rest = json.dumps(doc, indent=None, sort_keys=True, ensure_ascii=False)
    with atomic_file(out_dir / POINTS_JSON) as tmp:
        tmp.write_text('{"annotations": [' + ", ".join(annotations) + "], " + rest[1:] + "\n", encoding="utf-8")

    xy = np.concatenate([p.xy for p in images]) if images else np.zeros((0, 2), np.int64)
    classes = np.concatenate([p.classes for p in images]) if images else np.zeros(0, np.int64)
    simulated = bool(images) and getattr(images[0], "areas", None) is not None
    frame = pd.DataFrame({
        "image": np.repeat([p.name for p in images], [len(p.classes) for p in images]).astype(object),
        "x": xy[:, 0],
        "y": xy[:, 1],
        "class_id": classes,
        "class_name": np.asarray(info.classes, dtype=object)[classes] if len(classes) else np.zeros(0, object),
        # a human click has no known instance
        "instance_area": (np.concatenate([p.areas for p in images]) if simulated
                          else pd.array([None] * len(classes), dtype="Int64")),
        "source": source,
    })
    with atomic_file(out_dir / POINTS_CSV) as tmp:
        frame.to_csv(tmp, index=False, lineterminator="\n")
    stats = points_stats(images, info)
    write_json(out_dir / STATS_JSON, stats)
    return stats


def points_stats(images: list, info: DatasetInfo) -> dict:
    """Summary numbers of a points artefact.

    ``images``: one record per image with ``name``, ``classes`` int [K] and ``labelled_pixels``
    (as :func:`write_points_artefact` takes them).

    ``annotated_pixel_ratio`` = points / labelled pixels, where labelled pixels are the mask
    pixels that are not 255 (the supervision a dense mask would give).
    """
    per_image = np.array([len(p.classes) for p in images], np.int64)
    classes = np.concatenate([p.classes for p in images]) if images else np.zeros(0, np.int64)
    per_class = np.bincount(classes, minlength=info.num_classes)
    labelled = int(sum(p.labelled_pixels for p in images))
    empty = [p.name for p in images if len(p.classes) == 0]
    total = int(per_image.sum())
    return {
        "num_images": len(images),
        "num_points": total,
        "points_per_image": {
            "mean": float(per_image.mean()) if len(per_image) else 0.0,
            "median": float(np.median(per_image)) if len(per_image) else 0.0,
            "min": int(per_image.min()) if len(per_image) else 0,
            "max": int(per_image.max()) if len(per_image) else 0,
        },
        "labelled_pixels": labelled,
        "annotated_pixel_ratio": total / labelled if labelled else 0.0,
        "points_per_class": {name: int(per_class[c]) for c, name in enumerate(info.classes)},
        "images_without_points": len(empty),
        "images_without_points_names": empty,
    }


# -- loading -----------------------------------------------------------------------------------


@dataclass
class PointSet:
    """Point annotations of one dataset split, as loaded by :func:`load_points`.

    ``points(name)`` gives ``xy`` int64 [N, 2] (x, y) and ``classes`` int64 [N] of one image;
    ``image_sizes[name]`` is ``(height, width)``.
    """

    info: DatasetInfo
    names: list[str]
    image_sizes: dict[str, tuple[int, int]]
    path: Path | None = None
    meta: dict = field(default_factory=dict)
    _xy: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _classes: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def num_points(self) -> int:
        return int(sum(len(v) for v in self._classes.values()))

    def points(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in self._xy:
            raise DataError(self.path or POINTS_JSON, f"no image named {name!r} in the point annotations")
        return self._xy[name], self._classes[name]

    def label_map(self, name: str) -> np.ndarray:
        """Sparse label map uint8 [H, W] of one image (255 off the clicks)."""
        h, w = self.image_sizes[name]
        return point_label_map(*self.points(name), h, w)


def _coord(v) -> int:
    """A pixel index (or point label) as the file wrote it: a number, never a boolean (``true``
    would have been read as pixel 1) nor a string; floats are floored as before."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{v!r} is not a number")
    return int(v)


def load_points(artefact_dir: str | Path) -> PointSet:
    """Load ``points.json`` from a make-points artefact folder (or the json file itself)."""
    path = Path(artefact_dir)
    if path.is_dir():
        path = path / POINTS_JSON
    doc = read_json(path)

    def bad(problem: str) -> DataError:
        return DataError(path, f"malformed point annotations: {problem}")

    if not isinstance(doc, dict):
        raise bad("top level is not an object")
    for key in ("info", "images", "categories", "annotations"):
        if key not in doc:
            raise bad(f"missing key {key!r}")
        if key != "info" and not isinstance(doc[key], list):
            raise bad(f"{key!r} is not a list")
    try:
        info = DatasetInfo.from_dict(doc["info"])
    except (KeyError, TypeError, ValueError) as exc:
        raise bad(f"'info' is not a dataset description ({exc.__class__.__name__}: {exc})") from None
    try:
        cats = {int(c["id"]): str(c["name"]) for c in doc["categories"]}
    except (KeyError, TypeError, ValueError):
        raise bad("every category needs an integer 'id' and a 'name'") from None
    if sorted(cats) != list(range(info.num_classes)):
        raise bad(f"category ids must be 0..{info.num_classes - 1} (the dataset's classes)")

    names: list[str] = []
    sizes: dict[str, tuple[int, int]] = {}
    by_id: dict[int, str] = {}
    for j, im in enumerate(doc["images"]):
        try:
            iid, h, w = int(im["id"]), int(im["height"]), int(im["width"])
            name = str(im["name"]) if "name" in im else Path(str(im["file_name"])).stem
        except (KeyError, TypeError, ValueError, OverflowError):
            raise bad(f"images[{j}] needs integer 'id', 'height', 'width' and a 'name' or 'file_name'") from None
        if iid in by_id:
            raise bad(f"image id {iid} appears twice")
        if name in sizes:
            raise bad(f"image name {name!r} appears twice")
        if h < 1 or w < 1:
            raise bad(f"image {name!r} has size {w}x{h}")
        by_id[iid] = name
        names.append(name)
        sizes[name] = (h, w)

    pts: dict[str, list[tuple[int, int, int]]] = {n: [] for n in names}
    for j, ann in enumerate(doc["annotations"]):
        try:
            iid, cid = int(ann["image_id"]), int(ann["category_id"])
            coords = ann["point_coords"]
            labels = ann.get("point_labels", [1] * len(coords))
            coords = [(_coord(c[0]), _coord(c[1])) for c in coords]
        except (KeyError, TypeError, ValueError, IndexError, OverflowError):
            raise bad(f"annotations[{j}] needs 'image_id', 'category_id' and 'point_coords' [[x, y], ...] "
                      "(finite pixel indices)") from None
        try:
            if not isinstance(labels, list):
                raise TypeError
            labels = [_coord(v) for v in labels]
        except (TypeError, ValueError, OverflowError):
            raise bad(f"annotations[{j}] point_labels must be a list of integers (1 = on the instance, "
                      f"0 = negative), got {labels!r:.80}") from None
        if iid not in by_id:
            raise bad(f"annotations[{j}] refers to unknown image id {iid}")
        if cid not in cats:
            raise bad(f"annotations[{j}] has category id {cid}, not one of 0..{info.num_classes - 1}")
        if len(labels) != len(coords):
            raise bad(f"annotations[{j}] has {len(coords)} point_coords but {len(labels)} point_labels")
        name = by_id[iid]
        h, w = sizes[name]
        for (x, y), lab in zip(coords, labels):
            if not (0 <= x < w and 0 <= y < h):
                raise bad(f"annotations[{j}] point ({x}, {y}) lies outside image {name!r} ({w}x{h})")
            if lab == 1:  # PointSup convention: 1 = on the instance; 0 = negative point
                pts[name].append((x, y, cid))

    xy_map, cls_map = {}, {}
    for name in names:
        arr = np.asarray(pts[name], np.int64).reshape(-1, 3)
        xy_map[name] = arr[:, :2].copy()
        cls_map[name] = arr[:, 2].copy()
    return PointSet(info=info, names=names, image_sizes=sizes, path=path, meta=dict(doc["info"]),
                    _xy=xy_map, _classes=cls_map)
