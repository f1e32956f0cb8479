"""What a cache key is made of: canonical JSON of a stage's name, version, parameters and inputs,
and the fingerprints that stand for the inputs (files by their bytes, or by path/size/mtime).

:func:`stage_key` is the only hash of a key; :class:`pointparse.cache.StageCache` stores
artefacts under it, :meth:`pointparse.stages.base.Stage.key` computes it for a dry run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

from .errors import DataError


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and obj != obj:
        return "NaN"
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise TypeError(f"cannot put {type(obj).__name__} into a cache key")


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, dataclasses and paths converted."""
    return json.dumps(_jsonable(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def stage_key(stage: str, version: int | str, params: Any, inputs: Any) -> str:
    """sha256 of the canonical JSON of the stage name, code version, parameters and inputs."""
    payload = {"stage": stage, "version": version, "params": params, "inputs": inputs}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def fingerprint_files(files: Iterable[str | Path], content: bool = False, base: str | Path | None = None,
                      memo: str | Path | None = None) -> str:
    """A fingerprint of a set of files.

    ``content=False`` hashes each file's relative path, size and mtime (fast; touching a file
    changes it). ``content=True`` hashes relative paths and bytes instead, so a copied, moved or
    touched dataset keeps its fingerprint (and the artefacts keyed by it) and only changed bytes
    change it. With ``memo`` (a folder: the cache's, :attr:`pointparse.cache.StageCache.file_hashes`)
    the content fingerprint is remembered under the set's stat fingerprint (absolute paths, sizes,
    mtimes, ctimes, inodes), so an untouched set is read once, not on every command; any change
    to a file's metadata (a write, ``touch``, a copy) reads it again. A missing file is a
    :class:`DataError` naming it.
    """
    base = Path(base) if base is not None else None
    paths = sorted(Path(p) for p in files)
    stats = []
    for f in paths:
        try:
            stats.append(f.stat())
        except FileNotFoundError:
            raise DataError(f, "file does not exist") from None

    def rel(f: Path) -> str:  # not computed on a memo hit: path arithmetic costs as much as a stat
        return str(f.relative_to(base)) if base is not None and f.is_relative_to(base) else str(f.resolve())

    if not content:
        h = hashlib.sha256()
        for f, st in zip(paths, stats):
            h.update(rel(f).encode())
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
            h.update(b"\0")
        return h.hexdigest()
    entry = Path(memo) / f"{_stat_fingerprint(paths, stats)}.sha256" if memo is not None else None
    if entry is not None:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            known = entry.read_text(encoding="ascii").strip()
            if _HEX64.fullmatch(known):
                return known
    h = hashlib.sha256()
    for f in paths:
        h.update(rel(f).encode())
        try:
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        except FileNotFoundError:
            raise DataError(f, "file does not exist") from None
        h.update(b"\0")
    digest = h.hexdigest()
    if entry is not None:
        _remember(entry, digest, paths, stats)
    return digest


_HEX64 = re.compile(r"[0-9a-f]{64}")


def _meta(st: os.stat_result) -> str:
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}:{st.st_dev}"


def _stat_fingerprint(paths: list[Path], stats: list[os.stat_result]) -> str:
    h = hashlib.sha256()
    for f, st in zip(paths, stats):
        h.update(f"{os.path.abspath(f)}\0{_meta(st)}\0".encode())  # abspath: no syscalls; inodes tell files apart
    return h.hexdigest()


def _remember(entry: Path, digest: str, paths: list[Path], stats: list[os.stat_result]) -> None:
    """Write a memo entry atomically, only if no file changed while it was read (else the entry
    would pair the old metadata with the new bytes). The memo only saves time: a cache it cannot
    write into is said by the stage that writes its artefact, not here."""
    with contextlib.suppress(OSError):
        if any(_meta(f.stat()) != _meta(st) for f, st in zip(paths, stats)):
            return
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
        tmp.write_text(digest + "\n", encoding="ascii")
        os.replace(tmp, entry)


def content_fingerprint(path: str | Path) -> str:
    """sha256 of one file's bytes only, so the same file at another path (a copied cache, a moved
    weights file) has the same fingerprint and an overwritten one never does."""
    path = Path(path)
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except FileNotFoundError:
        raise DataError(path, "file does not exist") from None
    except IsADirectoryError:
        raise DataError(path, "is a folder, expected a file") from None
    return h.hexdigest()


def click_file_fingerprint(path: str | Path) -> str:
    """sha256 of a click file's bytes (a folder: of its files' relative names and bytes)."""
    path = Path(path)
    h = hashlib.sha256()
    if not path.exists():
        raise DataError(path, "click file does not exist")
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    if not files:
        raise DataError(path, "folder is empty")
    for f in files:
        h.update((f.relative_to(path).as_posix() if path.is_dir() else "").encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()
