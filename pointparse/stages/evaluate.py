"""The ``evaluate`` stage: a trained model's metrics on a dataset split.

Key: the evaluation options without what changes only speed, the split's fingerprint and the
checkpoint's bytes (the same model in a copied cache or at another path reuses the artefact).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import torch

from ..cache import StageCache, StageResult
from ..dataspec import SYNTHETIC_KIND, DatasetSpec, class_difference, dataset_fingerprint, open_spec
from ..datasets import SegmentationDataset
from ..errors import DataError
from ..evaluate import EvalConfig, evaluate_model, write_metrics
from ..keys import content_fingerprint
from ..predictor import Predictor, resolve_checkpoint
from ..runtime import setup_runtime
from .base import KeyUnknown, PipelineEntry, RunContext, Stage, UpstreamMap


@dataclass
class Evaluate(Stage):
    """``checkpoint``: the model.pt file (of a train artefact, or any file)."""

    name: ClassVar[str] = "evaluate"
    version: ClassVar[int] = 1
    params_type: ClassVar[type] = EvalConfig
    fields: ClassVar[tuple[str, ...]] = ("dataset", "split")
    refs: ClassVar[tuple[str, ...]] = ("checkpoint",)

    checkpoint: Path | None
    spec: DatasetSpec
    config: EvalConfig
    cache: StageCache
    content_hash: bool = True
    progress: bool = True

    @classmethod
    def from_pipeline(cls, entry: PipelineEntry, upstream: UpstreamMap, ctx: RunContext) -> "Evaluate":
        train_dir = upstream["checkpoint"][0].path
        return cls(train_dir / "model.pt" if train_dir is not None else None, ctx.dataset_for(entry, "val"),
                   EvalConfig(**entry.params), ctx.cache, progress=ctx.progress)

    @cached_property
    def dataset(self) -> SegmentationDataset:
        return open_spec(self.spec, self.cache)

    def plan(self):
        if self.checkpoint is None:
            raise KeyUnknown("train")
        return (dataclasses.replace(self.config, workers=0, device=""),
                {"dataset": dataset_fingerprint(self.spec, None if self.spec.kind == SYNTHETIC_KIND else self.dataset,
                                                 self.content_hash, self.cache.file_hashes),
                 "checkpoint": content_fingerprint(self.checkpoint)})

    def build(self, tmp: Path) -> dict:
        d = evaluate_checkpoint_into(self.checkpoint, self.spec, self.config, self.cache, tmp, self.progress)
        # the split it measured, so readers (the report's qualitative grid) need not infer it
        return {"summary": {"miou": d["miou"], "pixel_acc": d["pixel_acc"]}, "checkpoint": str(self.checkpoint),
                "dataset_spec": dataclasses.asdict(self.spec)}


def run_evaluate(checkpoint: str | Path, spec: DatasetSpec, eval_cfg: EvalConfig, cache: StageCache,
                 force: bool = False, content_hash: bool = True, progress: bool = True) -> StageResult:
    """:class:`Evaluate` of a trained model (artefact folder, key or .pt file) in one call."""
    return Evaluate(resolve_checkpoint(checkpoint, cache), spec, eval_cfg, cache, content_hash, progress).run(force)


def evaluate_checkpoint_into(checkpoint: Path, spec: DatasetSpec, eval_cfg: EvalConfig, cache: StageCache,
                             out_dir: Path, progress: bool = True) -> dict | None:
    """Evaluate a checkpoint on a dataset split and write the metrics files (rank 0) into ``out_dir``."""
    rt = setup_runtime(eval_cfg.device)
    pred = Predictor.from_checkpoint(checkpoint, rt.device)
    model, info = pred.model, pred.info
    ds = open_spec(spec, cache)
    if tuple(ds.info.classes) != tuple(info.classes):
        raise DataError(pred.path, f"the checkpoint's classes ({info.protocol}) do not match {spec.kind} split "
                                   f"{spec.split!r} ({ds.info.protocol}): {class_difference(info.classes, ds.info.classes)}")
    if eval_cfg.channels_last:  # see evaluate_model
        model = model.to(memory_format=torch.channels_last)
    metrics, cm = evaluate_model(model, ds, info.num_classes, eval_cfg, rt.device, list(pred.mean), list(pred.std),
                                 rt.rank, rt.world_size, progress)
    if rt.is_main:
        return write_metrics(out_dir, metrics, cm, info, {"split": spec.split, "images": len(ds)})
    return None
