"""Training and evaluation samples: augmentation that moves the clicks with the image.

A training sample is a dict of

* ``image``  float32 [3, S, S], normalised with the model's mean/std;
* ``dense``  int64 [S, S] dense ground truth (255 = ignore / padding / no dense labels);
* ``valid``  bool [S, S], False on the padding added to reach the crop size (the Gated CRF
  loss's gate);
* ``points_xy`` float32 [N, 2] click positions (x, y) in crop pixels, sub-pixel after scaling;
* ``points_cls`` int64 [N] their classes;
* ``labels`` int64 [S, S] a label set's labels (pseudo-labels, extension labels; 255 = none and on
  the padding), only when one is given: moved with the image like ``dense`` (nearest neighbour),
  so ``dense`` keeps meaning ground truth;
* ``index`` the dataset index (used as the image id for cross-image PDML pairs).

:func:`collate` stacks them into a batch and draws the sparse click map ``points`` [B, S, S]
(255 off the clicks). Clicks that fall outside a crop are dropped: such a crop trains the CE on
whatever is left, possibly nothing (the loss then returns 0 with a gradient).

Augmentation is seeded by ``(seed, epoch, index)``, not by worker state, so a run resumed at an
epoch boundary sees exactly the samples an uninterrupted run would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np
import torch

from . import IGNORE_INDEX
from .datasets import SegmentationDataset
from .errors import DataError


@dataclass
class AugmentConfig:
    """Random scale, crop and flip (the paper: random 321×321 crops, random scale and flip)."""

    crop_size: int = 321
    scale_min: float = 0.5
    scale_max: float = 1.5
    flip: bool = True


def normalise_array(image: np.ndarray, mean, std) -> np.ndarray:
    """uint8 [H, W, 3] RGB → float32 [H, W, 3] ``(x/255 - mean) / std``, in numpy.

    Numpy releases the GIL in these loops, so evaluate's decoding thread runs it beside inference.
    The float32 operations are torch's in the same order, each correctly rounded: the values are
    bit-identical (tests check every byte value on each channel).
    """
    out = np.require(image, np.uint8).astype(np.float32, order="C")
    h, w = out.shape[:2]
    rows = out.reshape(h, w * 3)
    # mean and std tiled along a row: the inner loops run over W·3 values, not 3 (3× faster than torch)
    np.divide(rows, np.float32(255.0), out=rows)
    np.subtract(rows, np.tile(np.asarray(mean, np.float32), w), out=rows)
    np.divide(rows, np.tile(np.asarray(std, np.float32), w), out=rows)
    return out


def normalise(image: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 [H, W, 3] RGB → float32 [3, H, W] with ``(x/255 - mean) / std``: a (channels-last)
    view of :func:`normalise_array`."""
    return torch.from_numpy(normalise_array(image, mean, std)).permute(2, 0, 1)


class TrainSamples(torch.utils.data.Dataset):
    """Augmented training samples from a dataset and (for point supervision) a points artefact.

    ``points`` maps image name → (xy int [N, 2], classes int [N]); ``None`` means full
    supervision, where only ``dense`` is used. ``labels`` maps an image name to its label-set
    labels uint8 [H, W] (e.g. :meth:`pointparse.labelset.LabelSet.label`), read into ``labels``.
    """

    def __init__(self, dataset: SegmentationDataset, points: dict | None, aug: AugmentConfig,
                 mean, std, seed: int = 0, need_dense: bool = True,
                 labels: Callable[[str], np.ndarray] | None = None):
        self.dataset = dataset
        self.points = points
        self.labels = labels
        self.aug = aug
        self.mean, self.std = tuple(mean), tuple(std)
        self.seed = int(seed)
        self.epoch = 0
        self.need_dense = need_dense and dataset.has_dense_labels
        if points is None and not dataset.has_dense_labels:
            raise DataError(dataset.root, f"full supervision needs dense masks, but split {dataset.split!r} has none")
        if points is not None:
            missing = [n for n in dataset.names if n not in points]
            if len(missing) == len(dataset.names):
                raise DataError(dataset.root, "the points artefact has no image of this dataset split "
                                              "(was it made from another dataset?)")
            if missing:
                raise DataError(dataset.image_path(dataset.names.index(missing[0])),
                                f"no clicks for this image in the points artefact ({len(missing)} images missing)")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        name = self.dataset.names[i]
        image = self.dataset.load_image(i)
        h, w = image.shape[:2]
        dense = self.dataset.load_mask(i) if self.need_dense else None
        if dense is not None and dense.shape != (h, w):
            raise DataError(self.dataset.mask_path(i), f"mask is {dense.shape[1]}x{dense.shape[0]} but its image is {w}x{h}")
        extra = self.labels(name) if self.labels is not None else None
        if extra is not None and extra.shape != (h, w):
            raise DataError(self.dataset.image_path(i), f"its label-set labels are {extra.shape[1]}x{extra.shape[0]} "
                                                         f"but the image is {w}x{h}")
        valid = np.ones((h, w), np.uint8)
        if self.points is not None:
            xy, cls = self.points[name]
            xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
            cls = np.asarray(cls, dtype=np.int64).reshape(-1)
        else:
            xy, cls = np.zeros((0, 2)), np.zeros((0,), dtype=np.int64)
        a = self.aug
        # 1. random scale; clicks follow pixel centres: x' = (x + 0.5)·s − 0.5
        s = float(rng.uniform(a.scale_min, a.scale_max)) if a.scale_max > a.scale_min else float(a.scale_min)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        if (nh, nw) != (h, w):
            image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
            valid = np.ones((nh, nw), np.uint8)
            if dense is not None:
                dense = cv2.resize(dense, (nw, nh), interpolation=cv2.INTER_NEAREST)
            if extra is not None:
                extra = cv2.resize(extra, (nw, nh), interpolation=cv2.INTER_NEAREST)
            xy = (xy + 0.5) * np.array([nw / w, nh / h]) - 0.5
        # 2. pad to the crop size (image with the mean colour, labels with ignore), then crop
        c = a.crop_size
        ph, pw = max(c - nh, 0), max(c - nw, 0)
        if ph or pw:
            fill = tuple(int(round(255 * m)) for m in self.mean)
            image = cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=fill)
            valid = cv2.copyMakeBorder(valid, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=0)
            if dense is not None:
                dense = cv2.copyMakeBorder(dense, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=IGNORE_INDEX)
            if extra is not None:
                extra = cv2.copyMakeBorder(extra, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=IGNORE_INDEX)
        H, W = image.shape[:2]
        y0 = int(rng.integers(0, H - c + 1))
        x0 = int(rng.integers(0, W - c + 1))
        image = image[y0:y0 + c, x0:x0 + c]
        valid = valid[y0:y0 + c, x0:x0 + c]
        if dense is not None:
            dense = dense[y0:y0 + c, x0:x0 + c]
        if extra is not None:
            extra = extra[y0:y0 + c, x0:x0 + c]
        xy = xy - np.array([x0, y0])
        # 3. horizontal flip
        if a.flip and rng.random() < 0.5:
            image = image[:, ::-1]
            valid = valid[:, ::-1]
            if dense is not None:
                dense = dense[:, ::-1]
            if extra is not None:
                extra = extra[:, ::-1]
            xy = xy.copy()
            xy[:, 0] = (c - 1) - xy[:, 0]
        keep = np.all((np.rint(xy) >= 0) & (np.rint(xy) <= c - 1), axis=1)
        xy, cls = xy[keep], cls[keep]
        dense_t = (torch.from_numpy(np.ascontiguousarray(dense)).long() if dense is not None
                   else torch.full((c, c), IGNORE_INDEX, dtype=torch.long))
        sample = {
            "image": normalise(image, self.mean, self.std),
            "dense": dense_t,
            "valid": torch.from_numpy(np.ascontiguousarray(valid)).bool(),
            "points_xy": torch.from_numpy(xy.astype(np.float32)),
            "points_cls": torch.from_numpy(cls),
            "index": i,
        }
        if extra is not None:
            sample["labels"] = torch.from_numpy(np.ascontiguousarray(extra)).long()
        return sample


def collate(samples: list[dict]) -> dict:
    """Stack samples; concatenate clicks with ``batch_index`` and draw the sparse click map.

    Returns ``image`` [B, 3, S, S], ``dense`` [B, S, S], ``valid`` [B, S, S], ``points`` [B, S, S] (255 off clicks),
    ``points_xy`` [N, 2], ``points_cls`` [N], ``batch_index`` [N], ``image_ids`` [N] (dataset
    indices, so ids are unique across ranks too), ``index`` [B] and, when the samples carry a
    label set's labels, ``labels`` [B, S, S] int64 (255 = none).
    """
    images = torch.stack([s["image"] for s in samples])
    dense = torch.stack([s["dense"] for s in samples])
    valid = torch.stack([s["valid"] if "valid" in s else torch.ones_like(s["dense"], dtype=torch.bool)
                         for s in samples])
    B, _, H, W = images.shape
    xy = torch.cat([s["points_xy"] for s in samples]) if samples else torch.zeros(0, 2)
    cls = torch.cat([s["points_cls"] for s in samples])
    bidx = torch.cat([torch.full((len(s["points_cls"]),), b, dtype=torch.long) for b, s in enumerate(samples)])
    index = torch.tensor([s["index"] for s in samples], dtype=torch.long)
    points = torch.full((B, H, W), IGNORE_INDEX, dtype=torch.long)
    if len(cls):
        px = xy[:, 0].round().long().clamp_(0, W - 1)
        py = xy[:, 1].round().long().clamp_(0, H - 1)
        points[bidx, py, px] = cls
    batch = {
        "image": images, "dense": dense, "valid": valid, "points": points, "points_xy": xy, "points_cls": cls,
        "batch_index": bidx, "image_ids": index[bidx], "index": index,
    }
    if samples and "labels" in samples[0]:
        batch["labels"] = torch.stack([s["labels"] for s in samples])
    return batch


class EvalSamples(torch.utils.data.Dataset):
    """Whole images for evaluation: ``image`` [3, H, W] normalised, ``dense`` [H, W] int64."""

    def __init__(self, dataset: SegmentationDataset, mean, std, indices: list[int] | None = None):
        if not dataset.has_dense_labels:
            raise DataError(dataset.root, f"split {dataset.split!r} has no dense ground truth to evaluate against")
        self.dataset = dataset
        self.mean, self.std = tuple(mean), tuple(std)
        self.indices = list(range(len(dataset))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> dict:
        i = self.indices[k]
        sample = self.dataset.load(i, with_instances=False)
        return {"image": normalise(sample.image, self.mean, self.std),
                "dense": torch.from_numpy(sample.mask.astype(np.int64)), "index": i}
