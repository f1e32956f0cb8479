"""The Click layer: make-points through the cache, bad input, --help everywhere."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import pointparse.stages.make_points
from pointparse.cli.main import main


def _folder_dataset(root: Path, n: int = 3, size: int = 32) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("0 ground 0:128:0\n1 thing 128:0:0\n")
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), np.uint8)
        mask[4:12, 4:12] = 1
        mask[20:28, 18:30] = 1
        Image.fromarray(img).save(root / "images" / f"im{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"im{i}.png")
    return root


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _manifests(cache: Path):
    return sorted(cache.glob("make-points/*/*/manifest.json"))


def test_help_on_every_command():
    res = _invoke("--help")
    assert res.exit_code == 0
    for cmd in main.commands:
        r = _invoke(cmd, "--help")
        assert r.exit_code == 0, cmd
        assert "Usage" in r.output


def test_make_points_caches_and_invalidates(tmp_path, monkeypatch):
    root = _folder_dataset(tmp_path / "data")
    cache = tmp_path / "cache"
    calls = []
    real = pointparse.stages.make_points.make_points

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(pointparse.stages.make_points, "make_points", spy)
    args = ["make-points", "--dataset", "folder", "--root", root, "--cache-dir", cache, "-q", "--workers", "0"]
    r1 = _invoke(*args)
    assert r1.exit_code == 0, r1.output
    assert "wrote artefact" in r1.output and len(calls) == 1
    art = _manifests(cache)[0].parent
    doc = json.loads((art / "points.json").read_text())
    assert len(doc["images"]) == 3 and len(doc["annotations"]) == 9  # ground + 2 things per image

    r2 = _invoke(*args)
    assert "reused cached artefact" in r2.output and len(calls) == 1  # no work on a hit
    listing = _invoke("cache", "--cache-dir", cache).output
    assert "make-points        1 artefact(s)" in listing and "1 remembered dataset fingerprint(s)" in listing
    assert ".file-hashes " not in listing  # the memo is not a stage

    r3 = _invoke(*args, "--seed", "1")  # a changed parameter: new key
    assert "wrote artefact" in r3.output and len(calls) == 2 and len(_manifests(cache)) == 2

    m = root / "masks" / "im0.png"
    st = m.stat()
    os.utime(m, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # a touched mask: same bytes, same key
    assert "reused cached artefact" in _invoke(*args).output and len(calls) == 2
    r = _invoke(*args, "--stat-hash")  # fingerprinted by size+mtime: a key of its own
    assert "wrote artefact" in r.output and len(calls) == 3
    assert "reused cached artefact" in _invoke(*args, "--stat-hash").output
    mask = np.array(Image.open(m))
    mask[0, 0] = 1 - mask[0, 0] if mask[0, 0] in (0, 1) else 0
    Image.fromarray(mask).save(m)  # a changed mask: new key
    r4 = _invoke(*args)
    assert "wrote artefact" in r4.output and len(calls) == 4

    r5 = _invoke(*args, "--force")
    assert "wrote artefact" in r5.output and len(calls) == 5

    # the worker count does not change the output, so it does not change the key either
    r6 = _invoke(*args[:-2], "--workers", "2")
    assert "reused cached artefact" in r6.output and len(calls) == 5


def test_env_var_chooses_cache_root(tmp_path, monkeypatch):
    root = _folder_dataset(tmp_path / "data", n=1)
    monkeypatch.setenv("POINTPARSE_CACHE", str(tmp_path / "envcache"))
    r = _invoke("make-points", "--dataset", "folder", "--root", root, "-q", "--workers", "0")
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "envcache").glob("make-points/*/*/manifest.json"))) == 1


def _break(kind: str, root: Path) -> str:
    """Damage a good dataset in one way; returns a fragment the error must contain."""
    if kind == "missing-folder":
        return str(root / "nope")
    if kind == "no-mask":
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "images" / "extra.png")
        return "extra.png"
    if kind == "size":
        Image.fromarray(np.zeros((16, 32), np.uint8)).save(root / "masks" / "im1.png")
        return "im1.png"
    if kind == "class-id":
        m = np.zeros((32, 32), np.uint8)
        m[0, 0] = 7
        Image.fromarray(m).save(root / "masks" / "im2.png")
        return "im2.png"
    if kind == "corrupt":
        (root / "masks" / "im0.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        return "im0.png"
    if kind == "empty":
        for p in (root / "images").iterdir():
            p.unlink()
        return "empty"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing-folder", "no-mask", "size", "class-id", "corrupt", "empty"])
def test_bad_input_one_clear_error_and_no_artefact(tmp_path, kind):
    root = _folder_dataset(tmp_path / "data")
    fragment = _break(kind, root)
    target = root / "nope" if kind == "missing-folder" else root
    cache = tmp_path / "cache"
    r = CliRunner().invoke(main, ["make-points", "--dataset", "folder", "--root", str(target), "--cache-dir",
                                  str(cache), "-q", "--workers", "0"])
    assert r.exit_code != 0
    assert "Traceback" not in r.output
    assert "Error:" in r.output and fragment in r.output, r.output
    assert _manifests(cache) == []
    leftovers = [p for p in cache.rglob("*") if p.is_dir() and p.name.endswith(".tmp")] if cache.exists() else []
    assert leftovers == []


def test_unknown_dataset_kind_lists_choices(tmp_path):
    r = CliRunner().invoke(main, ["make-points", "--dataset", "nope", "--cache-dir", str(tmp_path)])
    assert r.exit_code != 0
    for k in ("ade20k", "coco", "folder", "pascal-context", "synthetic"):
        assert k in r.output


def test_unknown_click_model_lists_choices(tmp_path):
    root = _folder_dataset(tmp_path / "data", n=1)
    r = CliRunner().invoke(main, ["make-points", "--dataset", "folder", "--root", str(root), "--click", "bogus",
                                  "--cache-dir", str(tmp_path / "c")])
    assert r.exit_code != 0 and "center" in r.output and "annotator" in r.output


def test_cli_defaults_are_the_configs():
    """One place for each default: pseudo-labels' and ablate-extension's hand-written options,
    converted the way their commands convert them, build the configs' own defaults (a field
    default changed in the library must not leave the command line behind)."""
    from pointparse.cli.ablate import _split_list, ablate_extension_cmd
    from pointparse.cli.pseudo import pseudo_labels_cmd
    from pointparse.extension.methods import AblationConfig, AblationTrainConfig
    from pointparse.pseudo_labels import PseudoLabelConfig
    from pointparse.sam.rules import DEFAULT_RULE

    def defaults(cmd):  # what the command's function receives when only the required arguments are given
        return cmd.make_context(cmd.name, ["CKPT", "--points", "PTS"]).params

    d = defaults(pseudo_labels_cmd)
    fields = [f.name for f in dataclasses.fields(PseudoLabelConfig)]
    assert PseudoLabelConfig(**{f: d[f] for f in fields}) == PseudoLabelConfig()

    d = defaults(ablate_extension_cmd)
    assert AblationConfig(methods=_split_list(d["methods"], str, "--methods"),
                          thresholds=_split_list(d["thresholds"], float, "--thresholds"),
                          sam_rule=d["sam_rule"] or DEFAULT_RULE,
                          **{f: d[f] for f in ("region", "kmeans_features", "limit", "examples", "workers", "device",
                                               "sam_checkpoint")}) == AblationConfig()
    assert d["train_points"] is None  # required with --train: the config has no default to match
    assert AblationTrainConfig(split=d["train_split"], points="PTS", workers=d["train_workers"],
                               **{f: d[f] for f in ("epochs", "batch_size", "crop_size", "lr", "init")}
                               ) == AblationTrainConfig(points="PTS")
