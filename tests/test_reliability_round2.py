"""Issue 24 (reliability, round two): each numbered defect of the second hostile probe, replayed on
tiny data. Every case must end in one line naming the file or option, a non-zero exit, no
traceback, and nothing that looks finished (``benchmarks/reliability_probe.py`` replays the same
list through the installed command)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_cases import cli as _cli, folder_dataset, one_line_error as _one_line_error


def _folder_dataset(root: Path, n: int = 3, size: int = 24) -> Path:
    return folder_dataset(root, n, size)


def _fake_artefact(cache: Path, stage: str, key: str, files: dict[str, str]) -> Path:
    """A finished artefact folder laid out as the cache lays them out, holding ``files``."""
    from pointparse.cache import record_outputs

    folder = cache / stage / key[:2] / key
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    manifest = {"stage": stage, "key": key, "version": 1, "params": {}, "inputs": {},
                "outputs": record_outputs(folder)}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


# ------------------------------------------------------------------------------------------------
# item 6: cache poisoning through --out
# ------------------------------------------------------------------------------------------------


def test_item6_out_inside_the_cache_is_refused_for_every_command(tmp_path):
    """``--out <cache>/report/xx/K1`` passed the old check because that folder's manifest says
    "report": report, ablate-extension, predict and export-points now refuse any --out inside the
    cache root (or inside any cache artefact) before any work, and the artefact is untouched."""
    cache = tmp_path / "c"
    k1 = "ab" + "1" * 62
    report = _fake_artefact(cache, "report", k1, {"index.md": "row A\n"})
    table = _fake_artefact(cache, "ablate-extension", "cd" + "2" * 62, {"extension_table.csv": "method\n"})
    before = {p: p.read_bytes() for p in (report, table) for p in p.iterdir()}
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"not read: the --out check comes first")
    root = _folder_dataset(tmp_path / "data")
    made = _cli("make-points", "--dataset", "folder", "--root", root, "--cache-dir", cache, "-q", "--workers", "0")
    assert made.exit_code == 0, made.output
    points = next(cache.glob("make-points/*/*/manifest.json")).parent
    cases = [
        ["report", "--run", "B=" + str(report), "--out", report],
        ["report", "--run", "B=x", "--out", cache / "report" / "new"],
        ["ablate-extension", ckpt, "--points", points, "--out", table],
        ["predict", ckpt, root / "images", "--out", cache / "predictions"],
        ["export-points", points, "--format", "sparse-png", "--out", points / "sparse"],
        ["export-points", points, "--format", "text", "--out", points / "points.json"],
    ]
    for args in cases:
        res = _cli(*args, "--cache-dir", cache)
        _one_line_error(res, "inside the cache")
    # a cache artefact is recognised by its layout even under another --cache-dir
    other = _cli("report", "--run", "B=x", "--out", report, "--cache-dir", tmp_path / "elsewhere")
    _one_line_error(other, "inside the cache artefact")
    # and a folder that holds the cache root would delete it
    _one_line_error(_cli("report", "--run", "B=x", "--out", tmp_path, "--cache-dir", cache), "holds the cache root")
    assert {p: p.read_bytes() for p in before} == before
    assert not (cache / "report" / "new").exists() and not (cache / "predictions").exists()


# ------------------------------------------------------------------------------------------------
# item 7: `cache --clear` respects locks
# ------------------------------------------------------------------------------------------------

# holds the lock of a key as a live build does (StageCache.locked: lockf on .<key>.lock, its pid in it)
HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.lockf(fd, fcntl.LOCK_EX)
os.pwrite(fd, f"{os.getpid()}\\n".encode(), 0)
print("locked", flush=True)
sys.stdin.readline()
"""


def test_item7_cache_clear_skips_a_live_partial_run_and_counts_what_it_removed(tmp_path):
    """`cache --clear train` during a training deleted its `.partial` (printing "removed 0
    artefact(s)"): a key whose lock is held is now skipped and named, with the holder's pid."""
    import subprocess
    import sys

    from pointparse.cache import StageCache

    cache = StageCache(tmp_path / "c")
    done = cache.run("train", 1, {"lr": 1}, {}, lambda d: (d / "model.pt").write_text("w") and None)
    live = "ab" + "c" * 62
    partial = cache.path_for("train", live).with_name(f"{live}.partial")
    partial.mkdir(parents=True)
    (partial / "checkpoint.pt").write_text("epoch 3")
    dead = partial.with_name(f".{'ab' + 'd' * 62}.999999.tmp")  # a killed run's: nobody holds its lock
    dead.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(partial.with_name(f".{live}.lock"))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        res = _cli("cache", "--clear", "train", "--cache-dir", tmp_path / "c")
        assert res.exit_code == 0, res.output
        assert "removed 1 artefact(s) and 1 unfinished run(s)" in res.output, res.output
        assert f"skipped train {live[:12]} (partial run): in use, pid {holder.pid} holds its lock" in res.output
        assert (partial / "checkpoint.pt").read_text() == "epoch 3"
        assert not done.path.exists() and not dead.exists()
    finally:
        holder.communicate("\n", timeout=60)
    res = _cli("cache", "--clear", "train", "--cache-dir", tmp_path / "c")  # the build has ended
    assert res.exit_code == 0 and "removed 0 artefact(s) and 1 unfinished run(s)" in res.output, res.output
    assert not (tmp_path / "c" / "train").exists()
