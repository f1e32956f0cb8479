"""What a finished artefact holds, and whether it still holds it (the cache's ``outputs`` record).

A manifest lists every file of its artefact with its size and sha256. Before an artefact is
reused (a cache hit, or an input named by key or folder) every listed file is hashed again: a
same-size edit (4 KiB flipped inside ``model.pt``) must make the artefact a miss, and only the
bytes can tell. Hashing is done once per process per artefact: the result is remembered against
each file's ``stat`` (size, mtime, ctime, inode), so a pipeline that looks an artefact up several
times pays once, while a file changed meanwhile (its ctime moves, whatever its mtime says) is
hashed again. Manifests written before the hashes of files over 64 KiB were recorded still have
only their sizes checked for those files: there is nothing to compare the bytes with.

Temporaries (``.NAME.*.tmp``, ``.NAME.old-PID``) are what a kill mid-write leaves beside the file
being written (:func:`pointparse.io.atomic_file`); they are never part of an artefact:
:func:`sweep_temporaries` removes them from a partial run before it resumes and before its
outputs are recorded, and :func:`record_outputs` never lists one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from .errors import DataError

MANIFEST = "manifest.json"
#: a temporary file or folder of an atomic write (io.atomic_file / io.atomic_dir)
TEMPORARY = re.compile(r"\..+\.(tmp|old-\d+)")
_CHUNK = 1 << 20

#: folder -> (stat signature of its manifest and listed files, the verdict) for this process
_VERIFIED: dict[str, tuple[tuple, str | None]] = {}


def is_temporary(name: str) -> bool:
    return TEMPORARY.fullmatch(name) is not None


def sweep_temporaries(folder: Path) -> list[Path]:
    """Remove every temporary under ``folder`` (see the module docstring); returns what it removed."""
    gone = []
    for p in sorted(folder.rglob(".*"), key=lambda q: len(q.parts), reverse=True):
        if is_temporary(p.name) and (p.exists() or p.is_symlink()):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            gone.append(p)
    return gone


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def record_outputs(folder: Path) -> dict[str, dict]:
    """What a finished artefact holds: ``{relative path: {"size": bytes, "sha256": hex}}``, written
    into its manifest (temporaries are never listed)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if any(is_temporary(part) for part in rel.parts):
            continue
        if p.is_file() and not p.is_symlink() and rel.as_posix() != MANIFEST:
            out[rel.as_posix()] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    return out


def _signature(folder: Path, outputs: dict) -> tuple | None:
    sig = []
    for rel in (MANIFEST, *outputs):
        try:
            st = (folder / rel).stat()
        except OSError:
            return None
        sig.append((rel, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    return tuple(sig)


def stale_reason(folder: Path) -> str | None:
    """Why a finished artefact no longer matches the files its manifest records, or ``None``
    (also for artefacts written before manifests recorded their files). Every recorded hash is
    checked, once per process per unchanged artefact (module docstring)."""
    try:
        outputs = json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("outputs")
    except (OSError, ValueError, AttributeError):
        return "its manifest.json is unreadable"
    if not isinstance(outputs, dict):
        return None
    memo_key = os.path.abspath(folder)
    sig = _signature(folder, outputs)
    if sig is not None and (seen := _VERIFIED.get(memo_key)) is not None and seen[0] == sig:
        return seen[1]
    why = _compare(folder, outputs)
    if sig is not None:
        _VERIFIED[memo_key] = (sig, why)
    return why


def _compare(folder: Path, outputs: dict) -> str | None:
    for rel, rec in outputs.items():
        if not isinstance(rec, dict):
            return f"its manifest.json records {rel!r} as {rec!r}, not as a file"
        try:
            size = (folder / rel).stat().st_size
        except OSError:
            return f"{rel} is missing"
        if size != rec.get("size"):
            return f"{rel} has changed"
    for rel, rec in outputs.items():  # sizes first: a cheap answer for most edits
        if "sha256" in rec:
            try:
                digest = sha256_file(folder / rel)
            except OSError as exc:
                return f"{rel} is unreadable ({exc.strerror or exc})"
            if digest != rec["sha256"]:
                return f"{rel} has changed"
    return None


def check_intact(folder: Path) -> None:
    """An artefact used as an input must still hold what it was written with."""
    why = stale_reason(folder)
    if why is not None:
        raise DataError(folder, f"{why} since this artefact was written; run the command that made it again")
