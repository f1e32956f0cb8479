"""The ``report`` stage: the paper's Tables 3–6 and Figures 3–6 from cached artefacts.

A *run* is a train artefact (``manifest.json`` with ``params.train``, ``model.pt``,
``epochs.jsonl``, ``distances.npz``, ``metrics.json`` when trained with a validation split) and/or
an evaluate artefact (``metrics.json``, ``per_class_iou.csv``, ``confusion.npy``; its manifest
names the checkpoint, whose folder is the train artefact). Runs are named by the user
(``{"fullsup": ref, "pdml": ref}``; a ref is a folder or a cache key).

Output folder (:func:`build_report` writes it atomically; :func:`run_report` caches it):

* ``summary.csv`` (Table 3): run, supervision, pdml, extension, mIoU, pixel accuracy, annotated
  pixels per image and their ratio to full supervision;
* ``per_class_iou.csv`` (Table 6): rows = runs, columns = class names then ``mIoU``; empty (NaN)
  where a class is absent from both ground truth and prediction;
* ``hyperparameters.csv`` (Table 4) when the PDML runs differ in α, β, m or the PDML weight;
* ``extension.csv`` (Table 5) when an ablate-extension artefact is given;
* PNG figures (see :mod:`pointparse.plots`), ``index.md`` and a self-contained ``index.html``
  (tables as HTML, figures as base64 data URIs), and ``report.json`` (what went in, what was
  skipped and why).

Numbers in the CSVs are fractions in [0, 1], like ``metrics.json``; ``index.md``/``index.html``
show them in percent with one decimal, as the paper does. IoUs come from ``confusion.npy`` when
present (rows = ground truth, columns = prediction), else from ``metrics.json``.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from .cache import MANIFEST, StageCache, StageResult, content_fingerprint, stage_key
from .errors import ConfigError, DataError
from .evaluate import EvalConfig, predict_logits
from .io import atomic_dir, atomic_file, read_json, write_json
from .metrics import SegMetrics
from .model import resolve_device
from .predictor import Predictor
from .stages import DatasetSpec, open_spec

REPORT_STAGE = "report"
#: bump when the report's files change for the same inputs
REPORT_VERSION = 3
EXTENSION_TABLE = "extension_table.csv"
#: columns of an ablate-extension table, in the order Table 5 shows them; others are kept after these
EXTENSION_COLUMNS = ("method", "threshold", "region", "extension_acc", "new_pixels_per_image", "coverage",
                     "miou", "pixel_acc", "time_s")


# ------------------------------------------------------------------------------------------------
# loading runs
# ------------------------------------------------------------------------------------------------


@dataclass
class RunData:
    """Everything the report reads about one run.

    ``iou``: float64 [C] aligned with ``classes`` (NaN = class absent from GT and prediction);
    ``confusion``: int64 [C, C] or ``None``; ``train``: the TrainConfig dict (empty when unknown);
    ``epochs``: rows of ``epochs.jsonl``; ``eval_spec``: the dataset split the metrics were
    computed on, as DatasetSpec fields, when it can be reopened (``None`` otherwise).
    """

    name: str
    path: Path
    key: str
    stage: str
    classes: tuple[str, ...]
    protocol: str | None
    iou: np.ndarray
    miou: float
    pixel_acc: float
    metrics_path: Path
    confusion: np.ndarray | None = None
    eval_images: int | None = None
    train_dir: Path | None = None
    eval_dir: Path | None = None
    train: dict = field(default_factory=dict)
    epochs: list[dict] = field(default_factory=list)
    checkpoint: Path | None = None
    eval_spec: dict | None = None
    train_dataset: dict | None = None
    points_stats: dict | None = None
    points_dataset: dict | None = None
    #: every artefact of this row when it was run with several seeds (this one first); empty = one
    repeats: list["RunData"] = field(default_factory=list)

    @property
    def supervision(self) -> str:
        return str(self.train.get("supervision", "unknown"))

    @property
    def pdml(self) -> bool:
        return self.supervision == "points" and bool(self.train.get("pdml", False))

    @property
    def extension(self) -> str:
        return str(self.train.get("extension", "none")) if self.supervision == "points" else "none"

    @property
    def distances_path(self) -> Path | None:
        p = self.train_dir / "distances.npz" if self.train_dir else None
        return p if p is not None and p.is_file() else None

    def hyper_label(self) -> str:
        t = self.train
        label = f"α={_g(t.get('alpha'))}, β={_g(t.get('beta'))}, m={_g(t.get('margin'))}"
        w = t.get("pdml_weight", 1.0)
        return label if w in (None, 1, 1.0) else f"{label}, weight {_g(w)}"  # the paper's weight is 1


def _g(v) -> str:
    return "?" if v is None else f"{float(v):g}"


def _manifest(folder: Path) -> dict:
    m = read_json(folder / MANIFEST)
    if not isinstance(m, dict):
        raise DataError(folder / MANIFEST, "manifest is not a JSON object")
    return m


def _key_of(folder: Path, manifest: dict) -> str:
    """The artefact's cache key; a hand-made folder without one is keyed by its manifest's bytes."""
    return str(manifest.get("key") or hashlib.sha256((folder / MANIFEST).read_bytes()).hexdigest())


def _read_epochs(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(path, f"line {n} is not valid JSON ({exc})") from None
        if not isinstance(row, dict) or "epoch" not in row:
            raise DataError(path, f"line {n} is not an epoch record with an 'epoch' field")
        rows.append(row)
    return sorted(rows, key=lambda r: r["epoch"])


def _read_metrics(folder: Path) -> tuple[Path, dict, tuple[str, ...], np.ndarray, float, float, np.ndarray | None]:
    """(metrics path, metrics dict, classes, iou [C], miou, pixel_acc, confusion [C, C] | None)."""
    path = folder / "metrics.json"
    m = read_json(path)
    try:
        per_class = m["per_class"]
        classes = tuple(str(pc["class"]) for pc in per_class)
        json_iou = np.array([np.nan if pc.get("iou") is None else float(pc["iou"]) for pc in per_class], float)
    except (KeyError, TypeError, ValueError):
        raise DataError(path, "not a pointparse metrics file (needs 'per_class': [{'class', 'iou'}, ...])") from None
    if not classes:
        raise DataError(path, "metrics list no classes")
    cm_path = folder / "confusion.npy"
    if cm_path.is_file():
        try:
            cm = np.load(cm_path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(cm_path, f"unreadable confusion matrix ({exc})") from None
        if cm.shape != (len(classes), len(classes)):
            raise DataError(cm_path, f"confusion matrix has shape {cm.shape} but {path.name} lists "
                                     f"{len(classes)} classes")
        sm = SegMetrics.from_matrix(cm)
        return path, m, classes, sm.iou, sm.miou, sm.pixel_acc, sm.confusion
    miou = m.get("miou")
    acc = m.get("pixel_acc")
    return (path, m, classes, json_iou, float("nan") if miou is None else float(miou),
            float("nan") if acc is None else float(acc), None)


def _points_of(train_manifest: dict, cache: StageCache) -> tuple[dict | None, dict | None]:
    """(stats.json, dataset fingerprint) of the points artefact a run trained on, if still present."""
    candidates = []
    if train_manifest.get("points_dir"):
        candidates.append(Path(train_manifest["points_dir"]))
    key = (train_manifest.get("inputs") or {}).get("points")
    if key:
        hit = cache.lookup("make-points", str(key))
        if hit is not None:
            candidates.append(hit)
    for d in candidates:
        if (d / "stats.json").is_file():
            stats = read_json(d / "stats.json")
            fp = _manifest(d).get("inputs", {}).get("dataset") if (d / MANIFEST).is_file() else None
            return stats, fp
    return None, None


def _train_spec(manifest: dict, split: str | None) -> dict | None:
    spec = manifest.get("dataset_spec")
    if not isinstance(spec, dict) or not split:
        return None
    return {**spec, "split": split}


def load_run(name: str, ref: str | Path, cache: StageCache | None = None) -> RunData:
    """Read one run from a train or evaluate artefact (folder or cache key)."""
    cache = cache or StageCache()
    folder = cache.find(ref)
    man = _manifest(folder)
    stage = man.get("stage")
    train_dir = eval_dir = None
    checkpoint = None
    if stage == "train":
        train_dir = folder
    elif stage == "evaluate":
        eval_dir = folder
        ck = Path(str(man.get("checkpoint", "")))
        if ck.is_file():
            checkpoint = ck
            if (ck.parent / MANIFEST).is_file() and _manifest(ck.parent).get("stage") == "train":
                train_dir = ck.parent
    else:
        raise DataError(folder / MANIFEST, f"run {name!r}: this is a {stage!r} artefact; a run is a train or "
                                           "evaluate artefact")
    metrics_dir = eval_dir or train_dir
    if not (metrics_dir / "metrics.json").is_file():
        raise DataError(metrics_dir, f"run {name!r} has no metrics.json: train it with a validation split "
                                     "(--val-split) or pass an evaluate artefact of its model")
    mpath, metrics, classes, iou, miou, acc, cm = _read_metrics(metrics_dir)
    run = RunData(name=name, path=folder, key=_key_of(folder, man), stage=stage, classes=classes,
                  protocol=metrics.get("protocol"), iou=iou, miou=miou, pixel_acc=acc, metrics_path=mpath,
                  confusion=cm, eval_images=metrics.get("images"), train_dir=train_dir, eval_dir=eval_dir)
    tman = _manifest(train_dir) if train_dir else {}
    if train_dir is not None:
        run.train = dict((tman.get("params") or {}).get("train") or {})
        run.epochs = _read_epochs(train_dir / "epochs.jsonl")
        if (train_dir / "model.pt").is_file():
            checkpoint = train_dir / "model.pt"
        run.train_dataset = (tman.get("inputs") or {}).get("dataset")
        run.points_stats, run.points_dataset = _points_of(tman, cache)
    elif checkpoint is not None:  # a bare .pt: its training configuration travels inside it
        from .train import load_checkpoint

        run.train = dict(load_checkpoint(checkpoint).get("train_config") or {})
    run.checkpoint = checkpoint
    if eval_dir is not None:
        run.eval_spec = _eval_spec_of_evaluate(man, tman)
    else:
        run.eval_spec = _train_spec(tman, (tman.get("params") or {}).get("val_split") or metrics.get("split"))
    return run


def _eval_spec_of_evaluate(eval_manifest: dict, train_manifest: dict) -> dict | None:
    """The dataset split an evaluate artefact measured, when it can be reopened.

    Its manifest fingerprints the dataset (kind, split, and options or the synthetic scenes key)
    but not the root folder; the root comes from the train manifest's ``dataset_spec`` when both
    name the same data.
    """
    if isinstance(eval_manifest.get("dataset_spec"), dict):
        return dict(eval_manifest["dataset_spec"])
    ds = (eval_manifest.get("inputs") or {}).get("dataset") or {}
    tspec = train_manifest.get("dataset_spec")
    tds = (train_manifest.get("inputs") or {}).get("dataset") or {}
    if not ds.get("split") or not isinstance(tspec, dict) or ds.get("kind") != tspec.get("kind"):
        return None
    same = (ds.get("scenes") is not None and ds.get("scenes") == tds.get("scenes")) or \
           ("options" in ds and ds.get("options") == tspec.get("options"))
    return {**tspec, "split": ds["split"]} if same else None


def load_runs(runs: Mapping[str, str | Path | Sequence[str | Path]], cache: StageCache | None = None) -> list[RunData]:
    """Load every named run and check that they were evaluated on one class set.

    A run given as a list of artefacts (one per seed) is one table row: the first artefact feeds
    the figures and per-class tables, all of them the seeds table (:func:`seed_table`).
    """
    if not runs:
        raise ConfigError("a report needs at least one run (name=artefact)")
    for name in runs:
        if not str(name).strip():
            raise ConfigError("run names must not be empty")
    loaded = []
    for n, ref in runs.items():
        refs = [ref] if isinstance(ref, (str, Path)) else list(ref)
        if not refs:
            raise ConfigError(f"run {n!r} names no artefact")
        repeats = [load_run(str(n), r, cache) for r in refs]
        first = repeats[0]
        first.repeats = repeats if len(repeats) > 1 else []
        loaded.append(first)
    check_same_classes([r for run in loaded for r in (run.repeats or [run])])
    return loaded


#: the row the seeds table pairs every other row with, when the report has one of that name
BASELINE_RUN = "PointSup"


def seed_table(runs: list[RunData], baseline: str = BASELINE_RUN):
    """Table 3 over seeds: per row the mIoU of each seed, mean ± std, the paired per-seed difference
    against ``baseline`` (same seed; NaN without one) and ``best`` = the highest mean mIoU among the
    point-supervised rows (pandas DataFrame, mIoU in [0, 1])."""
    import pandas as pd

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


def check_same_classes(runs: list[RunData]) -> None:
    """Runs compared in one table must share classes (names and order); else one clear error."""
    ref = runs[0]
    for r in runs[1:]:
        if r.classes == ref.classes:
            continue
        missing = [c for c in ref.classes if c not in r.classes][:5]
        extra = [c for c in r.classes if c not in ref.classes][:5]
        diff = []
        if missing:
            diff.append(f"lacks {missing}")
        if extra:
            diff.append(f"adds {extra}")
        if not diff:
            diff.append("same names in another order")
        raise DataError(r.metrics_path, f"run {r.name!r} was evaluated on {len(r.classes)} classes "
                                        f"(protocol {r.protocol}) but run {ref.name!r} on {len(ref.classes)} "
                                        f"(protocol {ref.protocol}); {r.name!r} {', '.join(diff)}. A report "
                                        "compares runs on one class set: report them separately")


def default_run_name(train: Mapping[str, Any]) -> str:
    """A Table-3 style name from a TrainConfig dict: ``fullsup``, ``pointsup``, ``pointsup+pdml``,
    ``pointsup+pdml+score+region``; non-default α/β/m are appended."""
    if train.get("supervision") == "full":
        return "fullsup"
    name = "pointsup"
    if train.get("pdml"):
        name += "+pdml"
        tweaks = [f"{k}={_g(train.get(k))}" for k, d in (("alpha", 0.8), ("beta", 1.0), ("margin", 20.0),
                                                             ("pdml_weight", 1.0))
                  if train.get(k) is not None and float(train[k]) != d]
        if tweaks:
            name += "(" + ",".join(tweaks) + ")"
    if train.get("extension", "none") != "none":
        name += f"+{train['extension']}"
    return name


def _row_rank(train: Mapping[str, Any]) -> int:
    if train.get("supervision") == "full":
        return 0
    return 1 + bool(train.get("pdml")) + (train.get("extension", "none") != "none")


def discover_runs(cache: StageCache) -> dict[str, Path]:
    """Every finished train artefact in the cache that has metrics, named by :func:`default_run_name`
    (ties get the key's first 6 characters), in Table 3's row order, then by start time."""
    found = []
    for mf in sorted((cache.root / "train").glob(f"*/*/{MANIFEST}")) if (cache.root / "train").is_dir() else []:
        folder = mf.parent
        if not (folder / "metrics.json").is_file():
            continue
        m = _manifest(folder)
        train = (m.get("params") or {}).get("train") or {}
        found.append((_row_rank(train), str(m.get("started", "")), default_run_name(train), folder))
    if not found:
        raise DataError(cache.root / "train", "no finished train artefact with metrics.json in this cache "
                                              "(train with --val-split first)")
    found.sort(key=lambda t: (t[0], t[1], str(t[3])))
    counts: dict[str, int] = {}
    for _, _, n, _ in found:
        counts[n] = counts.get(n, 0) + 1
    return {(n if counts[n] == 1 else f"{n}-{d.name[:6]}"): d for _, _, n, d in found}


# ------------------------------------------------------------------------------------------------
# tables
# ------------------------------------------------------------------------------------------------


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
    import pandas as pd

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
    import pandas as pd

    classes = list(runs[0].classes)
    data = {r.name: [*map(float, r.iou), r.miou] for r in runs}
    df = pd.DataFrame.from_dict(data, orient="index", columns=[*classes, "mIoU"])
    df.index.name = "run"
    return df


def hyperparameter_table(runs: list[RunData]):
    """Table 4 over the PDML runs, or ``None`` when they all share α, β, m and the PDML weight (the
    weight column, which the paper does not vary, appears only when the runs differ in it)."""
    import pandas as pd

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
    import pandas as pd

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


# ------------------------------------------------------------------------------------------------
# figures
# ------------------------------------------------------------------------------------------------


def _class_order(runs: list[RunData]) -> tuple[list[str], str]:
    """Classes sorted by the full-supervision run's IoU (else by mean IoU over runs), NaN last."""
    full = next((r for r in runs if r.supervision == "full"), None)
    if full is not None:
        key, note = full.iou, f"full-supervision IoU, run '{full.name}'"
    else:
        stack = np.stack([r.iou for r in runs])
        seen = (~np.isnan(stack)).sum(0)
        key = np.where(seen > 0, np.nan_to_num(stack).sum(0) / np.maximum(seen, 1), np.nan)
        note = "mean IoU over runs"
    order = sorted(range(len(runs[0].classes)), key=lambda c: (math.isnan(key[c]), -np.nan_to_num(key[c])))
    return [runs[0].classes[c] for c in order], note


def _distance_hists(run: RunData) -> dict | None:
    p = run.distances_path
    if p is None:
        return None
    try:
        with np.load(p, allow_pickle=False) as z:
            epochs = sorted({int(k.split("_", 1)[1]) for k in z.files if k.startswith("pos_")
                             and f"neg_{k.split('_', 1)[1]}" in z.files})
            if not epochs:
                return None
            first, last = epochs[0], epochs[-1]
            return {"first": (first, z[f"pos_{first}"], z[f"neg_{first}"]),
                    "last": (last, z[f"pos_{last}"], z[f"neg_{last}"]), "label": run.hyper_label()}
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(p, f"unreadable pair distances ({exc.__class__.__name__}: {exc})") from None


def _qualitative_samples(runs: list[RunData], n: int, dataset, cache: StageCache, device: str) -> tuple[list[dict], list[str], Any]:
    """Images, ground truth and each run's prediction for ``n`` images spread over the eval split."""
    with_ckpt = [r for r in runs if r.checkpoint is not None]
    if dataset is None:
        spec_d = next((r.eval_spec for r in with_ckpt if r.eval_spec), None)
        if spec_d is None:
            raise ConfigError("the qualitative grid needs the evaluation images, but no run records a dataset that "
                              "can be reopened: pass the dataset (--dataset/--root/--split) or qualitative_images=0")
        dataset = DatasetSpec(**spec_d)
    try:
        ds = open_spec(dataset, cache, progress=False)
    except DataError as exc:  # e.g. the dataset moved since training
        raise DataError(exc.path, f"{exc.problem} (opening {dataset.kind} split {dataset.split!r} for the qualitative "
                                  "grid; pass the dataset explicitly or qualitative_images=0)") from None
    if tuple(ds.info.classes) != runs[0].classes:
        raise DataError(ds.root, f"the qualitative dataset has {ds.info.num_classes} classes ({ds.info.protocol}) "
                                 f"but the runs were evaluated on {len(runs[0].classes)} ({runs[0].protocol})")
    if not ds.has_dense_labels:
        raise DataError(ds.root, f"split {ds.split!r} has no dense ground truth to show")
    idx = sorted({int(round(v)) for v in np.linspace(0, len(ds) - 1, min(n, len(ds)))})
    samples = []
    for i in idx:
        s = ds.load(i, with_instances=False)
        samples.append({"name": s.name, "image": s.image, "gt": s.mask, "preds": {}})
    dev = resolve_device(device)
    cfg = EvalConfig(amp="off", workers=0, device=str(dev))
    for r in with_ckpt:
        pred = Predictor.from_checkpoint(r.checkpoint, dev)
        info = pred.info
        if tuple(info.classes) != runs[0].classes:
            raise DataError(pred.path, f"run {r.name!r}: the checkpoint predicts other classes than its metrics list")
        for s in samples:
            x = pred.normalise(s["image"])
            s["preds"][r.name] = predict_logits(pred.model, x, cfg, info.num_classes).argmax(1)[0].cpu().numpy().astype(np.uint8)
        del pred
    title = f"Qualitative comparison: {ds.info.name} ({ds.info.protocol}), split {ds.split!r}"
    return samples, [r.name for r in with_ckpt], (ds.info, title)


def _make_figures(runs: list[RunData], out: Path, ext_table, qualitative_images: int, dataset,
                  cache: StageCache, device: str) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """Write every PNG; returns [(file name, caption)] and {figure: why it was skipped}."""
    from . import plots

    colors = plots.run_colors([r.name for r in runs])
    figs: list[tuple[str, str]] = []
    skipped: dict[str, str] = {}

    order, note = _class_order(runs)
    plots.per_class_iou_bars({r.name: r.iou for r in runs}, runs[0].classes, {r.name: r.miou for r in runs},
                             order, colors, out / "per_class_iou.png", note)
    figs.append(("per_class_iou.png", f"Per-class IoU (Table 6 as bars); classes sorted by {note}."))

    dist = {r.name: {"epochs": [e["epoch"] for e in r.epochs],
                     "pos": [np.nan if e.get("dis_pos") is None else e["dis_pos"] for e in r.epochs],
                     "neg": [np.nan if e.get("dis_neg") is None else e["dis_neg"] for e in r.epochs],
                     "label": r.hyper_label()}
            for r in runs if r.pdml and any(e.get("dis_pos") is not None for e in r.epochs)}
    if dist:
        plots.distance_curves(dist, colors, out / "distances.png")
        figs.append(("distances.png", "Mean distance of positive pairs dis(+) and negative pairs dis(−) per epoch, "
                                      "and their gap (paper Figure 3: without L_p, i.e. α = 0, nothing holds the absolute "
                                      "distances down)."))
    else:
        skipped["distances.png"] = "no PDML run with dis(+)/dis(−) in its epochs.jsonl"

    hists = {r.name: h for r in runs if r.pdml for h in [_distance_hists(r)] if h is not None}
    if hists:
        plots.distance_histograms(hists, out / "distance_histograms.png")
        figs.append(("distance_histograms.png", "Distribution of positive and negative pair distances at the first "
                                                "and the last epoch (paper Figure 4)."))
    else:
        skipped["distance_histograms.png"] = "no PDML run with a distances.npz"

    if qualitative_images > 0:
        if any(r.checkpoint is not None for r in runs):
            samples, names, (info, title) = _qualitative_samples(runs, qualitative_images, dataset, cache, device)
            plots.qualitative_grid(samples, names, info.classes, info.palette, out / "qualitative.png", title)
            figs.append(("qualitative.png", "Image, ground truth and each run's prediction (paper Figures 5–6); "
                                            "pale beige = ignored (255)."))
        else:
            skipped["qualitative.png"] = "no run has a model.pt"
    else:
        skipped["qualitative.png"] = "qualitative_images = 0"

    curves = {r.name: r.epochs for r in runs if r.epochs}
    if curves:
        plots.training_curves(curves, {r.name: r.miou for r in runs}, colors, out / "training_curves.png")
        figs.append(("training_curves.png", "Loss terms per epoch and validation mIoU."))
    else:
        skipped["training_curves.png"] = "no run has an epochs.jsonl"

    traj = {r.name: {"epochs": [e["epoch"] for e in r.epochs],
                     "acc": [np.nan if e.get("ext_accuracy") is None else e["ext_accuracy"] for e in r.epochs],
                     "coverage": [np.nan if e.get("ext_coverage") is None else e["ext_coverage"] for e in r.epochs]}
            for r in runs if r.extension != "none" and any(e.get("ext_accuracy") is not None for e in r.epochs)}
    if ext_table is not None or traj:
        plots.extension_plot(ext_table, traj, colors, out / "extension.png")
        figs.append(("extension.png", "Pixel-wise extension accuracy against coverage of the labelled pixels, per "
                                      "extension method (Table 5) and per epoch of the runs trained with extension."))
    else:
        skipped["extension.png"] = "no extension table and no run trained with online extension"
    return figs, skipped


# ------------------------------------------------------------------------------------------------
# index.md / index.html
# ------------------------------------------------------------------------------------------------


def _fmt_pct(v, digits: int = 1, sign: str = "") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * float(v):.{digits}f}{sign}"


def _fmt_num(v, spec: str = ".2f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return format(float(v), spec)


def _fmt_ratio(v) -> str:
    """1 for full supervision, else scientific like the paper's 7.2×10⁻⁵."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return "1" if float(v) == 1.0 else f"{float(v):.2e}"


def _tick(v: bool) -> str:
    return "✓" if v else ""


def _display_tables(summary, per_class, hyper, ext, seeds=None) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """[(title, caption, header, rows)] with numbers formatted like the paper."""
    import pandas as pd

    out = []
    if seeds is not None:
        header = ["Run", "Seeds", "mIoU (mean ± std)", "Pixel acc", f"Paired diff. vs {BASELINE_RUN}", ""]
        rows = []
        for _, r in seeds.iterrows():
            spread = "" if r["miou_std"] != r["miou_std"] else f" ± {100 * r['miou_std']:.1f}"
            paired = "" if r["paired_diff_mean"] != r["paired_diff_mean"] else \
                f"{100 * r['paired_diff_mean']:+.1f}" + ("" if r["paired_diff_std"] != r["paired_diff_std"]
                                                          else f" ± {100 * r['paired_diff_std']:.1f}")
            rows.append([r["run"], r["seeds"], f"{100 * r['miou_mean']:.1f}{spread}", _fmt_pct(r["pixel_acc_mean"],
                         sign="%"), paired, "best" if r["best"] else ""])
        out.append(("Table 3 over seeds", "Each row's mIoU over its seeds (mean ± sample std) and the per-seed "
                    f"difference to {BASELINE_RUN} trained with the same seed; 'best' marks the point-supervised "
                    "row with the highest mean. seeds.csv has the numbers.", header, rows))
    header = ["Run", "Recipe", "FullSup", "PointSup", "PDML", "Online ext.", "Other losses", "mIoU", "Pixel acc",
              "Annotated px / image", "Ratio to full"]
    rows = []
    for _, r in summary.iterrows():
        mode = r["extension"] if r["extension"] != "none" else ""
        threshold = r["ext_threshold"] == r["ext_threshold"]
        region = not pd.isna(r["ext_region"])
        if mode == "agree" and threshold and region:  # Eq. 7 read as labelled candidates
            mode = f"agree({r['ext_threshold']:g}, {int(r['ext_region'])}×{int(r['ext_region'])})"
        else:
            if mode and "score" in mode and threshold:
                mode = mode.replace("score", f"score({r['ext_threshold']:g})")
            if mode and "region" in mode and region:
                mode = mode.replace("region", f"region({int(r['ext_region'])}×{int(r['ext_region'])})")
        pdml = "" if not r["pdml"] else ("✓" if r["pdml_variant"] in ("", "paper") else r["pdml_variant"])
        other = [f"class-balanced ({r['class_balance']})"] if r["class_balance"] not in ("", "none") else []
        if r["crf_weight"] > 0:
            other.append(f"Gated CRF {r['crf_weight']:g}")
        rows.append([r["run"], r["recipe"], _tick(r["supervision"] == "full"), _tick(r["supervision"] == "points"),
                     pdml, mode, " + ".join(other), _fmt_pct(r["miou"]), _fmt_pct(r["pixel_acc"], sign="%"),
                     _fmt_num(r["annotated_pixels_per_image"], ".1f"), _fmt_ratio(r["annotation_ratio_to_full"])])
    proto = ", ".join(sorted({str(p) for p in summary["protocol"]}))
    out.append(("Table 3 — quantitative results", f"Evaluation protocol: {proto}. mIoU in %, as in the paper. "
                "Annotated pixels per image: clicks per training image for point supervision, labelled ground-truth "
                "pixels per image for full supervision (sources in summary.csv).", header, rows))

    runs = list(per_class.index)
    header = ["Class", *runs]
    rows = [[c, *[_fmt_pct(per_class.loc[r, c]) for r in runs]] for c in per_class.columns]
    out.append(("Table 6 — per-class IoU", "IoU in %; – = class absent from both ground truth and prediction. "
                "per_class_iou.csv has one row per run.", header, rows))

    if hyper is not None:
        weight = "pdml_weight" in hyper.columns
        header = ["Run", "α", "β", "m"] + (["PDML weight"] if weight else []) + \
            ["mIoU", "Pixel acc", "last dis(+)", "last dis(−)"]
        rows = [[h["run"], _fmt_num(h["alpha"], "g"), _fmt_num(h["beta"], "g"), _fmt_num(h["margin"], "g")]
                + ([_fmt_num(h["pdml_weight"], "g")] if weight else [])
                + [_fmt_pct(h["miou"]), _fmt_pct(h["pixel_acc"], sign="%"), _fmt_num(h["dis_pos_last"]),
                   _fmt_num(h["dis_neg_last"])] for _, h in hyper.iterrows()]
        out.append(("Table 4 — PDML hyper-parameters", "PDML runs with their loss weights α, β and margin m.",
                    header, rows))
    if ext is not None:
        cols = [c for c in ("label", "region", "extension_acc", "coverage", "new_pixels_per_image", "miou",
                            "pixel_acc", "time_s") if c in ext.columns]
        names = {"label": "Method", "region": "Region", "extension_acc": "Extension acc", "coverage": "Coverage",
                 "new_pixels_per_image": "New px / image", "miou": "mIoU", "pixel_acc": "Pixel acc", "time_s": "Time (s)"}
        fmt = {"extension_acc": lambda v: _fmt_pct(v, sign="%"), "coverage": lambda v: _fmt_pct(v, sign="%"),
               "miou": _fmt_pct, "pixel_acc": lambda v: _fmt_pct(v, sign="%"),
               "new_pixels_per_image": lambda v: _fmt_num(v, ".1f"), "time_s": lambda v: _fmt_num(v, ".2f"),
               "region": lambda v: "" if v is None or pd.isna(v) else f"{int(v)}×{int(v)}", "label": str}
        rows = [[fmt[c](e[c]) for c in cols] for _, e in ext.iterrows()]
        out.append(("Table 5 — extension methods", "Extension accuracy = correct / evaluated new pixels; coverage = "
                    "labelled pixels after extension / labelled ground-truth pixels.", [names[c] for c in cols], rows))
    return out


def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _write_index(out: Path, runs: list[RunData], tables, figs, skipped) -> None:
    md = ["# pointparse report", "", "Runs:", ""]
    for r in runs:
        md.append(f"- **{_md_cell(r.name)}**: {r.stage} artefact `{r.path}` (key `{r.key[:12]}`)")
    for title, caption, header, rows in tables:
        md += ["", f"## {title}", "", caption, "", "| " + " | ".join(map(_md_cell, header)) + " |",
               "|" + "|".join("---" for _ in header) + "|"]
        md += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in rows]
    md += ["", "## Figures", ""]
    for f, caption in figs:
        md += [f"![{f}]({f})", "", f"*{caption}*", ""]
    if skipped:
        md += ["Not drawn:", ""] + [f"- {f}: {why}" for f, why in skipped.items()]
    with atomic_file(out / "index.md") as tmp:
        tmp.write_text("\n".join(md) + "\n", encoding="utf-8")

    e = html.escape
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>pointparse report</title><style>",
             "body{font-family:system-ui,sans-serif;max-width:1300px;margin:2em auto;padding:0 1em;color:#222}",
             "table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:14px}",
             "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}",
             "th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}",
             ".wide{overflow-x:auto}figure{margin:1.5em 0}img{max-width:100%;border:1px solid #ddd}",
             "figure.scroll{overflow-x:auto}figure.scroll img{max-width:none}",
             "figcaption{color:#555;font-size:14px}code{font-size:13px}</style></head><body>",
             "<h1>pointparse report</h1><ul>"]
    for r in runs:
        parts.append(f"<li><b>{e(r.name)}</b>: {e(r.stage)} artefact <code>{e(str(r.path))}</code> "
                     f"(key <code>{e(r.key[:12])}</code>)</li>")
    parts.append("</ul>")
    for title, caption, header, rows in tables:
        parts.append(f"<h2>{e(title)}</h2><p>{e(caption)}</p><div class='wide'><table><tr>"
                     + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows]
        parts.append("</table></div>")
    parts.append("<h2>Figures</h2>")
    for f, caption in figs:
        data = base64.b64encode((out / f).read_bytes()).decode("ascii")
        with Image.open(out / f) as im:
            width = im.size[0]
        # a very wide figure (150 classes) keeps its size and scrolls: shrunk, its labels would be unreadable
        cls = " class='scroll'" if width > 1600 else ""
        parts.append(f"<figure{cls}><img alt='{e(f)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{e(caption)}</figcaption></figure>")
    if skipped:
        parts.append("<p>Not drawn:</p><ul>" + "".join(f"<li>{e(f)}: {e(w)}</li>" for f, w in skipped.items()) + "</ul>")
    parts.append("</body></html>")
    with atomic_file(out / "index.html") as tmp:
        tmp.write_text("\n".join(parts) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------------
# entry points
# ------------------------------------------------------------------------------------------------


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
    figs, skipped = _make_figures(runs, out, ext, qualitative_images, dataset, cache, device)
    _write_index(out, runs, _display_tables(summary, per_class, hyper, ext, seeds), figs, skipped)
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
    ``dataset``: a :class:`pointparse.stages.DatasetSpec` for the qualitative grid (default: the
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


def _report_key_parts(runs: Mapping[str, str | Path | Sequence[str | Path]], cache: StageCache, extension: str | Path | None,
                      qualitative_images: int, dataset) -> tuple[list[RunData], Path | None, dict, dict]:
    if qualitative_images < 0:
        raise ConfigError(f"qualitative_images must be >= 0, got {qualitative_images}")
    loaded = load_runs(runs, cache)
    ext = resolve_extension(extension, cache) if extension is not None else None
    inputs: dict[str, Any] = {"runs": [[r.name, r.stage, r.key] + ([[x.key for x in r.repeats]] if r.repeats else [])
                                       for r in loaded]}
    if ext is not None:
        man = ext.parent / MANIFEST
        inputs["extension"] = (read_json(man).get("key") if man.is_file() else None) or \
            content_fingerprint(ext)
    if dataset is not None and qualitative_images > 0:
        from .stages import dataset_fingerprint, open_spec

        inputs["dataset"] = dataset_fingerprint(dataset, open_spec(dataset, cache, progress=False))
    params = {"qualitative_images": qualitative_images,
              "dataset": dataclasses.asdict(dataset) if dataset is not None else None}
    return loaded, ext, params, inputs


def plan_report(runs: Mapping[str, str | Path | Sequence[str | Path]], cache: StageCache, extension: str | Path | None = None,
                qualitative_images: int = 4, dataset=None) -> str:
    """The key :func:`run_report` gives these inputs, without writing anything (``--dry-run``)."""
    _, _, params, inputs = _report_key_parts(runs, cache, extension, qualitative_images, dataset)
    return stage_key(REPORT_STAGE, REPORT_VERSION, params, inputs)


def run_report(runs: Mapping[str, str | Path | Sequence[str | Path]], cache: StageCache, extension: str | Path | None = None,
               qualitative_images: int = 4, dataset=None, device: str = "auto", force: bool = False) -> StageResult:
    """The cached ``report`` stage, keyed by the runs' names and artefact keys, the extension table and
    the options (``device`` only changes speed, so it is not part of the key)."""
    loaded, ext, params, inputs = _report_key_parts(runs, cache, extension, qualitative_images, dataset)

    def build(tmp: Path) -> dict:
        info = write_report(loaded, tmp, ext, qualitative_images, dataset, cache, device)
        return {"summary": info["summary"], "files": info["files"]}

    return cache.run(REPORT_STAGE, REPORT_VERSION, params, inputs, build, force=force)
