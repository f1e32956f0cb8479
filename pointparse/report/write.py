"""The report folder: every table as CSV, the figures, ``index.md``/``index.html`` and
``report.json``, written by :func:`write_report` (into a folder) or :func:`build_report`
(atomically, uncached; the cached stage is :class:`pointparse.stages.report.Report`).

Files:

* ``summary.csv`` (Table 3): run, supervision, pdml, extension, mIoU, pixel accuracy, annotated
  pixels per image and their ratio to full supervision; ``seeds.csv``: Table 3 over seeds;
* ``per_class_iou.csv`` (Table 6): rows = runs, columns = class names then ``mIoU``; empty (NaN)
  where a class is absent from both ground truth and prediction;
* ``hyperparameters.csv`` (Table 4) when the PDML runs differ in α, β, m or the PDML weight;
* ``extension.csv`` (Table 5) when an ablate-extension table is given;
* PNG figures (:mod:`pointparse.report.figures`), ``index.md`` and a self-contained ``index.html``
  (:mod:`pointparse.report.index`), and ``report.json`` (what went in, what was skipped and why).

Numbers in the CSVs are fractions in [0, 1], like ``metrics.json``; ``index.md``/``index.html``
show them in percent with one decimal, as the paper does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from ..cache import StageCache, StageResult
from ..errors import ConfigError
from ..io import atomic_dir, atomic_file, write_json
from .figures import make_figures
from .index import display_tables, write_index
from .runs import RunData, load_runs
from .tables import (BASELINE_RUN, hyperparameter_table, per_class_table, read_extension_table, resolve_extension,
                     seed_table, summary_table)


def _write_csv(frame, path: Path, index: bool = False) -> None:
    with atomic_file(path) as tmp:
        frame.to_csv(tmp, index=index, lineterminator="\n")


def write_report(runs: list[RunData], out: Path, extension: Path | None = None, qualitative_images: int = 4,
                 dataset=None, cache: StageCache | None = None, device: str = "auto") -> dict:
    """Write every report file into the existing folder ``out``; returns the report summary."""
    cache = cache or StageCache()
    summary = summary_table(runs)
    per_class = per_class_table(runs)
    hyper = hyperparameter_table(runs)
    seeds = seed_table(runs)
    ext = read_extension_table(extension) if extension is not None else None
    _write_csv(summary, out / "summary.csv")
    _write_csv(per_class, out / "per_class_iou.csv", index=True)
    _write_csv(seeds, out / "seeds.csv")
    files = ["summary.csv", "per_class_iou.csv", "seeds.csv"]
    if hyper is not None:
        _write_csv(hyper, out / "hyperparameters.csv")
        files.append("hyperparameters.csv")
    if ext is not None:
        _write_csv(ext, out / "extension.csv")
        files.append("extension.csv")
    figs, skipped = make_figures(runs, out, ext, qualitative_images, dataset, cache, device)
    write_index(out, runs, display_tables(summary, per_class, hyper, ext, seeds), figs, skipped)
    files += [f for f, _ in figs] + ["index.md", "index.html"]
    info = {"runs": {r.name: {"stage": r.stage, "path": str(r.path), "key": r.key,
                              "train_dir": str(r.train_dir) if r.train_dir else None,
                              "eval_dir": str(r.eval_dir) if r.eval_dir else None} for r in runs},
            "extension": str(extension) if extension is not None else None,
            "files": files, "skipped": skipped,
            "summary": {r["run"]: {"miou": _none_nan(r["miou_mean"]), "pixel_acc": _none_nan(r["pixel_acc_mean"]),
                                   "miou_std": _none_nan(r["miou_std"]), "seeds": int(r["n"]),
                                   "paired_diff": _none_nan(r["paired_diff_mean"]),
                                   "paired_diff_std": _none_nan(r["paired_diff_std"]), "best": bool(r["best"])}
                        for _, r in seeds.iterrows()}}
    write_json(out / "report.json", info)
    return info


@dataclass
class ReportConfig:
    """Options of the report stage: images in the qualitative grid (0 = none) and where its
    predictions run (auto | cpu | cuda; speed only, not part of the cache key)."""

    qualitative_images: int = 4
    device: str = "auto"

    def __post_init__(self) -> None:
        if int(self.qualitative_images) < 0:
            raise ConfigError(f"qualitative_images must be >= 0, got {self.qualitative_images}")


def format_summary(result: StageResult) -> str:
    """Table 3 as text lines (run, mIoU, pixel accuracy, in table order) and the index.html path."""
    summary = result.manifest.get("summary") or {}
    order = [r[0] for r in (result.manifest.get("inputs") or {}).get("runs", [])] or list(summary)
    lines = []
    for name, s in ((n, summary[n]) for n in order if n in summary):  # table order, not the sorted keys
        miou = "–" if s.get("miou") is None else f"{100 * s['miou']:.1f}"
        if s.get("miou_std") is not None:
            miou += f" ± {100 * s['miou_std']:.1f}"
        acc = "–" if s.get("pixel_acc") is None else f"{100 * s['pixel_acc']:.1f}%"
        line = f"  {name:28s} mIoU {miou:>11s}  pixel acc {acc:>6s}"
        if s.get("paired_diff") is not None:
            sd = "" if s.get("paired_diff_std") is None else f" ± {100 * s['paired_diff_std']:.1f}"
            line += f"  vs {BASELINE_RUN} {100 * s['paired_diff']:+.1f}{sd}"
        if s.get("best"):
            line += "  <- best from clicks"
        lines.append(line)
    lines.append(f"  open {result.path / 'index.html'}")
    return "\n".join(lines)


def _none_nan(v: float) -> float | None:
    return None if v is None or math.isnan(v) else float(v)


def build_report(runs: Mapping[str, str | Path | Sequence[str | Path]], out_dir: str | Path, extension: str | Path | None = None,
                 qualitative_images: int = 4, dataset=None, cache: StageCache | None = None,
                 device: str = "auto") -> Path:
    """Write the report for named runs (folders or cache keys) into ``out_dir``, atomically.

    ``extension``: an ablate-extension artefact (folder or key) or its ``extension_table.csv``.
    ``dataset``: a :class:`pointparse.dataspec.DatasetSpec` for the qualitative grid (default: the
    split the first run with a checkpoint was evaluated on). ``qualitative_images=0`` skips the grid.
    """
    if qualitative_images < 0:
        raise ConfigError(f"qualitative_images must be >= 0, got {qualitative_images}")
    cache = cache or StageCache()
    loaded = load_runs(runs, cache)
    ext = resolve_extension(extension, cache) if extension is not None else None
    with atomic_dir(out_dir) as tmp:
        write_report(loaded, tmp, ext, qualitative_images, dataset, cache, device)
    return Path(out_dir)

