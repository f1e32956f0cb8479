"""K-means extension (Table 5's ``kmeans`` row): one cluster per click, seeded at it.

Lloyd's K-means (at most ``KMEANS_MAX_ITER = 300`` iterations, stopping when no pixel changes
cluster) on per-pixel features, one cluster per clicked pixel, initial centres = the features at
the clicks; every pixel takes its cluster's seed-click class. Features (registry
:data:`pointparse.extension.methods.KMEANS_FEATURES`): ``embeddings`` = the trained network's
embeddings bilinearly upsampled to the image (computed exactly without materialising them, see
:class:`UpsampledFeatures`), or ``rgbxy`` = colour / 255 and position / max(H, W)
(:func:`rgbxy_features`). The clicks are the centres, so no random numbers are drawn. Label
conventions: :mod:`pointparse.extension.methods`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .. import IGNORE_INDEX
from .methods import click_coordinates

#: the paper's cap on K-means iterations.
KMEANS_MAX_ITER = 300

def _interp_matrix(n_in: int, n_out: int, dtype=torch.float32) -> torch.Tensor:
    """[n_out, n_in] weights of 1-D linear resizing (``align_corners=False``), as torch computes it."""
    eye = torch.eye(n_in, dtype=dtype).unsqueeze(0)
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].T.contiguous()


class DenseFeatures:
    """Explicit per-pixel features ``x`` float32 [H, W, D] for :func:`kmeans_extension`."""

    def __init__(self, x: torch.Tensor):
        self.x = x.float().contiguous()
        self.shape = tuple(x.shape[:2])

    def at(self, ys: np.ndarray, xs: np.ndarray) -> torch.Tensor:
        """[K, D] features of pixels (ys, xs)."""
        return self.x[torch.from_numpy(ys), torch.from_numpy(xs)].clone()

    def dots(self, centres: torch.Tensor) -> torch.Tensor:
        """[K, H, W] dot products of every pixel with every centre."""
        h, w = self.shape
        return (centres @ self.x.view(h * w, -1).T).view(-1, h, w)

    def nearest(self, centres: torch.Tensor) -> torch.Tensor:
        """int64 [H, W]: each pixel's nearest centre (squared Euclidean; ties to the lower index)."""
        # argmin ||x - c||² = argmin (||c||² - 2 x·c): ||x||² is the same for every centre
        k = centres.shape[0]
        return ((centres * centres).sum(1).view(k, 1, 1) - 2.0 * self.dots(centres)).argmin(0)

    def cluster_sums(self, assign: torch.Tensor, k: int) -> torch.Tensor:
        """[K, D] feature sums of the pixels assigned to each cluster."""
        d = self.x.shape[-1]
        return torch.zeros(k, d, dtype=self.x.dtype).index_add_(0, assign.reshape(-1), self.x.view(-1, d))


class UpsampledFeatures:
    """Features ``f`` [D, h, w] bilinearly upsampled to [H, W], used without materialising them.

    Bilinear resizing is separable and linear: ``x(y, x) = sum_ij Ah[y, i] Aw[x, j] f[:, i, j]``
    with 1-D interpolation matrices ``Ah`` [H, h], ``Aw`` [W, w] of at most two taps per row. So
    a pixel's dot product with a centre is the upsampled low-resolution dot-product map, and a
    cluster's feature sum is ``f`` weighted by ``Ahᵀ M Aw`` (M = the cluster's pixel mask) — exact,
    and D times cheaper in memory than the [H, W, D] tensor (D = 1280 for EfficientNet-Lite0).
    Sums use the two taps rather than dense matrix products.
    """

    def __init__(self, f: torch.Tensor, size: tuple[int, int]):
        self.f = f.float().contiguous()
        d, h, w = self.f.shape
        self.shape = (int(size[0]), int(size[1]))
        self.ah = _interp_matrix(h, self.shape[0])
        self.aw = _interp_matrix(w, self.shape[1])
        # the two taps of each output row / column: index [2, n_out], weight [2, n_out]
        wy, iy = self.ah.topk(2, dim=1)
        wx, ix = self.aw.topk(2, dim=1)
        self._iy, self._wy = iy.T.contiguous(), wy.T.double()
        self._ix, self._wx = ix.T.contiguous(), wx.T.double()

    def at(self, ys: np.ndarray, xs: np.ndarray) -> torch.Tensor:
        wy = self.ah[torch.from_numpy(ys)]  # [K, h]
        wx = self.aw[torch.from_numpy(xs)]  # [K, w]
        return torch.einsum("ki,kj,dij->kd", wy, wx, self.f)

    def dots(self, centres: torch.Tensor) -> torch.Tensor:
        low = torch.einsum("kd,dij->kij", centres, self.f)  # [K, h, w]
        return F.interpolate(low[None], size=self.shape, mode="bilinear", align_corners=False)[0]  # [K, H, W]

    def nearest(self, centres: torch.Tensor) -> torch.Tensor:
        """int64 [H, W]: each pixel's nearest centre, as :meth:`DenseFeatures.nearest`.

        Interpolation weights sum to one, so ``||c||² - 2 x·c`` is itself the upsampled
        low-resolution score; upsampling it channels-last makes the argmin over centres a
        contiguous reduction (the [K, H, W] argmin over the first axis is ~5x slower).
        """
        k = centres.shape[0]
        low = (centres * centres).sum(1).view(k, 1, 1) - 2.0 * torch.einsum("kd,dij->kij", centres, self.f)
        low = low[None].contiguous(memory_format=torch.channels_last)
        return F.interpolate(low, size=self.shape, mode="bilinear", align_corners=False)[0].argmin(0)

    def cluster_sums(self, assign: torch.Tensor, k: int) -> torch.Tensor:
        d, h, w = self.f.shape
        base = assign.reshape(self.shape).long() * (h * w)  # [H, W]
        weights = torch.zeros(k * h * w, dtype=torch.float64)
        for a in range(2):
            for b in range(2):
                idx = base + (self._iy[a] * w).view(-1, 1) + self._ix[b].view(1, -1)
                val = self._wy[a].view(-1, 1) * self._wx[b].view(1, -1)
                weights += torch.bincount(idx.reshape(-1), weights=val.expand_as(idx).reshape(-1), minlength=k * h * w)
        return torch.einsum("kij,dij->kd", weights.view(k, h, w).float(), self.f)


def rgbxy_features(image: np.ndarray) -> DenseFeatures:
    """Low-level features of a uint8 RGB [H, W, 3] image: (r, g, b) / 255 and (x, y) / max(H, W)."""
    h, w = image.shape[:2]
    scale = float(max(h, w))
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    rgb = torch.from_numpy(np.array(image, dtype=np.float32)) / 255.0  # a copy: decoded images may be read-only
    return DenseFeatures(torch.cat([rgb, (xx / scale)[..., None], (yy / scale)[..., None]], dim=-1))


def kmeans_extension(features, click_map: np.ndarray, max_iter: int = KMEANS_MAX_ITER) -> tuple[np.ndarray, int]:
    """K-means seeded at the clicks: (uint8 [H, W] labels, iterations run).

    ``features``: :class:`DenseFeatures` or :class:`UpsampledFeatures` of the image. One cluster
    per clicked pixel, initial centre = its feature; each Lloyd iteration assigns every pixel to
    the nearest centre (squared Euclidean, ties to the lower cluster = earlier click in raster
    order) and moves each non-empty cluster's centre to its mean (an empty cluster keeps its
    centre). Stops when no assignment changes or after ``max_iter`` assignments. Every pixel
    takes its cluster's click class; clicks keep their own. No click: all 255.
    """
    ys, xs, cls = click_coordinates(click_map)
    if not len(cls):
        return np.full(click_map.shape, IGNORE_INDEX, np.uint8), 0
    k = len(cls)
    centres = features.at(ys, xs)
    assign = None
    it = 0
    for it in range(1, int(max_iter) + 1):
        new = features.nearest(centres)
        if assign is not None and torch.equal(new, assign):
            break
        assign = new
        counts = torch.bincount(assign.reshape(-1), minlength=k)
        sums = features.cluster_sums(assign, k)
        keep = counts > 0
        centres[keep] = sums[keep] / counts[keep].unsqueeze(1).to(sums.dtype)
    out = cls.astype(np.uint8)[assign.numpy()]
    out[ys, xs] = cls
    return out, it
