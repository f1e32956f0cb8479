"""The ``labels`` reference: a label set (:mod:`pointparse.labelset`) written by one of the stages
that make dense labels from clicks, named in a pipeline (``labels: <stage>``) or on the command
line (``--labels KEY``: an artefact folder, key or unique key prefix of any of them)."""

from __future__ import annotations

from pathlib import Path

from ..cache import MANIFEST, StageCache
from ..errors import ConfigError, DataError
from ..io import read_json
from .base import Upstream

#: the stages whose artefact is a label set
LABEL_SET_STAGES = ("pseudo-labels", "extension-labels")


def find_label_set(ref: str | Path, cache: StageCache) -> Upstream:
    """The label-set artefact ``ref`` names among :data:`LABEL_SET_STAGES`."""
    p = Path(ref)
    if p.is_dir():
        path = cache.find(p)
        stage = read_json(path / MANIFEST).get("stage")
        if stage not in LABEL_SET_STAGES:
            raise DataError(path, f"is a {stage} artefact, not a label set ({' or '.join(LABEL_SET_STAGES)})")
        return Upstream(stage, read_json(path / MANIFEST)["key"], path)
    found, last = [], None
    for stage in LABEL_SET_STAGES:
        try:
            found.append(Upstream.find(ref, cache, stage))
        except DataError as exc:
            last = exc
    if len(found) > 1:
        raise ConfigError(f"labels key prefix {ref!r} names artefacts of several stages "
                          f"({', '.join(u.stage for u in found)}); give more of the key")
    if not found:
        raise DataError(ref, f"no {' or '.join(LABEL_SET_STAGES)} artefact folder or cache key under "
                             f"{cache.root}") from last
    return found[0]


def check_label_ref(up: Upstream | None, where: str) -> None:
    """A pipeline's ``labels`` must name a stage that writes a label set."""
    if up is not None and up.stage not in LABEL_SET_STAGES:
        raise ConfigError(f"{where}: labels must name a {' or '.join(LABEL_SET_STAGES)} stage, not a {up.stage} stage")
