"""The stage cache: keys, hits without work, atomicity, invalidation."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import pytest

from pointparse import keys
from pointparse.cache import StageCache, cache_root
from pointparse.keys import canonical_json, fingerprint_files, stage_key
from pointparse.errors import DataError


@dataclasses.dataclass
class P:
    a: int = 1
    b: float = 0.5


def test_key_is_canonical_and_sensitive():
    k1 = stage_key("s", 1, {"x": 1, "y": [1, 2]}, {"d": "abc"})
    k2 = stage_key("s", 1, {"y": [1, 2], "x": 1}, {"d": "abc"})
    assert k1 == k2 and len(k1) == 64
    assert stage_key("s", 2, {"x": 1, "y": [1, 2]}, {"d": "abc"}) != k1
    assert stage_key("s", 1, {"x": 2, "y": [1, 2]}, {"d": "abc"}) != k1
    assert stage_key("t", 1, {"x": 1, "y": [1, 2]}, {"d": "abc"}) != k1
    assert stage_key("s", 1, P(), {}) == stage_key("s", 1, {"a": 1, "b": 0.5}, {})
    assert canonical_json({"b": 1, "a": (1, 2)}) == '{"a":[1,2],"b":1}'


def test_run_builds_once_then_hits(tmp_path):
    cache = StageCache(tmp_path / "c")
    calls = []

    def build(d):
        calls.append(d)
        (d / "out.txt").write_text("hi")
        return {"summary": {"n": 1}}

    r1 = cache.run("st", 1, P(), {"in": "x"}, build)
    r2 = cache.run("st", 1, P(), {"in": "x"}, build)
    assert len(calls) == 1 and not r1.cached and r2.cached
    assert r1.path == r2.path == tmp_path / "c" / "st" / r1.key[:2] / r1.key
    m = json.loads((r1.path / "manifest.json").read_text())
    assert m["key"] == r1.key and m["params"] == {"a": 1, "b": 0.5} and m["summary"] == {"n": 1}
    assert "duration_s" in m and "versions" in m
    r3 = cache.run("st", 1, P(a=2), {"in": "x"}, build)
    assert len(calls) == 2 and r3.key != r1.key
    r4 = cache.run("st", 1, P(), {"in": "x"}, build, force=True)
    assert len(calls) == 3 and not r4.cached and (r4.path / "out.txt").read_text() == "hi"


def test_failure_leaves_nothing_that_looks_finished(tmp_path):
    cache = StageCache(tmp_path)

    def bad(d):
        (d / "half.txt").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        cache.run("st", 1, {}, {}, bad)
    key = stage_key("st", 1, {}, {})
    assert cache.lookup("st", key) is None
    assert not any(p.name == key for p in (tmp_path / "st" / key[:2]).iterdir())
    # a folder without a manifest (e.g. copied by hand, or half-deleted) is not a hit
    (tmp_path / "st" / key[:2] / key).mkdir()
    assert cache.lookup("st", key) is None


def test_resume_keeps_partial_folder(tmp_path):
    cache = StageCache(tmp_path)
    seen = []

    def flaky(d):
        seen.append(sorted(p.name for p in d.iterdir()))
        if not (d / "ckpt").exists():
            (d / "ckpt").write_text("epoch 1")
            raise KeyboardInterrupt
        return {}

    with pytest.raises(KeyboardInterrupt):
        cache.run("train", 1, {}, {}, flaky, resume=True)
    r = cache.run("train", 1, {}, {}, flaky, resume=True)
    assert seen == [[], ["ckpt"]] and (r.path / "ckpt").exists()


def test_fingerprint_changes_with_touch_and_content(tmp_path):
    f = tmp_path / "a.png"
    f.write_bytes(b"1234")
    fp1 = fingerprint_files([f], base=tmp_path)
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    assert fingerprint_files([f], base=tmp_path) != fp1
    c1 = fingerprint_files([f], content=True, base=tmp_path)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 20_000_000))
    assert fingerprint_files([f], content=True, base=tmp_path) == c1  # touch alone: same content
    f.write_bytes(b"1235")
    assert fingerprint_files([f], content=True, base=tmp_path) != c1
    with pytest.raises(DataError, match="missing.png"):
        fingerprint_files([tmp_path / "missing.png"])


def test_content_fingerprint_memo(tmp_path):
    """The memo answers for an untouched set, a touched or copied set is read again and keeps its
    fingerprint, an entry is never written when a file changed while it was read, and a memo that
    cannot be written into only costs the reading."""
    data, memo = tmp_path / "data", tmp_path / "cache" / ".file-hashes"
    data.mkdir()
    for i in range(3):
        (data / f"{i}.png").write_bytes(bytes([i]) * 10)
    files = sorted(data.iterdir())
    truth = fingerprint_files(files, content=True, base=data)
    assert fingerprint_files(files, content=True, base=data, memo=memo) == truth
    (entry,) = memo.iterdir()
    entry.write_text("f" * 64 + "\n")  # a planted answer shows the memo is what answers now
    assert fingerprint_files(files, content=True, base=data, memo=memo) == "f" * 64
    st = files[0].stat()
    os.utime(files[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))  # touched: read again
    assert fingerprint_files(files, content=True, base=data, memo=memo) == truth
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    assert fingerprint_files(sorted(copy.iterdir()), content=True, base=copy, memo=memo) == truth
    assert len(list(memo.iterdir())) == 3  # before and after the touch, and the copy
    for e in memo.iterdir():
        e.write_text("not a digest")
    assert fingerprint_files(files, content=True, base=data, memo=memo) == truth  # a bad entry is ignored

    stats = [f.stat() for f in files]
    files[1].write_bytes(b"changed!!!")  # after its stat, as if written while it was read
    keys._remember(memo / "late.sha256", truth, files, stats)
    assert not (memo / "late.sha256").exists()

    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the memo folder would be")
    now = fingerprint_files(files, content=True, base=data)
    assert fingerprint_files(files, content=True, base=data, memo=blocked / "memo") == now  # read, not remembered


def test_cache_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("POINTPARSE_CACHE", str(tmp_path / "env"))
    assert cache_root(None) == tmp_path / "env"
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("POINTPARSE_CACHE")
    assert cache_root(None).name == ".pointparse-cache"


def test_find_by_key_prefix_and_folder(tmp_path):
    cache = StageCache(tmp_path)
    r = cache.run("st", 1, {}, {}, lambda d: {})
    assert cache.find(r.key[:10]) == r.path
    assert cache.find(str(r.path)) == r.path
    with pytest.raises(DataError):
        cache.find("deadbeef00")
    with pytest.raises(DataError, match="not a finished"):
        cache.find(str(tmp_path))


def test_clear_removes_only_stage_folders_under_the_root(tmp_path):
    """`cache --clear` with a path, '..' or a typo deletes nothing and says why (issue 15, item 1)."""
    from click.testing import CliRunner

    from pointparse.cli.main import main

    work = tmp_path / "work"
    work.mkdir()
    (work / "precious.txt").write_text("keep me")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "data.txt").write_text("keep me too")
    cache = work / "cache"
    r = StageCache(cache).run("train", 1, {}, {}, lambda d: (d / "m.pt").write_text("w") and None)
    runner = CliRunner()
    for bad in ("..", str(outside), "../outside", "trian", "", "train/..", "/"):
        res = runner.invoke(main, ["cache", "--clear", bad, "--cache-dir", str(cache)])
        if bad == "":  # click treats it as not given: a listing
            continue
        assert res.exit_code != 0 and "Traceback" not in res.output, (bad, res.output)
        assert "valid choices" in res.output and "train" in res.output, (bad, res.output)
    assert (work / "precious.txt").read_text() == "keep me" and (outside / "data.txt").exists()
    assert (r.path / "m.pt").exists()
    # a cache root that holds something else: `--clear all` removes only stage-shaped folders
    (cache / "notes").mkdir()
    (cache / "notes" / "n.txt").write_text("x")
    (cache / "train2").mkdir()  # not a known stage and not stage-shaped: never a valid name
    res = runner.invoke(main, ["cache", "--clear", "all", "--cache-dir", str(cache)])
    assert res.exit_code == 0 and "removed 1 artefact" in res.output
    assert not (cache / "train").exists() and (cache / "notes" / "n.txt").exists() and (cache / "train2").is_dir()
    # a known stage name whose folder holds other things is refused in one line
    (cache / "report").mkdir()
    (cache / "report" / "mine.txt").write_text("x")
    res = runner.invoke(main, ["cache", "--clear", "report", "--cache-dir", str(cache)])
    assert res.exit_code != 0 and "does not look like" in res.output and (cache / "report" / "mine.txt").exists()
