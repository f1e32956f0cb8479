"""Segmentation metrics from an int64 confusion matrix: IoU, mIoU, pixel and class accuracy.

Rows are ground truth, columns are predictions. Pixels whose ground truth is ``IGNORE_INDEX``
(255) or otherwise outside ``0..C-1`` are not counted. A class absent from both the ground
truth and the predictions has IoU NaN and is left out of the mean (it says nothing about the
model); a class that is predicted but never present has IoU 0 and counts. All ratios are
fractions in [0, 1] (the paper prints percentages). numpy only: the torch accumulator is
:class:`pointparse.evaluate.ConfusionMatrix`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import ConfigError


def _nanmean(a: np.ndarray) -> float:
    ok = ~np.isnan(a)
    return float(a[ok].mean()) if ok.any() else float("nan")


def _json_float(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


@dataclass
class SegMetrics:
    """Metrics of one confusion matrix ``confusion`` [C, C] (rows = GT, cols = prediction).

    ``iou``/``acc``: per-class float64 [C] (NaN: class absent from both GT and prediction for
    IoU, absent from GT for accuracy); ``miou``/``mean_acc``: their NaN-excluding means;
    ``pixel_acc``: correct / counted pixels; ``gt_pixels``/``pred_pixels``: int64 [C].
    """

    confusion: np.ndarray
    iou: np.ndarray
    acc: np.ndarray
    miou: float
    pixel_acc: float
    mean_acc: float
    gt_pixels: np.ndarray
    pred_pixels: np.ndarray

    @property
    def num_classes(self) -> int:
        return int(self.confusion.shape[0])

    @classmethod
    def from_matrix(cls, matrix: np.ndarray) -> "SegMetrics":
        m = np.asarray(matrix, dtype=np.int64)
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise ValueError(f"confusion matrix must be square [C, C]; got shape {m.shape}")
        tp = np.diag(m).astype(np.float64)
        gt = m.sum(axis=1)
        pred = m.sum(axis=0)
        union = gt + pred - np.diag(m)
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
            acc = np.where(gt > 0, tp / np.maximum(gt, 1), np.nan)
        total = m.sum()
        return cls(
            confusion=m,
            iou=iou,
            acc=acc,
            miou=_nanmean(iou),
            pixel_acc=float(tp.sum() / total) if total else float("nan"),
            mean_acc=_nanmean(acc),
            gt_pixels=gt,
            pred_pixels=pred,
        )

    def _names(self, class_names: Sequence[str] | None) -> list[str]:
        if class_names is None:
            return [str(i) for i in range(self.num_classes)]
        names = [str(n) for n in class_names]
        if len(names) != self.num_classes:
            raise ConfigError(f"{len(names)} class names given for a {self.num_classes}-class confusion matrix")
        return names

    def to_dict(self, class_names: Sequence[str] | None = None, protocol: str | None = None) -> dict:
        """JSON-safe summary (NaN -> null), naming the evaluation ``protocol``."""
        names = self._names(class_names)
        return {
            "protocol": protocol,
            "num_classes": self.num_classes,
            "miou": _json_float(self.miou),
            "pixel_acc": _json_float(self.pixel_acc),
            "mean_acc": _json_float(self.mean_acc),
            "pixels": int(self.confusion.sum()),
            "per_class": [
                {
                    "class": n,
                    "iou": _json_float(float(self.iou[i])),
                    "acc": _json_float(float(self.acc[i])),
                    "gt_pixels": int(self.gt_pixels[i]),
                    "pred_pixels": int(self.pred_pixels[i]),
                }
                for i, n in enumerate(names)
            ],
        }

    def per_class_frame(self, class_names: Sequence[str] | None = None):
        """pandas DataFrame with columns class, iou, acc, gt_pixels, pred_pixels."""
        import pandas as pd  # heavy; the metrics themselves need only numpy

        return pd.DataFrame(
            {
                "class": self._names(class_names),
                "iou": self.iou,
                "acc": self.acc,
                "gt_pixels": self.gt_pixels,
                "pred_pixels": self.pred_pixels,
            }
        )
