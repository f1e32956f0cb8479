"""One extension method measured over a dataset split: the labels, their counts and overlays.

:func:`iter_extended` extends every image of a split with a table row's method (the network runs
in this process, superpixel / kmeans in worker processes, :mod:`pointparse.extension.offline`);
:class:`ExtensionCounts` sums Table 5's counts (conventions: :mod:`pointparse.extension.methods`);
:func:`extension_row` writes one row's ``counts.json`` and example overlays. :class:`SplitView`
is the subset of a split that ``--limit`` measures.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import cv2
import numpy as np
import torch
from tqdm import tqdm

from .. import IGNORE_INDEX
from ..cache import StageCache
from ..datasets import Sample, SegmentationDataset
from ..errors import ConfigError
from ..evaluate import EvalConfig, predict_logits
from ..images import write_image
from ..io import safe_name, write_json
from ..points import PointSet
from ..predictor import Predictor
from ..sam.labeller import SamLabeller
from .methods import AblationConfig, AblationRow, click_coordinates, get_method
from .offline import OfflineJob, ordered_map, run_offline_job
from .online import STAT_KEYS, extension_stats, finalize_extension_stats, online_extension


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
                  with_mask: bool = True, progress: bool = False,
                  sam=None) -> Iterator[tuple[int, Any, np.ndarray, np.ndarray, dict]]:
    """Extend every image of ``dataset`` with ``row``'s method, in dataset order.

    Yields ``(index, sample, click_map, labels, info)``: the loaded :class:`Sample` (image, and
    mask when ``with_mask``), the uint8 click map, the uint8 [H, W] extended labels and per-image
    info (superpixels, K-means iterations). superpixel / kmeans run in ``workers`` processes;
    the network (when the method needs it) and SAM (``sam``: a
    :class:`pointparse.sam.labeller.SamLabeller`, for the ``sam`` method) run in this process.
    """
    method = get_method(row.method)
    if method.needs_network(kmeans_features) and network is None:
        raise ConfigError(f"extension method {row.label!r} needs a checkpoint")
    if row.method == "sam" and sam is None:
        raise ConfigError("extension method 'sam' needs a SAM labeller (pointparse.sam.labeller.SamLabeller)")
    bar = tqdm(total=len(dataset), desc=row.label, unit="img", disable=not progress, leave=False)

    def samples():
        for i in range(len(dataset)):
            sample = dataset.load(i, with_instances=False) if with_mask else _image_only(dataset, i)
            cmap = click_maps(sample.name)
            yield i, sample, cmap

    try:
        if row.method == "sam":
            def load(i):
                sample = dataset.load(i, with_instances=False) if with_mask else _image_only(dataset, i)
                cmap = click_maps(sample.name)
                ys, xs, cls = click_coordinates(cmap)
                return (i, sample, cmap), sample.image, ys, xs, cls

            for (i, sample, cmap), labels in sam.label_many(functools.partial(load, i) for i in range(len(dataset))):
                yield i, sample, cmap, labels, {}
                bar.update(1)
            return
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
                yield (i, sample, cmap), OfflineJob(row.method, cmap, image, emb, kmeans_features)

        for (i, sample, cmap), (labels, info) in ordered_map(run_offline_job, jobs(), int(workers)):
            yield i, sample, cmap, labels, info
            bar.update(1)
    finally:
        bar.close()


def _image_only(dataset: SegmentationDataset, i: int) -> Sample:
    return Sample(dataset.names[i], dataset.load_image(i), None, None)  # type: ignore[arg-type]


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


class SplitView(SegmentationDataset):
    """Some images of a dataset split (``indices`` into ``base``), read through ``base`` (every
    reading method forwards, so a reader's own decoding, e.g. ADE20K's RGB instance maps, applies)."""

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

    def load_instances(self, i: int, mask: np.ndarray | None = None) -> np.ndarray | None:
        return self.base.load_instances(self.indices[i], mask)

    def load(self, i: int, with_image: bool = True, check_size: bool = True, with_instances: bool = True):
        return self.base.load(self.indices[i], with_image, check_size, with_instances)

    def click_instances(self, i: int, min_area: int):
        return self.base.click_instances(self.indices[i], min_area)

    def files(self) -> list[Path]:
        return self.base.files()


def subset_indices(n: int, limit: int | None) -> list[int]:
    """``limit`` indices evenly spaced over ``0..n-1`` (all when ``limit`` is None or >= n)."""
    if limit is None or limit >= n:
        return list(range(n))
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, int(limit))})


def extension_row(dataset: SegmentationDataset, points: PointSet, row: AblationRow, cfg: AblationConfig,
                  network: Network | None, out_dir: Path, progress: bool = False) -> dict:
    """Compute one table row over ``dataset`` into ``out_dir``: ``counts.json`` and
    ``examples/<image>.png`` overlays (first ``cfg.examples`` images). Returns the counts dict."""
    t0 = time.perf_counter()
    counts = ExtensionCounts(dataset.info.num_classes)
    infos: dict[str, list] = collections.defaultdict(list)
    sam = SamLabeller(cfg.sam_rule, cfg.sam_checkpoint, cfg.device) if row.method == "sam" else None
    for i, sample, cmap, labels, info in iter_extended(dataset, points.label_map, row, cfg.kmeans_features,
                                                       network, cfg.workers, progress=progress, sam=sam):
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
           "sam_rule": cfg.sam_rule if row.method == "sam" else None,
           "totals": counts.summary(), "per_class": counts.per_class(dataset.info.classes),
           "time_s": elapsed, **{f"mean_{k}": float(np.mean(v)) for k, v in infos.items() if v}}
    write_json(out_dir / "counts.json", doc)
    return doc

