"""The ``train`` stage: a model trained on a split (resumable; one or several processes or nodes).

Key: the :class:`~pointparse.train_config.TrainConfig` without what changes only speed (workers, device,
logging), the split's fingerprint, the points artefact's key (point supervision), the label set's
key (``labels``; without one ``label_weight`` stays out of the key), the validation split's
fingerprint and the evaluation options. A killed run continues from its last epoch
checkpoint in ``<key>.partial``; a damaged one (:mod:`pointparse.resume`) is said in one line and
started afresh.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
import torch.distributed as dist

from ..cache import StageCache, StageResult
from ..curves import TensorBoardCurves
from ..dataspec import SYNTHETIC_KIND, DatasetSpec, class_difference, dataset_fingerprint, open_spec
from ..datasets import SegmentationDataset
from ..errors import ConfigError, DataError
from ..evaluate import EvalConfig
from ..io import atomic_file, read_json, write_json
from ..keys import content_fingerprint
from ..labelset import check_label_set, load_label_set
from ..points import load_points
from ..recipes import NEEDS_LABELS
from ..resume import restart_if_damaged
from ..train import TENSORBOARD_DIR, train
from ..train_config import TrainConfig
from .base import PipelineEntry, RunContext, Stage, Upstream, UpstreamMap
from .evaluate import evaluate_checkpoint_into
from .label_refs import LABEL_SET_STAGES, check_label_ref, find_label_set

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
class Train(Stage):
    """``points``: the make-points (or import-clicks) artefact of point supervision; ``labels``: a
    label set of the split (a pseudo-labels or extension-labels artefact) whose CE is added to the
    point CE with weight ``label_weight``. ``gpus`` > 1
    launches ``torchrun`` with that many processes on this node (``torchrun_args`` adds e.g.
    ``--nnodes/--rdzv-endpoint``). With ``val_split`` the final model is evaluated on it and
    ``metrics.json`` is written beside the checkpoint."""

    name: ClassVar[str] = "train"
    version: ClassVar[int] = 2
    params_type: ClassVar[type] = TrainConfig
    fields: ClassVar[tuple[str, ...]] = ("dataset", "split", "points", "val_split", "eval", "gpus", "torchrun_args")
    refs: ClassVar[tuple[str, ...]] = ("points", "labels")
    ref_kinds: ClassVar[dict] = {"labels": LABEL_SET_STAGES}

    spec: DatasetSpec
    config: TrainConfig
    cache: StageCache
    points: Upstream | None = None
    val_split: str | None = None
    eval_config: EvalConfig = field(default_factory=EvalConfig)
    gpus: int = 0
    torchrun_args: list[str] | None = None
    content_hash: bool = True
    progress: bool = True
    labels: Upstream | None = None

    @classmethod
    def from_pipeline(cls, entry: PipelineEntry, upstream: UpstreamMap, ctx: RunContext) -> "Train":
        pts = upstream.get("points")
        labels = (upstream.get("labels") or [None])[0]
        check_label_ref(labels, f"stage {entry.name!r}")
        return cls(ctx.dataset_for(entry), TrainConfig.from_dict(entry.params), ctx.cache,
                   points=pts[0] if pts else None, val_split=entry.spec.get("val_split"),
                   eval_config=EvalConfig(**entry.spec.get("eval", {})), gpus=int(entry.spec.get("gpus", 0)),
                   torchrun_args=entry.spec.get("torchrun_args"), progress=ctx.progress, labels=labels)

    @property
    def distributed(self) -> bool:
        return bool(self.gpus and self.gpus > 1 or self.torchrun_args)

    @cached_property
    def dataset(self) -> SegmentationDataset:
        return open_spec(self.spec, self.cache)

    def _fingerprint(self, spec: DatasetSpec) -> dict:
        if spec.kind == SYNTHETIC_KIND:
            return dataset_fingerprint(spec)
        ds = self.dataset if spec == self.spec else open_spec(spec, self.cache)
        return dataset_fingerprint(spec, ds, self.content_hash, self.cache.file_hashes)

    def plan(self):
        """Workers, device and the process layout change nothing but speed, so they stay out of it."""
        cfg = self.config
        inputs: dict[str, Any] = {"dataset": self._fingerprint(self.spec)}
        if cfg.supervision == "points":
            if self.points is None:
                raise ConfigError("point supervision needs --points (a make-points artefact folder or key)")
            inputs["points"] = self.points.require_key()
        need = NEEDS_LABELS.get(cfg.recipe)
        if need and cfg.supervision == "points" and self.labels is None:
            raise ConfigError(f"recipe {cfg.recipe!r} trains on {need} beside the clicks; none was given "
                              f"(without them use recipe 'cpu-clicks')")
        if self.labels is not None:
            if cfg.supervision != "points":
                raise ConfigError("a label set (labels) trains beside the clicks; with supervision full the dense "
                                  "masks are the labels: drop one of them")
            inputs["labels"] = self.labels.require_key()
        if self.val_split:
            inputs["val"] = self._fingerprint(self.spec.with_split(self.val_split))
        params_train = dataclasses.asdict(dataclasses.replace(cfg, workers=0, device="", log_every=0))
        if self.labels is None:  # it weighs nothing then; left out, the keys of runs without labels stay
            del params_train["label_weight"]
        if cfg.weights not in ("imagenet", "none"):  # a local state dict: its bytes count, not its path
            inputs["weights"] = content_fingerprint(cfg.weights)
            params_train["weights"] = "file"
        params = {"train": params_train, "val_split": self.val_split,
                  "eval": dataclasses.replace(self.eval_config, workers=0, device="") if self.val_split else None}
        return params, inputs

    @cached_property
    def point_set(self):
        return load_points(self.points.require_path()) if self.points is not None else None

    @cached_property
    def label_set(self):
        return load_label_set(self.labels.require_path()) if self.labels is not None else None

    def check(self) -> None:
        check_gpus(self.gpus, self.config.batch_size, self.torchrun_args, self.cache.echo)
        if self.config.supervision == "points" and self.points is not None:
            check_points_match(self.point_set.info, self.dataset, self.points.path)
            if self.point_set.num_points == 0:
                raise DataError(self.point_set.path, f"holds no clicks for its {len(self.point_set.names)} images: "
                                                     "point supervision would have nothing to learn from")
        if self.label_set is not None:
            check_label_set(self.label_set, self.dataset)

    def run_options(self) -> dict:
        # Several nodes share one partial folder by design (each node's command holds its own
        # ranks), so only a single-node run takes the cache's lock.
        return {"resume": True, "lock": not self.torchrun_args}

    def run(self, force: bool = False) -> StageResult:
        try:
            return super().run(force)
        except _FinishedOnAnotherNode as other:
            return _await_artefact(self.cache, self.name, self.key(), other.tmp)

    def build(self, tmp: Path) -> dict:
        points_dir = self.points.path if self.config.supervision == "points" else None
        job = {"spec": dataclasses.asdict(self.spec), "train": dataclasses.asdict(self.config),
               "points": str(points_dir) if points_dir else None, "cache": str(self.cache.root),
               "labels": str(self.labels.path) if self.labels is not None else None,
               "val_split": self.val_split, "eval": dataclasses.asdict(self.eval_config), "progress": self.progress}
        if points_dir is not None:  # only when training: reading every image header is not free
            check_points_inside_images(self.point_set, self.dataset)
        restart_if_damaged(tmp, self.config, self.dataset.info.num_classes, self.cache.echo)
        write_json(tmp / "job.json", job)
        out = {}
        if self.distributed:
            cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={max(self.gpus, 1)}",
                   *(self.torchrun_args or ["--standalone"]), "-m", "pointparse.worker", str(tmp)]
            token = uuid.uuid4().hex
            proc = subprocess.run(cmd, env={**os.environ, LAUNCH_TOKEN_ENV: token})
            if proc.returncode != 0:
                raise ConfigError(f"torchrun exited with code {proc.returncode}; the partial run in {tmp} "
                                  "resumes from its last checkpoint when started again")
            if _rank0_token(tmp) != token:  # another node's rank 0 (it may have moved tmp into place already)
                raise _FinishedOnAnotherNode(tmp)
        else:
            run_job(tmp)
            # a fixed seed gives bit-identical weights for a fixed intra-op thread count, not across
            # thread counts (float sums split per thread; tests/test_determinism.py), so say which
            out["intra_op_threads"] = torch.get_num_threads()
        if (tmp / "metrics.json").exists():
            m = read_json(tmp / "metrics.json")
            out["summary"] = {k: m.get(k) for k in ("miou", "pixel_acc") if k in m}
        out["dataset_spec"] = dataclasses.asdict(self.spec)
        out["points_dir"] = str(points_dir) if points_dir else None
        if self.labels is not None:
            out["labels_dir"] = str(self.labels.path)
        return out


def run_train(spec: DatasetSpec, train_cfg: TrainConfig, cache: StageCache, points: str | Path | None = None,
              val_split: str | None = None, eval_cfg: EvalConfig | None = None, gpus: int = 0, force: bool = False,
              content_hash: bool = True, progress: bool = True, torchrun_args: list[str] | None = None,
              labels: str | Path | None = None) -> StageResult:
    """:class:`Train` run in one call; ``points`` is a make-points artefact folder or key, ``labels``
    a pseudo-labels or extension-labels artefact folder or key."""
    up = None
    if train_cfg.supervision == "points":
        if points is None:
            raise ConfigError("point supervision needs --points (a make-points artefact folder or key)")
        up = Upstream.find_points(points, cache)  # make-points or import-clicks
    elif labels is not None:
        raise ConfigError("--labels trains beside the clicks; with --supervision full the dense masks are the labels: "
                          "drop one of them")
    lab = find_label_set(labels, cache) if labels is not None else None
    return Train(spec, train_cfg, cache, up, val_split, eval_cfg or EvalConfig(), gpus, torchrun_args, content_hash,
                 progress, lab).run(force)


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


def check_gpus(gpus: int, batch_size: int, torchrun_args, echo: Callable[[str], None]) -> None:
    """``--gpus`` before torchrun starts: a bad value is one line here, not one traceback per rank."""
    if gpus < 0:
        raise ConfigError(f"--gpus must be 0 or more (processes per node), got {gpus}")
    if gpus > 1 and batch_size % gpus:
        raise ConfigError(f"--batch-size {batch_size} is not divisible by --gpus {gpus}: each process takes an "
                          "equal share of the batch")
    if gpus > 1 and not torchrun_args:
        if not torch.cuda.is_available():
            echo(f"--gpus {gpus}: no CUDA device here, so {gpus} CPU processes (gloo) share this machine's cores")
        elif torch.cuda.device_count() < gpus:
            raise ConfigError(f"--gpus {gpus}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def run_job(run_dir: str | Path) -> None:
    """Execute the training job described by ``run_dir/job.json`` (every rank under torchrun)."""
    run_dir = Path(run_dir)
    _mark_rank0_launch(run_dir)
    job = read_json(run_dir / "job.json")
    cache = StageCache(job["cache"])
    spec = DatasetSpec(**job["spec"])
    cfg = TrainConfig(**job["train"])
    ds = open_spec(spec, cache)
    pts = None
    if job["points"]:
        ps = load_points(Path(job["points"]))
        check_points_match(ps.info, ds, Path(job["points"]))
        pts = {n: ps.points(n) for n in ps.names}
    labels = load_label_set(job["labels"]) if job.get("labels") else None
    train(cfg, ds, pts, run_dir, progress=job.get("progress", True), labels=labels)
    if dist.is_initialized():
        dist.barrier()  # rank 0 has written model.pt before anyone evaluates it
    if job.get("val_split"):
        evaluate_checkpoint_into(run_dir / "model.pt", spec.with_split(job["val_split"]),
                                 EvalConfig(**job["eval"]), cache, run_dir, progress=job.get("progress", True))
        if (run_dir / "metrics.json").exists() and (not dist.is_initialized() or dist.get_rank() == 0):
            m = read_json(run_dir / "metrics.json")
            with TensorBoardCurves(run_dir / TENSORBOARD_DIR, start_epoch=cfg.epochs) as curves:
                curves.log_epoch(cfg.epochs - 1, {"val_miou": m.get("miou"), "val_pixel_acc": m.get("pixel_acc")})


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
