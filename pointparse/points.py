"""Point annotations: one simulated click per instance, written COCO-style, loaded for training.

The paper trains from "one pixel annotation for each instance" (PASCAL-Context: 12.26 clicks per
image, ADE20K: 13.96). :func:`make_points` simulates those clicks from a dataset's dense masks.

What an *instance* is (per image):

* with an instance map: every instance id ``> 0`` is one instance. Its class is the majority
  class of the mask under it (ignore pixels, 255, do not vote; ties go to the lower class id)
  and its pixels are the pixels of that id *that carry that class* — pixels of other classes
  under the same id (annotation disagreement) and 255 pixels are left out, so a click always
  carries the class the dense mask gives its pixel. Labelled pixels with instance id 0 (stuff
  classes, which ADE20K and the synthetic scenes give no instances) fall back to the rule below;
* without an instance map: each 8-connected component of each class (diagonally touching pixels
  belong to the same instance, as ``scipy.ndimage.label`` with a 3x3 structure).

Instances with fewer than ``min_area`` pixels get no click.

Coordinates are integer pixel indices, ``x`` (column) first, as in detectron2's PointSup
(its mapper adds 0.5 to reach pixel centres). Category ids are the dataset's 0-based contiguous
class indices; detectron2's ``load_coco_json`` maps sorted category ids to contiguous ids, which
for ``0..C-1`` is the identity (it only logs that ids are not in ``[1, C]``). Annotations also
carry ``bbox`` (``[x, y, w, h]`` of the instance) and ``iscrowd: 0``, which detectron2's
annotation transforms require.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pandas as pd
from scipy import ndimage
from tqdm import tqdm

from . import IGNORE_INDEX
from .datasets import DatasetInfo, Instances, SegmentationDataset
from .errors import ConfigError, DataError, unknown_choice
from .io import atomic_file, read_json, write_json, write_label_png
from .pool import fork_pool, worker_count

POINTS_JSON = "points.json"
POINTS_CSV = "points.csv"
STATS_JSON = "stats.json"
SPARSE_DIR = "sparse"

#: standard deviation of the ``annotator`` click offset, as a fraction of sqrt(instance area)
ANNOTATOR_SIGMA = 0.15
#: draws of the ``annotator`` click before it falls back to the centre
ANNOTATOR_TRIES = 20


# -- instances ---------------------------------------------------------------------------------


def _present_classes(leftover: np.ndarray, num_classes: int | None) -> list[int]:
    """Class ids (< 255) that occur in ``leftover`` uint8 [H, W]."""
    if num_classes is not None and num_classes <= 32:
        return list(range(num_classes))  # a few cheap compares beat a histogram
    hist = cv2.calcHist([leftover], [0], None, [256], [0, 256]).ravel()
    return [int(c) for c in np.flatnonzero(hist[:IGNORE_INDEX])]


#: up to this many components, overlapping boxes are found by comparing all pairs
_PAIRWISE_MAX = 256


def _contour_depths(parents: np.ndarray) -> np.ndarray:
    """Nesting depth of each contour of a ``RETR_TREE`` hierarchy (``parents`` int [N], -1 = top).

    Even depth = outer border of a component, odd = border of a hole. Pointer jumping: every
    round doubles how far each contour has looked up the tree, so deep nesting (noisy masks)
    takes log2(depth) vectorised rounds instead of a Python step per contour and level.
    """
    anc = np.asarray(parents, np.int64).copy()  # the farthest ancestor looked at so far, -1 = past the top
    depth = (anc >= 0).astype(np.int64)         # hops from each contour to ``anc``
    live = np.flatnonzero(anc >= 0)
    while len(live):
        up = anc[live]
        depth[live] += depth[up]  # right-hand sides are read before the writes: one synchronous round
        anc[live] = anc[up]
        live = live[anc[live] >= 0]
    return depth


def _components(binary: np.ndarray, oy: int, ox: int, cls: int, total: int, min_area: int, out: list) -> None:
    """Append the 8-connected components (>= ``min_area`` px) of ``binary`` uint8 [h, w] (0/255,
    ``total`` foreground pixels, top-left pixel at ``(oy, ox)`` in the image) to ``out`` as
    ``(class, box, area, crop)``, ordered by box then area.

    Components come from the border-following contours of ``cv2.findContours`` (outer borders
    are 8-connected, which is the component rule) rather than a labelling pass: it costs about a
    fifth of ``cv2.connectedComponents`` and gives every component's box for free. A component's
    crop is the class pixels inside its filled outer border, less the islands nested in its
    holes; when its box meets no other component's box and its holes hold no islands, that is
    simply the class pixels of its box. (Tests check this against ``scipy.ndimage.label``.)
    """
    contours, hierarchy = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return
    hier = hierarchy[0]  # [N, 4]: next, previous, first child, parent
    nested = np.zeros(len(contours), bool)  # holes holding islands
    if len(contours) == 1 or not (hier[:, 3] >= 0).any():  # no holes: every contour is a component
        outer = np.arange(len(contours))
    else:
        depth = _contour_depths(hier[:, 3])
        outer = np.flatnonzero(depth % 2 == 0)
        # an island is an outer border at depth >= 2; its grandparent is the component around it
        nested[hier[outer[depth[outer] >= 2], 3]] = True
    if len(outer) == 1 and not nested.any():
        if total >= min_area:
            out.append((cls, (oy, ox, oy + binary.shape[0], ox + binary.shape[1]), total, binary != 0))
        return
    boxes = np.array([cv2.boundingRect(contours[i]) for i in outer], np.int64)  # x, y, w, h
    x0, y0 = boxes[:, 0], boxes[:, 1]
    x1, y1 = x0 + boxes[:, 2], y0 + boxes[:, 3]
    if len(outer) <= _PAIRWISE_MAX:
        meets = ((x0[:, None] < x1[None]) & (x0[None] < x1[:, None]) &
                 (y0[:, None] < y1[None]) & (y0[None] < y1[:, None])).sum(axis=1) > 1
    else:  # too many for the pairwise test: draw every one
        meets = np.ones(len(outer), bool)
    found = []  # (y, x, h, w, area, crop)
    for k, (i, (x, y, w, h)) in enumerate(zip(outer.tolist(), boxes.tolist())):
        if w * h < min_area:  # too small whatever its shape
            continue
        holes_with_islands = []
        hole = int(hier[i][2])
        while hole >= 0:
            if nested[hole]:
                holes_with_islands.append(hole)
            hole = int(hier[hole][0])
        box = binary[y:y + h, x:x + w]
        if not meets[k] and not holes_with_islands:
            crop = box
        else:
            crop = np.zeros((h, w), np.uint8)
            cv2.drawContours(crop, contours, i, 255, thickness=cv2.FILLED, offset=(-x, -y))
            for hole in holes_with_islands:
                island = int(hier[hole][2])
                while island >= 0:
                    cv2.drawContours(crop, contours, island, 0, thickness=cv2.FILLED, offset=(-x, -y))
                    island = int(hier[island][0])
            cv2.bitwise_and(crop, box, dst=crop)
        area = cv2.countNonZero(crop)
        if area >= min_area:
            found.append((y, x, h, w, area, crop != 0))
    found.sort(key=lambda f: f[:5])
    for y, x, h, w, area, crop in found:
        out.append((cls, (oy + y, ox + x, oy + y + h, ox + x + w), area, crop))


def find_instances(mask: np.ndarray, instances: np.ndarray | None = None, min_area: int = 16,
                   num_classes: int | None = None) -> Instances:
    """The instances of one image (rules in the module docstring).

    ``mask``: uint8 [H, W] class ids, 255 = ignore. ``instances``: non-negative integer [H, W]
    instance ids (0 = none) or ``None``. ``num_classes`` (optional) bounds the class ids to
    look for. Order: instance-map instances by id, then connected components by class and,
    within a class, by the top-left corner of their box.
    """
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    min_area = max(int(min_area), 1)
    found: list = []  # (class, (y0, x0, y1, x1), area, crop)
    leftover = mask  # labelled pixels not yet covered by an instance (255 elsewhere)

    if instances is not None:
        inst = np.asarray(instances)
        if inst.shape != mask.shape:
            raise ValueError(f"instance map {inst.shape} and mask {mask.shape} differ in shape")
        if inst.dtype.kind not in "iu":
            raise ValueError(f"instance map must hold integers, got {inst.dtype}")
        if inst.dtype.kind == "i" and inst.size and int(inst.min()) < 0:
            raise ValueError("instance ids must be >= 0")
        if inst.dtype.itemsize > 4 or inst.dtype == np.uint32:
            inst = inst.astype(np.int32)
        # One pass finds every id's box; everything after works on those crops.
        for k, sl in enumerate(ndimage.find_objects(inst), 1):
            if sl is None:
                continue
            ids = inst[sl] == k
            cls_crop = mask[sl]
            votes = np.bincount(cls_crop[ids], minlength=256)[:IGNORE_INDEX]
            cls = int(votes.argmax())  # first maximum: ties go to the lower class id
            area = int(votes[cls])
            if area < min_area:
                continue
            member = ids & (cls_crop == cls)
            x, y, bw, bh = cv2.boundingRect(member.view(np.uint8))
            oy, ox = sl[0].start + y, sl[1].start + x
            found.append((cls, (oy, ox, oy + bh, ox + bw), area, member[y:y + bh, x:x + bw]))
        leftover = np.where(inst == 0, mask, np.uint8(IGNORE_INDEX))

    for c in _present_classes(leftover, num_classes):
        binary = cv2.compare(leftover, c, cv2.CMP_EQ)  # 0/255
        total = cv2.countNonZero(binary)
        if total < min_area:
            continue
        x, y, bw, bh = cv2.boundingRect(binary)  # connected components run on this box only
        _components(np.ascontiguousarray(binary[y:y + bh, x:x + bw]), y, x, c, total, min_area, found)

    return Instances.from_list(found)


# -- click models ------------------------------------------------------------------------------
# A click model maps one instance crop (bool [h, w], True = instance) to a (row, col) in the crop.

#: the coarse grid of a large crop keeps at least this many cells; crops of fewer than four times
#: this many pixels get the exact transform (see ``_deepest``)
COARSE_PIXELS = 1024


def _argmax_distance(binary: np.ndarray) -> tuple[int, int]:
    """(row, col) of the maximum of the exact Euclidean distance transform of ``binary`` [h, w]
    (bool, or uint8 with non-zero = inside).

    The array is padded by one background pixel so its border counts as a border. Ties go to
    the maximal pixel nearest the centroid of all maximal pixels (the middle of a ridge, e.g.
    of a long rectangle), then to raster order.

    OpenCV's exact transform can differ in the last float bit from run to run (its threads mix
    SIMD and scalar square roots), so near-maximal pixels are compared on their exact integer
    squared distances (``rint(d**2)``, exact for d below ~2000 px).
    """
    h, w = binary.shape
    padded = cv2.copyMakeBorder(binary.view(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    _, top, _, (c, r) = cv2.minMaxLoc(dist)
    near = dist >= top - 1e-4 * max(1.0, top)
    if np.count_nonzero(near) == 1:  # the common case: one maximal pixel, minMaxLoc found it
        return r - 1, c - 1
    cand = np.flatnonzero(near)
    sq = np.rint(dist.ravel()[cand].astype(np.float64) ** 2)
    cand = cand[sq == sq.max()]
    if len(cand) > 1:
        rows, cols = np.divmod(cand, w + 2)
        n = len(cand)
        # integer arithmetic: distance to the centroid, scaled by n
        d2 = (n * rows - rows.sum()) ** 2 + (n * cols - cols.sum()) ** 2
        cand = cand[int(d2.argmin()):][:1]
    r, c = divmod(int(cand[0]), w + 2)
    return r - 1, c - 1


def _deepest(crop: np.ndarray) -> tuple[int, int]:
    """The pixel deepest inside the instance ``crop`` [h, w] (bool, or uint8 0/255): argmax of its
    distance transform.

    Exact on crops of fewer than ``4 * COARSE_PIXELS`` pixels. A larger crop is first reduced by
    the integer factor ``f = min(16, floor(sqrt(pixels / COARSE_PIXELS)))`` to blocks that lie
    *entirely* inside the instance; the deepest block is found exactly on that grid and its middle
    pixel returned, so the click is always on the instance and within about ``f`` pixels of the
    exact argmax, at a fraction of the cost (large stuff regions dominate the run time otherwise).
    Falls back to the exact transform when no block fits (thin shapes).
    """
    h, w = crop.shape
    f = min(16, int(math.sqrt(h * w / COARSE_PIXELS)))
    if f >= 2:
        hh, ww = -(-h // f), -(-w // f)
        u8 = crop.view(np.uint8)
        if crop.dtype == np.bool_:
            u8 = cv2.compare(u8, 0, cv2.CMP_NE)  # 0/255
        buf = cv2.copyMakeBorder(u8, 0, hh * f - h, 0, ww * f - w, cv2.BORDER_CONSTANT, value=0)
        # With 0/255 input and f*f < 510 the block mean rounds to 255 only if every pixel is 255.
        inside = cv2.compare(cv2.resize(buf, (ww, hh), interpolation=cv2.INTER_AREA), 255, cv2.CMP_EQ)
        if cv2.countNonZero(inside):
            r, c = _argmax_distance(inside)
            return r * f + f // 2, c * f + f // 2
    return _argmax_distance(crop)


def center_click(crop: np.ndarray, area: int, rng: np.random.Generator) -> tuple[int, int]:
    """``center``: the pixel deepest inside the instance (deterministic, ignores ``rng``)."""
    return _deepest(crop)


def random_click(crop: np.ndarray, area: int, rng: np.random.Generator) -> tuple[int, int]:
    """``random``: a pixel drawn uniformly from the instance."""
    idx = np.flatnonzero(crop)
    r, c = divmod(int(idx[rng.integers(len(idx))]), crop.shape[1])
    return r, c


def annotator_click(crop: np.ndarray, area: int, rng: np.random.Generator) -> tuple[int, int]:
    """``annotator``: a human-like click near the centre.

    A Gaussian offset with std ``ANNOTATOR_SIGMA * sqrt(area)`` around the deepest pixel, redrawn
    until it lands inside the instance (at most ``ANNOTATOR_TRIES`` times, then the centre).
    """
    r0, c0 = _deepest(crop)
    sigma = ANNOTATOR_SIGMA * math.sqrt(area)
    h, w = crop.shape
    offsets = np.rint(rng.normal(0.0, sigma, size=(ANNOTATOR_TRIES, 2))).astype(np.int64)
    for dr, dc in offsets:
        r, c = r0 + int(dr), c0 + int(dc)
        if 0 <= r < h and 0 <= c < w and crop[r, c]:
            return r, c
    return r0, c0


CLICK_MODELS: dict[str, Callable[[np.ndarray, int, np.random.Generator], tuple[int, int]]] = {
    "center": center_click,
    "random": random_click,
    "annotator": annotator_click,
}


def get_click_model(name: str) -> Callable[[np.ndarray, int, np.random.Generator], tuple[int, int]]:
    if name not in CLICK_MODELS:
        raise unknown_choice("click model", name, CLICK_MODELS)
    return CLICK_MODELS[name]


def image_rng(seed: int, name: str) -> np.random.Generator:
    """The RNG of one image, derived from (seed, image name) so it does not depend on which
    worker handles the image or in which order."""
    digest = hashlib.sha256(f"{int(seed)}\0{name}".encode("utf-8")).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def simulate_clicks(mask: np.ndarray, instances: np.ndarray | None = None, click: str = "center",
                    min_area: int = 16, rng: np.random.Generator | None = None,
                    num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One click per instance of one image (inputs as in :func:`find_instances`).

    Returns ``xy`` int64 [K, 2] (x, y), ``classes`` int64 [K], ``areas`` int64 [K] (instance
    pixels) and ``boxes`` int64 [K, 4] (x, y, w, h), in :func:`find_instances` order.
    """
    return click_instances(find_instances(mask, instances, min_area, num_classes), click, rng)


def click_instances(found: Instances, click: str = "center",
                    rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One click per instance of ``found``; returns as :func:`simulate_clicks`."""
    model = get_click_model(click)
    rng = rng if rng is not None else np.random.default_rng(0)
    if model is random_click and len(found):
        # one draw per instance in one call: the same numbers, and the same generator state after,
        # as one ``integers(area)`` call per instance (tests hold numpy to that)
        picks = rng.integers(0, found.areas).tolist()
        rc = [divmod(int(np.flatnonzero(crop)[p]), crop.shape[1]) for crop, p in zip(found.crops, picks)]
    else:
        rc = [model(crop, area, rng) for crop, area in zip(found.crops, found.areas.tolist())]
    xy = np.array(rc, np.int64).reshape(-1, 2)[:, ::-1] + found.boxes[:, 1::-1]
    b = found.boxes
    boxes_xywh = np.stack([b[:, 1], b[:, 0], b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]], axis=1) if len(b) else np.zeros((0, 4), np.int64)
    return xy, found.classes, found.areas, boxes_xywh


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


# -- make-points -------------------------------------------------------------------------------


@dataclass
class MakePointsConfig:
    """Parameters of :func:`make_points`.

    ``min_area`` (pixels, default 16 = a 4x4 patch): slivers smaller than that are mostly
    connected-component debris along jagged or anti-aliased mask borders, which no annotator
    would click and which would push clicks/image far above the paper's 12-14.
    ``workers``: processes; 0 or 1 runs serially, ``None`` uses every available core. The
    output does not depend on it.
    """

    click: str = "center"
    min_area: int = 16
    seed: int = 0
    sparse_labels: bool = False
    workers: int | None = None

    def __post_init__(self) -> None:
        get_click_model(self.click)
        if not isinstance(self.min_area, (int, np.integer)) or self.min_area < 1:
            raise ConfigError(f"min_area must be a positive number of pixels, got {self.min_area!r}")
        if self.workers is not None and (not isinstance(self.workers, (int, np.integer)) or self.workers < 0):
            raise ConfigError(f"workers must be >= 0 (0/1 = serial) or None (all cores), got {self.workers!r}")


@dataclass
class _ImagePoints:
    name: str
    height: int
    width: int
    xy: np.ndarray
    classes: np.ndarray
    areas: np.ndarray
    boxes: np.ndarray
    labelled_pixels: int


@dataclass
class _RemoteDataError:
    """A DataError raised in a worker, carried back as data (DataError does not unpickle)."""

    path: str
    problem: str


def _points_for_image(dataset: SegmentationDataset, i: int, config: MakePointsConfig,
                      sparse_dir: Path | None) -> _ImagePoints:
    known = dataset.click_instances(i, config.min_area)  # a reader's shortcut (COCO), else search the maps
    if known is not None:
        name, h, w, labelled = known.name, known.height, known.width, known.labelled_pixels
        xy, classes, areas, boxes = click_instances(known.instances, config.click, image_rng(config.seed, name))
    else:
        sample = dataset.load(i, with_image=False)
        name, (h, w) = sample.name, sample.mask.shape
        xy, classes, areas, boxes = simulate_clicks(sample.mask, sample.instances, config.click, config.min_area,
                                                   image_rng(config.seed, name), dataset.info.num_classes)
        labelled = int(h * w - np.count_nonzero(sample.mask == IGNORE_INDEX))
    if sparse_dir is not None:
        write_label_png(sparse_dir / f"{name}.png", point_label_map(xy, classes, h, w),
                        palette=np.asarray(dataset.info.palette, np.uint8))
    return _ImagePoints(name, h, w, xy, classes, areas, boxes, labelled)


def _points_for_chunk(dataset: SegmentationDataset, indices: list[int], config: MakePointsConfig,
                      sparse_dir: Path | None) -> list[_ImagePoints] | _RemoteDataError:
    try:
        return [_points_for_image(dataset, i, config, sparse_dir) for i in indices]
    except DataError as exc:
        return _RemoteDataError(str(exc.path), exc.problem)


def _collect(dataset: SegmentationDataset, config: MakePointsConfig, sparse_dir: Path | None,
             progress: bool) -> list[_ImagePoints]:
    n = len(dataset)
    workers = min(worker_count(config.workers), n)
    bar = tqdm(total=n, desc="make-points", unit="img", disable=not progress)
    try:
        if workers <= 1:
            out = []
            for i in range(n):
                out.append(_points_for_image(dataset, i, config, sparse_dir))
                bar.update(1)
            return out
        # A few chunks per worker balance the load; each chunk pickles the dataset once.
        size = max(1, math.ceil(n / (workers * 4)))
        chunks = [list(range(s, min(n, s + size))) for s in range(0, n, size)]
        results: list = [None] * len(chunks)
        with fork_pool(workers) as pool:
            futures = {pool.submit(_points_for_chunk, dataset, chunk, config, sparse_dir): j
                       for j, chunk in enumerate(chunks)}
            try:
                for fut in as_completed(futures):
                    res = fut.result()
                    if isinstance(res, _RemoteDataError):
                        raise DataError(res.path, res.problem)
                    results[futures[fut]] = res
                    bar.update(len(res))
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        return [p for chunk in results for p in chunk]
    finally:
        bar.close()


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


def make_points(dataset: SegmentationDataset, config: MakePointsConfig | None, out_dir: str | Path,
                progress: bool = True) -> dict:
    """Simulate one click per instance for every image of ``dataset`` and write the artefact.

    ``out_dir`` must exist (the stage cache passes a temporary folder). Writes ``points.json``
    (COCO-style, format in the module docstring, with the dataset's :class:`DatasetInfo` under
    ``info`` so training needs no other file), ``points.csv`` (one row per point) and
    ``stats.json``; with ``sparse_labels`` also ``sparse/<name>.png`` (uint8 palette PNG, the
    clicked class at each click, 255 elsewhere). Same dataset + config → byte-identical files,
    whatever the number of workers. Returns the stats dict.
    """
    config = config or MakePointsConfig()
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise DataError(out_dir, "output folder does not exist")
    sparse_dir = out_dir / SPARSE_DIR if config.sparse_labels else None
    if sparse_dir is not None:
        sparse_dir.mkdir(exist_ok=True)
    images = _collect(dataset, config, sparse_dir, progress)
    meta = {"split": getattr(dataset, "split", None), "click": config.click, "seed": config.seed,
            "min_area": config.min_area, "source": "simulated"}
    return write_points_artefact(out_dir, dataset, images, meta, source="simulated")


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

def points_stats(images: list[_ImagePoints], info: DatasetInfo) -> dict:
    """Summary numbers of a points artefact.

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
            coords = [(int(c[0]), int(c[1])) for c in coords]
        except (KeyError, TypeError, ValueError, IndexError, OverflowError):
            raise bad(f"annotations[{j}] needs 'image_id', 'category_id' and 'point_coords' [[x, y], ...] "
                      "(finite pixel indices)") from None
        try:
            if not isinstance(labels, list):
                raise TypeError
            labels = [int(v) for v in labels]
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
