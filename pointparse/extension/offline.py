"""The offline methods (superpixel, kmeans) over many images, in worker processes.

One image is one :class:`OfflineJob` (picklable), computed by :func:`run_offline_job` with one
torch thread, in a worker process or in this one: the same arithmetic either way, so a parallel
run equals a serial one bit for bit (neither method draws random numbers).
:func:`ordered_map` runs jobs over a :func:`pointparse.pool.fork_pool` and yields them in order.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch

from .. import IGNORE_INDEX
from ..errors import unknown_choice
from ..pool import fork_pool, one_thread
from .kmeans import UpsampledFeatures, kmeans_extension, rgbxy_features
from .superpixel import superpixel_extension, superpixel_segments


def _single_thread():
    """Run a block with one torch thread (restored after): the same arithmetic in a worker
    process and in a serial run, so parallel results equal serial ones bit for bit."""
    return one_thread(torch.get_num_threads, torch.set_num_threads)


@dataclass
class OfflineJob:
    """What a worker needs for one image's superpixel / kmeans labels (picklable).

    ``click_map`` uint8 [H, W]; ``image`` uint8 RGB [H, W, 3] (superpixel, rgbxy K-means);
    ``embeddings`` float32 [D, h, w] (K-means on embeddings, which never looks at pixels).
    """

    method: str
    click_map: np.ndarray
    image: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    kmeans_features: str = "embeddings"


def run_offline_job(job: OfflineJob) -> tuple[np.ndarray, dict]:
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


def ordered_map(fn: Callable, items: Iterator[tuple[Any, Any]], workers: int) -> Iterator[tuple[Any, Any]]:
    """``(tag, fn(job))`` for each ``(tag, job)`` of ``items``, in order; at most 2 jobs per worker
    in flight so a long split never sits in memory at once. ``workers`` <= 1: in this process."""
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
