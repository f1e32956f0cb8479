"""Which dataset split a stage reads (:class:`DatasetSpec`), how to open it and how it enters a key.

The kind ``synthetic`` needs no root: its scenes are the cached ``scenes`` stage, generated from
the options (the fields of :class:`pointparse.synthetic.SyntheticConfig`). That stage is written
here with the cache's own ``run`` (not as a :class:`pointparse.stages.base.Stage`), so this
module, which the report and the stages share, stays below the stage layer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from .cache import StageCache, StageResult
from .datasets import DATASET_KINDS, SegmentationDataset, open_dataset
from .errors import ConfigError, unknown_choice
from .keys import fingerprint_files, stage_key
from .synthetic import SyntheticConfig, generate_scenes

SYNTHETIC_KIND = "synthetic"


@dataclass
class DatasetSpec:
    """Which dataset split a stage reads: a reader kind, its root folder, split and options."""

    kind: str
    root: str = ""
    split: str = "train"
    options: dict = field(default_factory=dict)

    def with_split(self, split: str) -> "DatasetSpec":
        return dataclasses.replace(self, split=split)


def dataset_kinds() -> list[str]:
    return sorted([*DATASET_KINDS, SYNTHETIC_KIND])


#: the cached stage that generates synthetic scenes (not a pipeline kind: specs name it), and its version
SCENES_STAGE = "scenes"
SCENES_VERSION = 1


def scenes_plan(options: dict) -> tuple[SyntheticConfig, dict]:
    """(params, inputs) of the ``scenes`` stage: the :class:`SyntheticConfig` the options describe
    (nothing else: the scenes are a pure function of it). The run and the key share it."""
    valid = {f.name for f in dataclasses.fields(SyntheticConfig)}
    bad = [k for k in options if k not in valid]
    if bad:
        raise ConfigError(f"synthetic dataset takes no option(s) {bad}; valid options: {', '.join(sorted(valid))}")
    opts = dict(options)
    for k in ("size", "instances"):  # YAML lists, tuples in the config (the key hashes either alike)
        if isinstance(opts.get(k), list):
            opts[k] = tuple(opts[k])
    return SyntheticConfig(**opts), {}


def synthetic_root(options: dict, cache: StageCache) -> StageResult:
    """Generate (or reuse) synthetic scenes in the cache; returns the ``scenes`` artefact."""
    config, inputs = scenes_plan(options)

    def build(tmp: Path) -> dict:
        generate_scenes(tmp / "scenes", config)
        return {}

    return cache.run(SCENES_STAGE, SCENES_VERSION, config, inputs, build)


def scenes_key(options: dict) -> str:
    """The cache key of the synthetic scenes an options dict describes (no generation needed)."""
    return stage_key(SCENES_STAGE, SCENES_VERSION, *scenes_plan(options))


def open_spec(spec: DatasetSpec, cache: StageCache) -> SegmentationDataset:
    """Open the dataset split a spec names (generating synthetic scenes when needed)."""
    if spec.kind == SYNTHETIC_KIND:
        return open_dataset("folder", synthetic_root(spec.options, cache).path / "scenes", split=spec.split)
    if spec.kind not in DATASET_KINDS:
        raise unknown_choice("dataset kind", spec.kind, dataset_kinds())
    if not spec.root:
        raise ConfigError(f"dataset kind {spec.kind!r} needs a root folder (--root)")
    return open_dataset(spec.kind, spec.root, split=spec.split, **spec.options)


def dataset_fingerprint(spec: DatasetSpec, dataset: SegmentationDataset | None = None, content: bool = True,
                        memo: Path | None = None) -> dict:
    """What identifies a dataset split in a cache key: kind, split, options and its files.

    The root path itself is left out (files are fingerprinted relative to it), so the same data
    at another path with the same files reuses artefacts. Synthetic scenes are identified by the
    key of the stage that generates them (they are a pure function of their options), so their
    fingerprint needs no generated files. ``content``/``memo``: :func:`pointparse.keys.fingerprint_files`
    (the stages pass their cache's memo, so the bytes are read once per untouched split).
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
        "files": fingerprint_files(dataset.files(), content=content, base=dataset.root, memo=memo),
        "content_hash": bool(content),
    }


def spec_fingerprint(spec: DatasetSpec, cache: StageCache, content: bool = True) -> dict:
    """:func:`dataset_fingerprint` opening the split only when it must (never generating scenes)."""
    return dataset_fingerprint(spec, None if spec.kind == SYNTHETIC_KIND else open_spec(spec, cache), content,
                               cache.file_hashes)


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
