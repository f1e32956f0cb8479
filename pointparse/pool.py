"""Process pools for the CPU-bound stages (make-points, the offline extension ablation), and how
many DataLoader processes training and evaluation use.

Both fork: workers start in milliseconds with numpy / cv2 / torch / skimage already imported,
where spawn would re-import them in every worker at more cost than small jobs take.

OpenCV and fork: a forked child inherits OpenCV's thread count but not its threads, and calling
``cv2.setNumThreads`` in the child after the parent has used its pool deadlocks (the child waits
on threads that do not exist in it). So the thread count is set in the *parent*, before the fork,
and restored afterwards: :func:`fork_pool` and :func:`start_loader` do both.

torch is imported for type checking only: make-points forks its workers from a process that
never needs torch, and forking a process with torch loaded costs about three times as much
(measured: a 2-worker pool started and shut down in ~40 ms with torch imported, ~12 ms without).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import multiprocessing
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING, Callable, Iterator

import cv2

if TYPE_CHECKING:
    import torch


def worker_count(workers: int | None) -> int:
    """Processes to use: ``None`` = every core this process may run on; 0 and 1 mean serial."""
    if workers is None:
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            return os.cpu_count() or 1
    return max(1, int(workers))


def loader_workers(requested: int | None, device: torch.device) -> int:
    """DataLoader processes for one training or evaluation process (``requested`` wins if given).

    Auto (``None``): on CPU, 0 — the loader would compete with the model for the same cores, and
    an intra-op thread it preempts holds up every parallel kernel (measured on 2 cores: training
    11.0 s with in-process loading vs 12.7 / 13.8 s with 1 / 2 loader processes; evaluation 30
    vs 22 img/s). On CUDA, loading overlaps with the GPU: up to 4 per process, sharing the cores
    among the processes torchrun starts on this machine.
    """
    if requested is not None:
        return int(requested)
    if device.type != "cuda":
        return 0
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(4, worker_count(None) // local))


def fork_context():
    """The fork start method where the platform has it (Linux), else the platform default."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else None)


@contextlib.contextmanager
def one_thread(get: Callable[[], int], set_: Callable[[int], None]) -> Iterator[None]:
    """A library's thread count (``get`` / ``set_``) at 1 inside the block, restored after."""
    before = get()
    set_(1)
    try:
        yield
    finally:
        set_(before)


def opencv_single_threaded() -> contextlib.AbstractContextManager:
    """OpenCV on one thread inside the block, the previous count restored after.

    Processes forked inside the block inherit the single thread, so N workers do not start N
    OpenCV threads each on N cores, and a child must not change the count itself (module
    docstring).
    """
    return one_thread(cv2.getNumThreads, cv2.setNumThreads)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int) -> None:
    """Make this (worker) process die when ``parent`` does, however it dies.

    On Linux the kernel sends SIGKILL at the parent's death (``prctl(PR_SET_PDEATHSIG)``); a
    ``kill -9`` of the parent otherwise leaves its pool workers running their current job and
    waiting on a dead queue. If the parent died before the call, exit at once. Elsewhere this only
    does the second check.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def _init_worker(parent: int, initializer: Callable[[], None] | None) -> None:
    die_with_parent(parent)
    if initializer is not None:
        initializer()


@contextlib.contextmanager
def fork_pool(workers: int, initializer: Callable[[], None] | None = None) -> Iterator[ProcessPoolExecutor]:
    """A ``ProcessPoolExecutor`` of ``workers`` forked processes whose OpenCV runs single-threaded and
    that die with this process (:func:`die_with_parent`), shut down on exit as ``with`` does.

    The fork start method starts every worker up front from the calling thread, which must outlive
    the pool: the kernel's parent-death signal follows the thread that forked.
    """
    init = functools.partial(_init_worker, os.getpid(), initializer)
    with opencv_single_threaded(), \
            ProcessPoolExecutor(max_workers=workers, mp_context=fork_context(), initializer=init) as pool:
        yield pool


def start_loader(loader: torch.utils.data.DataLoader) -> Iterator:
    """``iter(loader)``: its worker processes (if any) start here, with single-threaded OpenCV."""
    with opencv_single_threaded():
        return iter(loader)
