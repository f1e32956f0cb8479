"""The qualitative grid (paper Figures 5–6): image, ground truth and each run's prediction.

Class maps are uint8/int [H, W] class ids with 255 = ignore; they are drawn with the dataset's
palette (:func:`colorize`), ignored pixels in :func:`~pointparse.images.ignore_colour`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from .. import IGNORE_INDEX
from ..images import ignore_colour
from .plots import save_png


def colorize(label: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """uint8 [H, W, 3] colours of a class-id map [H, W]; 255 (ignore) and ids beyond the palette get
    :func:`~pointparse.images.ignore_colour` (VOC's void colour (224, 224, 192), never a class's)."""
    pal = np.asarray(palette, np.uint8).reshape(-1, 3)[:IGNORE_INDEX]
    lut = np.zeros((256, 3), np.uint8)
    lut[:] = ignore_colour(pal)
    lut[: len(pal)] = pal
    return lut[np.asarray(label).astype(np.int64).clip(0, 255)]


def _wrap(text: str, width: int) -> str:
    """Break a long run name at '+' signs so column headers do not run into each other."""
    if len(text) <= width:
        return text
    lines, cur = [], ""
    for part in text.replace("+", "+\0").split("\0"):
        if cur and len(cur) + len(part) > width:
            lines.append(cur)
            cur = ""
        cur += part
    return "\n".join([*lines, cur])


def _shorten(text: str, width: int) -> str:
    """``text`` cut in the middle to at most ``width`` characters (image names can be long)."""
    if len(text) <= width:
        return text
    keep = width - 1
    return text[: (keep + 1) // 2] + "…" + text[len(text) - keep // 2:]


#: more panels per image than this and the grid turns: runs become rows, images columns
QUALITATIVE_MAX_COLUMNS = 8


def qualitative_grid(samples: Sequence[dict], runs: Sequence[str], classes: Sequence[str],
                     palette: Sequence[Sequence[int]], path: str | Path, title: str = "") -> Path:
    """Rows = images; columns = image, ground truth, then each run's prediction.

    With more than :data:`QUALITATIVE_MAX_COLUMNS` panels per image (many runs or seeds) the grid
    is transposed — one column per image, one row per panel — so it grows down the page instead
    of to a width no screen shows.

    ``samples[i]`` = ``{"name": str, "image": uint8 [H, W, 3], "gt": uint8 [H, W] (255 ignore),
    "preds": {run: int [H, W]}}``. The legend lists the classes that appear in the shown maps.
    """
    panels_per_image = 2 + len(runs)
    transposed = panels_per_image > QUALITATIVE_MAX_COLUMNS
    n_rows, n_cols = (panels_per_image, len(samples)) if transposed else (len(samples), panels_per_image)
    h0, w0 = samples[0]["gt"].shape
    cell = 2.6
    aspect = h0 / max(w0, 1)
    present = set()
    for s in samples:
        present |= set(np.unique(s["gt"]).tolist())
        for r in runs:
            present |= set(np.unique(s["preds"][r]).tolist())
    shown = [c for c in range(len(classes)) if c in present]
    n_items = len(shown) + (IGNORE_INDEX in present)
    legend_rows = math.ceil(n_items / 10)
    ncol = math.ceil(n_items / max(legend_rows, 1))  # balanced rows, at most 10 entries each
    label_width = 1.6 if transposed else 0.0  # room for horizontal run names left of the rows
    fig = Figure(figsize=(cell * n_cols + label_width, cell * aspect * n_rows + 0.9 + 0.3 * legend_rows),
                 layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    headers = ["image", "ground truth", *runs]
    for i, s in enumerate(samples):
        panels = [s["image"], colorize(s["gt"], palette), *[colorize(s["preds"][r], palette) for r in runs]]
        for j, img in enumerate(panels):
            ax = axes[j, i] if transposed else axes[i, j]
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        name = _shorten(s["name"], 24 if transposed else 26)
        if transposed:
            axes[0, i].set_title(name, fontsize=10)
        else:
            axes[i, 0].set_ylabel(name, fontsize=10)
    for j, header in enumerate(headers):
        if transposed:
            axes[j, 0].set_ylabel(_wrap(header, 18), fontsize=11, rotation=0, ha="right", va="center")
        else:
            axes[0, j].set_title(_wrap(header, 22), fontsize=12)
    handles = [Patch(facecolor=np.asarray(palette[c]) / 255.0, edgecolor="0.3", label=classes[c]) for c in shown]
    if IGNORE_INDEX in present:
        handles.append(Patch(facecolor=np.asarray(ignore_colour(palette)) / 255.0, edgecolor="0.3",
                             label="ignore (255)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=max(ncol, 1), fontsize=10, frameon=False)
    if title:
        fig.suptitle(title, fontsize=13)
    return save_png(fig, path)
