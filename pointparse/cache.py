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
import hashlib
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

try:
    import fcntl
except ImportError:  # not POSIX: stages run unlocked
    fcntl = None

from .errors import ConfigError, DataError, unknown_choice
from .keys import canonical_json, stage_key

CACHE_ENV = "POINTPARSE_CACHE"
DEFAULT_CACHE_DIR = ".pointparse-cache"
MANIFEST = "manifest.json"
# Every stage the package writes; `cache --clear NAME` accepts these (and any other folder of the
# root laid out as a stage), so a typo lists them instead of silently removing nothing.
KNOWN_STAGES = ("scenes", "make-points", "import-clicks", "train", "evaluate", "extension-row",
                "extension-labels", "ablation-evaluate", "ablate-extension", "pseudo-labels", "report")
_SHARD = re.compile(r"[0-9a-f]{2}")
# an artefact, its .partial, .<key>.<pid>.tmp, .<key>.old-<pid> or .<key>.lock
_ENTRY = re.compile(r"\.?[0-9a-f]{64}(\..+)?")
# stale temporary folders of a killed run: .<key>.<pid>.tmp and .<key>.old-<pid>
_LEFTOVER = re.compile(r"\.([0-9a-f]{64})\.(?:old-)?(\d+)(?:\.tmp)?")
# files up to this size are also recorded (and checked) by sha256; larger ones by size only
HASH_LIMIT = 64 * 1024


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
            return self._build(stage, version, key, params, inputs, build, resume, fresh=force and lock)

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
            with _claim(entry.parent / f".{k}.lock") as free:
                if free:  # else a live build
                    shutil.rmtree(entry, ignore_errors=True)

    @contextlib.contextmanager
    def locked(self, stage: str, key: str) -> Iterator[None]:
        """Hold the exclusive lock of (stage, key), waiting (with one line) while another process has it.

        A POSIX record lock (``lockf``) on ``.<key>.lock``: the kernel drops it when the holder dies,
        however it dies, and forked workers do not inherit it, so a killed run frees it at once.
        """
        final = self.path_for(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            yield
            return
        path = final.with_name(f".{key}.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
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
               build: Callable[[Path], dict | None], resume: bool, fresh: bool = False) -> StageResult:
        """Build (stage, key) in a temporary folder and rename it into place (caller holds the lock).

        ``fresh`` (``--force``) also discards a resumable partial run: forcing means starting over.
        """
        final = self.path_for(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f"{key}.partial") if resume else final.with_name(f".{key}.{os.getpid()}.tmp")
        if (fresh or not resume) and tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        started = time.time()
        try:
            extra = build(tmp) or {}
        except BaseException:
            if not resume:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        ended = time.time()
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
        # The manifest is written last, inside the temporary folder: its presence marks completion.
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        if final.exists():  # a forced rebuild replaces the old artefact
            old = final.with_name(f".{key}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
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
                _clear_shard(target.name, shard, done)
                with contextlib.suppress(OSError):
                    shard.rmdir()  # only when emptied
            with contextlib.suppress(OSError):
                target.rmdir()
        return done


@dataclass
class Cleared:
    """What :meth:`StageCache.clear` did: finished artefacts and unfinished runs (``.partial``
    folders, temporary folders of killed runs) removed, and the keys it left because their lock is
    held: ``(stage, key, what is there, holder pid)``."""

    artefacts: int = 0
    unfinished: int = 0
    skipped: list[tuple[str, str, str, str]] = field(default_factory=list)


def _clear_shard(stage: str, shard: Path, done: Cleared) -> None:
    """Delete every key of one shard folder whose lock nobody holds (each while holding it)."""
    by_key: dict[str, list[Path]] = {}
    for e in shard.iterdir():
        by_key.setdefault(e.name.lstrip(".")[:64], []).append(e)
    for key, entries in sorted(by_key.items()):
        lock = shard / f".{key}.lock"
        with _claim(lock) as free:
            if not free:
                what = sorted({_kind_of(e.name) for e in entries if e != lock}) or ["lock"]
                done.skipped.append((stage, key, ", ".join(what), _holder(lock)))
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
def _claim(lock: Path) -> Iterator[bool]:
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


def _kind_of(entry: str) -> str:
    """What a cache entry is, in words: a finished artefact, a partial run or a temporary folder."""
    return "partial run" if entry.endswith(".partial") else "temporary folder" if entry.startswith(".") else "artefact"


def _holder(lock: Path) -> str:
    """The pid a lock file names (what :meth:`StageCache.locked` writes into it), or ``?``."""
    try:
        return lock.read_text(encoding="utf-8").strip() or "?"
    except OSError:
        return "?"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def record_outputs(folder: Path) -> dict[str, dict]:
    """What a finished artefact holds: ``{relative path: {"size": bytes[, "sha256": hex]}}`` (the
    hash for files up to :data:`HASH_LIMIT`), written into its manifest."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and not p.is_symlink() and rel != MANIFEST:
            size = p.stat().st_size
            out[rel] = {"size": size, **({"sha256": _sha256(p)} if size <= HASH_LIMIT else {})}
    return out


def stale_reason(folder: Path) -> str | None:
    """Why a finished artefact no longer matches the files its manifest records, or ``None``
    (also for artefacts written before manifests recorded their files)."""
    try:
        outputs = json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("outputs")
    except (OSError, ValueError, AttributeError):
        return "its manifest.json is unreadable"
    if not isinstance(outputs, dict):
        return None
    for rel, rec in outputs.items():
        if not isinstance(rec, dict):
            return f"its manifest.json records {rel!r} as {rec!r}, not as a file"
        try:
            size = (folder / rel).stat().st_size
        except OSError:
            return f"{rel} is missing"
        if size != rec.get("size") or ("sha256" in rec and _sha256(folder / rel) != rec["sha256"]):
            return f"{rel} has changed"
    return None


def _check_intact(folder: Path) -> None:
    """An artefact used as an input must still hold what it was written with."""
    why = stale_reason(folder)
    if why is not None:
        raise DataError(folder, f"{why} since this artefact was written; run the command that made it again")


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
