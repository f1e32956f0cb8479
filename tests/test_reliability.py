"""Issue 15: nothing lost, nothing stale, no traceback — concurrency, kills and stale state, each
in real processes with a timeout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

TIMEOUT = 60

# One process asking the cache for a slow, resumable "train" artefact. It logs when its build starts
# and ends, writes its pid into every file it makes, and prints whether it reused the artefact.
SLOW_STAGE = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from pointparse.cache import StageCache

    root, log, seconds = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])

    def build(d):
        with open(log, "a") as fh:
            fh.write(f"start {os.getpid()} {sorted(p.name for p in d.iterdir())}\\n")
        for i in range(3):
            (d / f"epoch{i}").write_text(str(os.getpid()))
            time.sleep(seconds / 3)
        with open(log, "a") as fh:
            fh.write(f"end {os.getpid()}\\n")
        return {"pid": os.getpid()}

    r = StageCache(root).run("train", 1, {"lr": 0.1}, {}, build, resume=True)
    print("cached" if r.cached else "built", r.path)
""")


def _start(tmp_path: Path, seconds: float, tag: str) -> subprocess.Popen:
    err = open(tmp_path / f"{tag}.err", "w")
    return subprocess.Popen([sys.executable, "-c", SLOW_STAGE, str(tmp_path / "cache"), str(tmp_path / "log"),
                             str(seconds)], stdout=subprocess.PIPE, stderr=err, text=True)


@pytest.fixture()
def procs():
    """Processes a test starts; whatever is still running at the end is killed (a failing test
    must not leave a 300 s stage behind)."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=TIMEOUT)


def _wait_for(cond, timeout: float = TIMEOUT) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            pytest.fail("timed out")
        time.sleep(0.05)


def test_two_runs_of_one_stage_never_share_a_folder(tmp_path, procs):
    """Two processes 0.3 s apart: one builds, the other waits and reuses it (item 4)."""
    a = _start(tmp_path, 1.5, "a")
    procs.append(a)
    _wait_for(lambda: (tmp_path / "log").exists())
    time.sleep(0.3)
    b = _start(tmp_path, 1.5, "b")
    procs.append(b)
    outs = [p.communicate(timeout=TIMEOUT)[0].split() for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, (tmp_path / "b.err").read_text()
    log = (tmp_path / "log").read_text().splitlines()
    assert [line.split()[0] for line in log] == ["start", "end"], log  # one build, never two at once
    assert outs[0] == ["built", outs[1][1]] and outs[1][0] == "cached"
    art = Path(outs[0][1])
    assert {(art / f"epoch{i}").read_text() for i in range(3)} == {str(a.pid)}
    assert "waiting" in (tmp_path / "b.err").read_text()


def test_a_killed_holder_releases_the_lock(tmp_path, procs):
    """kill -9 the process building: the waiting one takes over and resumes its partial folder."""
    a = _start(tmp_path, 300, "a")
    procs.append(a)
    _wait_for(lambda: (tmp_path / "cache" / "train").exists() and any((tmp_path / "cache").rglob("epoch0")))
    b = _start(tmp_path, 0.3, "b")
    procs.append(b)
    _wait_for(lambda: "waiting" in (tmp_path / "b.err").read_text())
    assert b.poll() is None  # b waits while a holds the lock
    os.kill(a.pid, signal.SIGKILL)
    a.wait(timeout=TIMEOUT)
    out = b.communicate(timeout=TIMEOUT)[0].split()
    assert b.returncode == 0 and out[0] == "built"
    log = (tmp_path / "log").read_text().splitlines()
    assert log[0].startswith(f"start {a.pid} []") and log[1].startswith(f"start {b.pid} ['epoch0'")
    assert {(Path(out[1]) / f"epoch{i}").read_text() for i in range(3)} == {str(b.pid)}
