"""Operating-system errors in words: what a full disk, a read-only or immutable folder, a symlink
loop or a name too long means for the file it names, as the one-line :class:`DataError` every
command prints (``cli.options.friendly`` turns any :class:`OSError` that still escapes into one).

A full disk says how much the write needed and how much is free (:func:`no_space`): "no space
left" alone does not tell a user whether freeing 10 MB or 10 GB will do.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
from pathlib import Path

from .errors import DataError


def human_size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _free_space(path: Path) -> int | None:
    for p in (path, *path.parents):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(p).free
    return None


def no_space(path: str | Path, needed: int | None = None) -> DataError:
    """The one-line error of a full disk while writing ``path``: how much it needed, how much is free."""
    path = Path(path)
    free = _free_space(path.parent)
    need = f"writing it needs {human_size(needed)}" if needed is not None else "it could not be written"
    have = f", {human_size(free)} are free there" if free is not None else ""
    return DataError(path, f"no space left on its device: {need}{have}; free some space (or write elsewhere) "
                           "and run the command again")


def describe_os_error(exc: OSError) -> str:
    """What an operating-system error means for the file it names, in words a user can act on."""
    said = exc.strerror or str(exc)
    return {
        errno.ENOSPC: "no space left on its device",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied: this user may not write (or read) it; is it read-only?",
        errno.EPERM: "operation not permitted: it (or its folder) is read-only or immutable",
        errno.ELOOP: "it is a symbolic link loop (the link points back at itself)",
        errno.ENAMETOOLONG: "its name is too long for the file system (most allow 255 bytes per name)",
        errno.ENOTDIR: "a part of this path is a file, not a folder",
        errno.EEXIST: "a file is in the way where a folder is needed",
        errno.EDQUOT: "the disk quota is exceeded",
    }.get(exc.errno, said)


def os_error(exc: OSError, path: str | Path | None = None) -> DataError:
    """An :class:`OSError` as the one-line :class:`DataError` naming its file (or ``path``)."""
    where = path if path is not None else (exc.filename if exc.filename is not None else "?")
    return DataError(where, describe_os_error(exc))
