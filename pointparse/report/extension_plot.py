"""The extension figure (paper Table 5 as a picture): extension accuracy against coverage per
method of an ablate-extension table, their accuracy and mIoU as bars, and the online extension of
the runs trained with it, per epoch. Fractions in [0, 1] are shown in percent."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from .plots import save_png


def extension_plot(table, trajectories: Mapping[str, dict], colors: Mapping[str, tuple], path: str | Path) -> Path:
    """Extension accuracy vs coverage: per method of an ablate-extension table, and per training run.

    ``table``: a DataFrame with ``label``, ``method``, ``extension_acc`` and optionally ``threshold``,
    ``coverage`` and ``miou`` (fractions), or ``None``; it gives two panels, accuracy against
    coverage (one colour per method, a method's thresholds joined by a line) and the accuracy (and
    mIoU) of every row as labelled bars, since several rows often sit almost on one point.
    ``trajectories[run]`` = ``{"epochs": [...], "acc": [...], "coverage": [...]}`` from the run's
    epochs.jsonl gives a third panel.
    """
    panels = (["scatter", "bars"] if table is not None else []) + (["runs"] if trajectories else [])
    n_rows_table = 0 if table is None else len(table)
    if len(panels) == 3:  # the bars (one per table row) run down the right-hand side
        fig = Figure(figsize=(14, max(10.0, 1.5 + 0.45 * n_rows_table)), layout="constrained")
        mosaic = fig.subplot_mosaic([["scatter", "bars"], ["runs", "bars"]])
    else:
        fig = Figure(figsize=(6.8 * len(panels), max(5.4, 1.6 + 0.42 * n_rows_table)), layout="constrained")
        mosaic = fig.subplot_mosaic([panels])
    axes = [mosaic[k] for k in panels]
    cmap = colormaps["tab10"]
    if table is not None:
        methods = list(dict.fromkeys(table["method"].astype(str)))
        mcol = {m: cmap(k % 10) for k, m in enumerate(methods)}
        markers = "osD^vP*Xh"
    for ax, kind in zip(axes, panels):
        if kind == "scatter":
            has_cov = "coverage" in table and table["coverage"].notna().any()
            for k, m in enumerate(methods):
                sub = table[table["method"].astype(str) == m]
                if "threshold" in sub:
                    sub = sub.sort_values("threshold", na_position="first")
                x = 100 * sub["coverage"].astype(float).to_numpy() if has_cov else np.full(len(sub), float(k))
                y = 100 * sub["extension_acc"].astype(float).to_numpy()
                ax.plot(x, y, marker=markers[k % len(markers)], ms=9, lw=1.5, color=mcol[m], label=m, alpha=0.9)
                thr = sub["threshold"].to_numpy() if "threshold" in sub else np.full(len(sub), np.nan)
                ok = [i for i in range(len(sub)) if thr[i] == thr[i] and thr[i] is not None]
                # label only a method's extreme thresholds: inner ones would sit on top of each other
                for pos, i in enumerate(dict.fromkeys([ok[0], ok[-1]]) if ok else []):
                    ax.annotate(f"t={float(thr[i]):g}", (x[i], y[i]), textcoords="offset points",
                                xytext=(8, -14) if pos == 0 else (-8, 8), ha="left" if pos == 0 else "right",
                                fontsize=9, color=mcol[m])
            if has_cov:
                cov = 100 * table["coverage"].astype(float)
                cov = cov[cov > 0]
                if len(cov) and cov.max() / cov.min() > 20:  # methods differ by decades in coverage
                    ax.set_xscale("log")
                    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                    ax.xaxis.set_minor_formatter(NullFormatter())  # 1-2-5 majors are enough labels
                ax.set_xlabel("coverage of labelled pixels (%)", fontsize=11)
            else:
                ax.set_xticks(range(len(methods)))
                ax.set_xticklabels(methods, rotation=30, ha="right")
            ax.set_ylabel("extension accuracy (%)", fontsize=11)
            ax.set_title("Extension accuracy vs coverage (paper Table 5)", fontsize=12)
            ax.margins(x=0.1, y=0.1)
            ax.legend(fontsize=10, title="method", loc="best")
        elif kind == "bars":
            labels = table["label"].astype(str).tolist()
            acc = 100 * table["extension_acc"].astype(float).to_numpy()
            miou = 100 * table["miou"].astype(float).to_numpy() if "miou" in table and table["miou"].notna().any() else None
            yy = np.arange(len(labels))[::-1]
            h = 0.4 if miou is not None else 0.7
            cols = [mcol[m] for m in table["method"].astype(str)]
            ax.barh(yy + (h / 2 if miou is not None else 0), np.nan_to_num(acc), h, color=cols, label="extension acc")
            for yi, v in zip(yy, acc):
                if v == v:
                    ax.text(v + 1, yi + (h / 2 if miou is not None else 0), f"{v:.1f}", va="center", fontsize=9)
            if miou is not None:
                ax.barh(yy - h / 2, np.nan_to_num(miou), h, color=cols, alpha=0.45, hatch="//", edgecolor="0.3",
                        label="mIoU")
                for yi, v in zip(yy, miou):
                    if v == v:
                        ax.text(v + 1, yi - h / 2, f"{v:.1f}", va="center", fontsize=9, color="0.25")
                ax.legend(handles=[Patch(facecolor="0.5", label="extension accuracy (%)"),
                                   Patch(facecolor="0.85", hatch="//", edgecolor="0.3", label="mIoU (%)")],
                          fontsize=10, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2, frameon=False)
            ax.set_yticks(yy)
            ax.set_yticklabels(labels, fontsize=10)
            ax.set_xlim(0, 112)
            ax.set_title("Extension accuracy and mIoU per setting", fontsize=12)
        else:
            for run, t in trajectories.items():
                x, y = 100 * np.asarray(t["coverage"], float), 100 * np.asarray(t["acc"], float)
                ax.plot(x, y, "-o", color=colors[run], lw=2, ms=5, label=run)
                ok = np.isfinite(x) & np.isfinite(y)
                for xi, yi, e in zip(x[ok], y[ok], np.asarray(t["epochs"])[ok]):
                    ax.annotate(f"ep {int(e) + 1}", (xi, yi), textcoords="offset points", xytext=(5, -10),
                                fontsize=8, color=colors[run])
            ax.set_xlabel("coverage of labelled pixels (%)", fontsize=11)
            ax.set_ylabel("extension accuracy (%)", fontsize=11)
            ax.set_title("Online extension during training (per epoch)", fontsize=12)
            ax.legend(fontsize=10, title="run")
        ax.grid(alpha=0.3)
    return save_png(fig, path)
