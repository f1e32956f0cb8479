"""A content-addressed stage cache (after DVC's run cache).

A stage's key is the sha256 of the canonical JSON of ``{stage, version, params, inputs}``:

* ``stage`` / ``version``: the stage name and a version bumped when its code changes meaning;
* ``params``: the stage's parameters (a dataclass → dict);
* ``inputs``: fingerprints of what it reads — other artefacts' keys, or dataset fingerprints.

Artefacts live under ``<root>/<stage>/<key[:2]>/<key>/`` with a ``manifest.json`` written last.
A stage runs in a temporary sibling folder that is renamed into place only when it succeeds, so an
interrupted stage never leaves something that looks finished. A hit is decided by the key *and* the
manifest, never by the folder merely existing.

The root is ``--cache-dir``, else ``$POINTPARSE_CACHE``, else ``./.pointparse-cache``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import platform
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from .cache_clear import Cleared, claim, clear_shard, fcntl  # fcntl: None without POSIX locks (unlocked stages)
from .errors import ConfigError, DataError, unknown_choice
from .keys import canonical_json, stage_key
from .oserrors import describe_os_error, no_space
from .outputs import MANIFEST, check_intact as _check_intact, record_outputs, stale_reason, sweep_temporaries

CACHE_ENV = "POINTPARSE_CACHE"
DEFAULT_CACHE_DIR = ".pointparse-cache"
# Every stage the package writes; `cache --clear NAME` accepts these (and any other folder of the
# root laid out as a stage), so a typo lists them instead of silently removing nothing.
KNOWN_STAGES = ("scenes", "make-points", "import-clicks", "train", "evaluate", "extension-row",
                "extension-labels", "ablation-evaluate", "ablate-extension", "pseudo-labels", "report")
_SHARD = re.compile(r"[0-9a-f]{2}")
# an artefact, its .partial, .<key>.<pid>.tmp, .<key>.old-<pid> or .<key>.lock
_ENTRY = re.compile(r"\.?[0-9a-f]{64}(\..+)?")
# stale temporary folders of a killed run: .<key>.<pid>.tmp and .<key>.old-<pid>
_LEFTOVER = re.compile(r"\.([0-9a-f]{64})\.(?:old-)?(\d+)(?:\.tmp)?")


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache root: explicit argument, else ``$POINTPARSE_CACHE``, else ``./.pointparse-cache``."""
    if cache_dir:
        return Path(cache_dir)
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path(DEFAULT_CACHE_DIR)


@dataclass
class StageResult:
    """What :meth:`StageCache.run` returns: where the artefact is and whether it was reused."""

    stage: str
    key: str
    path: Path
    cached: bool
    manifest: dict = field(default_factory=dict)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("pointparse", "torch", "torchvision", "numpy"):
        m = sys.modules.get(mod)
        if m is not None and hasattr(m, "__version__"):
            out[mod] = str(m.__version__)
    return out


def _stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class StageCache:
    """The cache rooted at one folder. Stages call :meth:`run` with a function that fills a folder.

    ``echo`` receives the one-line notices the cache gives (waiting for a lock, ...); stderr by default.
    """

    def __init__(self, root: str | Path | None = None, echo: Callable[[str], None] | None = None):
        self.root = cache_root(root)
        self.echo = echo or _stderr_line
        self.origin = "--cache-dir" if root else f"${CACHE_ENV}" if os.environ.get(CACHE_ENV) else "the default cache"
        if self.root.exists() and not self.root.is_dir():
            raise DataError(self.root, f"the cache root ({self.origin}) is a file, not a folder; point "
                                       f"{'it' if self.origin.startswith('the') else self.origin} at a folder")

    def _unwritable(self, exc: OSError) -> DataError:
        """An OS error of the cache's own writes (folders, locks, manifests) as one line naming the
        cache root and the option that chose it."""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return no_space(exc.filename or self.root)
        return DataError(exc.filename or self.root, f"cannot write into the cache {self.root} ({self.origin}): "
                                                    f"{describe_os_error(exc)}; choose a writable --cache-dir")

    @property
    def file_hashes(self) -> Path:
        """The memo of dataset content fingerprints (:func:`pointparse.keys.fingerprint_files`): a
        dot folder, so it is never a stage and ``cache --clear`` leaves it (it only saves reading)."""
        return self.root / ".file-hashes"

    def path_for(self, stage: str, key: str) -> Path:
        return self.root / stage / key[:2] / key

    def lookup(self, stage: str, key: str) -> Path | None:
        """The finished artefact folder for (stage, key), or ``None`` (also when a file its manifest
        lists is missing or changed)."""
        p = self.path_for(stage, key)
        return p if (p / MANIFEST).is_file() and stale_reason(p) is None else None

    def _hit(self, stage: str, key: str) -> StageResult | None:
        """A cache hit, or ``None``; a finished artefact whose files changed is a miss, said in one line."""
        p = self.path_for(stage, key)
        if not (p / MANIFEST).is_file():
            return None
        why = stale_reason(p)
        if why is not None:
            self.echo(f"{stage} {key[:12]}: {why} since the artefact was written; recomputing it ({p})")
            return None
        return StageResult(stage, key, p, True, _read_manifest(p))

    def run(
        self,
        stage: str,
        version: int | str,
        params: Any,
        inputs: Any,
        build: Callable[[Path], dict | None],
        force: bool = False,
        resume: bool = False,
        lock: bool = True,
    ) -> StageResult:
        """Return the cached artefact for this key, or build it.

        ``build(tmp_dir)`` writes the artefacts into ``tmp_dir`` and may return a dict of extra
        manifest fields (e.g. summary numbers). The folder is renamed into place only after
        ``build`` returns. With ``resume=True`` the temporary folder has a stable name
        (``<key>.partial``) and survives a failure, so a long stage (training) can continue from
        its checkpoints; otherwise it is removed on failure.

        Building holds ``.<key>.lock`` (see :meth:`locked`), so a second process asking for the same
        artefact waits for the first and then reuses its result (or, if it was killed, resumes its
        partial run); two processes never write one folder. ``lock=False`` is for a multi-node
        torchrun, whose nodes share the partial folder on purpose.
        """
        key = stage_key(stage, version, params, inputs)
        if not force and (hit := self._hit(stage, key)) is not None:
            return hit
        with self.locked(stage, key) if lock else contextlib.nullcontext():
            # built meanwhile by the process we waited for (quietly: the line above said why not before)
            if not force and self.lookup(stage, key) is not None:
                return StageResult(stage, key, self.path_for(stage, key), True,
                                   _read_manifest(self.path_for(stage, key)))
            if lock:
                self._sweep(stage, key)
            return self._build(stage, version, key, params, inputs, build, resume, fresh=force and lock, lock=lock)

    def _sweep(self, stage: str, key: str) -> None:
        """Remove the temporary folders killed runs of this stage left behind.

        One is stale when nobody holds its key's lock (a live build always does). This process's own
        (its pid in the name) are never touched, nor are the keys they belong to: opening a lock this
        process holds and closing it again would release it (POSIX record locks are per process).
        """
        mine = str(os.getpid())
        leftovers = [(e, m.group(1), m.group(2)) for shard in (self.root / stage).glob("??")
                     for e in shard.iterdir() if (m := _LEFTOVER.fullmatch(e.name))]
        busy = {k for _, k, pid in leftovers if pid == mine} | {key}
        for entry, k, pid in leftovers:
            if k in busy:
                if k == key and pid != mine:
                    shutil.rmtree(entry, ignore_errors=True)  # we hold this key's lock: nobody else builds it
                continue
            if fcntl is None:
                continue
            with claim(entry.parent / f".{k}.lock") as free:
                if free:  # else a live build
                    shutil.rmtree(entry, ignore_errors=True)

    @contextlib.contextmanager
    def locked(self, stage: str, key: str) -> Iterator[None]:
        """Hold the exclusive lock of (stage, key), waiting (with one line) while another process has it.

        A POSIX record lock (``lockf``) on ``.<key>.lock``: the kernel drops it when the holder dies,
        however it dies, and forked workers do not inherit it, so a killed run frees it at once.
        """
        final = self.path_for(stage, key)
        path = final.with_name(f".{key}.lock")
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644) if fcntl is not None else None
        except OSError as exc:
            raise self._unwritable(exc) from None
        if fd is None:
            yield
            return
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                self.echo(f"{stage} {key[:12]}: another process (pid {holder}) is computing this artefact; "
                          f"waiting for it ({path})")
                fcntl.lockf(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _build(self, stage: str, version: int | str, key: str, params: Any, inputs: Any,
               build: Callable[[Path], dict | None], resume: bool, fresh: bool = False,
               lock: bool = True) -> StageResult:
        """Build (stage, key) in a temporary folder and rename it into place (caller holds the lock).

        ``fresh`` (``--force``) also discards a resumable partial run: forcing means starting over.
        A resumed partial run first loses the temporaries (``.NAME.*.tmp``) a kill mid-write left in
        it (only under the lock: without it, another node may be writing one right now); whatever
        is left when the build ends is removed before the outputs are recorded.
        """
        final = self.path_for(stage, key)
        tmp = final.with_name(f"{key}.partial") if resume else final.with_name(f".{key}.{os.getpid()}.tmp")
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            if (fresh or not resume) and tmp.exists():
                shutil.rmtree(tmp)
            elif tmp.exists() and lock:
                sweep_temporaries(tmp)  # what a kill mid-write left: never resumed from, never adopted
            tmp.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._unwritable(exc) from None
        started = time.time()
        try:
            extra = build(tmp) or {}
        except BaseException:
            if not resume:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        ended = time.time()
        sweep_temporaries(tmp)  # the build is over: any temporary left is a killed attempt's (another node's)
        outputs = record_outputs(tmp)
        manifest = {
            "stage": stage,
            "version": version,
            "key": key,
            "params": json.loads(canonical_json(params)),
            "inputs": json.loads(canonical_json(inputs)),
            "versions": _versions(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "ended": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ended)),
            "duration_s": round(ended - started, 3),
            **json.loads(canonical_json(extra)),
            "outputs": outputs,
        }
        try:
            # The manifest is written last, inside the temporary folder: its presence marks completion.
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            if final.exists():  # a forced rebuild replaces the old artefact
                old = final.with_name(f".{key}.old-{os.getpid()}")
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
        except OSError as exc:
            raise self._unwritable(exc) from None
        finally:
            if not resume and tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return StageResult(stage, key, final, False, manifest)

    def find(self, ref: str | Path, stage: str | None = None) -> Path:
        """Resolve an artefact reference: a folder path, or a key (or unique key prefix ≥ 6 chars)."""
        p = Path(ref)
        if p.is_dir():
            if not (p / MANIFEST).is_file():
                raise DataError(p, "not a finished pointparse artefact (no manifest.json)")
            _check_intact(p)
            return p
        ref = str(ref)
        if len(ref) >= 6 and all(c in "0123456789abcdef" for c in ref):
            stages = [stage] if stage else [d.name for d in self.root.iterdir() if d.is_dir()] if self.root.is_dir() else []
            hits = []
            for s in stages:
                sub = self.root / s / ref[:2]
                if sub.is_dir():
                    hits += [d for d in sub.iterdir() if d.name.startswith(ref) and (d / MANIFEST).is_file()]
            if len(hits) == 1:
                _check_intact(hits[0])
                return hits[0]
            if len(hits) > 1:
                raise ConfigError(f"artefact key prefix {ref!r} is ambiguous: {', '.join(h.name[:12] for h in hits)}")
        raise DataError(p, f"no such artefact folder or cache key under {self.root}")

    def stages(self) -> list[str]:
        """Stage names that ``clear`` accepts: the package's stages and any stage-shaped folder here."""
        here = [d.name for d in self.root.iterdir() if _is_stage_folder(d)] if self.root.is_dir() else []
        return sorted(set(KNOWN_STAGES) | set(here))

    def clear(self, stage: str | None = None) -> "Cleared":
        """Delete cached artefacts (of one stage, or all) and what unfinished runs left; says what.

        Only folders laid out as stage folders (``<2 hex>/<64-hex key>...``) directly under the root
        are deleted, so a wrong ``--cache-dir`` or stage name can never remove anything else. A key
        whose lock is held (a live build, its ``.partial`` or temporary folder) is skipped and listed:
        deleting it would pull the folder from under the process writing it.
        """
        if stage is None:
            targets = ([d for d in self.root.iterdir() if _is_stage_folder(d, d.name in KNOWN_STAGES)]
                       if self.root.is_dir() else [])
        else:
            valid = self.stages()
            if stage not in valid:
                raise unknown_choice("cache stage", stage, [*valid, "all"])
            target = self.root / stage
            if not target.exists():
                return Cleared()
            if not _is_stage_folder(target, allow_empty=True):
                raise DataError(target, "does not look like a pointparse cache stage folder "
                                        "(expected only <2 hex>/<key> folders in it); not deleting it")
            targets = [target]
        done = Cleared()
        for target in targets:
            for shard in sorted(target.iterdir()):
                clear_shard(target.name, shard, done)
                with contextlib.suppress(OSError):
                    shard.rmdir()  # only when emptied
            with contextlib.suppress(OSError):
                target.rmdir()
        return done


def _is_stage_folder(path: Path, allow_empty: bool = False) -> bool:
    """A folder whose entries are all ``<2 hex>`` shard folders holding only cache entries."""
    if not path.is_dir() or path.is_symlink():
        return False
    shards = list(path.iterdir())
    for shard in shards:
        if not (_SHARD.fullmatch(shard.name) and shard.is_dir() and not shard.is_symlink()):
            return False
        if not all(_ENTRY.fullmatch(e.name) for e in shard.iterdir()):
            return False
    return bool(shards) or allow_empty


def _read_manifest(path: Path) -> dict:
    try:
        return json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(path / MANIFEST, f"unreadable manifest ({exc})") from None
