"""Reading and writing files, with errors that name the file (images and label maps:
:mod:`pointparse.images`).

Every writer here is atomic: it writes a temporary sibling and ``os.replace``s it into place, so
an interrupted run never leaves a file that looks complete. Checkpoints, label maps and images
are written through :func:`checked_file`, so a full disk is one line saying how much space the
file needed (:mod:`pointparse.oserrors`), not a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import DataError
from .oserrors import no_space

#: the one call every checked write goes through (tests make it raise ENOSPC to fill the disk)
_os_write = os.write


class CheckedWriter:
    """A binary file (unbuffered) that knows how many bytes it was asked to write. When the disk
    fills up it keeps counting without writing, so the error can say how much space the whole
    file needed (see :func:`checked_file`); other OS errors propagate."""

    def __init__(self, fd: int):
        self.fd = fd
        self.size = 0
        self.full: OSError | None = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        n = view.nbytes
        while self.full is None and len(view):
            try:
                view = view[_os_write(self.fd, view):]
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                self.full = exc
        self.size += n
        return n

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True


@contextlib.contextmanager
def checked_file(path: str | Path) -> Iterator[CheckedWriter]:
    """:func:`atomic_file` opened as a :class:`CheckedWriter`: a full disk is one :class:`DataError`
    naming ``path`` with the size it needed, and nothing is left at ``path`` or beside it."""
    path = Path(path)
    with atomic_file(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC)
        try:
            fh = CheckedWriter(fd)
            yield fh
        finally:
            os.close(fd)
        if fh.full is not None:
            raise no_space(path, fh.size) from None


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` atomically (a full disk says how much was needed)."""
    with checked_file(path) as fh:
        fh.write(data)


@contextlib.contextmanager
def atomic_file(path: str | Path, sweep: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; it replaces ``path`` only if the block succeeds.

    ``sweep``: first remove what a killed earlier write of ``path`` left beside it
    (``.NAME.PID-XXXX.tmp``, :func:`sweep_stale_siblings`) — for a single-file ``--out`` in a
    user's folder, which nothing else cleans. Off by default: it lists the folder, and per-image
    writes into a stage's temporary folder (swept as a whole by the cache) would pay that per file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if sweep:
        sweep_stale_siblings(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; it is renamed to ``path`` only on success.

    An existing ``path`` is replaced (``path`` is made absolute first: ``.`` or ``x/..`` have no
    name to put a sibling beside). On failure the temporary folder is removed, so nothing
    half-written ever sits at ``path``; what a killed earlier write left beside it is removed
    first (:func:`sweep_stale_siblings`).
    """
    path = Path(os.path.abspath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_siblings(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def sweep_stale_siblings(path: Path) -> None:
    """Remove the temporaries a killed :func:`atomic_dir` or :func:`atomic_file` of ``path`` left beside it
    (``.NAME.PID-XXXX.tmp``, ``.NAME.old-PID``), unless the process named in them still runs (a
    concurrent write of the same folder). Names without a pid come from versions that did not
    write one; nothing else writes them, so they are stale too."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(?:(?:(\d+)-)?[a-z0-9_]+\.tmp|old-(\d+))")
    with contextlib.suppress(OSError):
        for entry in path.parent.iterdir():
            m = pattern.fullmatch(entry.name)
            if m is None:
                continue
            pid = m.group(1) or m.group(2)
            if pid is not None and _alive(int(pid)):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: it exists
        return True
    return True


def safe_name(name: str, source: str | Path) -> str:
    """``name`` if it can be used as one file name inside an output folder, else a DataError naming
    ``source`` (the file it came from): no separators, no ``.``/``..``, nothing absolute, so a
    crafted name can never write outside the folder."""
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
            or "\0" in name or os.path.isabs(name)):
        raise DataError(source, f"image name {name!r} is not a plain file name (it would be written outside "
                                "the output folder); rename the image")
    return name


OUT_MARKER = ".pointparse-out.json"


def check_out_dir(path: str | Path, command: str, stage: str | None = None,
                  cache_root: str | Path | None = None) -> Path:
    """Refuse an ``--out`` folder that a command would replace unless it is new, empty, or an
    earlier output of the same ``command`` (its marker file says so; for outputs written before
    the marker existed, a copied ``manifest.json`` of ``stage``). Call it before doing any work.

    Never inside a cache (``cache_root``, or any folder laid out as a cache artefact): a copy
    there would replace an artefact that later commands reuse by its key."""
    path = Path(path)
    check_out_path(path, command, cache_root)
    if not path.exists() and not path.is_symlink():
        return path
    if not path.is_dir():
        raise DataError(path, f"--out of {command} must be a folder; this path exists and is not one")
    if not any(path.iterdir()) or _out_owner(path, stage) == command:
        return path
    raise DataError(path, f"--out: this folder is not empty and is not an earlier output of {command}; "
                          "its files would be replaced, so choose a new or empty folder")


#: a cache artefact folder's name (its key, or its partial run) and its shard's (cache.py's layout)
_ARTEFACT_NAME = re.compile(r"[0-9a-f]{64}(\.partial)?")
_SHARD_NAME = re.compile(r"[0-9a-f]{2}")


def check_out_path(path: str | Path, command: str, cache_root: str | Path | None = None) -> None:
    """Refuse an output path (file or folder) inside the cache root, holding it, or inside any
    folder laid out as a cache artefact (``<stage>/<2 hex>/<key>``): writing there would change
    what a cached key stands for (a report copied over another report's artefact is then reused
    under that artefact's key). Nor the current folder or one holding it (``--out .``): an output
    folder is replaced by renaming, which would pull the folder from under the shell."""
    where = Path(path).resolve()
    with contextlib.suppress(OSError):  # a current folder that was deleted meanwhile holds nothing
        cwd = Path.cwd().resolve()
        if where == cwd or where in cwd.parents:
            what = "is the current folder" if where == cwd else "holds the current folder"
            raise DataError(path, f"--out of {command} {what}; the output folder is replaced as a whole, so name "
                                  f"a new folder (e.g. --out {command}-out)")
    if cache_root is not None:
        root = Path(cache_root).resolve()
        if where == root or root in where.parents:
            raise DataError(path, f"--out of {command} lies inside the cache root {cache_root}; it would change "
                                  "cached artefacts: choose a folder outside the cache")
        if where in root.parents:
            raise DataError(path, f"--out of {command} holds the cache root {cache_root}; replacing it would "
                                  "delete the cache: choose another folder")
    for p in (where, *where.parents):
        if _ARTEFACT_NAME.fullmatch(p.name) and _SHARD_NAME.fullmatch(p.parent.name) and p.name[:2] == p.parent.name:
            raise DataError(path, f"--out of {command} lies inside the cache artefact {p}; it would change what "
                                  "its key stands for: choose a folder outside the cache")


def _out_owner(path: Path, stage: str | None) -> str | None:
    """The command named by ``path``'s marker (or by a copied manifest of ``stage``), else None."""
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError, AttributeError):
        return str(json.loads((path / OUT_MARKER).read_text(encoding="utf-8"))["command"])
    if stage is not None:
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError, AttributeError):
            if json.loads((path / "manifest.json").read_text(encoding="utf-8"))["stage"] == stage:
                return stage
    return None


def mark_out_dir(path: str | Path, command: str) -> None:
    """Write the marker that lets ``command`` replace this ``--out`` folder next time."""
    write_json(Path(path) / OUT_MARKER, {"command": command})


@contextlib.contextmanager
def atomic_out_dir(path: str | Path, command: str, stage: str | None = None,
                   cache_root: str | Path | None = None) -> Iterator[Path]:
    """:func:`atomic_dir` for an ``--out`` folder: checked by :func:`check_out_dir` first and
    marked as ``command``'s output, so only that command ever replaces it."""
    check_out_dir(path, command, stage, cache_root)
    with atomic_dir(path) as tmp:
        yield tmp
        mark_out_dir(tmp, command)


def write_json(path: str | Path, obj: Any, indent: int | None = 1, sweep: bool = False) -> None:
    """Write JSON atomically with sorted keys (byte-identical output for identical input);
    ``sweep`` as :func:`atomic_file`'s."""
    text = json.dumps(obj, indent=indent, sort_keys=True, ensure_ascii=False)
    with atomic_file(path, sweep) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(path, f"not valid JSON ({exc})") from None
