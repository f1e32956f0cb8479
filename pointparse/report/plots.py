"""The report's figures of numbers: per-class IoU bars, dis(+)/dis(−) curves (paper Figure 3),
pair-distance histograms (Figure 4) and training curves; the drawing helpers every figure shares.

The qualitative grid (Figures 5–6) is :mod:`pointparse.report.qualitative`, the extension figure
(Table 5) :mod:`pointparse.report.extension_plot`; :mod:`pointparse.report.figures` reads the runs
and calls them all.

Every function takes plain data (numbers already read from the artefacts by
:mod:`pointparse.report.runs`), writes one PNG atomically and returns its path. Figures are built
with matplotlib's object-oriented API (:class:`matplotlib.figure.Figure`, no ``pyplot``), so
nothing here touches global plotting state or needs a display.

Conventions: IoU, accuracy and coverage arrive as fractions in [0, 1] and are *shown* in percent
(as in the paper); epochs arrive 0-based and are shown 1-based; each run keeps one colour in
every figure (:func:`run_colors`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from ..io import atomic_file

DPI = 110
#: classes per row of the per-class bar chart; ADE20K's 150 classes wrap onto several rows
CLASSES_PER_ROW = 30


def run_colors(names: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    """One fixed colour per run (tab10, tab20 beyond ten runs), in the order the runs are given."""
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {n: tuple(cmap(i % cmap.N)[:3]) for i, n in enumerate(names)}


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` as a PNG (white background, tight box), atomically; returns the path."""
    path = Path(path)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    return path


def _legend_cols(n: int, most: int) -> int:
    """Columns for ``n`` legend entries: one row when they fit, else rows of equal length."""
    rows = math.ceil(n / max(most, 1))
    return max(1, math.ceil(n / rows))


def _pct(v: float) -> float:
    return float("nan") if v is None else 100.0 * float(v)


# ------------------------------------------------------------------------------------------------
# per-class IoU (Table 6 as a picture)
# ------------------------------------------------------------------------------------------------


def per_class_iou_bars(iou: Mapping[str, Sequence[float]], classes: Sequence[str], miou: Mapping[str, float],
                       order: Sequence[str], colors: Mapping[str, tuple], path: str | Path,
                       sort_note: str = "") -> Path:
    """Grouped bars: one group per class (in ``order``), one bar per run.

    ``iou[run]`` is a float array [C] aligned with ``classes`` (NaN = class absent: no bar, an
    ``n/a`` tick mark instead). ``miou[run]`` goes into the legend.
    """
    runs = list(iou)
    idx = {c: k for k, c in enumerate(classes)}
    order = list(order)
    n_rows = max(1, math.ceil(len(order) / CLASSES_PER_ROW))
    per_row = min(len(order), CLASSES_PER_ROW)
    width = max(9.0, min(22.0, 1.5 + per_row * (0.25 + 0.12 * len(runs))))
    fig = Figure(figsize=(width, 3.9 * n_rows + 0.8), layout="constrained")
    axes = fig.subplots(n_rows, 1, squeeze=False)[:, 0]
    bar_w = 0.8 / max(len(runs), 1)
    peak = np.nanmax([_pct(v) for run in runs for v in iou[run]] + [0.0])
    top = min(100.0, max(10.0, 10.0 * math.ceil(peak * 1.12 / 10.0)))  # room above the tallest bar
    for r, ax in enumerate(axes):
        chunk = order[r * CLASSES_PER_ROW:(r + 1) * CLASSES_PER_ROW]
        x = np.arange(len(chunk))
        for j, run in enumerate(runs):
            vals = np.array([_pct(iou[run][idx[c]]) for c in chunk])
            offs = x - 0.4 + bar_w * (j + 0.5)
            ax.bar(offs, np.nan_to_num(vals, nan=0.0), bar_w, color=colors[run], edgecolor="white", linewidth=0.4,
                   label=f"{run} (mIoU {_pct(miou[run]):.1f})" if r == 0 else None)
            for xo in offs[np.isnan(vals)]:
                ax.text(xo, top * 0.01, "n/a", rotation=90, ha="center", va="bottom", fontsize=8, color="0.35")
        ax.set_xticks(x)
        ax.set_xticklabels(chunk, rotation=45, ha="right", rotation_mode="anchor", fontsize=10)
        ax.set_xlim(-0.6, max(len(chunk), 1) - 0.4)
        ax.set_ylim(0, top)
        ax.set_ylabel("IoU (%)", fontsize=11)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    title = "Per-class IoU on the evaluation split"
    if sort_note:
        title += f"\n(classes sorted by {sort_note})"
    axes[0].set_title(title, fontsize=13)
    fig.legend(loc="outside lower center", ncol=_legend_cols(len(runs), 5 if width >= 12 else 3), fontsize=10,
               frameon=False)
    return save_png(fig, path)


# ------------------------------------------------------------------------------------------------
# PDML analysis (Figures 3 and 4)
# ------------------------------------------------------------------------------------------------


def distance_curves(series: Mapping[str, dict], colors: Mapping[str, tuple], path: str | Path) -> Path:
    """Mean dis(+) (solid) and dis(−) (dashed) per epoch, and their gap, for each PDML run.

    ``series[run]`` = ``{"epochs": [..0-based..], "pos": [...], "neg": [...], "label": "α=0.8, β=1, m=20"}``;
    missing values are ``NaN``.
    """
    fig = Figure(figsize=(13, 4.8), layout="constrained")
    ax, gap_ax = fig.subplots(1, 2)
    for run, s in series.items():
        ep = np.asarray(s["epochs"], float) + 1
        pos, neg = np.asarray(s["pos"], float), np.asarray(s["neg"], float)
        c = colors[run]
        ax.plot(ep, pos, "-o", color=c, lw=2, ms=4)
        ax.plot(ep, neg, "--s", color=c, lw=2, ms=4)
        gap_ax.plot(ep, neg - pos, "-o", color=c, lw=2, ms=4)
    ax.set_title("Mean pair distance per epoch (paper Figure 3)", fontsize=12)
    ax.set_ylabel("mean embedding distance", fontsize=11)
    gap_ax.set_title("Gap dis(−) − dis(+) per epoch", fontsize=12)
    gap_ax.set_ylabel("distance gap", fontsize=11)
    gap_ax.axhline(0, color="0.5", lw=0.8)
    for a in (ax, gap_ax):
        a.set_xlabel("epoch", fontsize=11)
        a.grid(alpha=0.3)
        a.xaxis.get_major_locator().set_params(integer=True)
    handles = [Line2D([], [], color=colors[r], lw=2.5, label=f"{r} ({s['label']})") for r, s in series.items()]
    handles += [Line2D([], [], color="0.3", ls="-", marker="o", label="dis(+): positive pairs"),
                Line2D([], [], color="0.3", ls="--", marker="s", label="dis(−): negative pairs")]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 3), fontsize=10, frameon=False)
    return save_png(fig, path)


def distance_histograms(hists: Mapping[str, dict], path: str | Path, bins: int = 40) -> Path:
    """Histograms of raw positive / negative pair distances at the first and last epoch, one row per run.

    ``hists[run]`` = ``{"first": (epoch, pos [N], neg [M]), "last": (epoch, pos, neg), "label": str}``.
    Both epochs of a run share the bins (0.5–99.5th percentile of all its distances), so a peak
    shift reads directly, except when the last epoch's distances collapsed to under a quarter of
    that range (PDML shrinking every embedding): that panel gets its own, zoomed axis and says so.
    """
    runs = list(hists)
    fig = Figure(figsize=(12, 3.3 * len(runs) + 0.9), layout="constrained")
    axes = fig.subplots(len(runs), 2, squeeze=False)
    pos_c, neg_c = "#1f77b4", "#d62728"
    for r, run in enumerate(runs):
        h = hists[run]
        allv = np.concatenate([np.asarray(v, float).ravel() for k in ("first", "last") for v in h[k][1:]])
        allv = allv[np.isfinite(allv)]
        # distances are >= 0; a far tail would squash the peaks, so the axis ends at the 99.5th
        # percentile and the few pairs beyond it are counted in the legend instead of piled up
        lo, hi = 0.0, (float(np.percentile(allv, 99.5)) if allv.size else 1.0)
        if hi <= lo:
            hi = lo + 1.0
        shared = np.linspace(lo, hi, bins + 1)
        for c, which in enumerate(("first", "last")):
            ax = axes[r, c]
            epoch, pos, neg = h[which]
            edges, zoomed = shared, False
            own = np.concatenate([np.asarray(v, float).ravel() for v in (pos, neg)])
            own = own[np.isfinite(own)]
            if which == "last" and own.size and float(np.percentile(own, 99.5)) < 0.25 * hi:
                # the distances collapsed: on the shared axis they would be one bar at 0
                edges, zoomed = np.linspace(0.0, max(float(np.percentile(own, 99.5)), 1e-6), bins + 1), True
            top = edges[-1]
            for vals, colour, name in ((pos, pos_c, "positive pairs"), (neg, neg_c, "negative pairs")):
                vals = np.asarray(vals, float).ravel()
                beyond = int((vals > top).sum())
                note = f", {beyond} > {top:.3g} not shown" if beyond else ""
                ax.hist(vals, bins=edges, color=colour, alpha=0.45, label=f"{name} (n={vals.size}{note})")
                ax.hist(vals, bins=edges, color=colour, histtype="step", lw=1.5)
                if vals.size:
                    ax.axvline(np.median(vals), color=colour, ls=":", lw=1.5)
            zoom = " — zoomed x axis" if zoomed else ""
            ax.set_title(f"{run} ({h['label']}): {which} epoch ({epoch + 1}){zoom}", fontsize=11,
                         color="#b22222" if zoomed else "black")
            ax.set_xlim(edges[0], edges[-1])
            ax.set_ylim(0, ax.get_ylim()[1] * 1.3)  # headroom so the legend does not cover the bars
            ax.set_xlabel("pair distance", fontsize=10)
            ax.set_ylabel("number of pairs", fontsize=10)
            ax.legend(fontsize=9, loc="upper right", framealpha=0.9)
            ax.grid(alpha=0.25)
    fig.suptitle("Pair-distance distributions, first vs last epoch (paper Figure 4; dotted = median)", fontsize=13)
    return save_png(fig, path)


# ------------------------------------------------------------------------------------------------
# training curves
# ------------------------------------------------------------------------------------------------


def _column(rows: Sequence[dict], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows], float)


def training_curves(epochs: Mapping[str, Sequence[dict]], final_miou: Mapping[str, float],
                    colors: Mapping[str, tuple], path: str | Path) -> Path:
    """Loss terms per epoch (total, CE, PDML) and validation mIoU, in a 2×2 grid sharing the epoch axis.

    ``epochs[run]`` are the rows of ``epochs.jsonl``. The PDML panel shows only runs with a PDML
    term. mIoU per epoch is drawn from a ``miou`` (or ``val_miou``) column when the log has one;
    otherwise the final mIoU is one star at the last epoch.
    """
    fig = Figure(figsize=(12, 8.5), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True).ravel()
    panels = [("loss", "total loss"), ("ce", "cross-entropy"), ("pdml", "PDML loss (PDML runs)"),
              ("miou", "validation mIoU (%)")]
    per_epoch_miou = False
    max_epoch = 1
    stars: list[tuple[float, float, tuple]] = []  # final mIoU (y, x, colour), labelled below
    for run, rows in epochs.items():
        c = colors[run]
        ep = _column(rows, "epoch") + 1
        if len(ep):
            max_epoch = max(max_epoch, int(np.nanmax(ep)))
        for ax, (key, _) in zip(axes, panels):
            if key == "miou":
                col = next((k for k in ("miou", "val_miou") if any(r.get(k) is not None for r in rows)), None)
                if col:
                    per_epoch_miou = True
                    ax.plot(ep, 100 * _column(rows, col), "-o", color=c, lw=2, ms=4)
                elif final_miou.get(run) is not None and len(ep) and not math.isnan(final_miou[run]):
                    x, y = np.nanmax(ep), _pct(final_miou[run])
                    ax.plot([x], [y], "*", color=c, ms=16, mec="black", mew=0.6)
                    stars.append((y, x, c))
                continue
            vals = _column(rows, key)
            if key == "pdml" and not np.nansum(np.abs(vals)) > 0:
                continue  # a run without PDML logs pdml = 0: not a curve worth drawing
            if np.isfinite(vals).any():
                ax.plot(ep, vals, "-o", color=c, lw=2, ms=4)
    for ax, (key, name) in zip(axes, panels):
        ax.set_title(name, fontsize=12)
        ax.grid(alpha=0.3)
        ax.set_xlim(0.6, max_epoch + 0.4)
        ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in axes[2:]:
        ax.set_xlabel("epoch", fontsize=11)
    loss_vals = np.concatenate([_column(rows, "loss") for rows in epochs.values()] or [np.zeros(0)])
    loss_vals = loss_vals[np.isfinite(loss_vals) & (loss_vals > 0)]
    if loss_vals.size and loss_vals.max() / loss_vals.min() > 20:  # PDML runs' losses dwarf CE-only runs
        axes[0].set_yscale("log")
        axes[0].yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        # label the 2s, 3s and 5s between decades; all nine minor labels would collide
        axes[0].yaxis.set_minor_formatter(FuncFormatter(
            lambda v, _: f"{v:g}" if v > 0 and round(v / 10 ** math.floor(math.log10(v) + 1e-9)) in (2, 3, 5) else ""))
        axes[0].tick_params(axis="y", which="minor", labelsize=8)
        axes[0].set_title("total loss (log scale)", fontsize=12)
    if not axes[2].lines:
        axes[2].text(0.5, 0.5, "no run trains with PDML", ha="center", va="center", transform=axes[2].transAxes,
                     fontsize=11, color="0.4")
    top = max([y for line in axes[3].lines for y in np.asarray(line.get_ydata(), float) if np.isfinite(y)] or [10.0])
    axes[3].set_ylim(0, top * 1.15)
    # label the stars without overlaps: close values are pushed apart vertically, with a leader line
    gap, last_y = 0.06 * top * 1.15, -math.inf
    for y, x, c in sorted(stars):
        ty = max(y, last_y + gap)
        axes[3].annotate(f"{y:.1f}", (x, y), xytext=(x - 0.35, ty), ha="right", va="center", fontsize=10, color=c,
                         arrowprops={"arrowstyle": "-", "color": c, "lw": 0.8} if ty != y else None)
        last_y = ty
    if not per_epoch_miou:
        axes[3].set_title("validation mIoU (%) of the final model (★)", fontsize=12)
    handles = [Line2D([], [], color=colors[r], lw=2.5, label=r) for r in epochs]
    fig.legend(handles=handles, loc="outside lower center", ncol=_legend_cols(len(handles), 6), fontsize=10,
               frameon=False)
    fig.suptitle("Training curves", fontsize=13)
    return save_png(fig, path)
