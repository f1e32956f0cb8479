"""The ``report`` stage: the report folder (:mod:`pointparse.report`) as a cached artefact.

Key: the runs' names in table order with their stage and artefact key (a run over several seeds
adds the keys of all its artefacts), the extension table (its ablate-extension artefact's key,
else the CSV's bytes), the number of qualitative images and the dataset given for the grid (its
fields and, when the grid is drawn, its fingerprint). ``device`` only changes speed: not keyed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence, Union

from ..cache import MANIFEST, StageCache, StageResult
from ..keys import content_fingerprint
from ..dataspec import DatasetSpec, dataset_fingerprint, open_spec
from ..io import read_json
from ..report import ReportConfig, RunData, load_runs, resolve_extension, write_report
from .base import PipelineEntry, RunContext, Stage, Upstream, UpstreamMap

#: an artefact named by the user (folder or cache key) or handed on by a pipeline stage
Ref = Union[str, Path, Upstream]


def _path(ref: Ref) -> str | Path:
    """The artefact a reference names; an upstream stage that has not run raises ``KeyUnknown``."""
    return str(ref.require_path()) if isinstance(ref, Upstream) else ref


@dataclass
class Report(Stage):
    """``runs``: {table row name: artefact, or a list of artefacts (one per seed) for one row}, in
    table order (the order is keyed: it sets the rows and the colours). ``extension``: an
    ablate-extension artefact or its ``extension_table.csv``. ``dataset``: the split the
    qualitative grid shows (default: the one the first run with a checkpoint was evaluated on)."""

    name: ClassVar[str] = "report"
    #: bump when the report's files change for the same inputs
    version: ClassVar[int] = 3
    params_type: ClassVar[type] = ReportConfig
    fields: ClassVar[tuple[str, ...]] = ("dataset", "split")
    refs: ClassVar[tuple[str, ...]] = ("runs", "extension")
    mapping_refs: ClassVar[tuple[str, ...]] = ("runs",)

    runs: Mapping[str, Ref | Sequence[Ref]]
    cache: StageCache
    extension: Ref | None = None
    config: ReportConfig = field(default_factory=ReportConfig)
    dataset: DatasetSpec | None = None

    @classmethod
    def from_pipeline(cls, entry: PipelineEntry, upstream: UpstreamMap, ctx: RunContext) -> "Report":
        # a matrix stage (several seeds) is one row of the report, over all its artefacts
        runs = {label: list(results) if len(results) > 1 else results[0] for label, results in upstream["runs"].items()}
        ext = upstream.get("extension")
        dataset = ctx.dataset_for(entry, default_split="val") if entry.spec.get("dataset") else None
        return cls(runs, ctx.cache, ext[0] if ext else None, ReportConfig(**entry.params), dataset)

    @cached_property
    def _inputs(self) -> tuple[list[RunData], Path | None, dict, dict]:
        """(loaded runs, extension table, params, inputs): read once for the key and the build."""
        qualitative_images = self.config.qualitative_images  # ReportConfig has checked it
        runs = {name: _path(ref) if isinstance(ref, (str, Path, Upstream)) else [_path(r) for r in ref]
                for name, ref in self.runs.items()}
        loaded = load_runs(runs, self.cache)
        ext = resolve_extension(_path(self.extension), self.cache) if self.extension is not None else None
        inputs: dict[str, Any] = {"runs": [[r.name, r.stage, r.key] + ([[x.key for x in r.repeats]] if r.repeats else [])
                                           for r in loaded]}
        if ext is not None:
            man = ext.parent / MANIFEST
            inputs["extension"] = (read_json(man).get("key") if man.is_file() else None) or content_fingerprint(ext)
        if self.dataset is not None and qualitative_images > 0:
            inputs["dataset"] = dataset_fingerprint(self.dataset, open_spec(self.dataset, self.cache),
                                                   memo=self.cache.file_hashes)
        params = {"qualitative_images": qualitative_images,
                  "dataset": dataclasses.asdict(self.dataset) if self.dataset is not None else None}
        return loaded, ext, params, inputs

    def plan(self):
        _, _, params, inputs = self._inputs
        return params, inputs

    def build(self, tmp: Path) -> dict:
        loaded, ext, _, _ = self._inputs
        info = write_report(loaded, tmp, ext, self.config.qualitative_images, self.dataset, self.cache,
                            self.config.device)
        return {"summary": info["summary"], "files": info["files"]}


def run_report(runs: Mapping[str, str | Path | Sequence[str | Path]], cache: StageCache, extension: str | Path | None = None,
               qualitative_images: int = 4, dataset: DatasetSpec | None = None, device: str = "auto",
               force: bool = False) -> StageResult:
    """:class:`Report` in one call (the library's and the CLI's entry): the report of named runs
    (folders or cache keys), cached."""
    return Report(runs, cache, extension, ReportConfig(qualitative_images, device), dataset).run(force)
