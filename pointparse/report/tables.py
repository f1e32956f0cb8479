"""The report's tables as pandas DataFrames, one function per table of the paper.

* :func:`summary_table` — Table 3: one row per run (supervision, PDML, extension, mIoU, pixel
  accuracy, annotated pixels per image and their ratio to full supervision);
* :func:`seed_table` — Table 3 over seeds: mean ± std per row, the paired difference to
  :data:`BASELINE_RUN`, the best point-supervised row;
* :func:`per_class_table` — Table 6: rows = runs, columns = class names then ``mIoU``;
* :func:`hyperparameter_table` — Table 4, when the PDML runs differ in α, β, m or the PDML weight;
* :func:`read_extension_table` — Table 5 from an ablate-extension artefact's CSV.

Numbers are fractions in [0, 1], NaN where unknown (a class absent from both ground truth and
prediction, a run without a points artefact); :mod:`pointparse.report.index` formats them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..cache import StageCache
from ..errors import DataError
from .runs import RunData

EXTENSION_TABLE = "extension_table.csv"
#: columns of an ablate-extension table, in the order Table 5 shows them; others are kept after these
EXTENSION_COLUMNS = ("method", "threshold", "region", "extension_acc", "new_pixels_per_image", "coverage",
                     "miou", "pixel_acc", "time_s")

#: the row the seeds table pairs every other row with, when the report has one of that name
BASELINE_RUN = "PointSup"


def seed_table(runs: list[RunData], baseline: str = BASELINE_RUN):
    """Table 3 over seeds: per row the mIoU of each seed, mean ± std, the paired per-seed difference
    against ``baseline`` (same seed; NaN without one) and ``best`` = the highest mean mIoU among the
    point-supervised rows (pandas DataFrame, mIoU in [0, 1])."""

    def per_seed(r: RunData) -> dict:
        return {int(x.train.get("seed", i)): x.miou for i, x in enumerate(r.repeats or [r])}

    base = next((per_seed(r) for r in runs if r.name == baseline), None)
    rows = []
    for r in runs:
        seeds = per_seed(r)
        vals = list(seeds.values())
        diffs = [seeds[s] - base[s] for s in seeds if base is not None and s in base] if r.name != baseline else []
        rows.append({
            "run": r.name, "supervision": r.supervision, "seeds": " ".join(str(s) for s in seeds),
            "n": len(vals), "miou_mean": float(np.mean(vals)),
            "miou_std": float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan"),
            "pixel_acc_mean": float(np.mean([x.pixel_acc for x in (r.repeats or [r])])),
            "paired_diff_mean": float(np.mean(diffs)) if diffs else float("nan"),
            "paired_diff_std": float(np.std(diffs, ddof=1)) if len(diffs) > 1 else float("nan"),
            "paired_n": len(diffs),
        })
    df = pd.DataFrame(rows)
    points = df[df["supervision"] == "points"]
    df["best"] = False
    if len(points):
        df.loc[points["miou_mean"].idxmax(), "best"] = True
    return df



def annotation_per_image(run: RunData, runs: list[RunData]) -> tuple[float, float, str]:
    """(annotated pixels per training image, ratio to full supervision, where the numbers come from).

    Point supervision: clicks per image and clicks / labelled pixels from the points artefact's
    ``stats.json``. Full supervision: the labelled (non-255) ground-truth pixels per image of its
    training split, taken from a points artefact of the same training data (another run's), else
    from the evaluation split's confusion matrix (pixels counted / images); its ratio is 1.
    """
    if run.supervision == "points":
        s = run.points_stats
        if s and s.get("num_images"):
            return (float(s["num_points"]) / s["num_images"], float(s.get("annotated_pixel_ratio", float("nan"))),
                    "points stats.json")
        return float("nan"), float("nan"), "points artefact not found"
    if run.supervision == "full":
        for other in runs:
            s = other.points_stats
            if s and s.get("num_images") and run.train_dataset and other.points_dataset == run.train_dataset:
                return (float(s["labelled_pixels"]) / s["num_images"], 1.0,
                        f"labelled training pixels (points stats.json of run {other.name!r})")
        if run.confusion is not None and run.eval_images:
            return float(run.confusion.sum()) / float(run.eval_images), 1.0, "labelled pixels of the evaluation split"
        return float("nan"), 1.0, "unknown"
    return float("nan"), float("nan"), "unknown supervision"


def summary_table(runs: list[RunData]):
    """Table 3: one row per run (pandas DataFrame; fractions in [0, 1])."""
    rows = []
    for r in runs:
        ann, ratio, source = annotation_per_image(r, runs)
        ext = r.extension
        rows.append({
            "run": r.name,
            "supervision": r.supervision,
            "pdml": r.pdml,
            "extension": ext,
            "ext_threshold": float(r.train.get("threshold")) if ("score" in ext or ext == "agree")
            and r.train.get("threshold") is not None else float("nan"),
            "ext_region": int(r.train["region"]) if ("region" in ext or ext == "agree")
            and r.train.get("region") is not None else None,
            "miou": r.miou,
            "pixel_acc": r.pixel_acc,
            "annotated_pixels_per_image": ann,
            "annotation_ratio_to_full": ratio,
            "annotation_source": source,
            "protocol": r.protocol,
            "recipe": r.train.get("recipe") or "",
            "pdml_variant": r.train.get("pdml_variant", "paper") if r.pdml else "",
            "class_balance": r.train.get("class_balance", "none"),
            "crf_weight": float(r.train.get("crf_weight") or 0.0),
            "head": r.train.get("head", "aspp-v2"),
            "backbone": r.train.get("backbone"),
            "epochs": r.train.get("epochs"),
            "artefact": r.key,
        })
    df = pd.DataFrame(rows)
    df["ext_region"] = df["ext_region"].astype("Int64")
    return df


def per_class_table(runs: list[RunData]):
    """Table 6: rows = runs (index ``run``), columns = class names then ``mIoU``; NaN where absent."""
    classes = list(runs[0].classes)
    data = {r.name: [*map(float, r.iou), r.miou] for r in runs}
    df = pd.DataFrame.from_dict(data, orient="index", columns=[*classes, "mIoU"])
    df.index.name = "run"
    return df


def hyperparameter_table(runs: list[RunData]):
    """Table 4 over the PDML runs, or ``None`` when they all share α, β, m and the PDML weight (the
    weight column, which the paper does not vary, appears only when the runs differ in it)."""
    pdml = [r for r in runs if r.pdml]
    keys = ("alpha", "beta", "margin", "pdml_weight")
    settings = {tuple(r.train.get(k, 1.0 if k == "pdml_weight" else None) for k in keys) for r in pdml}
    if len(settings) < 2:
        return None
    weights = {s[3] for s in settings}
    rows = []
    for r in pdml:
        row = {"run": r.name, "alpha": r.train.get("alpha"), "beta": r.train.get("beta"), "margin": r.train.get("margin")}
        if len(weights) > 1:
            row["pdml_weight"] = r.train.get("pdml_weight", 1.0)
        rows.append({**row, "miou": r.miou, "pixel_acc": r.pixel_acc,
                     "dis_pos_last": _last(r.epochs, "dis_pos"), "dis_neg_last": _last(r.epochs, "dis_neg")})
    order = ["beta", "alpha", "margin"] + (["pdml_weight"] if len(weights) > 1 else [])
    return pd.DataFrame(rows).sort_values(order, kind="stable").reset_index(drop=True)


def _last(rows: list[dict], key: str) -> float:
    vals = [r.get(key) for r in rows if r.get(key) is not None]
    return float(vals[-1]) if vals else float("nan")


def resolve_extension(ref: str | Path, cache: StageCache | None = None) -> Path:
    """The ``extension_table.csv`` of an ablate-extension artefact (folder or key), or a CSV path."""
    p = Path(ref)
    if p.is_file():
        return p
    folder = (cache or StageCache()).find(ref)
    table = folder / EXTENSION_TABLE
    if not table.is_file():
        raise DataError(folder, f"not an ablate-extension artefact: it has no {EXTENSION_TABLE}")
    return table


def read_extension_table(path: str | Path):
    """Table 5 from an ablate-extension CSV, read by column name.

    ``method`` and ``extension_acc`` are required; the other known columns are optional and put in
    Table 5's order; unknown columns are kept after them. Adds ``label`` (method, with the score
    threshold when the method uses one).
    """
    path = Path(path)
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(path, f"cannot read the extension table as CSV ({exc.__class__.__name__}: {exc})") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in ("method", "extension_acc") if c not in df.columns]
    if missing:
        raise DataError(path, f"extension table lacks column(s) {missing}; it has {list(df.columns)}")
    if df.empty:
        raise DataError(path, "extension table has no rows")
    for c in EXTENSION_COLUMNS[1:]:
        if c in df.columns:
            df[c] = pd.to_numeric(df[c], errors="coerce")
    if "region" in df.columns:  # a square side: integral, blank for methods without a region
        r = df["region"]
        if (r.dropna() == r.dropna().round()).all():
            df["region"] = r.round().astype("Int64")
    df["method"] = df["method"].astype(str)

    def label(row) -> str:
        t = row.get("threshold")
        thresholded = "score" in row["method"] or row["method"] == "agree"
        return f"{row['method']} ({float(t):g})" if thresholded and t is not None and t == t else row["method"]

    df["label"] = df.apply(label, axis=1)
    cols = [c for c in EXTENSION_COLUMNS if c in df.columns]
    return df[["label", *cols, *[c for c in df.columns if c not in cols and c != "label"]]]

