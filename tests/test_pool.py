"""Forked worker pools and DataLoader workers after the parent has used OpenCV's thread pool."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

# Run in a child interpreter with a timeout: the failure this guards against is a hang.
SCRIPT = textwrap.dedent("""
    import cv2, numpy as np
    from pointparse.extension.offline import OfflineJob as _OfflineJob
    from pointparse.extension.offline import ordered_map as _ordered_map, run_offline_job as _run_offline_job
    from pointparse.pool import fork_pool

    cv2.setNumThreads(2)
    cv2.GaussianBlur(np.random.rand(1500, 1500).astype(np.float32), (31, 31), 5)  # parent uses its pool
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
    clicks = np.full((48, 48), 255, np.uint8)
    clicks[8, 8], clicks[40, 40] = 0, 1
    jobs = ((k, _OfflineJob("superpixel", clicks, image)) for k in range(4))
    assert [t for t, _ in _ordered_map(_run_offline_job, jobs, 2)] == [0, 1, 2, 3]
    with fork_pool(2) as pool:
        assert pool.submit(cv2.getNumThreads).result() == 1  # workers run OpenCV inline
    assert cv2.getNumThreads() == 2  # restored in the parent

    import torch
    from pointparse.pool import start_loader

    class Threads(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            cv2.resize(np.zeros((600, 600, 3), np.uint8), (300, 300))
            return cv2.getNumThreads()

    loader = torch.utils.data.DataLoader(Threads(), batch_size=None, num_workers=1)
    assert [int(t) for t in start_loader(loader)] == [1, 1]  # DataLoader workers too
    assert cv2.getNumThreads() == 2
    print("ok")
""")


@pytest.mark.slow
def test_fork_pools_do_not_hang_after_the_parent_used_opencv_threads():
    try:
        res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("a forked worker pool hung after the parent had used OpenCV's thread pool")
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


# The parent prints its pool's worker pids, then waits in a long job until it is killed.
KILLED_PARENT = textwrap.dedent("""
    import os, time
    from pointparse.pool import fork_pool

    with fork_pool(2) as pool:
        pids = {pool.submit(os.getpid).result() for _ in range(8)}
        print(" ".join(map(str, sorted(pids))), flush=True)
        list(pool.map(time.sleep, [60, 60]))
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie is dead
        return fh.read().split(")")[-1].split()[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")
def test_pool_workers_die_with_a_killed_parent():
    """kill -9 of make-points / ablate-extension leaves no worker behind (issue 15, item 10)."""
    parent = subprocess.Popen([sys.executable, "-c", KILLED_PARENT], stdout=subprocess.PIPE, text=True)
    workers = []
    try:
        workers = [int(p) for p in parent.stdout.readline().split()]
        assert workers and parent.pid not in workers
        time.sleep(0.5)  # the workers are in their 60 s jobs
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [w for w in workers if _alive(w)], "pool workers outlived their killed parent"
    finally:
        parent.kill()
        for w in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w, signal.SIGKILL)
