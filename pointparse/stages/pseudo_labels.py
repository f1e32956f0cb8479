"""The ``pseudo-labels`` stage: a checkpoint's confident predictions on a split, plus the split's
clicks (and optionally another label set), as a label set a ``train`` stage reads (``labels:``).

Key: the :class:`~pointparse.pseudo_labels.PseudoLabelConfig` without ``device``, the split's
fingerprint, the checkpoint's bytes, the points artefact's key and the other label set's key. The
build is resumable: a killed run continues in ``<key>.partial`` without predicting again the
images it had predicted. The manifest's summary is the label set's (rule, per-class thresholds and
kept shares, and with dense ground truth the accuracy of the new pixels and the coverage, per
class too).

Rounds of self-training are stages of a pipeline::

    r0:  {kind: train, dataset: d, points: points, params: {recipe: cpu-clicks}}
    pl1: {kind: pseudo-labels, dataset: d, checkpoint: r0, points: points, params: {rule: per-class}}
    r1:  {kind: train, dataset: d, points: points, labels: pl1, params: {recipe: cpu-clicks}}
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import ClassVar

from ..cache import StageCache, StageResult
from ..dataspec import SYNTHETIC_KIND, DatasetSpec, dataset_fingerprint, open_spec
from ..datasets import SegmentationDataset
from ..errors import DataError
from ..keys import content_fingerprint
from ..labelset import check_label_set, load_label_set
from ..points import load_points
from ..predictor import Predictor, resolve_checkpoint
from ..pseudo_labels import PseudoLabelConfig, check_combine, write_pseudo_labels
from .base import KeyUnknown, PipelineEntry, RunContext, Stage, Upstream, UpstreamMap
from .extension_rows import check_points_cover
from .label_refs import LABEL_SET_STAGES, check_label_ref, find_label_set


@dataclass
class PseudoLabels(Stage):
    """``checkpoint``: a model.pt (of a train artefact, or any file); ``points``: the clicks of the
    split (make-points or import-clicks); ``labels``: another label set combined by ``combine``."""

    name: ClassVar[str] = "pseudo-labels"
    version: ClassVar[int] = 1
    params_type: ClassVar[type] = PseudoLabelConfig
    fields: ClassVar[tuple[str, ...]] = ("dataset", "split")
    refs: ClassVar[tuple[str, ...]] = ("checkpoint", "points", "labels")
    ref_kinds: ClassVar[dict] = {"checkpoint": ("train",), "points": ("make-points", "import-clicks"),
                                 "labels": LABEL_SET_STAGES}
    required: ClassVar[tuple[str, ...]] = ("checkpoint", "points")

    checkpoint: Path | None
    spec: DatasetSpec
    config: PseudoLabelConfig
    cache: StageCache
    points: Upstream
    labels: Upstream | None = None
    content_hash: bool = True
    progress: bool = True

    @classmethod
    def from_pipeline(cls, entry: PipelineEntry, upstream: UpstreamMap, ctx: RunContext) -> "PseudoLabels":
        train_dir = upstream["checkpoint"][0].path
        labels = (upstream.get("labels") or [None])[0]
        check_label_ref(labels, f"stage {entry.name!r}")
        return cls(train_dir / "model.pt" if train_dir is not None else None, ctx.dataset_for(entry),
                   PseudoLabelConfig(**entry.params), ctx.cache, upstream["points"][0], labels,
                   progress=ctx.progress)

    @cached_property
    def dataset(self) -> SegmentationDataset:
        return open_spec(self.spec, self.cache)

    def plan(self):
        check_combine(self.config, self.labels is not None)
        if self.checkpoint is None:
            raise KeyUnknown("train")
        ds = None if self.spec.kind == SYNTHETIC_KIND else self.dataset
        inputs = {"dataset": dataset_fingerprint(self.spec, ds, self.content_hash, self.cache.file_hashes),
                  "checkpoint": content_fingerprint(self.checkpoint), "points": self.points.require_key(),
                  "labels": self.labels.require_key() if self.labels is not None else None}
        return dataclasses.replace(self.config, device=""), inputs

    @cached_property
    def point_set(self):
        return load_points(self.points.require_path())

    @cached_property
    def other(self):
        return load_label_set(self.labels.require_path()) if self.labels is not None else None

    def check(self) -> None:
        check_combine(self.config, self.labels is not None)
        check_points_cover(self.point_set, self.dataset, self.points.require_path())
        if self.other is not None:
            check_label_set(self.other, self.dataset)

    def run_options(self) -> dict:
        return {"resume": True}

    def build(self, tmp: Path) -> dict:
        predictor = Predictor.from_checkpoint(self.checkpoint, self.config.device)
        if tuple(predictor.info.classes) != tuple(self.dataset.info.classes):
            raise DataError(self.checkpoint, f"the checkpoint predicts {predictor.info.num_classes} classes "
                                             f"({predictor.info.protocol}) but split {self.spec.split!r} has "
                                             f"{self.dataset.info.num_classes} ({self.dataset.info.protocol})")
        labels = write_pseudo_labels(predictor, self.dataset, self.point_set, self.config, tmp, self.other,
                                     resume=True, progress=self.progress)
        return {"summary": labels.summary, "checkpoint": str(self.checkpoint),
                "dataset_spec": dataclasses.asdict(self.spec)}


def run_pseudo_labels(checkpoint: str | Path, spec: DatasetSpec, points: str | Path, config: PseudoLabelConfig,
                      cache: StageCache, labels: str | Path | None = None, force: bool = False,
                      content_hash: bool = True, progress: bool = True) -> StageResult:
    """:class:`PseudoLabels` in one call: ``checkpoint`` a train artefact (folder, key) or model.pt,
    ``points`` a make-points / import-clicks artefact, ``labels`` a label-set artefact."""
    pts = Upstream.find_points(points, cache)
    other = find_label_set(labels, cache) if labels is not None else None
    return PseudoLabels(resolve_checkpoint(checkpoint, cache), spec, config, cache, pts, other, content_hash,
                        progress).run(force)
