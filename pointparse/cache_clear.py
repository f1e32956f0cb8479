"""Clearing the cache without pulling a folder from under a live build (``pointparse cache --clear``).

Every key is deleted while holding its lock (:func:`claim`), so a running build's ``.partial`` or
temporary folder is skipped and named with the pid holding it; what was removed is counted
(:class:`Cleared`). :mod:`pointparse.cache` also claims locks this way to sweep what killed runs left.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # not POSIX: stages run unlocked
    fcntl = None

from .outputs import MANIFEST


@dataclass
class Cleared:
    """What :meth:`StageCache.clear` did: finished artefacts and unfinished runs (``.partial``
    folders, temporary folders of killed runs) removed, and the keys it left because their lock is
    held: ``(stage, key, what is there, holder pid)``."""

    artefacts: int = 0
    unfinished: int = 0
    skipped: list[tuple[str, str, str, str]] = field(default_factory=list)


def clear_shard(stage: str, shard: Path, done: Cleared) -> None:
    """Delete every key of one shard folder whose lock nobody holds (each while holding it)."""
    by_key: dict[str, list[Path]] = {}
    for e in shard.iterdir():
        by_key.setdefault(e.name.lstrip(".")[:64], []).append(e)
    for key, entries in sorted(by_key.items()):
        lock = shard / f".{key}.lock"
        with claim(lock) as free:
            if not free:
                what = sorted({kind_of(e.name) for e in entries if e != lock}) or ["lock"]
                done.skipped.append((stage, key, ", ".join(what), holder(lock)))
                continue
            for e in entries:
                if e == lock:
                    continue
                if e.name == key and (e / MANIFEST).is_file():
                    done.artefacts += 1
                elif e.is_dir():
                    done.unfinished += 1
                if e.is_dir() and not e.is_symlink():
                    shutil.rmtree(e)
                else:
                    e.unlink()
            if lock.exists():
                lock.unlink()  # while holding it: a process that opens it now makes a new one


@contextlib.contextmanager
def claim(lock: Path) -> Iterator[bool]:
    """Take ``lock`` without waiting: yields True while holding it, False when another process
    holds it (a live build). Without POSIX locks every key is free."""
    if fcntl is None:
        yield True
        return
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:  # its shard was removed meanwhile
        yield True
        return
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            yield False
        else:
            yield True
    finally:
        os.close(fd)


def kind_of(entry: str) -> str:
    """What a cache entry is, in words: a finished artefact, a partial run or a temporary folder."""
    return "partial run" if entry.endswith(".partial") else "temporary folder" if entry.startswith(".") else "artefact"


def holder(lock: Path) -> str:
    """The pid a lock file names (what :meth:`StageCache.locked` writes into it), or ``?``."""
    try:
        return lock.read_text(encoding="utf-8").strip() or "?"
    except OSError:
        return "?"
