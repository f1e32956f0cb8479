"""The stage type: what every cached step of pointparse declares, and the one way it runs.

A stage kind is a class with a ``name``, a ``version`` (bumped when its output would change for
the same inputs), the dataclass its pipeline ``params`` build (``params_type``), the other fields
a pipeline stage of that kind may carry (``fields``; ``required`` those it must have) and
those that name upstream stages (``refs``; ``ref_kinds`` the kinds a ref may name). An instance holds one invocation: its configuration and its upstream artefacts
(:class:`Upstream`). Two methods define it:

* ``plan() -> (params, inputs)``: everything its cache key depends on, computed without work;
* ``build(tmp_dir) -> dict``: the work, written into a temporary folder; returns extra manifest
  fields.

Running is ``cache.run(name, version, *plan(), build)``; a dry run is ``stage_key(name, version,
*plan())`` (:meth:`Stage.key`). One path, so a dry run and a run cannot drift apart
(``tests/test_pipeline.py`` checks it for every kind). A plan that needs an artefact which does
not exist yet (a dry run before its upstream ran) raises :class:`KeyUnknown`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from ..cache import MANIFEST, StageCache, StageResult
from ..errors import DataError
from ..keys import stage_key
from ..io import read_json


_KEY = re.compile(r"[0-9a-f]{64}")


class KeyUnknown(Exception):
    """The key depends on an artefact that is not built yet (a dry run): it is known after it runs."""


@dataclass(frozen=True)
class Upstream:
    """An artefact feeding a stage: the stage that wrote it, its cache key and its folder.

    In a run both are known; in a dry run ``path`` is ``None`` until the upstream stage has run
    (and ``key`` is ``None`` when that stage's own key is not known yet). A file given on the
    command line (a ``.pt`` checkpoint, an ``extension_table.csv``) has a path and no key.
    """

    stage: str
    key: str | None
    path: Path | None

    @classmethod
    def of(cls, result: StageResult) -> "Upstream":
        return cls(result.stage, result.key, result.path)

    @classmethod
    def find(cls, ref: str | Path, cache: StageCache, stage: str) -> "Upstream":
        """A reference given by a user (artefact folder, key or unique key prefix) of ``stage``.

        Its manifest's ``key`` goes into the keys of what is built from it, so a manifest without
        a key (``{}``) or with a key that is not one (``"key": 5``) is refused, not used."""
        path = cache.find(ref, stage=stage)
        manifest = read_json(path / MANIFEST)
        key = manifest.get("key") if isinstance(manifest, dict) else None
        if not (isinstance(key, str) and _KEY.fullmatch(key)):
            raise DataError(path / MANIFEST, f"not a pointparse manifest: 'key' must be a 64-hex cache key, got "
                                             f"{key!r}; run the command that made this artefact again")
        return cls(stage, key, path)

    @classmethod
    def find_points(cls, ref: str | Path, cache: StageCache) -> "Upstream":
        """A points artefact: made by make-points or by import-clicks (a key is looked up in both)."""
        try:
            return cls.find(ref, cache, "make-points")
        except DataError:
            if Path(ref).is_dir():  # a folder is what it is: its own error says what is wrong with it
                raise
            return cls.find(ref, cache, "import-clicks")

    @classmethod
    def planned(cls, stage: str, key: str | None, cache: StageCache) -> "Upstream":
        """A dry run's view of an upstream stage: its planned key and its folder if already built."""
        return cls(stage, key, cache.lookup(stage, key) if key is not None else None)

    def require_key(self) -> str:
        if self.key is None:
            raise KeyUnknown(self.stage)
        return self.key

    def require_path(self) -> Path:
        if self.path is None:
            raise KeyUnknown(self.stage)
        return self.path


@dataclass
class PipelineEntry:
    """One stage of a pipeline file after matrix expansion: its name, kind, YAML mapping
    (``spec``), merged parameters (defaults + params + matrix values), dependencies and line."""

    name: str
    kind: str
    spec: dict
    params: dict
    deps: list[str] = field(default_factory=list)
    line: int = 0


@dataclass
class RunContext:
    """What every stage of a pipeline run shares: the cache, the named datasets and the flags."""

    cache: StageCache
    datasets: dict  # name -> pointparse.dataspec.DatasetSpec
    progress: bool = True
    force: bool = False
    echo: Callable[[str], None] = print

    def dataset_for(self, entry: PipelineEntry, default_split: str = "train", split_field: str = "split"):
        """The :class:`~pointparse.dataspec.DatasetSpec` a pipeline stage reads."""
        return self.datasets[entry.spec["dataset"]].with_split(entry.spec.get(split_field, default_split))


#: ``from_pipeline``'s upstream argument: for each ref field, the artefacts it names in order (a
#: mapping ref such as the report's ``runs`` gives ``{label: [Upstream, ...]}``)
UpstreamMap = dict[str, Any]


class Stage:
    """Base of every stage kind (see the module docstring). Subclasses are dataclasses holding a
    ``cache`` field and their configuration."""

    name: ClassVar[str]
    version: ClassVar[int]
    params_type: ClassVar[type | None] = None
    fields: ClassVar[tuple[str, ...]] = ()
    refs: ClassVar[tuple[str, ...]] = ()
    #: for a ref field, the stage kinds it may name (checked with the file); absent = any kind
    ref_kinds: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: ref fields that map names to stages (the report's rows), not a stage or a list of them
    mapping_refs: ClassVar[tuple[str, ...]] = ()
    #: fields a pipeline stage of this kind must have besides ``dataset`` (checked with the file)
    required: ClassVar[tuple[str, ...]] = ()
    cache: StageCache

    @classmethod
    def from_pipeline(cls, entry: PipelineEntry, upstream: UpstreamMap, ctx: RunContext) -> "Stage":
        """The stage a pipeline entry describes (no work, no checks: a dry run builds it too)."""
        raise NotImplementedError

    def plan(self) -> tuple[Any, Any]:
        raise NotImplementedError

    def build(self, tmp: Path) -> dict | None:
        raise NotImplementedError

    def check(self) -> None:
        """Checks of the inputs that run before any work (not in a dry run: they read the data)."""

    def run_options(self) -> dict:
        """Extra keyword arguments of :meth:`StageCache.run` (``resume``, ``lock``)."""
        return {}

    def key(self) -> str:
        """The key :meth:`run` gives its artefact (raises :class:`KeyUnknown` when an input is not built)."""
        params, inputs = self.plan()
        return stage_key(self.name, self.version, params, inputs)

    def run(self, force: bool = False) -> StageResult:
        """Check the inputs, then return the cached artefact or build it (what a pipeline hands on)."""
        self.check()
        params, inputs = self.plan()
        return self.cache.run(self.name, self.version, params, inputs, self.build, force=force, **self.run_options())

