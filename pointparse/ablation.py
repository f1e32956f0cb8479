"""Table 5: how good is each way of extending the clicks to more pixels?

The paper ("Analysis of Extension Method") compares five ways of turning the clicks of an image
into more labelled pixels, measured on a split with dense ground truth:

* ``superpixel`` — SLIC superpixels (Achanta et al. 2012, scikit-image). The number asked for is
  ``clamp(round(SUPERPIXELS_PER_CLICK * clicks), 50, 200)`` with ``SUPERPIXELS_PER_CLICK = 8``:
  the paper's 50..200 range, centred on PASCAL-Context's 12.26 clicks per image (~100) and
  reaching the ends at about 6 and 25 clicks; more clicks mean more instances, i.e. a busier
  scene that deserves finer superpixels. Every click labels its whole superpixel; a superpixel
  holding clicks of different classes gives each of its pixels the class of the nearest of those
  clicks (Euclidean, ties to the click first in raster order).
* ``kmeans`` — Lloyd's K-means (at most ``KMEANS_MAX_ITER = 300`` iterations, stopping when no
  pixel changes cluster) on per-pixel features, one cluster per clicked pixel, initial centres =
  the features at the clicks; every pixel takes its cluster's seed-click class. Features
  (registry :data:`KMEANS_FEATURES`): ``embeddings`` = the trained network's embeddings
  bilinearly upsampled to the image (computed exactly without materialising them, see
  :class:`UpsampledFeatures`), or ``rgbxy`` = colour / 255 and position / max(H, W).
* ``score`` (threshold t) — Eq. 6 alone; ``region`` (size r, default 5) — r x r squares around
  the clicks; ``score+region`` (t, r) — Eq. 7 read as sets, labelled with the arg-max;
  ``agree`` (t, r) — Eq. 7 read as labelled candidates (pointparse.extension). These four call
  :func:`pointparse.extension.online_extension` on the checkpoint's softmax at full image
  resolution (whole-image inference, no flip, full precision).

Conventions shared by every method (and with :func:`pointparse.extension.extension_stats`, which
counts them): labels are uint8 [H, W] class ids, 255 = unlabelled; a clicked pixel always keeps
its click's class; *new* pixels are the labelled pixels that are not clicks. Extension accuracy =
new pixels whose label equals the dense ground truth / new pixels whose ground truth is not 255;
coverage = ground-truth pixels (not 255) carrying any label, clicks included / ground-truth pixels.
Per-class accuracy is counted by the *extended* class (of the new pixels labelled c, the share
that are c), per-class coverage by the ground-truth class.

Neither SLIC (grid initialisation) nor K-means (clicks as centres) draws random numbers, so both
are deterministic without a seed; they run over images in worker processes with one thread each,
and the result is identical to a serial run (each image's computation is also single-threaded
there).

Stages (cached, see :mod:`pointparse.cache`): one ``extension-row`` per table row (counts +
example overlays), optionally a train + evaluate per row (``extension-labels`` holds the offline
labels superpixel / kmeans train on), and ``ablate-extension`` which assembles the table from the
rows' keys, so adding a threshold later computes only that row.
"""

from __future__ import annotations

import collections
import dataclasses
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import IGNORE_INDEX
from .cache import StageCache, StageResult, content_fingerprint, stage_key
from .datasets import SegmentationDataset
from .errors import ConfigError, DataError, unknown_choice
from .extension import STAT_KEYS, extension_stats, finalize_extension_stats, online_extension
from .io import (atomic_file, atomic_out_dir, read_json, safe_name, write_image, write_json,
                 write_label_png)
from .pool import fork_pool, one_thread
from .predictor import Predictor

#: SLIC superpixels asked for per click, and the paper's range per image.
SUPERPIXELS_PER_CLICK = 8
SUPERPIXEL_RANGE = (50, 200)
#: SLIC's colour/space trade-off (scikit-image's default, Achanta et al.'s m = 10).
SLIC_COMPACTNESS = 10.0
#: the paper's cap on K-means iterations.
KMEANS_MAX_ITER = 300
#: Table 5's thresholds for score+region, and the one its score-only row uses.
TABLE5_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
SCORE_THRESHOLD = 0.7
DEFAULT_REGION = 5
STAGE_VERSIONS = {"extension-row": 2, "extension-labels": 1, "ablation-evaluate": 1, "ablate-extension": 2}
#: columns of ``extension_table.csv`` (Table 5's order); miou / pixel_acc only with training.
TABLE_COLUMNS = ("method", "threshold", "region", "extension_acc", "new_pixels_per_image", "coverage",
                 "miou", "pixel_acc", "time_s")


# ------------------------------------------------------------------------------------------------
# methods and rows
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtensionMethod:
    """One way of extending clicks (a row kind of Table 5).

    ``threshold`` / ``region``: whether the method takes a score threshold / square size.
    ``online``: trained through :class:`pointparse.train.TrainConfig`'s online extension; the
    others (superpixel, kmeans) are computed once and train as offline dense labels.
    ``default_thresholds``: the thresholds Table 5 shows for it.
    """

    name: str
    threshold: bool
    region: bool
    online: bool
    default_thresholds: tuple[float, ...] = ()

    def needs_network(self, kmeans_features: str) -> bool:
        """Whether computing the labels needs the checkpoint."""
        if self.name == "kmeans":
            return kmeans_features == "embeddings"
        return self.threshold


#: name -> method; the default grid is Table 5's rows in this order.
METHODS: dict[str, ExtensionMethod] = {
    "superpixel": ExtensionMethod("superpixel", threshold=False, region=False, online=False),
    "kmeans": ExtensionMethod("kmeans", threshold=False, region=False, online=False),
    "score": ExtensionMethod("score", threshold=True, region=False, online=True, default_thresholds=(SCORE_THRESHOLD,)),
    "region": ExtensionMethod("region", threshold=False, region=True, online=True),
    "score+region": ExtensionMethod("score+region", threshold=True, region=True, online=True,
                                    default_thresholds=TABLE5_THRESHOLDS),
    # Eq. 7's other reading (pointparse.extension): kept where the arg-max agrees with the click
    "agree": ExtensionMethod("agree", threshold=True, region=True, online=True, default_thresholds=TABLE5_THRESHOLDS),
}

#: K-means feature kinds.
KMEANS_FEATURES = {
    "embeddings": "the checkpoint's embeddings, bilinearly upsampled to the image",
    "rgbxy": "colour / 255 and position / max(H, W), equal weights",
}


def get_method(name: str) -> ExtensionMethod:
    if name not in METHODS:
        raise unknown_choice("extension method", name, METHODS)
    return METHODS[name]


@dataclass(frozen=True)
class AblationRow:
    """One row of the table: a method with its threshold and region size (``None`` = n/a)."""

    method: str
    threshold: float | None = None
    region: int | None = None

    def __post_init__(self) -> None:
        m = get_method(self.method)
        if m.threshold != (self.threshold is not None):
            raise ConfigError(f"extension method {self.method!r} " + ("needs a threshold" if m.threshold
                                                                       else "takes no threshold"))
        if m.region != (self.region is not None):
            raise ConfigError(f"extension method {self.method!r} " + ("needs a region size" if m.region
                                                                       else "takes no region size"))
        if self.threshold is not None and not 0.0 <= float(self.threshold) < 1.0:
            raise ConfigError(f"extension threshold must be in [0, 1), got {self.threshold!r}")
        if self.region is not None and (int(self.region) != self.region or self.region < 1 or self.region % 2 == 0):
            raise ConfigError(f"extension region must be an odd integer >= 1 (square side in pixels), got {self.region!r}")

    @property
    def label(self) -> str:
        """Human name, e.g. ``score+region t=0.7 r=5``."""
        parts = [self.method]
        if self.threshold is not None:
            parts.append(f"t={self.threshold:g}")
        if self.region is not None:
            parts.append(f"r={self.region}")
        return " ".join(parts)

    @property
    def slug(self) -> str:
        """File-name form, e.g. ``score+region-t0.7-r5``."""
        return self.label.replace(" ", "-").replace("=", "")


def build_grid(methods: Sequence[str] | None = None, thresholds: Sequence[float] | None = None,
               region: int = DEFAULT_REGION) -> list[AblationRow]:
    """The rows to compute: Table 5's by default.

    ``methods`` picks the methods (default: all, in Table 5's order); a thresholded method gets
    one row per threshold in ``thresholds``, or its Table 5 thresholds when none are given
    (score: 0.7; score+region: 0.5..0.9). Duplicates are dropped, order kept.
    """
    names = list(methods) if methods else list(METHODS)
    if not names:
        raise ConfigError("no extension method chosen")
    rows: list[AblationRow] = []
    for name in names:
        m = get_method(name)
        ts = [float(t) for t in thresholds] if (thresholds and m.threshold) else list(m.default_thresholds) or [None]
        for t in ts if m.threshold else [None]:
            row = AblationRow(name, t, int(region) if m.region else None)
            if row not in rows:
                rows.append(row)
    return rows


@dataclass
class AblationConfig:
    """What ``ablate-extension`` computes.

    ``methods`` / ``thresholds``: see :func:`build_grid` (None = Table 5). ``limit``: use only
    that many images of the split, evenly spaced in its order (None = all). ``examples``: how
    many images (the first of the used ones) get overlay PNGs. ``workers``: processes for
    superpixel / kmeans (0 or 1 = serial; the result does not depend on it). ``device``: where
    the network runs (auto = CUDA when available).
    """

    methods: tuple[str, ...] | None = None
    thresholds: tuple[float, ...] | None = None
    region: int = DEFAULT_REGION
    kmeans_features: str = "embeddings"
    limit: int | None = None
    examples: int = 3
    workers: int = 2
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.kmeans_features not in KMEANS_FEATURES:
            raise unknown_choice("K-means feature kind", self.kmeans_features, KMEANS_FEATURES)
        if self.limit is not None and (int(self.limit) != self.limit or self.limit < 1):
            raise ConfigError(f"limit must be a positive number of images, got {self.limit!r}")
        if int(self.examples) < 0 or int(self.workers) < 0:
            raise ConfigError("examples and workers must be >= 0")

    def rows(self) -> list[AblationRow]:
        return build_grid(self.methods, self.thresholds, self.region)


@dataclass
class AblationTrainConfig:
    """``--train``: each row's labels also train a model, evaluated on the ablation split.

    Online rows (score, region, score+region) train from ``points`` (a make-points artefact of
    ``split``) with that extension mode; superpixel / kmeans rows train with full-mask CE on their
    offline labels of ``split`` (no PDML: the trainer's full supervision has none). Everything
    else (backbone, PDML, lr, ...) is the checkpoint's training configuration; ``init=checkpoint``
    starts from the checkpoint's weights ("on the basis of the weight obtained by PDML"),
    ``imagenet`` from the backbone's ImageNet weights. ``lr`` None keeps the checkpoint's.
    """

    split: str = "train"
    points: str | None = None
    epochs: int = 10
    batch_size: int = 8
    crop_size: int = 321
    lr: float | None = None
    init: str = "checkpoint"
    workers: int | None = None  # DataLoader processes; None = auto (pointparse.pool.loader_workers)

    def __post_init__(self) -> None:
        if self.init not in ("checkpoint", "imagenet"):
            raise unknown_choice("training initialisation", self.init, ("checkpoint", "imagenet"))
        if not self.points:
            raise ConfigError(f"--train needs --train-points: a make-points artefact of split {self.split!r}")


# ------------------------------------------------------------------------------------------------
# per-image extension
# ------------------------------------------------------------------------------------------------


def click_coordinates(click_map: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, classes) int64 [K] of the clicked pixels of a uint8 [H, W] map, raster order."""
    ys, xs = np.nonzero(click_map != IGNORE_INDEX)
    return ys.astype(np.int64), xs.astype(np.int64), click_map[ys, xs].astype(np.int64)


def superpixel_count(num_clicks: int) -> int:
    """SLIC superpixels asked for an image with ``num_clicks`` clicks (module docstring rule)."""
    lo, hi = SUPERPIXEL_RANGE
    return int(min(max(round(SUPERPIXELS_PER_CLICK * num_clicks), lo), hi))


def superpixel_segments(image: np.ndarray, num_clicks: int) -> np.ndarray:
    """SLIC segment ids int64 [H, W] (0-based) of a uint8 RGB [H, W, 3] image."""
    from skimage.segmentation import slic  # deferred: only this method needs scikit-image

    return slic(image, n_segments=superpixel_count(num_clicks), compactness=SLIC_COMPACTNESS, start_label=0,
                channel_axis=-1).astype(np.int64)


def superpixel_extension(segments: np.ndarray, click_map: np.ndarray) -> np.ndarray:
    """Extend clicks to their superpixels: uint8 [H, W] labels, 255 where no click reaches.

    ``segments`` int [H, W] superpixel ids; ``click_map`` uint8 [H, W] (255 off clicks). A
    superpixel with clicks of one class takes it; one with several classes gives each pixel the
    class of its nearest click inside it (ties: the click first in raster order). Clicks keep
    their class.
    """
    ys, xs, cls = click_coordinates(click_map)
    out = np.full(click_map.shape, IGNORE_INDEX, np.uint8)
    if not len(cls):
        return out
    seg = np.asarray(segments, np.int64)
    seg_of_click = seg[ys, xs]
    lut = np.full(int(seg.max()) + 1, IGNORE_INDEX, np.uint8)
    mixed = []
    for s in np.unique(seg_of_click):
        k = np.flatnonzero(seg_of_click == s)
        if np.all(cls[k] == cls[k[0]]):
            lut[s] = cls[k[0]]
        else:
            mixed.append((s, k))
    out = lut[seg]
    for s, k in mixed:
        py, px = np.nonzero(seg == s)
        d2 = (py[:, None] - ys[k][None, :]) ** 2 + (px[:, None] - xs[k][None, :]) ** 2
        out[py, px] = cls[k][d2.argmin(axis=1)]  # argmin takes the first minimum: raster-first click
    out[ys, xs] = cls
    return out


def _interp_matrix(n_in: int, n_out: int, dtype=torch.float32) -> torch.Tensor:
    """[n_out, n_in] weights of 1-D linear resizing (``align_corners=False``), as torch computes it."""
    eye = torch.eye(n_in, dtype=dtype).unsqueeze(0)
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].T.contiguous()


class DenseFeatures:
    """Explicit per-pixel features ``x`` float32 [H, W, D] for :func:`kmeans_extension`."""

    def __init__(self, x: torch.Tensor):
        self.x = x.float().contiguous()
        self.shape = tuple(x.shape[:2])

    def at(self, ys: np.ndarray, xs: np.ndarray) -> torch.Tensor:
        """[K, D] features of pixels (ys, xs)."""
        return self.x[torch.from_numpy(ys), torch.from_numpy(xs)].clone()

    def dots(self, centres: torch.Tensor) -> torch.Tensor:
        """[K, H, W] dot products of every pixel with every centre."""
        h, w = self.shape
        return (centres @ self.x.view(h * w, -1).T).view(-1, h, w)

    def nearest(self, centres: torch.Tensor) -> torch.Tensor:
        """int64 [H, W]: each pixel's nearest centre (squared Euclidean; ties to the lower index)."""
        # argmin ||x - c||² = argmin (||c||² - 2 x·c): ||x||² is the same for every centre
        k = centres.shape[0]
        return ((centres * centres).sum(1).view(k, 1, 1) - 2.0 * self.dots(centres)).argmin(0)

    def cluster_sums(self, assign: torch.Tensor, k: int) -> torch.Tensor:
        """[K, D] feature sums of the pixels assigned to each cluster."""
        d = self.x.shape[-1]
        return torch.zeros(k, d, dtype=self.x.dtype).index_add_(0, assign.reshape(-1), self.x.view(-1, d))


class UpsampledFeatures:
    """Features ``f`` [D, h, w] bilinearly upsampled to [H, W], used without materialising them.

    Bilinear resizing is separable and linear: ``x(y, x) = sum_ij Ah[y, i] Aw[x, j] f[:, i, j]``
    with 1-D interpolation matrices ``Ah`` [H, h], ``Aw`` [W, w] of at most two taps per row. So
    a pixel's dot product with a centre is the upsampled low-resolution dot-product map, and a
    cluster's feature sum is ``f`` weighted by ``Ahᵀ M Aw`` (M = the cluster's pixel mask) — exact,
    and D times cheaper in memory than the [H, W, D] tensor (D = 1280 for EfficientNet-Lite0).
    Sums use the two taps rather than dense matrix products.
    """

    def __init__(self, f: torch.Tensor, size: tuple[int, int]):
        self.f = f.float().contiguous()
        d, h, w = self.f.shape
        self.shape = (int(size[0]), int(size[1]))
        self.ah = _interp_matrix(h, self.shape[0])
        self.aw = _interp_matrix(w, self.shape[1])
        # the two taps of each output row / column: index [2, n_out], weight [2, n_out]
        wy, iy = self.ah.topk(2, dim=1)
        wx, ix = self.aw.topk(2, dim=1)
        self._iy, self._wy = iy.T.contiguous(), wy.T.double()
        self._ix, self._wx = ix.T.contiguous(), wx.T.double()

    def at(self, ys: np.ndarray, xs: np.ndarray) -> torch.Tensor:
        wy = self.ah[torch.from_numpy(ys)]  # [K, h]
        wx = self.aw[torch.from_numpy(xs)]  # [K, w]
        return torch.einsum("ki,kj,dij->kd", wy, wx, self.f)

    def dots(self, centres: torch.Tensor) -> torch.Tensor:
        low = torch.einsum("kd,dij->kij", centres, self.f)  # [K, h, w]
        return F.interpolate(low[None], size=self.shape, mode="bilinear", align_corners=False)[0]  # [K, H, W]

    def nearest(self, centres: torch.Tensor) -> torch.Tensor:
        """int64 [H, W]: each pixel's nearest centre, as :meth:`DenseFeatures.nearest`.

        Interpolation weights sum to one, so ``||c||² - 2 x·c`` is itself the upsampled
        low-resolution score; upsampling it channels-last makes the argmin over centres a
        contiguous reduction (the [K, H, W] argmin over the first axis is ~5x slower).
        """
        k = centres.shape[0]
        low = (centres * centres).sum(1).view(k, 1, 1) - 2.0 * torch.einsum("kd,dij->kij", centres, self.f)
        low = low[None].contiguous(memory_format=torch.channels_last)
        return F.interpolate(low, size=self.shape, mode="bilinear", align_corners=False)[0].argmin(0)

    def cluster_sums(self, assign: torch.Tensor, k: int) -> torch.Tensor:
        d, h, w = self.f.shape
        base = assign.reshape(self.shape).long() * (h * w)  # [H, W]
        weights = torch.zeros(k * h * w, dtype=torch.float64)
        for a in range(2):
            for b in range(2):
                idx = base + (self._iy[a] * w).view(-1, 1) + self._ix[b].view(1, -1)
                val = self._wy[a].view(-1, 1) * self._wx[b].view(1, -1)
                weights += torch.bincount(idx.reshape(-1), weights=val.expand_as(idx).reshape(-1), minlength=k * h * w)
        return torch.einsum("kij,dij->kd", weights.view(k, h, w).float(), self.f)


def rgbxy_features(image: np.ndarray) -> DenseFeatures:
    """Low-level features of a uint8 RGB [H, W, 3] image: (r, g, b) / 255 and (x, y) / max(H, W)."""
    h, w = image.shape[:2]
    scale = float(max(h, w))
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    rgb = torch.from_numpy(np.array(image, dtype=np.float32)) / 255.0  # a copy: decoded images may be read-only
    return DenseFeatures(torch.cat([rgb, (xx / scale)[..., None], (yy / scale)[..., None]], dim=-1))


def kmeans_extension(features, click_map: np.ndarray, max_iter: int = KMEANS_MAX_ITER) -> tuple[np.ndarray, int]:
    """K-means seeded at the clicks: (uint8 [H, W] labels, iterations run).

    ``features``: :class:`DenseFeatures` or :class:`UpsampledFeatures` of the image. One cluster
    per clicked pixel, initial centre = its feature; each Lloyd iteration assigns every pixel to
    the nearest centre (squared Euclidean, ties to the lower cluster = earlier click in raster
    order) and moves each non-empty cluster's centre to its mean (an empty cluster keeps its
    centre). Stops when no assignment changes or after ``max_iter`` assignments. Every pixel
    takes its cluster's click class; clicks keep their own. No click: all 255.
    """
    ys, xs, cls = click_coordinates(click_map)
    if not len(cls):
        return np.full(click_map.shape, IGNORE_INDEX, np.uint8), 0
    k = len(cls)
    centres = features.at(ys, xs)
    assign = None
    it = 0
    for it in range(1, int(max_iter) + 1):
        new = features.nearest(centres)
        if assign is not None and torch.equal(new, assign):
            break
        assign = new
        counts = torch.bincount(assign.reshape(-1), minlength=k)
        sums = features.cluster_sums(assign, k)
        keep = counts > 0
        centres[keep] = sums[keep] / counts[keep].unsqueeze(1).to(sums.dtype)
    out = cls.astype(np.uint8)[assign.numpy()]
    out[ys, xs] = cls
    return out, it


def _single_thread():
    """Run a block with one torch thread (restored after): the same arithmetic in a worker
    process and in a serial run, so parallel results equal serial ones bit for bit."""
    return one_thread(torch.get_num_threads, torch.set_num_threads)


@dataclass
class _OfflineJob:
    """What a worker needs for one image's superpixel / kmeans labels (picklable)."""

    method: str
    click_map: np.ndarray
    image: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    kmeans_features: str = "embeddings"


def _run_offline_job(job: _OfflineJob) -> tuple[np.ndarray, dict]:
    """Labels uint8 [H, W] and per-image info of one superpixel / kmeans job."""
    with _single_thread():
        n = int(np.count_nonzero(job.click_map != IGNORE_INDEX))
        if job.method == "superpixel":
            if n == 0:
                return np.full(job.click_map.shape, IGNORE_INDEX, np.uint8), {"superpixels": 0}
            seg = superpixel_segments(job.image, n)
            return superpixel_extension(seg, job.click_map), {"superpixels": int(seg.max()) + 1}
        if job.method == "kmeans":
            if job.kmeans_features == "rgbxy":
                feats = rgbxy_features(job.image)
            else:
                feats = UpsampledFeatures(torch.from_numpy(job.embeddings), job.click_map.shape)
            labels, iters = kmeans_extension(feats, job.click_map)
            return labels, {"kmeans_iterations": iters}
    raise unknown_choice("offline extension method", job.method, ("superpixel", "kmeans"))


def _init_worker() -> None:
    # each of N workers gets one core, no nested thread pools (OpenCV's is set by fork_pool:
    # a forked child must not call cv2.setNumThreads)
    torch.set_num_threads(1)


def _ordered_map(fn: Callable, items: Iterator[tuple[Any, Any]], workers: int) -> Iterator[tuple[Any, Any]]:
    """``(tag, fn(job))`` for each ``(tag, job)`` of ``items``, in order; at most 2 jobs per worker
    in flight so a long split never sits in memory at once."""
    if workers <= 1:
        for tag, job in items:
            yield tag, fn(job)
        return
    with fork_pool(workers, initializer=_init_worker) as pool:
        window: collections.deque = collections.deque()
        try:
            for tag, job in items:
                window.append((tag, pool.submit(fn, job)))
                if len(window) >= 2 * workers:
                    t, fut = window.popleft()
                    yield t, fut.result()
            while window:
                t, fut = window.popleft()
                yield t, fut.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


class Network:
    """A loaded checkpoint used for inference: softmax and embeddings of whole images."""

    def __init__(self, checkpoint: str | Path, device: str = "auto", cache: StageCache | None = None):
        self.predictor = Predictor.from_checkpoint(checkpoint, device, cache)
        self.path, self.model, self.info = self.predictor.path, self.predictor.model, self.predictor.info
        self.device, self.mean, self.std = self.predictor.device, self.predictor.mean, self.predictor.std

    def _input(self, image: np.ndarray) -> torch.Tensor:
        return self.predictor.normalise(image)

    @torch.no_grad()
    def probs(self, image: np.ndarray) -> torch.Tensor:
        """Softmax [1, C, H, W] float32 (CPU) at the image's resolution."""
        from .evaluate import EvalConfig, predict_logits

        logits = predict_logits(self.model, self._input(image), EvalConfig(amp="off"), self.info.num_classes)
        return torch.softmax(logits.float(), dim=1).cpu()

    @torch.no_grad()
    def embeddings(self, image: np.ndarray) -> np.ndarray:
        """Embeddings float32 [D, h, w] (the features PDML shapes), at the network's stride."""
        return self.model(self._input(image))["embeddings"][0].float().cpu().numpy()


def online_labels(row: AblationRow, click_map: np.ndarray, probs: torch.Tensor | None) -> np.ndarray:
    """score / region / score+region labels uint8 [H, W] via :func:`online_extension`.

    ``probs`` [1, C, H, W] softmax (``None`` for ``region``, which ignores scores).
    """
    h, w = click_map.shape
    if probs is None:
        if get_method(row.method).threshold:
            raise ConfigError(f"extension method {row.method!r} needs the network's scores")
        probs = torch.zeros(1, 1, 1, 1).expand(1, 1, h, w)
    points = torch.from_numpy(click_map.astype(np.int64)).unsqueeze(0)
    ext = online_extension(probs, points, threshold=row.threshold if row.threshold is not None else 0.0,
                           region=row.region if row.region is not None else 1, mode=row.method)
    return ext[0].numpy().astype(np.uint8)


def iter_extended(dataset: SegmentationDataset, click_maps: Callable[[str], np.ndarray], row: AblationRow,
                  kmeans_features: str = "embeddings", network: Network | None = None, workers: int = 0,
                  with_mask: bool = True, progress: bool = False) -> Iterator[tuple[int, Any, np.ndarray, np.ndarray, dict]]:
    """Extend every image of ``dataset`` with ``row``'s method, in dataset order.

    Yields ``(index, sample, click_map, labels, info)``: the loaded :class:`Sample` (image, and
    mask when ``with_mask``), the uint8 click map, the uint8 [H, W] extended labels and per-image
    info (superpixels, K-means iterations). superpixel / kmeans run in ``workers`` processes;
    the network (when the method needs it) runs in this process.
    """
    method = get_method(row.method)
    if method.needs_network(kmeans_features) and network is None:
        raise ConfigError(f"extension method {row.label!r} needs a checkpoint")
    bar = tqdm(total=len(dataset), desc=row.label, unit="img", disable=not progress, leave=False)

    def samples():
        for i in range(len(dataset)):
            sample = dataset.load(i, with_instances=False) if with_mask else _image_only(dataset, i)
            cmap = click_maps(sample.name)
            yield i, sample, cmap

    try:
        if method.online:
            for i, sample, cmap in samples():
                probs = network.probs(sample.image) if method.threshold else None
                yield i, sample, cmap, online_labels(row, cmap, probs), {}
                bar.update(1)
            return

        def jobs():
            for i, sample, cmap in samples():
                emb = None
                if row.method == "kmeans" and kmeans_features == "embeddings":
                    emb = network.embeddings(sample.image)
                image = sample.image if emb is None else None  # embeddings K-means never looks at pixels
                yield (i, sample, cmap), _OfflineJob(row.method, cmap, image, emb, kmeans_features)

        for (i, sample, cmap), (labels, info) in _ordered_map(_run_offline_job, jobs(), int(workers)):
            yield i, sample, cmap, labels, info
            bar.update(1)
    finally:
        bar.close()


def _image_only(dataset: SegmentationDataset, i: int):
    from .datasets import Sample

    return Sample(dataset.names[i], dataset.load_image(i), None, None)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# counting
# ------------------------------------------------------------------------------------------------


class ExtensionCounts:
    """Summed Table 5 counts over images, in total (:data:`STAT_KEYS`) and per class.

    Per class: ``evaluated[c]`` / ``correct[c]`` count new pixels *labelled* c (GT not 255) and
    those whose GT is c; ``gt_pixels[c]`` / ``covered[c]`` count GT pixels of class c and those
    that carry any label (clicks included).
    """

    def __init__(self, num_classes: int):
        self.num_classes = int(num_classes)
        self.totals = {k: 0 for k in STAT_KEYS}
        z = lambda: np.zeros(self.num_classes, np.int64)  # noqa: E731
        self.evaluated, self.correct, self.gt_pixels, self.covered = z(), z(), z(), z()

    def add(self, labels: np.ndarray, click_map: np.ndarray, gt: np.ndarray) -> None:
        """Count one image: uint8 [H, W] extended labels, click map and dense GT (255 = ignore)."""
        lab = torch.from_numpy(labels.astype(np.int64))[None]
        stats = extension_stats(lab, torch.from_numpy(click_map.astype(np.int64))[None],
                                torch.from_numpy(gt.astype(np.int64))[None])
        for k in STAT_KEYS:
            self.totals[k] += int(stats[k])
        c = self.num_classes
        gt_ok = gt != IGNORE_INDEX
        labelled = labels != IGNORE_INDEX
        evaluated = labelled & (click_map == IGNORE_INDEX) & gt_ok
        self.evaluated += np.bincount(labels[evaluated], minlength=c)[:c]
        self.correct += np.bincount(labels[evaluated & (labels == gt)], minlength=c)[:c]
        self.gt_pixels += np.bincount(gt[gt_ok], minlength=c)[:c]
        self.covered += np.bincount(gt[gt_ok & labelled], minlength=c)[:c]

    def summary(self) -> dict:
        """``finalize_extension_stats`` of the totals (accuracy, coverage, new_pixels_per_image, counts)."""
        return finalize_extension_stats(self.totals)

    def per_class(self, classes: Sequence[str]) -> list[dict]:
        def ratio(a, b):
            return float(a) / float(b) if b else None

        return [{"class": name, "evaluated": int(self.evaluated[c]), "correct": int(self.correct[c]),
                 "accuracy": ratio(self.correct[c], self.evaluated[c]), "gt_pixels": int(self.gt_pixels[c]),
                 "covered": int(self.covered[c]), "coverage": ratio(self.covered[c], self.gt_pixels[c])}
                for c, name in enumerate(classes)]


def overlay(image: np.ndarray, labels: np.ndarray, click_map: np.ndarray, palette, alpha: float = 0.6) -> np.ndarray:
    """uint8 RGB [H, W, 3]: the image blended with the palette colour of each labelled pixel
    (255 = left as is), each click marked by a hollow white ring around it: a filled dot would
    hide exactly the few pixels (the 5×5 squares) that region extension labels."""
    pal = np.zeros((256, 3), np.float32)
    pal[: len(palette)] = np.asarray(palette, np.float32)
    out = image.astype(np.float32).copy()
    m = labels != IGNORE_INDEX
    out[m] = (1.0 - alpha) * out[m] + alpha * pal[labels[m]]
    out = np.clip(out, 0, 255).astype(np.uint8)
    ys, xs, cls = click_coordinates(click_map)
    r = max(5, min(image.shape[:2]) // 60)  # outside a 5x5 square's corners (radius 2.9)
    for y, x, c in zip(ys, xs, cls):
        cv2.circle(out, (int(x), int(y)), r + 1, (0, 0, 0), 1, lineType=cv2.LINE_AA)
        cv2.circle(out, (int(x), int(y)), r, (255, 255, 255), 1, lineType=cv2.LINE_AA)
        out[int(y), int(x)] = pal[c].astype(np.uint8)
    return out


# ------------------------------------------------------------------------------------------------
# the data a run reads, and its checks
# ------------------------------------------------------------------------------------------------


class SplitView(SegmentationDataset):
    """Some images of a dataset split (``indices`` into ``base``), read through ``base``."""

    def __init__(self, base: SegmentationDataset, indices: Sequence[int]):
        super().__init__(base.root, base.split, base.info)
        self.base = base
        self.indices = [int(i) for i in indices]
        self.names = [base.names[i] for i in self.indices]

    def image_path(self, i: int) -> Path:
        return self.base.image_path(self.indices[i])

    def mask_path(self, i: int) -> Path | None:
        return self.base.mask_path(self.indices[i])

    def instance_path(self, i: int) -> Path | None:
        return self.base.instance_path(self.indices[i])

    def image_size(self, i: int) -> tuple[int, int]:
        return self.base.image_size(self.indices[i])

    def load_image(self, i: int) -> np.ndarray:
        return self.base.load_image(self.indices[i])

    def load_mask(self, i: int) -> np.ndarray:
        return self.base.load_mask(self.indices[i])

    def load(self, i: int, with_image: bool = True, check_size: bool = True, with_instances: bool = True):
        return self.base.load(self.indices[i], with_image, check_size, with_instances)

    def files(self) -> list[Path]:
        return self.base.files()


def subset_indices(n: int, limit: int | None) -> list[int]:
    """``limit`` indices evenly spaced over ``0..n-1`` (all when ``limit`` is None or >= n)."""
    if limit is None or limit >= n:
        return list(range(n))
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, int(limit))})


def check_points_cover(points, dataset: SegmentationDataset, points_path: Path) -> None:
    """The points artefact must have the dataset's classes and every used image, at its size."""
    from .stages import check_points_match

    check_points_match(points.info, dataset, points_path)
    names = set(points.names)
    missing = [n for n in dataset.names if n not in names]
    made_for = points.meta.get("split")
    hint = f" (it was made for split {made_for!r}; run make-points on split {dataset.split!r})" if made_for else ""
    if len(missing) == len(dataset.names):
        raise DataError(points_path, f"holds none of the {len(dataset)} images of split {dataset.split!r}{hint}")
    if missing:
        raise DataError(points_path, f"has no clicks for {len(missing)} of the {len(dataset)} images of split "
                                     f"{dataset.split!r}, e.g. {missing[0]!r}{hint}")
    for i, name in enumerate(dataset.names):
        if tuple(points.image_sizes[name]) != tuple(dataset.image_size(i)):
            (h, w), (ph, pw) = dataset.image_size(i), points.image_sizes[name]
            raise DataError(points_path, f"image {name!r} is {pw}x{ph} in the points but {w}x{h} in "
                                         f"{dataset.image_path(i)}: points from another dataset?")


def check_dense(dataset: SegmentationDataset) -> None:
    if not dataset.has_dense_labels:
        raise DataError(dataset.root, f"split {dataset.split!r} has no dense ground truth; the extension "
                                      "accuracy needs a split with dense masks (e.g. --split val)")


def check_network(network: Network, dataset: SegmentationDataset) -> None:
    if tuple(network.info.classes) != tuple(dataset.info.classes):
        from .stages import class_difference

        raise DataError(network.path, f"the checkpoint predicts {network.info.num_classes} classes "
                                      f"({network.info.protocol}) but split {dataset.split!r} of {dataset.root} has "
                                      f"{dataset.info.num_classes} ({dataset.info.protocol}): "
                                      f"{class_difference(network.info.classes, dataset.info.classes)}")


# ------------------------------------------------------------------------------------------------
# one row
# ------------------------------------------------------------------------------------------------


def extension_row(dataset: SegmentationDataset, points, row: AblationRow, cfg: AblationConfig,
                  network: Network | None, out_dir: Path, progress: bool = False) -> dict:
    """Compute one table row over ``dataset`` into ``out_dir``: ``counts.json`` and
    ``examples/<image>.png`` overlays (first ``cfg.examples`` images). Returns the counts dict."""
    t0 = time.perf_counter()
    counts = ExtensionCounts(dataset.info.num_classes)
    infos: dict[str, list] = collections.defaultdict(list)
    for i, sample, cmap, labels, info in iter_extended(dataset, points.label_map, row, cfg.kmeans_features,
                                                       network, cfg.workers, progress=progress):
        counts.add(labels, cmap, sample.mask)
        for k, v in info.items():
            infos[k].append(v)
        if i < cfg.examples:
            name = safe_name(sample.name, dataset.image_path(i))  # names come from files: untrusted
            write_image(out_dir / "examples" / f"{name}.png",
                        overlay(sample.image, labels, cmap, dataset.info.palette))
    elapsed = time.perf_counter() - t0
    doc = {"row": dataclasses.asdict(row), "label": row.label, "images": len(dataset),
           "kmeans_features": cfg.kmeans_features if row.method == "kmeans" else None,
           "totals": counts.summary(), "per_class": counts.per_class(dataset.info.classes),
           "time_s": elapsed, **{f"mean_{k}": float(np.mean(v)) for k, v in infos.items() if v}}
    write_json(out_dir / "counts.json", doc)
    return doc


def _row_params(row: AblationRow, cfg: AblationConfig) -> dict:
    p: dict[str, Any] = {"row": dataclasses.asdict(row), "limit": cfg.limit, "examples": int(cfg.examples)}
    if row.method == "superpixel":
        p["superpixel"] = {"per_click": SUPERPIXELS_PER_CLICK, "range": list(SUPERPIXEL_RANGE),
                           "compactness": SLIC_COMPACTNESS}
    if row.method == "kmeans":
        p["kmeans"] = {"features": cfg.kmeans_features, "max_iter": KMEANS_MAX_ITER}
    if get_method(row.method).threshold:
        p["inference"] = {"window": 0, "flip": False, "amp": "off"}
    return p


# ------------------------------------------------------------------------------------------------
# training on each row's labels
# ------------------------------------------------------------------------------------------------


def write_offline_labels(dataset: SegmentationDataset, points, row: AblationRow, kmeans_features: str,
                         network: Network | None, out_dir: Path, workers: int = 0, progress: bool = False) -> dict:
    """A folder dataset (``out_dir``, layout of :class:`pointparse.datasets.FolderDataset`) whose
    masks are ``row``'s extended labels of ``dataset`` (255 where unlabelled) and whose images are
    copies of the originals; split name = ``dataset.split``. Returns summary numbers."""
    info = dataset.info
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"{c} {name} {r}:{g}:{b}" for c, (name, (r, g, b)) in enumerate(zip(info.classes, info.palette))]
    (out_dir / "classes.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    img_dir, mask_dir = out_dir / "images" / dataset.split, out_dir / "masks" / dataset.split
    img_dir.mkdir(parents=True)
    mask_dir.mkdir(parents=True)
    pal = np.asarray(info.palette, np.uint8)
    new = labelled = 0
    for i, sample, cmap, labels, _ in iter_extended(dataset, points.label_map, row, kmeans_features, network,
                                                    workers, with_mask=False, progress=progress):
        src = Path(dataset.image_path(i))
        name = safe_name(sample.name, src)  # names come from files: untrusted
        shutil.copyfile(src, img_dir / f"{name}{src.suffix.lower()}")
        write_label_png(mask_dir / f"{name}.png", labels, palette=pal)
        labelled += int(np.count_nonzero(labels != IGNORE_INDEX))
        new += int(np.count_nonzero((labels != IGNORE_INDEX) & (cmap == IGNORE_INDEX)))
    return {"images": len(dataset), "new_pixels_per_image": new / max(len(dataset), 1),
            "labelled_pixels_per_image": labelled / max(len(dataset), 1)}


def _train_config(row: AblationRow, train: AblationTrainConfig, network: Network | None, device: str):
    from .train import TrainConfig

    base = TrainConfig.from_dict(network.predictor.train_config) if network is not None else TrainConfig()
    common = dict(epochs=int(train.epochs), batch_size=int(train.batch_size), crop_size=int(train.crop_size),
                  workers=train.workers, device=device, extension_start_epoch=0,
                  lr=float(train.lr) if train.lr is not None else base.lr)
    if train.init == "checkpoint":
        if network is None:
            raise ConfigError("--train with init=checkpoint needs a checkpoint")
        common["weights"] = str(network.path)
    elif base.weights != "imagenet":
        common["weights"] = "imagenet"
    if get_method(row.method).online:
        return dataclasses.replace(base, supervision="points", extension=row.method,
                                   threshold=row.threshold if row.threshold is not None else base.threshold,
                                   region=row.region if row.region is not None else base.region, **common)
    return dataclasses.replace(base, supervision="full", pdml=False, extension="none", **common)


def _evaluate_subset(checkpoint: Path, spec, view: SplitView, fingerprint: dict, cache: StageCache, device: str,
                     force: bool, progress: bool) -> StageResult:
    """``evaluate`` on the images of ``view`` only (``--limit``), cached like the evaluate stage."""
    from .evaluate import EvalConfig, evaluate_model, write_metrics

    eval_cfg = EvalConfig(workers=0, device=device)
    params = {"eval": dataclasses.replace(eval_cfg, device=""), "indices": view.indices}
    inputs = {"dataset": fingerprint, "checkpoint": content_fingerprint(checkpoint)}

    def build(tmp: Path) -> dict:
        pred = Predictor.from_checkpoint(checkpoint, device)
        info = pred.info
        metrics, cm = evaluate_model(pred.model, view, info.num_classes, eval_cfg, pred.device, list(pred.mean),
                                     list(pred.std), progress=progress)
        d = write_metrics(tmp, metrics, cm, info, {"split": spec.split, "images": len(view)})
        return {"summary": {"miou": d["miou"], "pixel_acc": d["pixel_acc"]}, "checkpoint": str(checkpoint)}

    return cache.run("ablation-evaluate", STAGE_VERSIONS["ablation-evaluate"], params, inputs, build, force=force)


# ------------------------------------------------------------------------------------------------
# the whole table
# ------------------------------------------------------------------------------------------------


@dataclass
class AblationResult:
    """What :func:`run_ablation` returns: the table artefact, its rows and the table itself."""

    table: StageResult
    rows: list[StageResult]
    frame: Any  # pandas DataFrame with TABLE_COLUMNS
    trained: list[tuple[StageResult, StageResult] | None] = field(default_factory=list)


def run_ablation(checkpoint: str | Path | None, spec, points: str | Path, cfg: AblationConfig, cache: StageCache,
                 train: AblationTrainConfig | None = None, force: bool = False, content_hash: bool = False,
                 progress: bool = True, row_builder: Callable | None = None) -> AblationResult:
    """The ``ablate-extension`` stage: Table 5 over a split with dense ground truth.

    ``spec``: the :class:`pointparse.stages.DatasetSpec` of the split; ``points``: a make-points
    artefact (folder or key) of that split; ``checkpoint``: a train artefact, key or .pt file
    (needed by score methods, kmeans on embeddings and ``--train`` from the checkpoint).
    Every input is checked before any work. Each row is its own cached ``extension-row`` stage
    (``row_builder`` replaces :func:`extension_row`, for tests); with ``train`` each row also
    trains a model and evaluates it on the split. The table artefact holds
    ``extension_table.csv``, ``per_class_accuracy.csv``, ``table.txt`` and
    ``examples/<row>_<image>.png``.
    """
    import pandas as pd

    from .io import read_json as _read_json
    from .points import load_points
    from .stages import dataset_fingerprint, open_spec

    build_row = row_builder or extension_row
    rows = cfg.rows()
    # --- every check first ---------------------------------------------------------------------
    ds = open_spec(spec, cache, progress)
    check_dense(ds)
    view = SplitView(ds, subset_indices(len(ds), cfg.limit))
    points_dir = cache.find(points, stage="make-points")
    ps = load_points(points_dir)
    check_points_cover(ps, view, ps.path)
    points_key = _read_json(points_dir / "manifest.json")["key"]
    network = None
    if checkpoint is not None:
        network = Network(checkpoint, cfg.device, cache)
        check_network(network, ds)
    needs = [r.label for r in rows if get_method(r.method).needs_network(cfg.kmeans_features)]
    if needs and network is None:
        raise ConfigError(f"row(s) {', '.join(needs)} need a checkpoint")
    train_ds = train_ps = train_points_key = None
    if train is not None:
        train_spec = spec.with_split(train.split)
        train_ds = open_spec(train_spec, cache, progress)
        train_dir = cache.find(train.points, stage="make-points")
        train_ps = load_points(train_dir)
        check_points_cover(train_ps, train_ds, train_ps.path)
        train_points_key = _read_json(train_dir / "manifest.json")["key"]
        if train.init == "checkpoint" and network is None:
            raise ConfigError("--train from the checkpoint needs a checkpoint")
    fp = dataset_fingerprint(spec, ds, content_hash)
    ckpt_fp = content_fingerprint(network.path) if network is not None else None

    # --- rows ------------------------------------------------------------------------------------
    row_results: list[StageResult] = []
    for row in rows:
        inputs = _row_inputs(row, cfg, fp, points_key, ckpt_fp)

        def build(tmp: Path, row=row) -> dict:
            doc = build_row(view, ps, row, cfg, network, tmp, progress)
            return {"summary": {"label": row.label, **{k: doc["totals"][k] for k in
                                                      ("accuracy", "coverage", "new_pixels_per_image")}}}

        row_results.append(cache.run("extension-row", STAGE_VERSIONS["extension-row"], _row_params(row, cfg),
                                     inputs, build, force=force))

    # --- optional training -------------------------------------------------------------------------
    trained: list[tuple[StageResult, StageResult] | None] = [None] * len(rows)
    if train is not None:
        from .stages import DatasetSpec, run_evaluate, run_train

        train_fp = dataset_fingerprint(spec.with_split(train.split), train_ds, content_hash)
        for j, row in enumerate(rows):
            tcfg = _train_config(row, train, network, cfg.device)
            if get_method(row.method).online:
                tres = run_train(spec.with_split(train.split), tcfg, cache, points=train.points,
                                 content_hash=content_hash, progress=progress)
            else:
                lab_inputs = {"dataset": train_fp, "points": train_points_key}
                if get_method(row.method).needs_network(cfg.kmeans_features):
                    lab_inputs["checkpoint"] = ckpt_fp
                lab_params = {k: v for k, v in _row_params(row, cfg).items() if k not in ("limit", "examples")}

                def build_labels(tmp: Path, row=row) -> dict:
                    s = write_offline_labels(train_ds, train_ps, row, cfg.kmeans_features, network, tmp / "data",
                                             cfg.workers, progress)
                    return {"summary": s}

                labels = cache.run("extension-labels", STAGE_VERSIONS["extension-labels"], lab_params, lab_inputs,
                                   build_labels)
                tres = run_train(DatasetSpec(kind="folder", root=str(labels.path / "data"), split=train.split), tcfg,
                                 cache, progress=progress)
            if cfg.limit is not None and len(view) < len(ds):
                eres = _evaluate_subset(tres.path / "model.pt", spec, view, fp, cache, cfg.device, False, progress)
            else:
                from .evaluate import EvalConfig

                eres = run_evaluate(tres.path, spec, EvalConfig(workers=0, device=cfg.device), cache,
                                    content_hash=content_hash, progress=progress)
            trained[j] = (tres, eres)

    # --- the table -------------------------------------------------------------------------------
    params, inputs = _table_key_parts(rows, [r.key for r in row_results],
                                      [None if tr is None else [tr[0].key, tr[1].key] for tr in trained])

    def build_table(tmp: Path) -> dict:
        frame, per_class = assemble_table(rows, row_results, trained)
        with atomic_file(tmp / "extension_table.csv") as f:
            frame.to_csv(f, index=False, lineterminator="\n")
        with atomic_file(tmp / "per_class_accuracy.csv") as f:
            per_class.to_csv(f, index=False, lineterminator="\n")
        (tmp / "table.txt").write_text(format_table(frame) + "\n", encoding="utf-8")
        for row, res in zip(rows, row_results):
            for png in sorted((res.path / "examples").glob("*.png")):
                (tmp / "examples").mkdir(exist_ok=True)
                shutil.copyfile(png, tmp / "examples" / f"{row.slug}_{png.name}")
        return {"summary": {"rows": len(rows), "split": spec.split, "images": len(view)}}

    table = cache.run("ablate-extension", STAGE_VERSIONS["ablate-extension"], params, inputs, build_table, force=force)
    frame = pd.read_csv(table.path / "extension_table.csv")
    return AblationResult(table, row_results, frame, trained)


def _row_inputs(row: AblationRow, cfg: AblationConfig, dataset_fp: Any, points_key: str, ckpt_fp: str | None) -> dict:
    inputs = {"dataset": dataset_fp, "points": points_key}
    if get_method(row.method).needs_network(cfg.kmeans_features):
        inputs["checkpoint"] = ckpt_fp
    return inputs


def _table_key_parts(rows: list[AblationRow], row_keys: list[str], trained_keys: list) -> tuple[dict, dict]:
    params = {"rows": [dataclasses.asdict(r) for r in rows], "train": any(t is not None for t in trained_keys)}
    return params, {"rows": row_keys, "trained": trained_keys}


def plan_ablation(spec, dataset: SegmentationDataset, points_key: str, checkpoint: Path | None, cfg: AblationConfig,
                  content_hash: bool = False) -> str:
    """The key :func:`run_ablation` (without ``train``) gives its table artefact, computed without
    running anything (``pointparse run --dry-run``). ``checkpoint``: the model.pt file or None."""
    from .stages import dataset_fingerprint

    fp = dataset_fingerprint(spec, dataset, content_hash)
    ckpt_fp = content_fingerprint(checkpoint) if checkpoint is not None else None
    rows = cfg.rows()
    row_keys = [stage_key("extension-row", STAGE_VERSIONS["extension-row"], _row_params(r, cfg),
                          _row_inputs(r, cfg, fp, points_key, ckpt_fp)) for r in rows]
    params, inputs = _table_key_parts(rows, row_keys, [None] * len(rows))
    return stage_key("ablate-extension", STAGE_VERSIONS["ablate-extension"], params, inputs)


def assemble_table(rows: list[AblationRow], row_results: list[StageResult], trained: list) -> tuple[Any, Any]:
    """(table, per-class table) DataFrames from the rows' ``counts.json`` (and metrics)."""
    import pandas as pd

    recs, per_class = [], []
    for row, res, tr in zip(rows, row_results, trained):
        doc = read_json(res.path / "counts.json")
        t = doc["totals"]
        rec = {"method": row.method, "threshold": row.threshold, "region": row.region,
               "extension_acc": t["accuracy"], "new_pixels_per_image": t["new_pixels_per_image"],
               "coverage": t["coverage"], "miou": None, "pixel_acc": None, "time_s": doc["time_s"]}
        if tr is not None:
            m = read_json(tr[1].path / "metrics.json")
            rec["miou"], rec["pixel_acc"] = m["miou"], m["pixel_acc"]
        recs.append(rec)
        for pc in doc["per_class"]:
            per_class.append({"method": row.method, "threshold": row.threshold, "region": row.region, **pc})
    columns = [c for c in TABLE_COLUMNS if any(tr is not None for tr in trained) or c not in ("miou", "pixel_acc")]
    frame = pd.DataFrame.from_records(recs, columns=list(TABLE_COLUMNS))[columns]
    frame["region"] = frame["region"].astype("Int64")
    return frame, pd.DataFrame.from_records(per_class)


def _blank(v) -> bool:
    import pandas as pd

    return v is None or bool(pd.isna(v))


def format_table(frame) -> str:
    """The table as text, ratios in percent (as the paper prints them), n/a cells blank."""
    show = frame.copy()
    fmt = {"threshold": lambda v: f"{v:g}", "region": lambda v: f"{int(v)}", "extension_acc": lambda v: f"{100 * v:.1f}%",
           "new_pixels_per_image": lambda v: f"{v:.0f}", "coverage": lambda v: f"{100 * v:.1f}%",
           "miou": lambda v: f"{100 * v:.1f}", "pixel_acc": lambda v: f"{100 * v:.1f}%", "time_s": lambda v: f"{v:.1f}"}
    for col, f in fmt.items():
        if col in show:
            show[col] = [("" if _blank(v) else f(v)) for v in show[col]]
    return show.to_string(index=False)


def copy_table(result: AblationResult, out: str | Path) -> Path:
    """Copy the table artefact's files into folder ``out`` (replaced atomically; only a new or empty
    folder or an earlier copy is replaced, see :func:`pointparse.io.check_out_dir`)."""
    out = Path(out)
    with atomic_out_dir(out, "ablate-extension", stage="ablate-extension") as tmp:
        for p in result.table.path.iterdir():
            if p.is_dir():
                shutil.copytree(p, tmp / p.name)
            else:
                shutil.copyfile(p, tmp / p.name)
    return out
