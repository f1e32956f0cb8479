"""Superpixel extension (Table 5's ``superpixel`` row): every click labels its SLIC superpixel.

SLIC superpixels (Achanta et al. 2012, scikit-image). The number asked for is
``clamp(round(SUPERPIXELS_PER_CLICK * clicks), 50, 200)`` with ``SUPERPIXELS_PER_CLICK = 8``: the
paper's 50..200 range, centred on PASCAL-Context's 12.26 clicks per image (~100) and reaching the
ends at about 6 and 25 clicks; more clicks mean more instances, i.e. a busier scene that deserves
finer superpixels. Every click labels its whole superpixel; a superpixel holding clicks of
different classes gives each of its pixels the class of the nearest of those clicks (Euclidean,
ties to the click first in raster order). SLIC initialises on a grid and draws no random numbers,
so the result needs no seed. Label conventions: :mod:`pointparse.extension.methods`.
"""

from __future__ import annotations

import numpy as np

from .. import IGNORE_INDEX
from .methods import click_coordinates

#: SLIC superpixels asked for per click, and the paper's range per image.
SUPERPIXELS_PER_CLICK = 8
SUPERPIXEL_RANGE = (50, 200)
#: SLIC's colour/space trade-off (scikit-image's default, Achanta et al.'s m = 10).
SLIC_COMPACTNESS = 10.0


def superpixel_count(num_clicks: int) -> int:
    """SLIC superpixels asked for an image with ``num_clicks`` clicks (module docstring rule)."""
    lo, hi = SUPERPIXEL_RANGE
    return int(min(max(round(SUPERPIXELS_PER_CLICK * num_clicks), lo), hi))


def superpixel_segments(image: np.ndarray, num_clicks: int) -> np.ndarray:
    """SLIC segment ids int64 [H, W] (0-based) of a uint8 RGB [H, W, 3] image."""
    from skimage.segmentation import slic  # deferred: a heavy import only this method needs

    return slic(image, n_segments=superpixel_count(num_clicks), compactness=SLIC_COMPACTNESS, start_label=0,
                channel_axis=-1).astype(np.int64)


def superpixel_extension(segments: np.ndarray, click_map: np.ndarray) -> np.ndarray:
    """Extend clicks to their superpixels: uint8 [H, W] labels, 255 where no click reaches.

    ``segments`` int [H, W] superpixel ids; ``click_map`` uint8 [H, W] (255 off clicks). A
    superpixel with clicks of one class takes it; one with several classes gives each pixel the
    class of its nearest click inside it (ties: the click first in raster order). Clicks keep
    their class.
    """
    ys, xs, cls = click_coordinates(click_map)
    out = np.full(click_map.shape, IGNORE_INDEX, np.uint8)
    if not len(cls):
        return out
    seg = np.asarray(segments, np.int64)
    seg_of_click = seg[ys, xs]
    lut = np.full(int(seg.max()) + 1, IGNORE_INDEX, np.uint8)
    mixed = []
    for s in np.unique(seg_of_click):
        k = np.flatnonzero(seg_of_click == s)
        if np.all(cls[k] == cls[k[0]]):
            lut[s] = cls[k[0]]
        else:
            mixed.append((s, k))
    out = lut[seg]
    for s, k in mixed:
        py, px = np.nonzero(seg == s)
        d2 = (py[:, None] - ys[k][None, :]) ** 2 + (px[:, None] - xs[k][None, :]) ** 2
        out[py, px] = cls[k][d2.argmin(axis=1)]  # argmin takes the first minimum: raster-first click
    out[ys, xs] = cls
    return out
