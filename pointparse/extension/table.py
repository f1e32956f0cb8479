"""Table 5 assembled from its rows' artefacts, formatted as text, and copied out.

Each row is an ``extension-row`` artefact holding ``counts.json`` (and example overlays); with
training, a row also has an evaluation artefact holding ``metrics.json``. The table artefact holds
``extension_table.csv`` (columns :data:`TABLE_COLUMNS`), ``per_class_accuracy.csv``, ``table.txt``
and ``examples/<row>_<image>.png``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ..cache import StageResult
from ..io import atomic_file, atomic_out_dir, read_json
from .methods import AblationRow

#: columns of ``extension_table.csv`` (Table 5's order); miou / pixel_acc only with training.
TABLE_COLUMNS = ("method", "threshold", "region", "extension_acc", "new_pixels_per_image", "coverage",
                 "miou", "pixel_acc", "time_s")


@dataclass
class AblationResult:
    """What :func:`pointparse.stages.ablate_extension.run_ablation` returns: the table artefact,
    its rows (one ``extension-row`` artefact each), the table itself and, with training, each row's
    (train, evaluation) artefacts."""

    table: StageResult
    rows: list[StageResult]
    frame: Any  # pandas DataFrame with TABLE_COLUMNS
    trained: list[tuple[StageResult, StageResult] | None] = field(default_factory=list)


def assemble_table(rows: Sequence[AblationRow], row_results: Sequence, trained: Sequence) -> tuple[Any, Any]:
    """(table, per-class table) DataFrames from the rows' ``counts.json`` (and metrics).

    ``row_results``: each row's artefact (anything with a ``path``); ``trained``: per row None or
    (train, evaluation) artefacts, the evaluation's ``path`` holding ``metrics.json``.
    """
    recs, per_class = [], []
    for row, res, tr in zip(rows, row_results, trained):
        doc = read_json(res.path / "counts.json")
        t = doc["totals"]
        rec = {"method": row.method, "threshold": row.threshold, "region": row.region,
               "extension_acc": t["accuracy"], "new_pixels_per_image": t["new_pixels_per_image"],
               "coverage": t["coverage"], "miou": None, "pixel_acc": None, "time_s": doc["time_s"]}
        if tr is not None:
            m = read_json(tr[1].path / "metrics.json")
            rec["miou"], rec["pixel_acc"] = m["miou"], m["pixel_acc"]
        recs.append(rec)
        for pc in doc["per_class"]:
            per_class.append({"method": row.method, "threshold": row.threshold, "region": row.region, **pc})
    columns = [c for c in TABLE_COLUMNS if any(tr is not None for tr in trained) or c not in ("miou", "pixel_acc")]
    frame = pd.DataFrame.from_records(recs, columns=list(TABLE_COLUMNS))[columns]
    frame["region"] = frame["region"].astype("Int64")
    return frame, pd.DataFrame.from_records(per_class)


def write_table(out_dir: Path, rows: Sequence[AblationRow], row_results: Sequence, trained: Sequence) -> None:
    """The table artefact's files in ``out_dir`` (see the module docstring), from
    :func:`assemble_table`'s inputs; each row's example overlays are copied with its slug."""
    frame, per_class = assemble_table(rows, row_results, trained)
    with atomic_file(out_dir / "extension_table.csv") as f:
        frame.to_csv(f, index=False, lineterminator="\n")
    with atomic_file(out_dir / "per_class_accuracy.csv") as f:
        per_class.to_csv(f, index=False, lineterminator="\n")
    (out_dir / "table.txt").write_text(format_table(frame) + "\n", encoding="utf-8")
    for row, res in zip(rows, row_results):
        for png in sorted((res.path / "examples").glob("*.png")):
            (out_dir / "examples").mkdir(exist_ok=True)
            shutil.copyfile(png, out_dir / "examples" / f"{row.slug}_{png.name}")


def _blank(v) -> bool:
    return v is None or bool(pd.isna(v))


def format_table(frame) -> str:
    """The table as text, ratios in percent (as the paper prints them), n/a cells blank."""
    show = frame.copy()
    fmt = {"threshold": lambda v: f"{v:g}", "region": lambda v: f"{int(v)}", "extension_acc": lambda v: f"{100 * v:.1f}%",
           "new_pixels_per_image": lambda v: f"{v:.0f}", "coverage": lambda v: f"{100 * v:.1f}%",
           "miou": lambda v: f"{100 * v:.1f}", "pixel_acc": lambda v: f"{100 * v:.1f}%", "time_s": lambda v: f"{v:.1f}"}
    for col, f in fmt.items():
        if col in show:
            show[col] = [("" if _blank(v) else f(v)) for v in show[col]]
    return show.to_string(index=False)


def copy_table(result: AblationResult, out: str | Path, cache_root: str | Path | None = None) -> Path:
    """Copy the table artefact's files into folder ``out`` (replaced atomically; only a new or empty
    folder or an earlier copy is replaced, never one inside the cache: see
    :func:`pointparse.io.check_out_dir`)."""
    out = Path(out)
    with atomic_out_dir(out, "ablate-extension", stage="ablate-extension", cache_root=cache_root) as tmp:
        for p in result.table.path.iterdir():
            if p.is_dir():
                shutil.copytree(p, tmp / p.name)
            else:
                shutil.copyfile(p, tmp / p.name)
    return out
