"""The ``make-points`` stage: one simulated click per instance over a dataset split."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, ClassVar

from ..cache import StageCache, StageResult
from ..dataspec import SYNTHETIC_KIND, DatasetSpec, dataset_fingerprint, open_spec
from ..datasets import SegmentationDataset
from ..simulate import MakePointsConfig, make_points
from .base import PipelineEntry, RunContext, Stage, UpstreamMap


@dataclass
class MakePoints(Stage):
    """Key: the click model's parameters and the split's fingerprint (the worker count never
    changes the output). ``make`` replaces :func:`pointparse.simulate.make_points` (tests pass a spy
    to prove a cache hit does no work)."""

    name: ClassVar[str] = "make-points"
    version: ClassVar[int] = 1
    params_type: ClassVar[type] = MakePointsConfig
    fields: ClassVar[tuple[str, ...]] = ("dataset", "split")

    spec: DatasetSpec
    config: MakePointsConfig
    cache: StageCache
    content_hash: bool = True
    progress: bool = True
    make: Callable | None = None

    @classmethod
    def from_pipeline(cls, entry: PipelineEntry, upstream: UpstreamMap, ctx: RunContext) -> "MakePoints":
        return cls(ctx.dataset_for(entry), MakePointsConfig(**entry.params), ctx.cache, progress=ctx.progress)

    @cached_property
    def dataset(self) -> SegmentationDataset:
        return open_spec(self.spec, self.cache)

    def plan(self):
        ds = None if self.spec.kind == SYNTHETIC_KIND else self.dataset
        fp = dataset_fingerprint(self.spec, ds, self.content_hash, self.cache.file_hashes)
        return dataclasses.replace(self.config, workers=None), {"dataset": fp}

    def build(self, tmp: Path) -> dict:
        stats = (self.make or make_points)(self.dataset, self.config, tmp, progress=self.progress)
        return {"summary": {k: stats[k] for k in ("num_images", "num_points") if k in stats},
                "dataset_spec": dataclasses.asdict(self.spec)}


def run_make_points(spec: DatasetSpec, cfg: MakePointsConfig, cache: StageCache, force: bool = False,
                    content_hash: bool = True, progress: bool = True, make: Callable | None = None) -> StageResult:
    """:class:`MakePoints` run in one call (the library's and the CLI's entry)."""
    return MakePoints(spec, cfg, cache, content_hash, progress, make).run(force)
