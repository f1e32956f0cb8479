"""Pipelines: validation with file and line, matrix, overrides, dry run, caching through stages."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from pointparse.cache import StageCache
from pointparse.cli.main import main
from pointparse.errors import ConfigError
from pointparse.pipeline import RunContext, load_pipeline, plan, run_pipeline, shipped_pipeline

TINY = """
name: tiny
datasets:
  scenes: {kind: synthetic, options: {seed: 5, size: 48, splits: {train: 6, val: 3}}}
defaults:
  train: {weights: none, epochs: 1, batch_size: 3, crop_size: 40, workers: 0}
stages:
  points: {kind: make-points, dataset: scenes, params: {workers: 0}}
  pdml:
    kind: train
    dataset: scenes
    points: points
    val_split: val
    eval: {workers: 0}
  plain:
    kind: train
    dataset: scenes
    points: points
    params: {pdml: false}
"""


def _write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_validation_reports_every_problem_with_lines(tmp_path):
    p = _write(tmp_path, """
        datasets:
          d: {kind: synthetic}
        stages:
          a: {kind: make-points, dataset: d}
          b:
            kind: trian
          c:
            kind: train
            dataset: d
            points: nowhere
            params: {epochz: 3}
          x: {kind: train, dataset: d, points: y, after: [y]}
          y: {kind: make-points, dataset: d, after: [x]}
        """)
    with pytest.raises(ConfigError) as e:
        load_pipeline(p)
    msg = str(e.value)
    assert f"{p}:7: stage 'b': unknown stage kind 'trian'" in msg
    assert "train" in msg.split("trian", 1)[1]  # lists the valid kinds
    assert f"{p}:12: stage 'c': unknown parameter 'epochz'" in msg
    assert f"{p}:11: stage 'c': points refers to unknown stage 'nowhere'" in msg
    assert "dependency cycle" in msg and "x" in msg and "y" in msg


def test_matrix_and_overrides(tmp_path):
    p = _write(tmp_path, TINY + """
  sweep:
    kind: train
    dataset: scenes
    points: points
    matrix: {alpha: [0.0, 0.8], margin: [10, 20]}
""")
    pipe = load_pipeline(p, ["defaults.train.epochs=3", "stages.plain.params.lr=0.01"])
    sweep = [n for n in pipe.stages if n.startswith("sweep[")]
    assert len(sweep) == 4 and "sweep[alpha=0.8,margin=10]" in sweep
    assert pipe.stages["sweep[alpha=0.0,margin=20]"].params["alpha"] == 0.0
    assert all(pipe.stages[n].params["epochs"] == 3 for n in sweep)
    assert pipe.stages["plain"].params["lr"] == 0.01
    assert pipe.order.index("points") < pipe.order.index("plain")


def test_run_caches_and_reruns_only_what_changed(tmp_path):
    p = _write(tmp_path, TINY)
    cache = StageCache(tmp_path / "cache")
    ctx = RunContext(cache=cache, datasets={}, progress=False, echo=lambda s: None)
    pipe = load_pipeline(p)
    ctx.datasets = pipe.datasets
    rows = plan(pipe, ctx)
    assert [r[1] for r in rows] == ["will run"] * 3 and all(r[2] for r in rows)
    first = run_pipeline(pipe, ctx)
    assert not any(r.cached for r in first.values())
    # the dry run predicted the keys the run used
    assert {r[0]: r[2] for r in rows} == {n: r.key for n, r in first.items()}
    again = run_pipeline(load_pipeline(p), ctx)
    assert all(r.cached for r in again.values())
    changed = load_pipeline(p, ["stages.plain.params.lr=0.01"])
    assert [r[1] for r in plan(changed, ctx)] == ["cached", "cached", "will run"]
    third = run_pipeline(changed, ctx)
    assert third["points"].cached and third["pdml"].cached and not third["plain"].cached


def test_cli_run_dry_run(tmp_path):
    p = _write(tmp_path, TINY)
    r = CliRunner().invoke(main, ["run", str(p), "--dry-run", "--cache-dir", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    assert "points" in r.output and "will run" in r.output
    bad = _write(tmp_path, "stages: {a: {kind: nope}}\n", "bad.yaml")
    r = CliRunner().invoke(main, ["run", str(bad), "--cache-dir", str(tmp_path / "c")])
    assert r.exit_code != 0 and "bad.yaml:1" in r.output and "unknown stage kind" in r.output


@pytest.mark.parametrize("name", ["quickstart", "labelmefacade-cpu", "camvid-cpu", "pascal-context", "ade20k",
                                  "selftrain-quick"])
def test_shipped_pipelines_validate(name):
    path = shipped_pipeline(name)
    assert path.exists(), path
    overrides = ["datasets.data.root=/nonexistent"] if name not in ("quickstart", "selftrain-quick") else []
    pipe = load_pipeline(path, overrides)
    assert pipe.order


FULL = TINY + """
  val_points: {kind: make-points, dataset: scenes, split: val, params: {workers: 0}}
  full:
    kind: train
    dataset: scenes
    val_split: val
    eval: {workers: 0}
    params: {supervision: full, pdml: false}
  again: {kind: evaluate, dataset: scenes, split: val, checkpoint: pdml, params: {workers: 0}}
  table:
    kind: ablate-extension
    dataset: scenes
    split: val
    checkpoint: pdml
    points: val_points
    params: {methods: [region, score+region], thresholds: [0.7], examples: 0, workers: 0}
  report:
    kind: report
    runs: {FullSup: full, PDML: pdml}
    extension: table
    params: {qualitative_images: 1}
"""


def test_every_stage_kind_runs_and_the_dry_run_knows_every_key(tmp_path):
    p = _write(tmp_path, FULL)
    r = CliRunner().invoke(main, ["run", str(p), "--cache-dir", str(tmp_path / "c"), "-q"])
    assert r.exit_code == 0, r.output
    # the end of a run shows Table 5, Table 3 and where the report is
    assert "score+region" in r.output and "extension_acc" in r.output
    assert "FullSup" in r.output and "mIoU" in r.output and "index.html" in r.output
    report = Path(r.output.split("open ", 1)[1].split()[0])
    assert report.is_file() and (report.parent / "summary.csv").is_file()
    dry = CliRunner().invoke(main, ["run", str(p), "--dry-run", "--cache-dir", str(tmp_path / "c")])
    assert dry.exit_code == 0, dry.output
    lines = [ln.split() for ln in dry.output.strip().splitlines()]
    assert {ln[0]: ln[1] for ln in lines} == {n: "cached" for n in
                                               ("points", "pdml", "plain", "val_points", "full", "again", "table",
                                                "report")}
    assert report.parent.name.startswith(next(ln[2] for ln in lines if ln[0] == "report"))


def test_the_dry_run_key_of_every_kind_is_the_key_the_run_writes(tmp_path):
    """Issue 13: a dry run and a run compute a stage's key on one path (Stage.plan), for every
    kind: before the run each key is either unknown (an input is not built yet) or the one the run
    then writes; after it every key is known and is the artefact's."""
    from pointparse.clicks import export_points
    from pointparse.stages.registry import STAGE_KINDS

    cache = StageCache(tmp_path / "c")
    first = load_pipeline(_write(tmp_path, FULL))
    ctx = RunContext(cache=cache, datasets=first.datasets, progress=False, echo=lambda s: None)
    points = run_pipeline(first, ctx, only=["points"])["points"]
    clicks = export_points(points.path, "text", tmp_path / "clicks.txt")  # human clicks, as a tool exports them
    pipe = load_pipeline(_write(tmp_path, FULL + f"""
  imported: {{kind: import-clicks, dataset: scenes, clicks: {clicks}, params: {{format: text}}}}
  from_clicks:
    kind: train
    dataset: scenes
    points: imported
    params: {{pdml: false}}
  pseudo: {{kind: pseudo-labels, dataset: scenes, checkpoint: plain, points: points, params: {{flip: false}}}}
  sp_labels: {{kind: extension-labels, dataset: scenes, points: points, params: {{method: superpixel, workers: 0}}}}
  from_labels:
    kind: train
    dataset: scenes
    labels: sp_labels
    points: points
    params: {{pdml: false}}
"""))
    assert {st.kind for st in pipe.stages.values()} == set(STAGE_KINDS)  # a new kind must join this test
    before = {name: key for name, _, key in plan(pipe, ctx)}
    results = run_pipeline(pipe, ctx)
    after = {name: key for name, _, key in plan(pipe, ctx)}
    written = {name: res.key for name, res in results.items()}
    assert after == written
    assert all(before[n] in (None, written[n]) for n in written), (before, written)
    # known before the run: every stage whose inputs are keys, not built files
    assert all(before[n] == written[n] for n in ("points", "val_points", "imported", "pdml", "plain", "full",
                                                 "sp_labels", "from_labels"))
    assert all(res.path == cache.lookup(res.stage, res.key) for res in results.values())


BASE = """\
datasets:
  scenes: {kind: synthetic, options: {seed: 0, size: 32}}
stages:
  points: {kind: make-points, dataset: scenes}
"""


@pytest.mark.parametrize("text, expected", [
    (BASE + "  again: {kind: make-points, dataset: scenes, after: points}\n", None),  # a string is one name
    (BASE + "  again: {kind: make-points, dataset: scenes, after: nope}\n", "unknown stage 'nope'"),
    (BASE + "  again: {kind: make-points, dataset: scenes, after: {a: 1}}\n", "'after' must be a stage name"),
    (BASE + "  again: {kind: make-points, dataset: scenes, params: [1, 2]}\n", "'params' must be a mapping"),
    (BASE + "  again: {kind: make-points, dataset: scenes, matrix: [1]}\n", "'matrix' must be a mapping"),
    (BASE.replace("options: {seed: 0, size: 32}", "options: [seed]"), "'options' must be a mapping"),
    (BASE + "defaults: [train]\n", "'defaults' must be a mapping"),
    (BASE + "defaults: {train: [1]}\n", "'train' must be a mapping"),
    ("datasets: [a]\nstages: {}\n", "'datasets' must be a mapping"),
    ("stages: [a, b]\n", "'stages' must be a mapping"),
    (BASE + "  imp: {kind: import-clicks, dataset: scenes, params: {format: text}}\n", "needs 'clicks'"),
    (BASE + "  imp: {kind: import-clicks, dataset: scenes, clicks: c.txt, params: {format: yolo}}\n",
     "unknown click format 'yolo'"),
])
def test_malformed_pipelines_are_one_clear_error(tmp_path, text, expected):
    """A list where a mapping belongs, or `after: points` as a string, is one message naming the
    field, never a traceback nor one error per character (issue 15, items 7 and 9)."""
    path = tmp_path / "p.yaml"
    path.write_text(text)
    if expected is None:
        pipe = load_pipeline(path)
        assert pipe.stages["again"].deps == ["points"]
        return
    with pytest.raises(ConfigError) as exc:
        load_pipeline(path)
    assert expected in str(exc.value) and "'p'" not in str(exc.value)


def test_a_non_utf8_pipeline_file_is_one_error(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_bytes(b"name: caf\xe9\nstages: {}\n")
    res = CliRunner().invoke(main, ["run", str(path), "--dry-run"])
    assert res.exit_code != 0 and "not a UTF-8 text file" in res.output and str(path) in res.output


def test_every_stage_the_package_writes_is_one_cache_clear_accepts():
    """`cache --clear NAME` checks names against cache.KNOWN_STAGES (the cache module sits below the
    stages, so it cannot ask them): every stage kind and sub-stage must be listed there."""
    from pointparse.cache import KNOWN_STAGES
    from pointparse.dataspec import SCENES_STAGE
    from pointparse.stages.extension_rows import AblationEvaluate, ExtensionRow
    from pointparse.stages.registry import STAGE_KINDS

    written = {*STAGE_KINDS, SCENES_STAGE, ExtensionRow.name, AblationEvaluate.name}
    assert written == set(KNOWN_STAGES)


TWO_ROUNDS = """
name: two-rounds
datasets:
  scenes: {kind: synthetic, options: {seed: 6, size: 32, splits: {train: 4, val: 2}}}
defaults:
  train: {weights: none, pdml: false, epochs: 1, batch_size: 2, crop_size: 32, workers: 0}
  pseudo-labels: {flip: false}
stages:
  points: {kind: make-points, dataset: scenes, params: {workers: 0}}
  r0: {kind: train, dataset: scenes, points: points}
  pl1: {kind: pseudo-labels, dataset: scenes, checkpoint: r0, points: points}
  r1: {kind: train, dataset: scenes, points: points, labels: pl1}
  pl2: {kind: pseudo-labels, dataset: scenes, checkpoint: r1, points: points, params: {rule: top-share}}
  r2: {kind: train, dataset: scenes, points: points, labels: pl2, params: {label_weight: 0.5}}
"""


def test_two_rounds_of_self_training_and_their_dry_run(tmp_path):
    """make-points -> train -> pseudo-labels -> train -> pseudo-labels -> train: before the run the
    dry run knows the keys that do not depend on a trained network, the others are '-'; after it
    every key is known and is the one the run wrote."""
    p = _write(tmp_path, TWO_ROUNDS)
    cache = ["--cache-dir", str(tmp_path / "c")]

    def dry() -> dict:
        r = CliRunner().invoke(main, ["run", str(p), "--dry-run", *cache])
        assert r.exit_code == 0, r.output
        return {ln.split()[0]: ln.split() for ln in r.output.strip().splitlines()}

    before = dry()
    assert list(before) == ["points", "r0", "pl1", "r1", "pl2", "r2"]
    assert before["points"][-1] != "-" and before["r0"][-1] != "-"
    assert all(before[n][-1] == "-" for n in ("pl1", "r1", "pl2", "r2"))
    pipe = load_pipeline(p)
    ctx = RunContext(cache=StageCache(tmp_path / "c"), datasets=pipe.datasets, progress=False, echo=lambda s: None)
    results = run_pipeline(pipe, ctx)
    after = dry()
    assert all(after[n][1] == "cached" and results[n].key.startswith(after[n][-1]) for n in results)
    assert results["r1"].manifest["inputs"]["labels"] == results["pl1"].key
    assert results["r2"].manifest["inputs"]["labels"] == results["pl2"].key
    assert results["r2"].manifest["params"]["train"]["label_weight"] == 0.5
    assert "label_weight" not in results["r0"].manifest["params"]["train"]
    rows = (results["r1"].path / "epochs.jsonl").read_text()
    assert '"label_ce"' in rows and '"labels_accuracy"' in rows


@pytest.mark.parametrize("stage, expected", [
    ("  t: {kind: train, dataset: scenes, points: points, labels: points}\n",
     "labels must name a pseudo-labels or extension-labels stage; 'points' is a make-points stage"),
    ("  t: {kind: train, dataset: scenes, labels: pl, params: {supervision: full, pdml: false}}\n"
     "  pl: {kind: pseudo-labels, dataset: scenes, checkpoint: r, points: points}\n"
     "  r: {kind: train, dataset: scenes, points: points}\n", "full supervision trains on the dense masks"),
    ("  pl: {kind: pseudo-labels, dataset: scenes, checkpoint: points, points: points}\n",
     "checkpoint must name a train stage"),
    ("  pl: {kind: pseudo-labels, dataset: scenes, checkpoint: r, points: points, params: {combine: fill}}\n"
     "  r: {kind: train, dataset: scenes, points: points}\n", "combine 'fill' needs 'labels"),
    ("  pl: {kind: pseudo-labels, dataset: scenes, points: points}\n", "needs 'checkpoint'"),
    ("  pl: {kind: pseudo-labels, dataset: scenes, checkpoint: r, points: points, params: {rule: otsu}}\n"
     "  r: {kind: train, dataset: scenes, points: points}\n", "unknown confidence rule 'otsu'"),
])
def test_label_set_references_are_checked_with_the_file(tmp_path, stage, expected):
    path = tmp_path / "p.yaml"
    path.write_text(BASE + stage)
    with pytest.raises(ConfigError, match=expected):
        load_pipeline(path)
