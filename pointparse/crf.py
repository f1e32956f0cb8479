"""Gated CRF loss (Obukhov et al., 2019): a dense regulariser on the unlabelled pixels.

Beyond the paper. Point supervision labels a few pixels per image; the Gated CRF loss asks every
pixel ``i`` to agree with the pixels ``j`` of its ``(2r+1)²`` window in proportion to how alike
they look and how close they are::

    L = 1/N · Σ_i Σ_{j ∈ Ω_r(i), j ≠ i}  K_ij · m_i · m_j · (1 − p_i · p_j)

``p`` are the softmax probabilities, ``m`` the gate (1 on real image pixels, 0 on crop padding),
``N = Σ_i m_i`` and ``K`` a sum of Gaussian kernels on position and colour::

    K_ij = w_rgbxy · exp(−|xy_i − xy_j|² / 2σ_xy² − |rgb_i − rgb_j|² / 2σ_rgb²)
         + w_xy    · exp(−|xy_i − xy_j|² / 2σ_xy²)

with positions in input pixels and colours in [0, 1]: Obukhov's published setting is
``w = (0.9, 0.1)``, ``σ_xy = 6``, ``σ_rgb = 0.1``, ``r = 5`` (:class:`CRFConfig` defaults). It is
computed at ``stride`` (4: the probabilities and the image are resized to ``H/4 × W/4``) on
shifted views, one offset of half the window at a time, so the cost is
``B · C · (2r+1)² / 2 · HW / stride²`` with the memory of one ``[B, C, h, w]`` product — no
custom extension. A constant
one-hot prediction costs 0, as does any prediction that is constant inside each window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import ConfigError


@dataclass(frozen=True)
class CRFConfig:
    """The kernel and the resolution of :func:`gated_crf_loss` (Obukhov et al.'s defaults)."""

    radius: int = 5
    sigma_xy: float = 6.0
    sigma_rgb: float = 0.1
    weight_rgbxy: float = 0.9
    weight_xy: float = 0.1
    stride: int = 4

    def __post_init__(self) -> None:
        if int(self.radius) != self.radius or self.radius < 1:
            raise ConfigError(f"CRF radius must be an integer >= 1, got {self.radius!r}")
        if not (self.sigma_xy > 0 and self.sigma_rgb > 0):
            raise ConfigError(f"CRF sigmas must be > 0, got xy {self.sigma_xy!r}, rgb {self.sigma_rgb!r}")
        if int(self.stride) != self.stride or self.stride < 1:
            raise ConfigError(f"CRF stride must be an integer >= 1, got {self.stride!r}")


def _half_window(radius: int) -> list[tuple[int, int]]:
    """The offsets (dy, dx) of one half of the window: each unordered pair of pixels once."""
    r = int(radius)
    return [(dy, dx) for dy in range(0, r + 1) for dx in range(-r, r + 1) if dy > 0 or dx > 0]


def _shift(x: torch.Tensor, dy: int, dx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x at i, x at i + (dy, dx)) over the pixels i where both lie in the map: two [..., h', w'] views."""
    h, w = x.shape[-2:]
    y0, y1 = max(0, -dy), h - max(0, dy)
    x0, x1 = max(0, -dx), w - max(0, dx)
    return x[..., y0:y1, x0:x1], x[..., y0 + dy:y1 + dy, x0 + dx:x1 + dx]


def gated_crf_loss(probs: torch.Tensor, rgb: torch.Tensor, valid: torch.Tensor,
                   cfg: CRFConfig = CRFConfig()) -> torch.Tensor:
    """The Gated CRF loss of one batch (module docstring).

    Args:
        probs: [B, C, h, w] softmax probabilities, already at the loss resolution (``H/stride``).
        rgb: [B, 3, h, w] the image at that resolution, colours in [0, 1].
        valid: [B, h, w] bool gate, False on crop padding.
        cfg: the kernel; ``cfg.stride`` is the input pixels per loss pixel (scales positions).

    Returns a 0-d float32 tensor (0 connected to ``probs`` when no pixel is valid).

    ``K`` and ``1 − p_i·p_j`` are symmetric in (i, j), so the double sum is twice the sum over one
    half of the window, computed one offset at a time on shifted views: memory stays at one
    [B, C, h, w] product instead of the (2r+1)² times larger unfolded window.
    """
    if probs.dim() != 4 or rgb.shape[0] != probs.shape[0] or rgb.shape[1] != 3 or rgb.shape[2:] != probs.shape[2:] \
            or valid.shape != (probs.shape[0],) + tuple(probs.shape[2:]):
        raise ValueError(f"gated_crf_loss expects probs [B,C,h,w], rgb [B,3,h,w], valid [B,h,w]; got "
                         f"{tuple(probs.shape)}, {tuple(rgb.shape)}, {tuple(valid.shape)}")
    probs = probs.float()
    colours = rgb.float()
    m = valid.float()
    total = probs.new_zeros(())
    for dy, dx in _half_window(cfg.radius):
        d2 = float((dy * cfg.stride) ** 2 + (dx * cfg.stride) ** 2)
        k_xy = math.exp(-d2 / (2.0 * cfg.sigma_xy ** 2))
        ci, cj = _shift(colours, dy, dx)
        with torch.no_grad():  # the kernel and the gate depend on the image only
            kernel = cfg.weight_rgbxy * k_xy * torch.exp(-((ci - cj) ** 2).sum(1) / (2.0 * cfg.sigma_rgb ** 2)) \
                + cfg.weight_xy * k_xy
            mi, mj = _shift(m, dy, dx)
            kernel = kernel * mi * mj
        pi, pj = _shift(probs, dy, dx)
        total = total + (kernel * (1.0 - (pi * pj).sum(1))).sum()
    return 2.0 * total / m.sum().clamp(min=1.0)


def crf_inputs(logits: torch.Tensor, images: torch.Tensor, valid: torch.Tensor, mean, std,
               cfg: CRFConfig = CRFConfig()) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Probabilities, colours and gate at ``H/stride`` from a training batch.

    ``logits`` [B, C, h', w'] at any stride, ``images`` [B, 3, H, W] normalised with ``mean``/
    ``std``, ``valid`` [B, H, W] bool. Returns (probs [B, C, h, w], rgb in [0, 1] [B, 3, h, w],
    valid [B, h, w]) with ``h = ceil(H / stride)``. No host sync.
    """
    H, W = images.shape[-2:]
    size = (-(-H // cfg.stride), -(-W // cfg.stride))
    probs = torch.softmax(F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False), dim=1)
    # de-normalised per channel with Python floats: a tensor made from ``mean`` would be copied
    # host -> device every step, a copy the GPU stream waits on
    x = images.float()
    rgb = torch.cat([x[:, c:c + 1] * float(std[c]) + float(mean[c]) for c in range(3)], dim=1)
    rgb = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False, antialias=True)
    gate = F.interpolate(valid.float().unsqueeze(1), size=size, mode="nearest").squeeze(1) > 0.5
    return probs, rgb, gate
