"""Reading runs: what the report knows of one train or evaluate artefact (:class:`RunData`).

A *run* is a train artefact (``manifest.json`` with ``params.train``, ``model.pt``,
``epochs.jsonl``, ``distances.npz``, ``metrics.json`` when trained with a validation split) and/or
an evaluate artefact (``metrics.json``, ``per_class_iou.csv``, ``confusion.npy``; its manifest
names the checkpoint, whose folder is the train artefact). Runs are named by the user
(``{"fullsup": ref, "pdml": ref}``; a ref is a folder or a cache key); :func:`discover_runs`
names every finished train artefact of a cache instead.

IoUs come from ``confusion.npy`` when present (rows = ground truth, columns = prediction), else
from ``metrics.json``; all ratios are fractions in [0, 1].
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..cache import MANIFEST, StageCache
from ..errors import ConfigError, DataError
from ..io import read_json
from ..metrics import SegMetrics


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
        from ..checkpoint import load_checkpoint  # torch: only for this case, the report's import stays torch-free

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
    the figures and per-class tables, all of them the seeds table (:func:`pointparse.report.tables.seed_table`).
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

