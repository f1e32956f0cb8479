"""Cross-entropy losses of point and dense supervision (Eq. 2) and embeddings at clicks.

Label conventions: class ids ``0..C-1``; ``IGNORE_INDEX`` (255) marks pixels/points without a
label. Points with label 255 (or a negative label) take no part in PDML.

PDML (Eq. 3-5, Algorithm 1) is :mod:`pointparse.pdml`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import IGNORE_INDEX


# --------------------------------------------------------------------------------------------
# Eq. 2: point-wise cross-entropy
# --------------------------------------------------------------------------------------------


def point_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                        class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 2: mean cross-entropy over each image's labelled pixels, then mean over images.

    Args:
        logits: [B, C, H, W] raw scores (any float dtype; computed in float32).
        labels: [B, H, W] int64 class ids, ``ignore_index`` where unlabelled.

    ``class_weights`` [C] (optional) multiplies each pixel's CE by its class's weight; the
    per-image mean still divides by the pixel count, so weights averaging 1 over the clicks keep
    the loss's scale (see :func:`click_class_weights`).
    Images without any labelled pixel are left out of the mean over images (they would
    otherwise pull it towards 0). With no labelled pixel at all the result is a zero that is
    still connected to ``logits`` (so ``backward`` works and gives zero gradients).
    Fixed shapes, no host sync: the CE is taken over every pixel with ``ignore_index`` and
    masked, rather than gathering the labelled pixels first (a boolean index makes an output
    whose size the host must read, which stalls a GPU step). Training on click squares uses
    :func:`pixel_cross_entropy`, whose cost stays proportional to the clicks.
    """
    if logits.dim() != 4 or labels.dim() != 3 or logits.shape[0] != labels.shape[0] or logits.shape[2:] != labels.shape[1:]:
        raise ValueError(f"point_cross_entropy expects logits [B,C,H,W] and labels [B,H,W]; got {tuple(logits.shape)} and {tuple(labels.shape)}")
    labels = labels.long()
    valid = labels != ignore_index  # [B,H,W]
    ce = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="none")  # [B,H,W], 0 off labels
    if class_weights is not None:
        safe = torch.where(valid, labels, torch.zeros_like(labels))
        ce = ce * class_weights.to(ce.device, ce.dtype)[safe]
    per_image = ce.flatten(1).sum(1)
    counts = valid.flatten(1).sum(1)
    has = counts > 0
    per_image = per_image / counts.clamp(min=1)
    # sum/count instead of boolean indexing: no host sync, and 0 (still with grad) when empty
    return (per_image * has).sum() / has.sum().clamp(min=1)


# --------------------------------------------------------------------------------------------
# Embeddings at the clicked points
# --------------------------------------------------------------------------------------------


def sample_embeddings(features: torch.Tensor, point_xy: torch.Tensor, batch_index: torch.Tensor, input_hw: tuple[int, int]) -> torch.Tensor:
    """Bilinearly sample feature vectors at clicked points.

    Args:
        features: [B, D, h, w] network features at some output stride.
        point_xy: [N, 2] float (x, y) pixel coordinates in the network input of size ``input_hw``.
        batch_index: [N] long, which image of the batch each point belongs to.
        input_hw: (H, W) of the network input.

    Returns:
        [N, D] float32 embeddings, differentiable w.r.t. ``features``.

    The convention is that of ``F.interpolate(..., mode="bilinear", align_corners=False)``
    (equivalently ``grid_sample`` with ``align_corners=False`` and border padding): input pixel
    centre ``x`` maps to feature coordinate ``(x + 0.5) * w / W - 0.5``, clamped to the map. So
    the embedding of a click is exactly the feature vector that the upsampled logits at that
    pixel were computed from.
    """
    if features.dim() != 4 or point_xy.dim() != 2 or point_xy.shape[-1] != 2 or batch_index.shape != point_xy.shape[:1]:
        raise ValueError(
            f"sample_embeddings expects features [B,D,h,w], point_xy [N,2], batch_index [N]; got "
            f"{tuple(features.shape)}, {tuple(point_xy.shape)}, {tuple(batch_index.shape)}"
        )
    big_h, big_w = int(input_hw[0]), int(input_hw[1])
    _, _, h, w = features.shape
    xy = point_xy.to(device=features.device, dtype=torch.float32)
    b = batch_index.to(device=features.device, dtype=torch.long)
    fx = ((xy[:, 0] + 0.5) * (w / big_w) - 0.5).clamp(0, w - 1)
    fy = ((xy[:, 1] + 0.5) * (h / big_h) - 0.5).clamp(0, h - 1)
    x0 = fx.floor().long()
    y0 = fy.floor().long()
    x1 = (x0 + 1).clamp(max=w - 1)
    y1 = (y0 + 1).clamp(max=h - 1)
    wx = (fx - x0).unsqueeze(1)
    wy = (fy - y0).unsqueeze(1)
    f = features.permute(0, 2, 3, 1)  # [B,h,w,D] view; advanced indexing gathers [N,D]
    top = f[b, y0, x0].float() * (1 - wx) + f[b, y0, x1].float() * wx
    bottom = f[b, y1, x0].float() * (1 - wx) + f[b, y1, x1].float() * wx
    return top * (1 - wy) + bottom * wy


def pixel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, image_index: torch.Tensor,
                        num_images: int, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 2 on labels known at M scattered pixels: per image the mean CE, then the mean over images.

    ``logits`` [M, C] (the network's upsampled logits at those pixels), ``labels`` [M] (255 =
    none), ``image_index`` [M], ``class_weights`` [C] optional. Equals
    :func:`point_cross_entropy` of the dense maps that hold these labels; 0 (with grad) when no
    pixel is labelled.
    """
    valid = labels != IGNORE_INDEX
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    ce = F.cross_entropy(logits.float(), safe, reduction="none") * valid
    if class_weights is not None:
        ce = ce * class_weights.to(ce.device, ce.dtype)[safe]
    sums = torch.zeros(num_images, dtype=ce.dtype, device=ce.device).index_add(0, image_index, ce)
    counts = torch.zeros(num_images, dtype=ce.dtype, device=ce.device).index_add(0, image_index, valid.to(ce.dtype))
    has = counts > 0
    return (sums / counts.clamp(min=1)).sum() / has.sum().clamp(min=1)


#: class_balance choice -> exponent p of the click-frequency weights (see click_class_weights).
CLASS_BALANCE = {"none": 0.0, "sqrt": 0.5, "inverse": 1.0}


def click_class_weights(counts, power: float) -> torch.Tensor:
    """[C] float32 class weights ``w_c ∝ (1 / n_c)^power`` from click counts ``n_c``, scaled so the
    mean weight over the clicks is 1 (``Σ n_c w_c = Σ n_c``): the loss keeps its scale.

    ``power`` 1 is the inverse click frequency, 0.5 its square root (milder, the usual first
    try), 0 no weighting. Classes without clicks get the largest weight of the clicked ones
    (they can still gain pixels through the online extension).
    """
    n = torch.as_tensor(counts, dtype=torch.float64)
    if n.dim() != 1 or bool((n < 0).any()):
        raise ValueError(f"click counts must be a 1-D list of non-negative numbers, got {counts!r}")
    clicked = n > 0
    if not bool(clicked.any()) or power == 0:
        return torch.ones(n.shape[0], dtype=torch.float32)
    w = torch.zeros_like(n)
    w[clicked] = n[clicked].pow(-float(power))
    w[~clicked] = w[clicked].max()
    w = w * n.sum() / (n * w).sum()
    return w.float()


# --------------------------------------------------------------------------------------------
# dense labels beside the clicks (pseudo-labels, extension labels)
# --------------------------------------------------------------------------------------------


def label_set_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled pixels of a batch (255 ignored): the label-set term
    the trainer adds to the point CE, times ``label_weight``.

    Args:
        logits: [B, C, h, w] raw scores at any stride (upsampled bilinearly to the labels' size,
            computed in float32).
        labels: [B, H, W] int64 class ids, 255 where the label set has none.

    With no labelled pixel the result is a zero still connected to ``logits``.
    """
    if logits.dim() != 4 or labels.dim() != 3 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"label_set_cross_entropy expects logits [B,C,h,w] and labels [B,H,W]; got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    up = F.interpolate(logits.float(), size=tuple(labels.shape[1:]), mode="bilinear", align_corners=False)
    # the sum over the labelled pixels divided by their count: no host sync to ask whether there are any
    ce = F.cross_entropy(up, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return ce / (labels != IGNORE_INDEX).sum().clamp_min(1)
