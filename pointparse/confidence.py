"""Which predicted pixels are confident enough to become pseudo-labels: the score, its histogram
over a split, and the rules that turn the histogram into one threshold per predicted class.

**Score.** A pixel's confidence is its largest class probability ``p`` (softmax, averaged over the
test-time views). Near 1 a float32 ``p`` saturates (every pixel of a confident network reads
``1.0``), so pixels are ranked by the *score* ``s = −ln(1 − p)`` in nats, with ``1 − p`` taken as
the sum of the other classes' probabilities (no cancellation): ``p = 0.9`` is ``s = 2.30``,
``0.99`` is ``4.61``, a logit gap of 20 over two other classes ``19.3``. Scores are quantised to
:data:`BINS_PER_NAT` bins per nat, :data:`SCORE_BINS` bins in all (``s ≥ 32`` is the last bin): a
uint16 [H, W] map per image (:func:`score_bins`).

**Thresholds.** A rule gives ``t`` int64 [C], one bin per predicted class; a pixel predicted ``c``
is kept iff its bin is ``≥ t[c]`` (``t[c] = SCORE_BINS`` keeps none). A probability threshold
``τ`` is the bin holding ``−ln(1 − τ)`` (:func:`bin_of`), so the threshold actually applied is
that bin's lower edge, less than 1/256 nat below ``τ``'s score. Rules that need the split's
statistics read ``hist`` int64 [C, SCORE_BINS]: pixels per (predicted class, score bin) over the
whole split (:func:`score_histogram`; 9.8 MB for 150 classes).

Rules (:data:`CONFIDENCE_RULES`):

* ``global`` — ``p ≥ threshold`` for every class;
* ``top-share`` — per predicted class, its most confident ``share`` of the split's pixels
  predicted that class (the lowest bin from the top at which the count reaches ``share`` of the
  class's pixels; a tie in that bin keeps the whole bin), so a class the network is never sure
  of keeps pixels too;
* ``per-class`` — ``min(global, top-share)`` per class: every pixel with ``p ≥ threshold``, and at
  least the top ``share`` of each predicted class where fewer than that pass the threshold;
* ``adaptive`` — FreeMatch's self-adaptive class thresholds: ``threshold · m_c / max_k m_k``, with
  ``m_c`` the mean ``p`` of the pixels predicted ``c`` over the split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .errors import unknown_choice

#: score bins per nat of ``s = −ln(1 − p)``
BINS_PER_NAT = 256
#: bins in all: scores 0 .. 32 nats (the last bin holds everything above; float32 softmax
#: resolves ``1 − p`` down to ~1e-38, 87 nats)
SCORE_BINS = 32 * BINS_PER_NAT


@torch.no_grad()
def score_bins(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted class and quantised score of class probabilities ``probs`` [C, H, W] (float):
    ``(pred int64 [H, W], bins int64 [H, W])`` on the same device."""
    p_max, pred = probs.max(0)
    rest = probs.scatter(0, pred[None], 0.0).sum(0)  # 1 − p without cancellation near p = 1
    s = -torch.log(rest.clamp_min(1e-30))
    bins = torch.floor(s * BINS_PER_NAT).clamp_(0, SCORE_BINS - 1).long()
    return pred, bins


def bin_of(p: float) -> int:
    """The score bin of probability ``p`` in [0, 1) (the threshold ``p`` stands for)."""
    s = -math.log1p(-float(p))
    return int(min(SCORE_BINS - 1, max(0, math.floor(s * BINS_PER_NAT))))


def probability_of(b) -> np.ndarray:
    """The probability at the lower edge of score bin(s) ``b`` (``SCORE_BINS`` → 1.0)."""
    b = np.asarray(b, np.float64)
    return np.where(b >= SCORE_BINS, 1.0, -np.expm1(-b / BINS_PER_NAT))


def score_histogram(pred: np.ndarray, bins: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 [C, SCORE_BINS]: pixels of one image per (predicted class, score bin)."""
    idx = pred.astype(np.int64).ravel() * SCORE_BINS + bins.astype(np.int64).ravel()
    return np.bincount(idx, minlength=num_classes * SCORE_BINS).reshape(num_classes, SCORE_BINS)


def top_share_bins(hist: np.ndarray, share: float) -> np.ndarray:
    """int64 [C]: per class the highest bin ``t`` whose count from the top (bins ``≥ t``) reaches
    ``share`` of the class's pixels; ``SCORE_BINS`` for a class never predicted."""
    from_top = np.cumsum(hist[:, ::-1], axis=1)  # [C, B]: pixels in the top k+1 bins
    total = from_top[:, -1]
    need = np.ceil(share * total - 1e-9).astype(np.int64)  # float rounding must not ask for one more pixel
    k = np.argmax(from_top >= np.maximum(need, 1)[:, None], axis=1)
    return np.where(total > 0, SCORE_BINS - 1 - k, SCORE_BINS).astype(np.int64)


@dataclass(frozen=True)
class ConfidenceRule:
    """A named rule: ``thresholds(hist, threshold, share) -> int64 [C]`` bins; ``uses`` names the
    parameters it reads (so the stage's summary and the command line say which apply)."""

    name: str
    uses: tuple[str, ...]
    thresholds: Callable[[np.ndarray, float, float], np.ndarray]
    doc: str


def _global(hist: np.ndarray, threshold: float, share: float) -> np.ndarray:
    return np.full(hist.shape[0], bin_of(threshold), np.int64)


def _top_share(hist: np.ndarray, threshold: float, share: float) -> np.ndarray:
    return top_share_bins(hist, share)


def _per_class(hist: np.ndarray, threshold: float, share: float) -> np.ndarray:
    return np.minimum(_global(hist, threshold, share), top_share_bins(hist, share))


def _adaptive(hist: np.ndarray, threshold: float, share: float) -> np.ndarray:
    centres = -np.expm1(-(np.arange(SCORE_BINS) + 0.5) / BINS_PER_NAT)  # p at each bin's centre
    total = hist.sum(1)
    mean_p = np.divide(hist @ centres, total, out=np.zeros(len(total)), where=total > 0)
    if not (total > 0).any():
        return _global(hist, threshold, share)
    scaled = threshold * mean_p / mean_p.max()
    return np.array([bin_of(t) if n else bin_of(threshold) for t, n in zip(scaled, total)], np.int64)


CONFIDENCE_RULES: dict[str, ConfidenceRule] = {r.name: r for r in (
    ConfidenceRule("global", ("threshold",), _global, "p >= threshold"),
    ConfidenceRule("top-share", ("share",), _top_share, "per predicted class, its most confident share of the split"),
    ConfidenceRule("per-class", ("threshold", "share"), _per_class,
                   "p >= threshold, or among its class's most confident share"),
    ConfidenceRule("adaptive", ("threshold",), _adaptive,
                   "threshold scaled per class by its mean confidence over the most confident class's"),
)}


def get_rule(name: str) -> ConfidenceRule:
    if name not in CONFIDENCE_RULES:
        raise unknown_choice("confidence rule", name, CONFIDENCE_RULES)
    return CONFIDENCE_RULES[name]


def class_thresholds(rule: str, hist: np.ndarray, threshold: float, share: float) -> np.ndarray:
    """int64 [C] score bins of ``rule`` for the split histogram ``hist`` [C, SCORE_BINS]."""
    return np.asarray(get_rule(rule).thresholds(hist, float(threshold), float(share)), np.int64)
