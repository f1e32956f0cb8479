"""The ``import-clicks`` stage: human clicks from an annotation tool as a points artefact.

Key: the format, the class map's contents (not its path), the click file's bytes and the split's
fingerprint. The artefact has the files of a make-points artefact (``source: "human"``), so it is
accepted wherever one is (a train stage's ``points``, ``--points``). Reading and checking the
clicks is :func:`pointparse.clicks.import_clicks`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import ClassVar

from ..cache import StageCache, StageResult
from ..clicks import CLICK_FORMATS, import_clicks, load_class_map
from ..dataspec import SYNTHETIC_KIND, DatasetSpec, dataset_fingerprint, open_spec
from ..datasets import SegmentationDataset
from ..errors import ConfigError, unknown_choice
from ..keys import click_file_fingerprint
from .base import PipelineEntry, RunContext, Stage, UpstreamMap


@dataclass
class ImportClicksConfig:
    """Parameters of an import-clicks stage (a pipeline stage's ``params``).

    ``format``: a click format (:data:`pointparse.clicks.CLICK_FORMATS`). ``class_map``: ``{tool
    label: dataset class name | id | null}``, or the path of a YAML/JSON file holding one (a
    relative path is relative to the current directory), or ``None`` (labels must be dataset
    classes).
    """

    format: str
    class_map: dict | str | Path | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.format, str) or self.format not in CLICK_FORMATS:
            raise unknown_choice("click format", self.format, CLICK_FORMATS)
        if self.class_map is not None and not isinstance(self.class_map, (dict, str, Path)):
            raise ConfigError(f"class_map must be a mapping {{tool label: dataset class}} or the path of a "
                              f"YAML/JSON file, got {self.class_map!r}")


@dataclass
class ImportClicks(Stage):
    """Import the clicks of ``clicks`` (a click file, or a folder for ``sparse-png``) for the split
    ``spec`` names.

    In a pipeline: ``dataset``/``split`` name the split (default ``train``), ``clicks`` the file or
    folder (a relative path is relative to the current directory, like dataset roots), ``params``
    the :class:`ImportClicksConfig`.
    """

    name: ClassVar[str] = "import-clicks"
    #: bumped whenever the import-clicks output would change for the same inputs
    version: ClassVar[int] = 1
    params_type: ClassVar[type] = ImportClicksConfig
    fields: ClassVar[tuple[str, ...]] = ("dataset", "split", "clicks")
    required: ClassVar[tuple[str, ...]] = ("clicks",)
    refs: ClassVar[tuple[str, ...]] = ()

    clicks: Path
    spec: DatasetSpec
    config: ImportClicksConfig
    cache: StageCache
    content_hash: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        self.clicks = Path(self.clicks)

    @classmethod
    def from_pipeline(cls, entry: PipelineEntry, upstream: UpstreamMap, ctx: RunContext) -> "ImportClicks":
        if not isinstance(entry.spec.get("clicks"), str):
            raise ConfigError(f"stage {entry.name!r}: an import-clicks stage needs 'clicks: <click file or folder>'")
        return cls(Path(entry.spec["clicks"]), ctx.dataset_for(entry), ImportClicksConfig(**entry.params), ctx.cache,
                   progress=ctx.progress)

    @cached_property
    def class_map(self) -> dict | None:
        """The class map's contents, keys as text (``None`` when there is none or it is empty)."""
        cmap = self.config.class_map
        if isinstance(cmap, (str, Path)):
            cmap = load_class_map(cmap)
        return {str(k): v for k, v in cmap.items()} if cmap else None

    @cached_property
    def dataset(self) -> SegmentationDataset:
        return open_spec(self.spec, self.cache)

    def plan(self):
        params = {"format": self.config.format, "class_map": self.class_map}
        ds = None if self.spec.kind == SYNTHETIC_KIND else self.dataset
        return params, {"clicks": click_file_fingerprint(self.clicks),
                        "dataset": dataset_fingerprint(self.spec, ds, self.content_hash, self.cache.file_hashes)}

    def build(self, tmp: Path) -> dict:
        stats = import_clicks(self.clicks, self.config.format, self.dataset, self.class_map, tmp, progress=self.progress)
        return {"summary": {k: stats[k] for k in ("num_images", "num_points")},
                "dataset_spec": dataclasses.asdict(self.spec), "click_file": str(self.clicks)}


def run_import_clicks(path: str | Path, fmt: str, spec: DatasetSpec, cache: StageCache,
                      class_map: dict | str | Path | None = None, force: bool = False, content_hash: bool = True,
                      progress: bool = True) -> StageResult:
    """:class:`ImportClicks` run in one call (the library's and the CLI's entry); returns the
    :class:`~pointparse.cache.StageResult`, whose folder is accepted wherever a make-points one is."""
    return ImportClicks(Path(path), spec, ImportClicksConfig(fmt, class_map), cache, content_hash, progress).run(force)
