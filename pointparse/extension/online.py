"""Online label extension (Eq. 6-7) and its accuracy/coverage bookkeeping (Table 5).

During training the clicks of each image are extended with pixels the current network is
confident about (``score``), pixels close to a click (``region``), or both (``score+region``, the
paper's choice: 5x5 squares, threshold 0.7). Labels are [B, H, W] int64 with ``IGNORE_INDEX``
(255) wherever there is no label; clicks always keep their own label.

Modes (registry :data:`EXTENSION_MODES`):

* ``none``: the clicks only.
* ``score``: M_score (Eq. 6) = pixels whose max probability is strictly greater than the
  threshold AND whose arg-max class is one of the classes clicked in that image; they take the
  arg-max class.
* ``region``: M_region = ``region x region`` squares centred on the clicks (clipped at the
  borders); each pixel copies the class of the NEAREST click whose square covers it, nearest in
  Euclidean distance, ties broken by the click's offset (upper first, then left), so the result
  never depends on click order.
* ``score+region``: Eq. 7 read as the intersection of two pixel *sets*: M_score ∩ M_region,
  labelled with the network's arg-max class (which may differ from the click whose square
  covers the pixel).
* ``agree``: Eq. 7 read as the intersection of two *labelled* candidates: a pixel of M_score ∩
  M_region is kept only where the arg-max class equals the class ``region`` gives it (the
  nearest covering click's), and takes that class.

Which reading is the paper's. Eq. 7 intersects "label candidates", and M_a_score / M_a_region
are both defined as labels (a class per pixel), so both readings fit the text. Table 5 decides
between them: the paper reports 98.2 % extension accuracy for score(0.7)∩region, *above*
region alone (97.6 %) and rising with the threshold. ``agree`` keeps a subset of region's pixels
with region's labels, so its accuracy cannot fall below region's by more than the subset's
selection, and it rises with the threshold — the table's pattern; the arg-max reading relabels
region's pixels with the classifier's guess and measured 40–55 % during our training runs. The
pipelines' paper rows use ``agree``; ``score+region`` stays for comparison (README Results).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .. import IGNORE_INDEX
from ..errors import ConfigError, unknown_choice


def _check(probs: torch.Tensor, point_labels: torch.Tensor, threshold: float, region: int) -> None:
    if probs.dim() != 4 or point_labels.dim() != 3 or probs.shape[0] != point_labels.shape[0] or probs.shape[2:] != point_labels.shape[1:]:
        raise ValueError(f"online_extension expects probs [B,C,H,W] and point_labels [B,H,W]; got {tuple(probs.shape)} and {tuple(point_labels.shape)}")
    if not (0.0 <= float(threshold) < 1.0):
        raise ConfigError(f"extension threshold must be in [0, 1), got {threshold!r}")
    if int(region) != region or region < 1 or region % 2 == 0:
        raise ConfigError(f"extension region must be an odd integer >= 1 (square side in pixels), got {region!r}")


def _clicked_classes(point_labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[B, C] bool: which classes were clicked in each image."""
    b = point_labels.shape[0]
    flat = point_labels.reshape(b, -1).long()
    clicked = flat != IGNORE_INDEX
    bad = (((flat < 0) | (flat >= num_classes)) & clicked).any()
    if flat.device.type == "cpu" and not torch.compiler.is_compiling():
        if bool(bad):  # reading a CPU tensor costs no GPU stall
            raise ValueError(f"point labels must be class ids 0..{num_classes - 1} or {IGNORE_INDEX}")
    else:  # checked on the device: an error surfaces at the next sync instead of stalling here
        torch._assert_async(~bad, f"point labels must be class ids 0..{num_classes - 1} or {IGNORE_INDEX}")
    idx = torch.where(clicked, flat, num_classes)  # unclicked pixels vote for a dummy column
    present = torch.zeros(b, num_classes + 1, dtype=torch.bool, device=flat.device)
    present.scatter_(1, idx, True)
    return present[:, :num_classes]


def _score_mask(probs: torch.Tensor, point_labels: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(M_score [B,H,W] bool, arg-max class [B,H,W] long)."""
    conf, cls = probs.max(dim=1)
    present = _clicked_classes(point_labels, probs.shape[1])
    allowed = present.gather(1, cls.flatten(1)).view_as(cls)
    return (conf > threshold) & allowed, cls


def _region_mask(point_labels: torch.Tensor, region: int) -> torch.Tensor:
    """M_region [B,H,W] bool: union of the clicks' squares (max-pool of the click mask)."""
    clicked = (point_labels != IGNORE_INDEX).float().unsqueeze(1)
    r = int(region)
    return F.max_pool2d(clicked, kernel_size=r, stride=1, padding=r // 2).squeeze(1) > 0


def _keep_clicks(extended: torch.Tensor, point_labels: torch.Tensor) -> torch.Tensor:
    clicked = point_labels != IGNORE_INDEX
    return torch.where(clicked, point_labels.long(), extended)


def _extend_none(probs: torch.Tensor, point_labels: torch.Tensor, threshold: float, region: int) -> torch.Tensor:
    return point_labels.long().clone()


def _extend_score(probs: torch.Tensor, point_labels: torch.Tensor, threshold: float, region: int) -> torch.Tensor:
    m_score, cls = _score_mask(probs, point_labels, threshold)
    return _keep_clicks(torch.where(m_score, cls, IGNORE_INDEX), point_labels)


def _extend_region(probs: torch.Tensor, point_labels: torch.Tensor, threshold: float, region: int) -> torch.Tensor:
    lab = point_labels.long()
    h, w = lab.shape[1:]
    r = int(region) // 2
    padded = F.pad(lab, (r, r, r, r), value=IGNORE_INDEX)
    out = torch.full_like(lab, IGNORE_INDEX)
    # offsets (dy, dx) from a pixel to a click, nearest first: the first click found wins
    offsets = sorted(((dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)), key=lambda o: (o[0] ** 2 + o[1] ** 2, o[0], o[1]))
    for dy, dx in offsets:  # region**2 whole-batch shifts, no per-pixel loop
        shifted = padded[:, r + dy : r + dy + h, r + dx : r + dx + w]
        fill = (out == IGNORE_INDEX) & (shifted != IGNORE_INDEX)
        out = torch.where(fill, shifted, out)
    return out


def _extend_score_region(probs: torch.Tensor, point_labels: torch.Tensor, threshold: float, region: int) -> torch.Tensor:
    m_score, cls = _score_mask(probs, point_labels, threshold)
    m = m_score & _region_mask(point_labels, region)
    return _keep_clicks(torch.where(m, cls, IGNORE_INDEX), point_labels)


def _extend_agree(probs: torch.Tensor, point_labels: torch.Tensor, threshold: float, region: int) -> torch.Tensor:
    m_score, cls = _score_mask(probs, point_labels, threshold)
    near = _extend_region(probs, point_labels, threshold, region)
    keep = m_score & (near != IGNORE_INDEX) & (cls == near)
    return _keep_clicks(torch.where(keep, near, IGNORE_INDEX), point_labels)


ExtensionFn = Callable[[torch.Tensor, torch.Tensor, float, int], torch.Tensor]

#: name -> function(probs, point_labels, threshold, region) -> [B,H,W] int64 labels.
EXTENSION_MODES: dict[str, ExtensionFn] = {
    "none": _extend_none,
    "score": _extend_score,
    "region": _extend_region,
    "score+region": _extend_score_region,
    "agree": _extend_agree,
}

#: modes that label only pixels inside the click squares (training evaluates them there)
LOCAL_MODES = ("none", "region", "score+region", "agree")


@torch.no_grad()
def online_extension(
    probs: torch.Tensor,
    point_labels: torch.Tensor,
    threshold: float = 0.7,
    region: int = 5,
    mode: str = "score+region",
) -> torch.Tensor:
    """Extend click labels with the current predictions (Eq. 6-7).

    Args:
        probs: [B, C, H, W] softmax probabilities at label resolution.
        point_labels: [B, H, W] int64 click labels, 255 off the clicks.
        threshold: score threshold (strict ``>``), paper 0.7.
        region: odd side of the squares around the clicks, paper 5.
        mode: one of :data:`EXTENSION_MODES`.

    Returns:
        [B, H, W] int64 extended labels, 255 where unlabelled; clicks keep their label.
    """
    if mode not in EXTENSION_MODES:
        raise unknown_choice("extension mode", mode, EXTENSION_MODES)
    _check(probs, point_labels, threshold, region)
    return EXTENSION_MODES[mode](probs, point_labels.to(probs.device), float(threshold), int(region))


# --------------------------------------------------------------------------------------------
# Statistics (Table 5)
# --------------------------------------------------------------------------------------------

#: keys of the raw counts returned by :func:`extension_stats` (each a 0-d int64 tensor).
STAT_KEYS = ("images", "clicks", "new_pixels", "evaluated", "correct", "gt_pixels", "covered")


@torch.no_grad()
def extension_stats(extended: torch.Tensor, point_labels: torch.Tensor, ground_truth: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Raw counts describing one batch of extended labels (sum them over batches and ranks).

    Args:
        extended: [B, H, W] output of :func:`online_extension`.
        point_labels: [B, H, W] the clicks it was made from.
        ground_truth: optional [B, H, W] dense labels, 255 = ignore.

    Returns a dict of 0-d int64 tensors (on the input device, no host sync):

    * ``images``, ``clicks``: batch size and number of clicked pixels;
    * ``new_pixels``: pixels labelled by the extension that are NOT clicks (so ``none`` gives 0);
    * with ground truth (else these are 0): ``evaluated`` = new pixels whose GT is not 255,
      ``correct`` = those whose extended label equals the GT (Table 5's extension accuracy is
      correct / evaluated); ``gt_pixels`` = GT pixels that are not 255, ``covered`` = those that
      carry any label after extension, clicks included (coverage = covered / gt_pixels).

    Use :func:`merge_extension_stats` to sum and :func:`finalize_extension_stats` for ratios.
    """
    if extended.shape != point_labels.shape or (ground_truth is not None and ground_truth.shape != extended.shape):
        raise ValueError(
            f"extension_stats expects equal [B,H,W] shapes; got {tuple(extended.shape)}, {tuple(point_labels.shape)}"
            + ("" if ground_truth is None else f", {tuple(ground_truth.shape)}")
        )
    point_labels = point_labels.to(extended.device)
    clicked = point_labels != IGNORE_INDEX
    labelled = extended != IGNORE_INDEX
    new = labelled & ~clicked
    out = {
        "images": torch.full((), extended.shape[0], dtype=torch.long, device=extended.device),  # no copy
        "clicks": clicked.sum(),
        "new_pixels": new.sum(),
    }
    zero = torch.zeros((), dtype=torch.long, device=extended.device)
    if ground_truth is None:
        out.update(evaluated=zero, correct=zero.clone(), gt_pixels=zero.clone(), covered=zero.clone())
    else:
        gt = ground_truth.to(extended.device).long()
        gt_ok = gt != IGNORE_INDEX
        evaluated = new & gt_ok
        out.update(
            evaluated=evaluated.sum(),
            correct=(evaluated & (extended.long() == gt)).sum(),
            gt_pixels=gt_ok.sum(),
            covered=(labelled & gt_ok).sum(),
        )
    return out


def merge_extension_stats(*counts: dict) -> dict[str, int]:
    """Sum several :func:`extension_stats` results (tensors or ints) into plain ints."""
    total = {k: 0 for k in STAT_KEYS}
    for c in counts:
        for k in STAT_KEYS:
            total[k] += int(c[k])
    return total


def finalize_extension_stats(counts: dict) -> dict[str, float | int | None]:
    """Ratios from summed counts: ``new_pixels_per_image``, ``accuracy`` (correct / evaluated)
    and ``coverage`` (covered / gt_pixels), None where the denominator is 0; raw counts kept."""
    c = {k: int(counts[k]) for k in STAT_KEYS}

    def ratio(a: int, b: int) -> float | None:
        return a / b if b else None

    return {
        **c,
        "new_pixels_per_image": ratio(c["new_pixels"], c["images"]),
        "accuracy": ratio(c["correct"], c["evaluated"]),
        "coverage": ratio(c["covered"], c["gt_pixels"]),
    }
