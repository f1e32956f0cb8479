"""Replay issue 24 ("Reliability, round two") through the command line and say what still fails.

Why a script beside the tests: the tests call the library or Click's runner in-process; a user
meets the installed command in a fresh process, where a traceback, an exit code of 0 or a file
written anyway is what counts. Each case runs ``pointparse ...`` (this checkout's code) in a
subprocess on tiny data made in a temporary folder (a 3-image folder dataset, its clicks, one
1-epoch model), and is judged the way the issue's "done" reads:

* a bad input must end with one ``Error: ...`` line, a non-zero exit, no traceback and nothing
  that looks finished (no "wrote ...", no mIoU) and, where a case says so, files left as they were;
* a good input (item 13) must succeed.

Usage: ``python benchmarks/reliability_probe.py [--keep] [--item N ...]``. Prints one line per
case (``ok`` or what is wrong) and a summary per item; exits 1 if any case fails. Items whose
cases this script does not know yet are listed as not replayed (they do not fail the run).
Each case is a fresh process (Python, and torch for most commands): a few seconds each on an idle
machine, far more on a busy one; ``--item`` replays a part. The workspace, the verdict and the
shared tiny data are ``reliability_harness.py``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from reliability_harness import Case, Run, Workspace, artefact, pipeline, setup, verdict

# -- the cases ----------------------------------------------------------------------------------------

D: dict = {}  # filled by setup()


def train(*extra):
    return lambda ws: ["train", *D["ds"], "--points", D["points"], *D["tiny"], *extra]


def train_dir(key: str):
    return lambda ws: ["train", *D["ds"], "--points", D[key], *D["tiny"]]


def _unchanged(path_key: str, text: str):
    def check(ws, r):
        p = ws.root / path_key
        return None if p.read_text() == text else f"{p} was changed"
    return check


def _out_in_cache_check(ws, r):
    return None if not (ws.cache / "report" / "new").exists() else "wrote into the cache"


CASES = [
    *(Case(1, f"train --set {kv}", train("--set", kv), expect=kv.split("=")[0])
      for kv in ("epochs=abc", "batch_size=three", "region=abc", "threshold=abc", "epochs=1.5", "seed=abc",
                 "crop_size=64.7", "pdml=banana", "flip=maybe")),
    Case(1, "pipeline params {epochs: abc}", lambda ws: ["run", pipeline(
        ws, "p1", "  pts: {kind: make-points, dataset: s}\n  t: {kind: train, dataset: s, points: pts, "
                  "params: {epochs: abc}}\n"), "--dry-run"], expect="epochs"),
    Case(2, "train --crop-size 100000", train("--crop-size", "100000"), expect="crop_size"),
    Case(2, "evaluate --window -5", lambda ws: ["evaluate", D["model"], *D["ds"], "--window", "-5"], expect="window"),
    Case(2, "evaluate --window 100000", lambda ws: ["evaluate", D["model"], *D["ds"], "--window", "100000"],
         expect="window"),
    Case(2, "predict --scales 1e6", lambda ws: ["predict", D["model"], D["data"] / "images", "--scales", "1e6",
                                                "--out", ws.root / "pred"], expect="scales"),
    Case(5, "make-points synthetic --option seed=abc", lambda ws: ["make-points", "--option", "seed=abc", "-q"],
         expect="seed"),
    *(Case(5, f"import-clicks COCO point_coords {shown}", (lambda n: lambda ws: [
        "import-clicks", ws.root / n, "--format", "coco", *D["ds"], "-q"])(name), expect=name)
      for name, shown in (("coco.json", "[{a: 1}]"), ("coco_xy.json", "[{x: 3, y: 4}]"))),
    Case(5, "report stage runs: [p]", lambda ws: ["run", pipeline(
        ws, "p5", "  pts: {kind: make-points, dataset: s}\n  rep: {kind: report, runs: [pts]}\n"), "--dry-run"],
         expect="runs"),
    Case(5, "YAML key ? [a, b]", lambda ws: ["run", pipeline(ws, "p5k", "  ? [a, b]\n  : {kind: make-points}\n"),
                                             "--dry-run"]),
    Case(5, "--points DIR with manifest {}", train_dir("manifest_empty"), expect="manifest"),
    Case(5, "--points DIR with outputs {points.json: 5}", train_dir("manifest_outputs5"), expect="manifest"),
    Case(11, "ablate-extension, clicks of nothing", lambda ws: [
        "ablate-extension", D["model"], "--points", D["no_clicks"], *D["ds"], "--split", "train",
        "--methods", "region", "-q"], expect="no clicks"),
    Case(11, "ablate-extension --train, clicks of nothing", lambda ws: [
        "ablate-extension", D["model"], "--points", D["no_clicks"], *D["ds"], "--split", "train",
        "--methods", "region", "--train", "--train-points", D["no_clicks"], "--epochs", "1", "--batch-size", "2",
        "--crop-size", "24", "-q"], expect="no clicks"),
    *(Case(12, f"{cmd} with {name}", (lambda cmd, name: lambda ws: (
        ["evaluate", D["poison"][name], *D["ds"], "-q"] if cmd == "evaluate" else
        ["predict", D["poison"][name], D["data"] / "images", "--out", ws.root / f"pred-{name}", "-q"]))(cmd, name),
        expect=name + ".pt") for cmd in ("evaluate", "predict") for name in ("nan_weight", "std_0", "std_nan")),
    Case(13, "train --points <import-clicks key>", lambda ws: _import_then_train(ws), good=True),
    Case(14, "export-points --format text, names with a space and a '#'", lambda ws: _odd_names_export(ws),
         expect="text format"),
    Case(15, "train --log-every -1", train("--log-every", "-1"), expect="log_every"),
    Case(15, "train --extension-start-epoch -3", train("--extension-start-epoch", "-3"),
         expect="extension_start_epoch"),
    Case(15, "points.json with boolean coordinates", lambda ws: [
        "export-points", D["bool_coords"], "--format", "text", "--out", ws.root / "bool.txt"], expect="points.json"),
    Case(15, "points.json palette shorter than its classes", lambda ws: [
        "export-points", D["short_palette"], "--format", "text", "--out", ws.root / "pal.txt"], expect="palette"),
    Case(15, "--points DIR with manifest key 5", train_dir("manifest_key5"), expect="key"),
    Case(15, "pipeline with a stage name twice", lambda ws: ["run", pipeline(
        ws, "p15", "  a: {kind: make-points, dataset: s}\n  a: {kind: make-points, dataset: s, split: val}\n"),
        "--dry-run"], expect="duplicate"),
    Case(15, "run --only nosuch --dry-run", lambda ws: ["run", pipeline(
        ws, "p15o", "  a: {kind: make-points, dataset: s}\n"), "--only", "nosuch", "--dry-run"], expect="nosuch"),
    Case(15, "export-points over a file it did not write", lambda ws: [
        "export-points", D["points"], "--format", "text", "--out", ws.root / "notes" / "thesis.tex"],
         check=_unchanged("notes/thesis.tex", "\\chapter{mine}\n"), expect="thesis.tex"),
    Case(6, "report --out inside the cache", lambda ws: [
        "report", "--run", "B=x", "--out", ws.cache / "report" / "new"], check=_out_in_cache_check,
         expect="inside the cache"),
    Case(6, "export-points --out over the artefact's points.json", lambda ws: [
        "export-points", D["points"], "--format", "text", "--out", D["points"] / "points.json"],
         expect="inside the cache"),
]


def _flipped_model(ws: Workspace) -> list:
    """A same-size edit inside a cached model.pt (4 KiB flipped): evaluate must refuse it."""
    art = ws.root / "flipped-cache-copy"
    if not art.exists():
        shutil.copytree(D["model"].parent, art)
    model = art / "model.pt"
    data = bytearray(model.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 4096] = bytes(b ^ 0xFF for b in data[mid:mid + 4096])
    model.write_bytes(bytes(data))
    return ["evaluate", art, *D["ds"], "-q"]


def _cache_is_a_file(ws: Workspace) -> list:
    (ws.root / "cache-file").write_text("not a folder\n")
    ws.state["env"] = {"POINTPARSE_CACHE": str(ws.root / "cache-file")}
    return ["make-points", *D["ds"], "-q", "--workers", "0"]


CASES += [
    Case(3, "report --out . (the current folder)", lambda ws: ["report", "--run", f"A={D['model'].parent}",
                                                               "--out", "."], expect="current folder"),
    Case(3, "export-points --format sparse-png --out .", lambda ws: [
        "export-points", D["points"], "--format", "sparse-png", "--out", "."], expect="current folder"),
    Case(4, "POINTPARSE_CACHE naming a file", _cache_is_a_file, expect="is a file"),
    Case(10, "evaluate a model.pt with 4 KiB flipped (same size)", _flipped_model, expect="changed"),
]
NOT_REPLAYED: dict[int, str] = {}  # items whose cases this script does not know yet

# holds the lock of a key as a live build does (StageCache.locked: lockf on .<key>.lock, its pid in it)
HOLD_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.lockf(fd, fcntl.LOCK_EX)
os.pwrite(fd, f"{os.getpid()}\\n".encode(), 0)
print("locked", flush=True)
sys.stdin.readline()
"""


def _item7_clear_during_a_build(ws: Workspace) -> list:
    """A `.partial` whose lock a live process holds, then `cache --clear train`."""
    live = "ab" + "c" * 62
    partial = ws.root / "cache7" / "train" / "ab" / f"{live}.partial"
    partial.mkdir(parents=True)
    (partial / "checkpoint.pt").write_text("epoch 3")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(partial.with_name(f".{live}.lock"))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    ws.state["holder"], ws.state["partial7"] = holder, partial
    return ["cache", "--clear", "train", "--cache-dir", ws.root / "cache7"]


def _item7_check(ws: Workspace, r: Run) -> str | None:
    ws.state["holder"].communicate("\n", timeout=60)
    return None if (ws.state["partial7"] / "checkpoint.pt").is_file() else "deleted a live build's .partial"


def _killed_partial(ws: Workspace, tag: str, damage: Callable[[Path], None]) -> list:
    """The finished train artefact turned into the `.partial` a kill after its last epoch leaves
    (in a copy of the cache), damaged, then the same train command again."""
    cache = ws.root / f"cache-{tag}"
    shutil.copytree(ws.cache, cache)
    art = cache / D["model"].parent.relative_to(ws.cache)
    partial = art.with_name(art.name + ".partial")
    art.rename(partial)
    (partial / "manifest.json").unlink()
    damage(partial)
    ws.state[tag] = art
    return ["train", *D["ds"], "--points", D["points"], *D["tiny"], "--cache-dir", cache]


def _tmp_left(partial: Path) -> None:
    (partial / ".model.pt.4242.tmp").write_bytes(b"half a checkpoint")


def _next_epoch_999(partial: Path) -> None:
    import torch

    state = torch.load(partial / "checkpoint.pt", map_location="cpu", weights_only=True)
    state["next_epoch"] = 999
    with open(partial / "checkpoint.pt", "wb") as fh:
        torch.save(state, fh)


def _log_line_5(partial: Path) -> None:
    with open(partial / "epochs.jsonl", "a") as fh:
        fh.write("5\n")


def _no_temporaries(ws: Workspace, r: Run) -> str | None:
    art = ws.state["item8"]
    listed = json.loads((art / "manifest.json").read_text()).get("outputs") or {}
    bad = [n for n in listed if n.endswith(".tmp")] + [p.name for p in art.rglob("*.tmp")]
    return f"the resumed artefact holds a killed write's temporary: {bad}" if bad else None


def _names(what: str):
    def check(ws: Workspace, r: Run) -> str | None:
        return None if what in r.out + r.err else f"finished without naming the damaged {what}"
    return check


CASES += [
    Case(7, "cache --clear train while a build holds its lock", _item7_clear_during_a_build, good=True,
         check=_item7_check),
    Case(8, "resume over a killed write's .model.pt.*.tmp", lambda ws: _killed_partial(ws, "item8", _tmp_left),
         good=True, check=_no_temporaries),
    Case(9, "resume over checkpoint.pt with next_epoch 999", lambda ws: _killed_partial(ws, "item9a", _next_epoch_999),
         good=True, check=_names("checkpoint.pt")),
    Case(9, "resume over epochs.jsonl with a line '5'", lambda ws: _killed_partial(ws, "item9b", _log_line_5),
         good=True, check=_names("epochs.jsonl")),
]


def _import_then_train(ws: Workspace) -> list:
    """Export the simulated clicks, import them back (a human-clicks artefact), train on its key."""
    txt = ws.root / "clicks13.txt"
    ws.need("export-points", D["points"], "--format", "text", "--out", txt)
    before = {p.parent for p in ws.cache.glob("import-clicks/*/*/manifest.json")}
    ws.need("import-clicks", txt, "--format", "text", *D["ds"], "-q")
    key = artefact(ws, "import-clicks", before).name
    return ["train", *D["ds"], "--points", key[:12], *D["tiny"]]


def _odd_names_export(ws: Workspace) -> list:
    ds = ["--dataset", "folder", "--root", D["odd"]]
    before = {p.parent for p in ws.cache.glob("make-points/*/*/manifest.json")}
    ws.need("make-points", *ds, "-q", "--workers", "0")
    return ["export-points", artefact(ws, "make-points", before), "--format", "text", "--out", ws.root / "odd.txt"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    ap.add_argument("--item", type=int, action="append", help="replay only these items")
    a = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="pointparse-probe-"))
    ws = Workspace(root)
    t0 = time.perf_counter()
    try:
        D.update(setup(ws))
        print(f"setup: {time.perf_counter() - t0:.0f}s in {root}")
        failed: dict[int, list[str]] = {}
        for case in CASES:
            if a.item and case.item not in a.item:
                continue
            r = ws.cli(*case.args(ws))
            problem = verdict(case, ws, r)
            failed.setdefault(case.item, [])
            if problem:
                failed[case.item].append(case.what)
            print(f"item {case.item:2d}  {case.what:58s} {'FAIL ' + problem if problem else 'ok'}")
        print("\nsummary")
        for item in range(1, 16):
            if item in failed:
                bad = failed[item]
                print(f"  item {item:2d}: {'FAILS: ' + '; '.join(bad) if bad else 'ok'}")
            elif item in NOT_REPLAYED and not a.item:
                print(f"  item {item:2d}: not replayed here ({NOT_REPLAYED[item]})")
        n = sum(len(v) for v in failed.values())
        print(f"{n} case(s) fail; {time.perf_counter() - t0:.0f}s")
        return 1 if n else 0
    finally:
        holder = ws.state.get("holder")
        if holder is not None and holder.poll() is None:  # a case that failed before its check released it
            holder.kill()
        if a.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
