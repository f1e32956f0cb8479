"""What a cache key is made of: canonical JSON of a stage's name, version, parameters and inputs,
and the fingerprints that stand for the inputs (files by path/size/mtime or by bytes).

:func:`stage_key` is the only hash of a key; :class:`pointparse.cache.StageCache` stores
artefacts under it, :meth:`pointparse.stages.base.Stage.key` computes it for a dry run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
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


def fingerprint_files(files: Iterable[str | Path], content: bool = False, base: str | Path | None = None) -> str:
    """A fingerprint of a set of files.

    By default it hashes each file's relative path, size and mtime (fast; touching a file changes
    it). ``content=True`` hashes the bytes instead (robust to copies and ``touch``, slower). A missing
    file is a :class:`DataError` naming it.
    """
    h = hashlib.sha256()
    base = Path(base) if base is not None else None
    for f in sorted(Path(p) for p in files):
        try:
            st = f.stat()
        except FileNotFoundError:
            raise DataError(f, "file does not exist") from None
        rel = str(f.relative_to(base)) if base is not None and f.is_relative_to(base) else str(f.resolve())
        h.update(rel.encode())
        if content:
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        else:
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        h.update(b"\0")
    return h.hexdigest()


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
