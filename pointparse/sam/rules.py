"""From SAM's masks to labels: which mask each click keeps, and who wins where masks overlap.

A rule (:class:`SamRule`, registry :data:`RULES`) has two parts, applied to one image's
:class:`~pointparse.sam.masks.ClickMasks` by :func:`paint`:

* the **choice** (:data:`CHOICES`): for each click, one of SAM's three masks, or none;
  ``best`` — the highest predicted IoU; ``smallest`` — the smallest mask whose predicted IoU is at
  least ``min_score`` (else the best); the ``clean-*`` choices first discard every mask that holds
  a click of *another* class (its logit there > ``threshold``), then take the best / the
  smallest confident / the largest confident of those left, and drop the click when none is left;
* the **overlap** (:data:`OVERLAPS`): a pixel inside several chosen masks gets the class of the
  ``smallest`` mask (masks painted large to small), of the mask with the highest ``logit``, of the
  ``nearest`` click, or — ``agree`` — the smallest mask's class only where every covering mask has
  the same class (255 where they disagree).

A mask covers the pixels whose upsampled logit is above ``threshold`` (SAM's own is 0). Every
pixel no chosen mask covers is 255; every clicked pixel keeps its click's class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import IGNORE_INDEX
from ..errors import ConfigError, unknown_choice
from .masks import ClickMasks

CHOICES = {
    "best": "SAM's highest predicted IoU",
    "smallest": "the smallest mask with predicted IoU >= min_score (else the best)",
    "clean-best": "the best mask holding no click of another class (none: the click is dropped)",
    "clean-smallest": "the smallest such mask with predicted IoU >= min_score (else the best such mask)",
    "clean-largest": "the largest such mask with predicted IoU >= min_score (else the best such mask)",
}
OVERLAPS = {
    "smallest": "the smallest covering mask wins (painted large to small)",
    "logit": "the covering mask with the highest logit wins",
    "nearest": "the covering mask whose click is nearest wins",
    "agree": "the smallest covering mask's class where all covering masks agree, else 255",
}


@dataclass(frozen=True)
class SamRule:
    """A mask choice and an overlap rule (module docstring), with their constants."""

    choice: str
    overlap: str = "smallest"
    min_score: float = 0.0
    threshold: float = 0.0

    def __post_init__(self) -> None:
        if self.choice not in CHOICES:
            raise unknown_choice("SAM mask choice", self.choice, CHOICES)
        if self.overlap not in OVERLAPS:
            raise unknown_choice("SAM overlap rule", self.overlap, OVERLAPS)
        if not 0.0 <= float(self.min_score) <= 1.0:
            raise ConfigError(f"SAM rule min_score must be in [0, 1], got {self.min_score!r}")


#: the named rules (``sam_rule``); the default was chosen by benchmarks/sam_labels.py (README)
RULES: dict[str, SamRule] = {
    "best": SamRule("best"),
    "smallest-0.8": SamRule("smallest", min_score=0.8),
    "clean-best": SamRule("clean-best"),
    "clean-best-logit": SamRule("clean-best", "logit"),
    "clean-best-nearest": SamRule("clean-best", "nearest"),
    "clean-best-agree": SamRule("clean-best", "agree"),
    "clean-smallest-0.8": SamRule("clean-smallest", min_score=0.8),
    "clean-smallest-0.8-agree": SamRule("clean-smallest", "agree", min_score=0.8),
    "clean-largest-0.8": SamRule("clean-largest", min_score=0.8),
    "clean-best-t1": SamRule("clean-best", threshold=1.0),
}
DEFAULT_RULE = "clean-best"


def get_rule(name: str) -> SamRule:
    if name not in RULES:
        raise unknown_choice("SAM rule", name, RULES)
    return RULES[name]


def choose(cm: ClickMasks, rule: SamRule) -> torch.Tensor:
    """int64 [K]: the chosen mask of each click (0..M-1), -1 where the click keeps none."""
    k = cm.num_clicks
    if k == 0:
        return torch.zeros(0, dtype=torch.int64)
    scores = cm.scores
    ok = torch.ones_like(scores, dtype=torch.bool)
    if rule.choice.startswith("clean"):
        inside = cm.sample(cm.ys, cm.xs) > rule.threshold  # [K, M, K]: mask (k, m) holds click j
        cls = torch.as_tensor(cm.cls)
        other = (cls[:, None] != cls[None, :])  # [K, K]
        ok = ~(inside & other[:, None, :]).any(-1)
    best = torch.where(ok, scores, torch.full_like(scores, -1e9)).argmax(1)
    choice = best
    if rule.choice in ("smallest", "clean-smallest", "clean-largest"):
        area = cm.areas(rule.threshold)
        conf = ok & (scores >= rule.min_score)
        sign = -1.0 if rule.choice == "clean-largest" else 1.0
        key = torch.where(conf, sign * area, torch.full_like(area, float("inf")))
        choice = torch.where(conf.any(1), key.argmin(1), best)
    return torch.where(ok.any(1), choice, torch.full_like(choice, -1))


def paint(cm: ClickMasks, rule: SamRule, chunk: int = 16) -> np.ndarray:
    """uint8 [H, W] labels of one image under ``rule`` (255 = unlabelled; clicks keep their class).

    Masks are upsampled ``chunk`` at a time, keeping per pixel the running winner (and for
    ``agree`` the smallest and largest covering class), so memory stays O(chunk x H x W).
    """
    H, W = cm.size
    out = np.full((H, W), IGNORE_INDEX, np.uint8)
    picked = choose(cm, rule)
    ks = torch.nonzero(picked >= 0).flatten()
    if len(ks):
        ms = picked[ks]
        cls = torch.as_tensor(cm.cls)[ks]
        if rule.overlap in ("smallest", "agree"):
            prio = -cm.areas(rule.threshold)[ks, ms]  # smaller mask, higher priority
        best_val = torch.full((H, W), -float("inf"))
        best_cls = torch.full((H, W), -1, dtype=torch.int64)
        lo = torch.full((H, W), 1 << 30, dtype=torch.int64)
        hi = torch.full((H, W), -1, dtype=torch.int64)
        if rule.overlap == "nearest":
            yy = torch.arange(H, dtype=torch.float32).view(1, H, 1)
            xx = torch.arange(W, dtype=torch.float32).view(1, 1, W)
        for s in range(0, len(ks), chunk):
            sl = slice(s, s + chunk)
            logit = cm.upsample(ks[sl], ms[sl])  # [n, H, W]
            cov = logit > rule.threshold
            c = cls[sl].view(-1, 1, 1)
            if rule.overlap == "logit":
                val = logit
            elif rule.overlap == "nearest":
                py = torch.as_tensor(cm.ys)[ks[sl]].float().view(-1, 1, 1)
                px = torch.as_tensor(cm.xs)[ks[sl]].float().view(-1, 1, 1)
                val = -((yy - py) ** 2 + (xx - px) ** 2)
            else:
                val = prio[sl].view(-1, 1, 1).expand_as(logit)
            val = torch.where(cov, val, torch.full_like(logit, -float("inf")))
            v, i = val.max(0)
            better = v > best_val
            best_val = torch.where(better, v, best_val)
            best_cls = torch.where(better, c.view(-1)[i], best_cls)
            if rule.overlap == "agree":
                big = torch.full_like(c.expand_as(cov), 1 << 30)
                lo = torch.minimum(lo, torch.where(cov, c.expand_as(cov), big).min(0).values)
                hi = torch.maximum(hi, torch.where(cov, c.expand_as(cov), -1).max(0).values)
        lab = best_cls
        if rule.overlap == "agree":
            lab = torch.where(lo == hi, lab, torch.full_like(lab, -1))
        lab = lab.numpy()
        keep = lab >= 0
        out[keep] = lab[keep].astype(np.uint8)
    if cm.num_clicks:
        out[cm.ys, cm.xs] = cm.cls.astype(np.uint8)
    return out
