"""make-points: one simulated click per instance, written as a points artefact.

The paper trains from "one pixel annotation for each instance" (PASCAL-Context: 12.26 clicks per
image, ADE20K: 13.96). :func:`make_points` simulates those clicks from a dataset's dense masks:
it finds the instances of each image (:func:`pointparse.instances.find_instances`, rules there),
places one click in each with a click model (:data:`CLICK_MODELS`: ``center``, ``random``,
``annotator``) and writes the points artefact (:func:`pointparse.points.write_points_artefact`,
format in :mod:`pointparse.points`). The random draws of an image come from ``(seed, image
name)`` (:func:`image_rng`), so the output does not depend on the number of workers.
"""

from __future__ import annotations

import hashlib
import math
from concurrent.futures import as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from tqdm import tqdm

from . import IGNORE_INDEX
from .datasets import Instances, SegmentationDataset
from .errors import ConfigError, DataError, unknown_choice
from .instances import find_instances
from .images import write_label_png
from .points import point_label_map, write_points_artefact
from .pool import fork_pool, worker_count

SPARSE_DIR = "sparse"

#: standard deviation of the ``annotator`` click offset, as a fraction of sqrt(instance area)
ANNOTATOR_SIGMA = 0.15
#: draws of the ``annotator`` click before it falls back to the centre
ANNOTATOR_TRIES = 20


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
            u8 = u8 * np.uint8(255)  # 0/255 (numpy: OpenCV 5 misreads scalars beside [N<=4, 1] arrays)
        buf = cv2.copyMakeBorder(u8, 0, hh * f - h, 0, ww * f - w, cv2.BORDER_CONSTANT, value=0)
        # With 0/255 input and f*f < 510 the block mean rounds to 255 only if every pixel is 255.
        inside = (cv2.resize(buf, (ww, hh), interpolation=cv2.INTER_AREA) == 255).view(np.uint8)
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


def make_points(dataset: SegmentationDataset, config: MakePointsConfig | None, out_dir: str | Path,
                progress: bool = True) -> dict:
    """Simulate one click per instance for every image of ``dataset`` and write the artefact.

    ``out_dir`` must exist (the stage cache passes a temporary folder). Writes ``points.json``
    (COCO-style, format in :mod:`pointparse.points`, with the dataset's :class:`DatasetInfo` under
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
