"""Labels from one image's SAM masks under a rule (:mod:`pointparse.sam.rules` says what each
rule means): :func:`choose` picks a mask per click, :func:`paint` resolves overlaps.

Labels are uint8 [H, W], 255 where no chosen mask reaches; every clicked pixel keeps its click's
class.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import IGNORE_INDEX
from .masks import ClickMasks
from .rules import SamRule


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
