"""Pipelines as data: a YAML file names stages, their parameters and which artefact feeds which.

::

    name: quickstart
    datasets:                      # named dataset specs (kind, root, options); split chosen per stage
      scenes: {kind: synthetic, options: {seed: 0, size: 128, splits: {train: 160, val: 60}}}
    defaults:                      # parameters shared by every stage of a kind
      train: {epochs: 8, batch_size: 8, crop_size: 128}
    stages:
      points: {kind: make-points, dataset: scenes, split: train}
      full:   {kind: train, dataset: scenes, val_split: val, params: {supervision: full, pdml: false}}
      pdml:   {kind: train, dataset: scenes, points: points, val_split: val}
      sweep:  {kind: train, dataset: scenes, points: points, val_split: val, matrix: {alpha: [0.0, 0.8]}}
      report: {kind: report, runs: {FullSup: full, PDML: pdml, Sweep: sweep}}

* ``matrix`` expands a stage over the product of parameter lists into ``name[key=value,...]``
  stages; a reference to ``name`` from a later stage means all of them.
* ``--set path=value`` overrides any value by its dotted path (``defaults.train.epochs=2``,
  ``stages.full.params.lr=0.01``, ``datasets.scenes.root=/data/ade``).
* Everything is validated before any work, and every problem is reported together with the
  file and line: unknown stage kinds, unknown fields or parameters, missing references, cycles.

Stages run in dependency order through the same cache as the single commands, so a finished
stage is reused and a changed parameter reruns that stage and what depends on it only.
"""

from __future__ import annotations

import dataclasses
import itertools
from importlib import resources
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .cache import StageResult
from .dataspec import DatasetSpec
from .errors import ConfigError, PointParseError
from .fields import coerce_params
from .stages.base import KeyUnknown, PipelineEntry, RunContext, Upstream
from .stages.registry import STAGE_KINDS
from .yaml_lines import KeyProblem, LineDict, LineLoader, line_of as _line

COMMON_FIELDS = ("kind", "params", "matrix", "after")


# ------------------------------------------------------------------------------------------------
# loading and validation
# ------------------------------------------------------------------------------------------------


@dataclass
class Pipeline:
    path: Path
    name: str
    datasets: dict[str, DatasetSpec]
    stages: dict[str, PipelineEntry]  # expanded, in file order
    order: list[str]                  # dependency order


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(doc: dict, overrides: list[str], path: Path) -> None:
    """Apply ``--set a.b.c=value`` overrides in place (values parsed as YAML)."""
    for item in overrides or ():
        if "=" not in item:
            raise ConfigError(f"--set expects path=value, got {item!r}")
        dotted, value = item.split("=", 1)
        keys = dotted.strip().split(".")
        node = doc
        for k in keys[:-1]:
            if not isinstance(node, dict):
                raise ConfigError(f"--set {dotted}: {k!r} is not a mapping in {path}")
            if k not in node or node[k] is None:
                node[k] = LineDict()
                node[k].line, node[k].key_lines = 0, {}
            node = node[k]
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: parent is not a mapping in {path}")
        node[keys[-1]] = _parse_value(value)


def load_pipeline(path: str | Path, overrides: list[str] | None = None) -> Pipeline:
    """Parse, expand and validate a pipeline file; every problem is reported at once."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: pipeline file does not exist")
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=LineLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    except KeyProblem as exc:
        raise ConfigError(f"{path}:{exc.line}: {exc.problem}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a pipeline file is a mapping with 'stages'")
    apply_overrides(doc, overrides or [], path)
    errors: list[str] = []

    def err(line: int, msg: str) -> None:
        errors.append(f"{path}:{line}: {msg}" if line else f"{path}: {msg}")

    for k in doc:
        if k not in ("name", "description", "datasets", "defaults", "stages"):
            err(_line(doc, k), f"unknown top-level key {k!r}; valid: name, description, datasets, defaults, stages")
    # every mapping the rest reads: a list or a scalar in its place is one error, not a traceback
    for k in ("datasets", "defaults", "stages"):
        if doc.get(k) is not None and not isinstance(doc[k], dict):
            err(_line(doc, k), f"{k!r} must be a mapping (name: ...), got a {type(doc[k]).__name__}")
            doc[k] = None
    kinds = STAGE_KINDS
    datasets: dict[str, DatasetSpec] = {}
    for name, d in (doc.get("datasets") or {}).items():
        if not isinstance(d, dict) or "kind" not in d:
            err(_line(doc["datasets"], name), f"dataset {name!r} needs at least 'kind'")
            continue
        bad = [k for k in d if k not in ("kind", "root", "options")]
        if bad:
            err(_line(d, bad[0]), f"dataset {name!r}: unknown field(s) {bad}; valid: kind, root, options")
        if not _mapping(d, "options", f"dataset {name!r}", err):
            continue
        datasets[name] = DatasetSpec(kind=d["kind"], root=str(d.get("root") or ""), split="train",
                                     options=dict(d.get("options") or {}))
    defaults = doc.get("defaults") or {}
    for k in list(defaults):
        if k not in kinds:
            err(_line(defaults, k), f"defaults for unknown stage kind {k!r}; valid: {', '.join(sorted(kinds))}")
        elif not _mapping(defaults, k, "defaults", err):
            defaults[k] = None
    raw_stages = doc.get("stages") or {}
    if not raw_stages:
        err(_line(doc), "the pipeline has no stages")
    stages: dict[str, PipelineEntry] = {}
    groups: dict[str, list[str]] = {}
    for name, s in raw_stages.items():
        line = _line(raw_stages, name)
        if not isinstance(s, dict):
            err(line, f"stage {name!r} must be a mapping")
            continue
        kind = s.get("kind")
        if kind not in kinds:
            valid = ", ".join(sorted(kinds))
            err(_line(s, "kind") or line, f"stage {name!r}: unknown stage kind {kind!r}; valid: {valid}")
            continue
        sk = kinds[kind]
        if not (_mapping(s, "params", f"stage {name!r}", err) and _mapping(s, "matrix", f"stage {name!r}", err)):
            continue
        if isinstance(s.get("after"), str):  # one stage name: a list of one
            s["after"] = [s["after"]]
        elif s.get("after") is not None and not isinstance(s["after"], list):
            err(_line(s, "after"), f"stage {name!r}: 'after' must be a stage name or a list of them")
            s["after"] = None
        for f in s:
            if f not in COMMON_FIELDS + sk.fields + sk.refs:
                err(_line(s, f), f"stage {name!r}: unknown field {f!r} for kind {kind!r}; valid: "
                                 f"{', '.join(sorted(set(COMMON_FIELDS + sk.fields + sk.refs)))}")
        if "dataset" in sk.fields:
            ds = s.get("dataset")
            if ds is None and kind != "report":  # a report's dataset (qualitative grid) is optional
                err(line, f"stage {name!r}: needs 'dataset' (one of: {', '.join(datasets) or 'none defined'})")
            elif ds is not None and ds not in datasets:
                err(_line(s, "dataset"), f"stage {name!r}: unknown dataset {ds!r}; defined: {', '.join(datasets) or 'none'}")
        for f in sk.required:
            if s.get(f) is None:
                err(line, f"stage {name!r}: a {kind} stage needs {f!r}")
        base = dict(defaults.get(kind) or {})
        base.update(s.get("params") or {})
        matrix = s.get("matrix") or {}
        if matrix and not all(isinstance(v, list) and v for v in matrix.values()):
            err(_line(s, "matrix"), f"stage {name!r}: matrix values must be non-empty lists")
            matrix = {}
        combos = [dict(zip(matrix, vals)) for vals in itertools.product(*matrix.values())] if matrix else [{}]
        names = []
        for combo in combos:
            params = {**base, **combo}
            sname = name if not combo else f"{name}[{','.join(f'{k}={v}' for k, v in combo.items())}]"
            if sk.params_type is not None:
                valid = {f.name for f in dataclasses.fields(sk.params_type)}
                for p in params:
                    if p not in valid:
                        where = _line(s.get("params") or {}, p) or _line(matrix, p) or _line(defaults.get(kind) or {}, p) or line
                        err(where, f"stage {name!r}: unknown parameter {p!r} for {kind}; valid: {', '.join(sorted(valid))}")
                        break
                else:
                    try:  # the same field checks as options and --set (pointparse.fields), values kept
                        params = coerce_params(sk.params_type, params)
                        sk.params_type(**params)
                    except PointParseError as exc:
                        err(line, f"stage {sname!r}: {exc}")
                    except TypeError as exc:
                        err(line, f"stage {sname!r}: {exc}")
            stages[sname] = PipelineEntry(sname, kind, s, params, line=line)
            names.append(sname)
        groups[name] = names
    # references
    for st in stages.values():
        sk = kinds[st.kind]
        refs = []
        for r in sk.refs:
            v = st.spec.get(r)
            if v is None:
                continue
            if r in sk.mapping_refs and not isinstance(v, dict):
                err(_line(st.spec, r), f"stage {st.name!r}: {r} must be a mapping (row name: stage), got {v!r}")
                continue
            targets = list(v.values()) if isinstance(v, dict) else (v if isinstance(v, list) else [v])
            for t in targets:
                if not isinstance(t, str):
                    err(_line(st.spec, r), f"stage {st.name!r}: {r} must name stages, got {t!r}")
                elif t not in groups:
                    err(_line(st.spec, r), f"stage {st.name!r}: {r} refers to unknown stage {t!r}")
                else:
                    allowed = sk.ref_kinds.get(r)
                    kind_of = stages[groups[t][0]].kind if groups[t] else None
                    if allowed and kind_of not in allowed:
                        err(_line(st.spec, r), f"stage {st.name!r}: {r} must name a {' or '.join(allowed)} stage; "
                                               f"{t!r} is a {kind_of} stage")
                    refs += groups[t]
        for t in st.spec.get("after") or []:
            if not isinstance(t, str) or t not in groups:
                err(_line(st.spec, "after"), f"stage {st.name!r}: after refers to unknown stage {t!r}")
            else:
                refs += groups[t]
        st.deps = list(dict.fromkeys(refs))
        if st.kind == "train" and st.params.get("supervision", "points") == "points" and not st.spec.get("points"):
            err(st.line, f"stage {st.name!r}: point supervision needs 'points: <make-points stage>'")
        if st.kind == "train" and st.params.get("supervision") == "full" and st.spec.get("labels"):
            err(_line(st.spec, "labels"), f"stage {st.name!r}: 'labels' trains beside the clicks; full supervision "
                                          "trains on the dense masks alone (drop one of them)")
        if st.kind == "pseudo-labels" and st.params.get("combine", "none") != "none" and not st.spec.get("labels"):
            err(st.line, f"stage {st.name!r}: combine {st.params['combine']!r} needs 'labels: <label-set stage>'")
        if st.kind == "pseudo-labels" and st.params.get("combine", "none") == "none" and st.spec.get("labels"):
            err(_line(st.spec, "labels"), f"stage {st.name!r}: 'labels' is combined by a rule: set params.combine "
                                          "(intersect, fill or agree)")
    order = _toposort(stages, err)
    if errors:
        raise ConfigError("invalid pipeline:\n  " + "\n  ".join(errors))
    return Pipeline(path, str(doc.get("name") or path.stem), datasets, stages, order)


def _mapping(node: dict, key: str, where: str, err) -> bool:
    """Whether ``node[key]`` is absent or a mapping; otherwise report it (one error) and say no."""
    v = node.get(key)
    if v is None or isinstance(v, dict):
        return True
    err(_line(node, key), f"{where}: {key!r} must be a mapping (name: value), got a {type(v).__name__}")
    return False


def _toposort(stages: dict[str, PipelineEntry], err) -> list[str]:
    indeg = {n: 0 for n in stages}
    users: dict[str, list[str]] = {n: [] for n in stages}
    for s in stages.values():
        for d in s.deps:
            if d in stages:
                indeg[s.name] += 1
                users[d].append(s.name)
    ready = [n for n in stages if indeg[n] == 0]
    order = []
    while ready:
        n = ready.pop(0)
        order.append(n)
        for u in users[n]:
            indeg[u] -= 1
            if indeg[u] == 0:
                ready.append(u)
    if len(order) != len(stages):
        cyc = [n for n in stages if n not in order]
        err(stages[cyc[0]].line, f"dependency cycle among stages: {', '.join(cyc)}")
    return order


# ------------------------------------------------------------------------------------------------
# running
# ------------------------------------------------------------------------------------------------


def _upstream(entry: PipelineEntry, done: dict[str, Upstream]) -> dict[str, Any]:
    """Map each ref field to the upstream artefacts it names, in order (a mapping ref such as the
    report's ``runs`` gives ``{label: [Upstream]}``; a matrix stage under one label one entry per
    expansion, ``label[k=v,...]``)."""
    out: dict[str, Any] = {}
    for r in STAGE_KINDS[entry.kind].refs:
        v = entry.spec.get(r)
        if v is None:
            continue
        if isinstance(v, dict):
            out[r] = {}
            for label, t in v.items():
                names = _expand(t, done)
                for n in names:
                    out[r][label if len(names) == 1 else label + n[len(t):]] = [done[n]]
        else:
            targets = v if isinstance(v, list) else [v]
            out[r] = [done[n] for t in targets for n in _expand(t, done)]
    return out


def _expand(group: str, values: dict) -> list[str]:
    return [n for n in values if n == group or n.startswith(group + "[")]


def plan(pipe: Pipeline, ctx: RunContext) -> list[tuple[str, str, str | None]]:
    """For ``--dry-run``: (stage, 'cached' | 'will run', key or None) in execution order.

    Each key is :meth:`pointparse.stages.base.Stage.key` of the stage the run would build: the same
    computation as the run's, so what the dry run says is cached is what the run reuses."""
    planned: dict[str, Upstream] = {}
    rows = []
    for name in pipe.order:
        entry = pipe.stages[name]
        kind = STAGE_KINDS[entry.kind]
        try:
            key = kind.from_pipeline(entry, _upstream(entry, planned), ctx).key()
        except KeyUnknown:
            key = None
        planned[name] = Upstream.planned(kind.name, key, ctx.cache)
        status = "cached" if planned[name].path is not None else "will run"
        if key is None and entry.deps and all(planned[d].path is not None for d in entry.deps):
            status = "will run (key known after its inputs are read)"
        rows.append((name, status, key))
    return rows


def select(pipe: Pipeline, only: list[str] | None = None) -> set[str]:
    """The stages ``only`` these need (all without ``only``); an unknown name is an error, for a
    dry run as for a run."""
    if not only:
        return set(pipe.order)
    unknown = [o for o in only if not _expand(o, {n: None for n in pipe.order})]
    if unknown:
        raise ConfigError(f"--only: unknown stage(s) {unknown}; stages: {', '.join(pipe.order)}")
    needed: set[str] = set()
    stack = [n for o in only for n in _expand(o, {n: None for n in pipe.order})]
    while stack:
        n = stack.pop()
        if n not in needed:
            needed.add(n)
            stack += pipe.stages[n].deps
    return needed


def run_pipeline(pipe: Pipeline, ctx: RunContext, only: list[str] | None = None) -> dict[str, StageResult]:
    """Run every stage (or ``only`` these and what they need) in dependency order."""
    needed = select(pipe, only)
    results: dict[str, StageResult] = {}
    done: dict[str, Upstream] = {}
    todo = [n for n in pipe.order if n in needed]
    for i, name in enumerate(todo, 1):
        entry = pipe.stages[name]
        ctx.echo(f"[{i}/{len(todo)}] {name} ({entry.kind})")
        stage = STAGE_KINDS[entry.kind].from_pipeline(entry, _upstream(entry, done), ctx)
        res = stage.run(ctx.force)
        results[name], done[name] = res, Upstream.of(res)
        ctx.echo(f"      {'cached' if res.cached else 'done'}: {res.path}")
    return results


def shipped_pipeline(name_or_path: str | Path) -> Path:
    """A path as given, or the shipped pipeline of that name (``quickstart`` → pipelines/quickstart.yaml)."""
    p = Path(name_or_path)
    if p.exists() or p.suffix in (".yaml", ".yml"):
        return p
    try:
        cand = Path(str(resources.files("pointparse.pipelines").joinpath(f"{name_or_path}.yaml")))
    except ModuleNotFoundError:
        cand = Path(__file__).resolve().parents[1] / "pipelines" / f"{name_or_path}.yaml"
    if not cand.exists():  # editable installs resolve the data package through the source tree
        cand = Path(__file__).resolve().parents[1] / "pipelines" / f"{name_or_path}.yaml"
    return cand
