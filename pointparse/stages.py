"""Stages: the library's work functions bound to the content-addressed cache.

Each ``run_*`` function computes its key from its parameters and input fingerprints, returns the
cached artefact on a hit (doing no work), or builds it in a temporary folder that is renamed into
place. The CLI and pipelines call only these.

Stage versions are bumped whenever a stage's output would change for the same inputs.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .cache import StageCache, StageResult, content_fingerprint, fingerprint_files, stage_key
from .datasets import DATASET_KINDS, SegmentationDataset, open_dataset
from .errors import ConfigError, DataError, unknown_choice
from .io import read_json

SYNTHETIC_KIND = "synthetic"
STAGE_VERSIONS = {"scenes": 1, "make-points": 1, "train": 2, "evaluate": 1}

#: Several nodes (``torchrun_args`` with ``--nnodes``) run the same train stage into one shared
#: ``<key>.partial`` folder. Each node's launcher hands its torchrun a fresh token in this variable;
#: global rank 0 writes the token it got into ``RANK0_LAUNCH_FILE``, so after training exactly one
#: node (the one whose torchrun held rank 0; c10d assigns ranks, ``--node-rank`` is ignored) puts
#: the artefact in place and the others wait for it.
LAUNCH_TOKEN_ENV = "POINTPARSE_LAUNCH_TOKEN"
RANK0_LAUNCH_FILE = ".rank0-launch"
#: how long a node that did not hold rank 0 waits for the artefact after its torchrun ended
AWAIT_ARTEFACT_S = 600.0


@dataclass
class DatasetSpec:
    """Which dataset split a stage reads: a reader kind, its root folder, split and options.

    The kind ``synthetic`` needs no root: the scenes are generated into the cache from the
    options (the fields of :class:`pointparse.synthetic.SyntheticConfig`).
    """

    kind: str
    root: str = ""
    split: str = "train"
    options: dict = field(default_factory=dict)

    def with_split(self, split: str) -> "DatasetSpec":
        return dataclasses.replace(self, split=split)


def dataset_kinds() -> list[str]:
    return sorted([*DATASET_KINDS, SYNTHETIC_KIND])


def synthetic_root(options: dict, cache: StageCache, progress: bool = True) -> StageResult:
    """Generate (or reuse) synthetic scenes in the cache; returns the ``scenes`` artefact."""
    from .synthetic import generate_scenes

    cfg = _synthetic_config(options)

    def build(tmp: Path) -> dict:
        generate_scenes(tmp / "scenes", cfg)
        return {}

    return cache.run("scenes", STAGE_VERSIONS["scenes"], cfg, {}, build)


def open_spec(spec: DatasetSpec, cache: StageCache, progress: bool = True) -> SegmentationDataset:
    """Open the dataset split a spec names (generating synthetic scenes when needed)."""
    if spec.kind == SYNTHETIC_KIND:
        res = synthetic_root(spec.options, cache, progress)
        return open_dataset("folder", res.path / "scenes", split=spec.split)
    if spec.kind not in DATASET_KINDS:
        raise unknown_choice("dataset kind", spec.kind, dataset_kinds())
    if not spec.root:
        raise ConfigError(f"dataset kind {spec.kind!r} needs a root folder (--root)")
    return open_dataset(spec.kind, spec.root, split=spec.split, **spec.options)


def scenes_key(options: dict) -> str:
    """The cache key of the synthetic scenes an options dict describes (no generation needed)."""
    from .cache import stage_key

    return stage_key("scenes", STAGE_VERSIONS["scenes"], _synthetic_config(options), {})


def _synthetic_config(options: dict):
    from .synthetic import SyntheticConfig

    valid = {f.name for f in dataclasses.fields(SyntheticConfig)}
    bad = [k for k in options if k not in valid]
    if bad:
        raise ConfigError(f"synthetic dataset takes no option(s) {bad}; valid options: {', '.join(sorted(valid))}")
    opts = dict(options)
    for k in ("size", "instances"):
        if isinstance(opts.get(k), list):
            opts[k] = tuple(opts[k])
    return SyntheticConfig(**opts)


def dataset_fingerprint(spec: DatasetSpec, dataset: SegmentationDataset | None = None, content: bool = False) -> dict:
    """What identifies a dataset split in a cache key: kind, split, options and its files.

    The root path itself is left out (files are fingerprinted relative to it), so the same data
    at another path with the same files reuses artefacts. Synthetic scenes are identified by the
    key of the stage that generates them (they are a pure function of their options), so their
    fingerprint needs no generated files.
    """
    if spec.kind == SYNTHETIC_KIND:
        return {"kind": spec.kind, "split": spec.split, "scenes": scenes_key(spec.options)}
    if dataset is None:
        raise ValueError("a dataset is needed to fingerprint a non-synthetic spec")
    return {
        "kind": spec.kind,
        "split": spec.split,
        "options": spec.options,
        "protocol": dataset.info.protocol,
        "files": fingerprint_files(dataset.files(), content=content, base=dataset.root),
        "content_hash": bool(content),
    }


# ------------------------------------------------------------------------------------------------
# make-points
# ------------------------------------------------------------------------------------------------


def plan_make_points(spec: DatasetSpec, cfg, dataset: SegmentationDataset | None, content_hash: bool = False):
    """(params, inputs) of the make-points key; the worker count never changes the output."""
    return dataclasses.replace(cfg, workers=None), {"dataset": dataset_fingerprint(spec, dataset, content_hash)}


def run_make_points(spec: DatasetSpec, cfg, cache: StageCache, force: bool = False, content_hash: bool = False,
                    progress: bool = True, make: Callable | None = None) -> StageResult:
    """The ``make-points`` stage: one click per instance over a dataset split.

    ``make`` replaces :func:`pointparse.points.make_points` (tests pass a spy to prove a cache
    hit does no work).
    """
    from .points import make_points

    make = make or make_points
    ds = open_spec(spec, cache, progress)
    params, inputs = plan_make_points(spec, cfg, ds, content_hash)

    def build(tmp: Path) -> dict:
        stats = make(ds, cfg, tmp, progress=progress)
        return {"summary": {k: stats[k] for k in ("num_images", "num_points") if k in stats},
                "dataset_spec": dataclasses.asdict(spec)}

    return cache.run("make-points", STAGE_VERSIONS["make-points"], params, inputs, build, force=force)


# ------------------------------------------------------------------------------------------------
# train / evaluate
# ------------------------------------------------------------------------------------------------


def _points_dict(points_dir: Path) -> tuple[dict, Any]:
    from .points import load_points

    ps = load_points(points_dir)
    return {n: ps.points(n) for n in ps.names}, ps


def check_points_match(points_info, dataset: SegmentationDataset, points_path: Path) -> None:
    """A points artefact must come from the same classes as the dataset it trains on."""
    if tuple(points_info.classes) != tuple(dataset.info.classes):
        why = class_difference(points_info.classes, dataset.info.classes)
        hint = "" if "another order" in why else "; a points artefact from another dataset?"
        raise DataError(points_path, f"the points' classes ({points_info.protocol}) do not match the dataset's "
                                     f"({dataset.info.protocol}): {why}{hint}")


def check_points_inside_images(points, dataset: SegmentationDataset) -> None:
    """Every click must lie inside the real image, not only inside the size points.json claims
    (an edited file, or images replaced since the clicks were made)."""
    index = {n: i for i, n in enumerate(dataset.names)}
    for name in points.names:
        xy, _ = points.points(name)
        if not len(xy) or name not in index:
            continue
        h, w = dataset.image_size(index[name])
        outside = (xy[:, 0] >= w) | (xy[:, 1] >= h)
        if outside.any():
            x, y = (int(v) for v in xy[int(outside.argmax())])
            ch, cw = points.image_sizes[name]
            raise DataError(points.path, f"click ({x}, {y}) of image {name!r} lies outside the image "
                                         f"({dataset.image_path(index[name])} is {w}x{h}; points.json says "
                                         f"{cw}x{ch}): the clicks were made for another version of it?")


def class_difference(theirs, ours) -> str:
    """What differs between two class lists, in words (counts alone can be equal: a reordered list)."""
    theirs, ours = list(theirs), list(ours)
    if sorted(theirs) == sorted(ours):
        i = next(k for k, (a, b) in enumerate(zip(theirs, ours)) if a != b)
        return f"the same {len(ours)} classes in another order (id {i} is {theirs[i]!r} there, {ours[i]!r} here)"
    only_theirs = [c for c in theirs if c not in ours]
    only_ours = [c for c in ours if c not in theirs]
    parts = [f"{len(theirs)} classes there, {len(ours)} here"]
    if only_theirs:
        parts.append(f"only there: {', '.join(map(repr, only_theirs[:5]))}")
    if only_ours:
        parts.append(f"only here: {', '.join(map(repr, only_ours[:5]))}")
    if not (only_theirs or only_ours):
        parts.append("the same names repeated differently")
    return "; ".join(parts)


def plan_train(spec: DatasetSpec, dataset: SegmentationDataset | None, train_cfg, points_key: str | None,
               val_split: str | None, eval_cfg, content_hash: bool = False):
    """(params, inputs) of the train key. Workers, device and the process layout change nothing
    but speed, so they stay out of it."""
    inputs: dict[str, Any] = {"dataset": dataset_fingerprint(spec, dataset, content_hash)}
    if train_cfg.supervision == "points":
        inputs["points"] = points_key
    if val_split:
        inputs["val"] = dataset_fingerprint(spec.with_split(val_split), None if spec.kind == SYNTHETIC_KIND
                                            else open_dataset(spec.kind, spec.root, split=val_split, **spec.options),
                                            content_hash)
    train = dataclasses.asdict(dataclasses.replace(train_cfg, workers=0, device="", log_every=0))
    if train_cfg.weights not in ("imagenet", "none"):  # a local state dict: its bytes count, not its path
        inputs["weights"] = content_fingerprint(train_cfg.weights)
        train["weights"] = "file"
    params = {"train": train, "val_split": val_split,
              "eval": dataclasses.replace(eval_cfg, workers=0, device="") if val_split else None}
    return params, inputs


def run_train(spec: DatasetSpec, train_cfg, cache: StageCache, points: str | Path | None = None,
              val_split: str | None = None, eval_cfg=None, gpus: int = 0, force: bool = False,
              content_hash: bool = False, progress: bool = True, torchrun_args: list[str] | None = None) -> StageResult:
    """The ``train`` stage (resumable: a killed run continues from its last epoch checkpoint).

    ``gpus`` > 1 launches the training through ``torchrun`` with that many processes on this node
    (``torchrun_args`` adds e.g. ``--nnodes/--rdzv-endpoint`` for several nodes). With ``val_split``
    the final model is evaluated on it and ``metrics.json`` is written beside the checkpoint.
    """
    from .evaluate import EvalConfig

    check_gpus(gpus, train_cfg.batch_size, torchrun_args, cache.echo)
    ds = open_spec(spec, cache, progress)
    points_dir, points_key = None, None
    if train_cfg.supervision == "points":
        if points is None:
            raise ConfigError("point supervision needs --points (a make-points artefact folder or key)")
        points_dir = cache.find(points, stage="make-points")
        points_key = read_json(points_dir / "manifest.json")["key"]
        from .points import load_points

        point_set = load_points(points_dir)
        check_points_match(point_set.info, ds, points_dir)
        if point_set.num_points == 0:
            raise DataError(point_set.path, f"holds no clicks for its {len(point_set.names)} images: point "
                                            "supervision would have nothing to learn from")
    eval_cfg = eval_cfg or EvalConfig()
    params, inputs = plan_train(spec, ds, train_cfg, points_key, val_split, eval_cfg, content_hash)

    def build(tmp: Path) -> dict:
        job = {"spec": dataclasses.asdict(spec), "train": dataclasses.asdict(train_cfg),
               "points": str(points_dir) if points_dir else None, "cache": str(cache.root),
               "val_split": val_split, "eval": dataclasses.asdict(eval_cfg), "progress": progress}
        from .io import write_json

        if points_dir is not None:  # only when training: reading every image header is not free
            check_points_inside_images(point_set, ds)
        write_json(tmp / "job.json", job)
        discard_corrupt_checkpoint(tmp, cache.echo)
        if gpus and gpus > 1 or torchrun_args:
            cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={max(gpus, 1)}",
                   *(torchrun_args or ["--standalone"]), "-m", "pointparse.worker", str(tmp)]
            token = uuid.uuid4().hex
            proc = subprocess.run(cmd, env={**os.environ, LAUNCH_TOKEN_ENV: token})
            if proc.returncode != 0:
                raise ConfigError(f"torchrun exited with code {proc.returncode}; the partial run in {tmp} "
                                  "resumes from its last checkpoint when started again")
            if _rank0_token(tmp) != token:  # another node's rank 0 (it may have moved tmp into place already)
                raise _FinishedOnAnotherNode(tmp)
        else:
            run_job(tmp)
        out = {}
        if not (gpus and gpus > 1 or torchrun_args):
            import torch

            # a fixed seed gives bit-identical weights for a fixed intra-op thread count, not across
            # thread counts (float sums split per thread; tests/test_determinism.py), so say which
            out["intra_op_threads"] = torch.get_num_threads()
        if (tmp / "metrics.json").exists():
            m = read_json(tmp / "metrics.json")
            out["summary"] = {k: m.get(k) for k in ("miou", "pixel_acc") if k in m}
        out["dataset_spec"] = dataclasses.asdict(spec)
        out["points_dir"] = str(points_dir) if points_dir else None
        return out

    key = stage_key("train", STAGE_VERSIONS["train"], params, inputs)
    # Several nodes share one partial folder by design (each node's command holds its own ranks), so
    # only a single-node run takes the cache's lock.
    try:
        return cache.run("train", STAGE_VERSIONS["train"], params, inputs, build, force=force, resume=True,
                         lock=not torchrun_args)
    except _FinishedOnAnotherNode as other:
        return _await_artefact(cache, "train", key, other.tmp)


class _FinishedOnAnotherNode(Exception):
    """Training ended and another node's command (the one that launched rank 0) finalises it."""

    def __init__(self, tmp: Path):
        super().__init__(str(tmp))
        self.tmp = tmp


def _rank0_token(run_dir: Path) -> str | None:
    """The launch token global rank 0 saw (``None`` when ``run_dir`` is gone: another node renamed it)."""
    try:
        return (run_dir / RANK0_LAUNCH_FILE).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None


def _mark_rank0_launch(run_dir: Path) -> None:
    """Under torchrun, global rank 0 records its launcher's token (see ``LAUNCH_TOKEN_ENV``)."""
    token = os.environ.get(LAUNCH_TOKEN_ENV)
    if token and os.environ.get("RANK") == "0":
        from .io import atomic_file

        with atomic_file(run_dir / RANK0_LAUNCH_FILE) as tmp:
            Path(tmp).write_text(token + "\n", encoding="utf-8")


def _await_artefact(cache: StageCache, stage: str, key: str, tmp: Path, timeout: float | None = None) -> StageResult:
    """Wait until another node has renamed ``tmp`` into the finished artefact, and return it."""
    timeout = AWAIT_ARTEFACT_S if timeout is None else timeout
    deadline = time.monotonic() + timeout
    while True:
        hit = cache.lookup(stage, key)
        if hit is not None and not tmp.exists():
            return StageResult(stage, key, hit, False, read_json(hit / "manifest.json"))
        if time.monotonic() > deadline:
            raise ConfigError(f"training finished, but the node whose torchrun held rank 0 did not put {tmp} "
                              f"in place as {cache.path_for(stage, key)} within {timeout:.0f} s; see that "
                              "node's output (the trained files are in the partial folder)")
        time.sleep(0.5)


def discard_corrupt_checkpoint(run_dir: Path, echo: Callable[[str], None]) -> None:
    """A ``checkpoint.pt`` in a partial run that does not load would fail every resume (and every
    rerun): say so in one line and remove it, so training starts over."""
    from .train import load_checkpoint

    path = run_dir / "checkpoint.pt"
    if not path.exists():
        return
    try:
        state = load_checkpoint(path)
        missing = [k for k in ("model", "optimizer", "next_epoch") if k not in state]
        problem = f"resumable checkpoint lacks {', '.join(missing)}" if missing else None
    except DataError as exc:
        problem = exc.problem
    if problem:
        echo(f"{path}: {problem}; discarded, training starts over")
        path.unlink()


def check_gpus(gpus: int, batch_size: int, torchrun_args, echo: Callable[[str], None]) -> None:
    """``--gpus`` before torchrun starts: a bad value is one line here, not one traceback per rank."""
    if gpus < 0:
        raise ConfigError(f"--gpus must be 0 or more (processes per node), got {gpus}")
    if gpus > 1 and batch_size % gpus:
        raise ConfigError(f"--batch-size {batch_size} is not divisible by --gpus {gpus}: each process takes an "
                          "equal share of the batch")
    if gpus > 1 and not torchrun_args:
        import torch

        if not torch.cuda.is_available():
            echo(f"--gpus {gpus}: no CUDA device here, so {gpus} CPU processes (gloo) share this machine's cores")
        elif torch.cuda.device_count() < gpus:
            raise ConfigError(f"--gpus {gpus}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def run_job(run_dir: str | Path) -> None:
    """Execute the training job described by ``run_dir/job.json`` (every rank under torchrun)."""
    from .evaluate import EvalConfig
    from .train import TrainConfig, train

    run_dir = Path(run_dir)
    _mark_rank0_launch(run_dir)
    job = read_json(run_dir / "job.json")
    cache = StageCache(job["cache"])
    spec = DatasetSpec(**job["spec"])
    cfg = TrainConfig(**job["train"])
    ds = open_spec(spec, cache, progress=False)
    pts = None
    if job["points"]:
        pts, ps = _points_dict(Path(job["points"]))
        check_points_match(ps.info, ds, Path(job["points"]))
    train(cfg, ds, pts, run_dir, progress=job.get("progress", True))
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()  # rank 0 has written model.pt before anyone evaluates it
    if job.get("val_split"):
        evaluate_checkpoint_into(run_dir / "model.pt", spec.with_split(job["val_split"]),
                                 EvalConfig(**job["eval"]), cache, run_dir, progress=job.get("progress", True))
        if (run_dir / "metrics.json").exists() and (not dist.is_initialized() or dist.get_rank() == 0):
            from .curves import TensorBoardCurves
            from .train import TENSORBOARD_DIR

            m = read_json(run_dir / "metrics.json")
            with TensorBoardCurves(run_dir / TENSORBOARD_DIR, start_epoch=cfg.epochs) as curves:
                curves.log_epoch(cfg.epochs - 1, {"val_miou": m.get("miou"), "val_pixel_acc": m.get("pixel_acc")})


def evaluate_checkpoint_into(checkpoint: Path, spec: DatasetSpec, eval_cfg, cache: StageCache, out_dir: Path,
                             progress: bool = True) -> dict | None:
    """Evaluate a checkpoint on a dataset split and write the metrics files (rank 0) into ``out_dir``."""
    # torch-heavy modules: this module stays importable without torch (dry runs, the CLI's help)
    from .evaluate import evaluate_model, write_metrics
    from .predictor import Predictor
    from .train import setup_runtime

    rt = setup_runtime(eval_cfg.device)
    pred = Predictor.from_checkpoint(checkpoint, rt.device)
    model, info = pred.model, pred.info
    ds = open_spec(spec, cache, progress=False)
    if tuple(ds.info.classes) != tuple(info.classes):
        raise DataError(pred.path, f"the checkpoint's classes ({info.protocol}) do not match {spec.kind} split "
                                   f"{spec.split!r} ({ds.info.protocol}): {class_difference(info.classes, ds.info.classes)}")
    if eval_cfg.channels_last:  # see evaluate_model
        import torch

        model = model.to(memory_format=torch.channels_last)
    metrics, cm = evaluate_model(model, ds, info.num_classes, eval_cfg, rt.device, list(pred.mean), list(pred.std),
                                 rt.rank, rt.world_size, progress)
    if rt.is_main:
        return write_metrics(out_dir, metrics, cm, info, {"split": spec.split, "images": len(ds)})
    return None


def plan_evaluate(spec: DatasetSpec, dataset: SegmentationDataset | None, checkpoint: Path, eval_cfg,
                  content_hash: bool = False):
    """(params, inputs) of the evaluate key: the checkpoint is fingerprinted by its bytes alone, so
    the same model in a copied cache or at another path reuses the artefact."""
    return (dataclasses.replace(eval_cfg, workers=0, device=""),
            {"dataset": dataset_fingerprint(spec, dataset, content_hash),
             "checkpoint": content_fingerprint(checkpoint)})


def run_evaluate(checkpoint: str | Path, spec: DatasetSpec, eval_cfg, cache: StageCache, force: bool = False,
                 content_hash: bool = False, progress: bool = True) -> StageResult:
    """The ``evaluate`` stage: metrics of a trained model (artefact folder, key or .pt file) on a split."""
    ckpt_path = resolve_checkpoint(checkpoint, cache)
    ds = open_spec(spec, cache, progress)
    params, inputs = plan_evaluate(spec, ds, ckpt_path, eval_cfg, content_hash)

    def build(tmp: Path) -> dict:
        d = evaluate_checkpoint_into(ckpt_path, spec, eval_cfg, cache, tmp, progress)
        # the split it measured, so readers (the report's qualitative grid) need not infer it
        return {"summary": {"miou": d["miou"], "pixel_acc": d["pixel_acc"]}, "checkpoint": str(ckpt_path),
                "dataset_spec": dataclasses.asdict(spec)}

    return cache.run("evaluate", STAGE_VERSIONS["evaluate"], params, inputs, build, force=force)


def resolve_checkpoint(ref: str | Path, cache: StageCache | None = None) -> Path:
    """The model.pt of ``ref``: a .pt file, a folder holding model.pt, or (with ``cache``) a train
    artefact key or unique key prefix. The one resolver behind every command that takes a checkpoint
    (:meth:`pointparse.predictor.Predictor.from_checkpoint`, evaluate, the ablation, predict, export)."""
    p = Path(ref)
    if p.is_file():
        return p
    if p.is_dir() and (p / "model.pt").is_file():
        return p / "model.pt"
    if cache is None:
        raise DataError(p, "folder has no model.pt (not a finished train artefact?)" if p.is_dir()
                        else "checkpoint file does not exist")
    d = cache.find(ref, stage="train")
    if not (d / "model.pt").is_file():
        raise DataError(d, "train artefact has no model.pt (unfinished run?)")
    return d / "model.pt"
