"""Issue 24 (reliability, round two), items 1, 2, 5, 11, 12, 13, 14 and 15: hostile values and
files given to the commands. Every bad case must end in one line naming the option or file, a
non-zero exit, no traceback and nothing that looks finished; valid values must keep their exact
values (cache keys do not move). ``benchmarks/reliability_probe.py`` replays the same list through
the installed command in fresh processes."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_cases import cli as _cli
from pointparse.errors import ConfigError


def _folder_dataset(root: Path, names=("im0", "im1", "im2"), size: int = 24) -> Path:
    """Images of ``size``² with one 8×8 square of class 1 each (classes ground, thing)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("0 ground 0:128:0\n1 thing 128:0:0\n")
    for i, name in enumerate(names):
        img = np.full((size, size, 3), 40 * i, np.uint8)
        img[4:12, 4:12] = 200
        mask = np.zeros((size, size), np.uint8)
        mask[4:12, 4:12] = 1
        Image.fromarray(img).save(root / "images" / f"{name}.png")
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    return root


def _one_line_error(res, *expected: str) -> str:
    """The result failed with one error holding every ``expected`` text, and no traceback (a
    pipeline's error lists each of its problems on a line of its own under ``Error:``)."""
    assert res.exit_code not in (0, None), res.output
    assert "Traceback" not in res.output and res.exc_info[0] is SystemExit, res.output
    lines = res.output.strip().splitlines()
    at = [i for i, line in enumerate(lines) if line.startswith("Error:")]
    assert at, res.output
    err = " ".join(lines[at[-1]:])
    for text in expected:
        assert text in err, (text, res.output)
    before = "\n".join(lines[:at[-1]])  # nothing that looks finished
    assert "wrote" not in before and "mIoU" not in before, res.output
    return err


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """A 3-image folder dataset, its clicks, clicks of nothing and one untrained checkpoint."""
    from pointparse.checkpoint import model_checkpoint, save_checkpoint
    from pointparse.datasets import open_dataset
    from pointparse.model import build_model
    from pointparse.train_config import TrainConfig

    tmp = tmp_path_factory.mktemp("inputs")
    root = _folder_dataset(tmp / "data")
    cache = tmp / "cache"
    ds = ["--dataset", "folder", "--root", root]
    for extra in ([], ["--min-area", "100000"]):
        made = _cli("make-points", *ds, "--cache-dir", cache, "-q", "--workers", "0", *extra)
        assert made.exit_code == 0, made.output
    folders = sorted((p.parent for p in cache.glob("make-points/*/*/manifest.json")),
                     key=lambda p: json.loads((p / "manifest.json").read_text())["summary"]["num_points"])
    cfg = TrainConfig(backbone="resnet18", weights="none", epochs=1, crop_size=24, batch_size=2)
    model = build_model(dataclasses.replace(cfg.model_config(2), weights="none"))
    ckpt = tmp / "model.pt"
    save_checkpoint(ckpt, model_checkpoint(model, cfg, open_dataset("folder", root).info, 1))
    return {"root": root, "ds": ds, "cache": cache, "points": folders[1], "no_clicks": folders[0], "ckpt": ckpt,
            "tmp": tmp}


# ------------------------------------------------------------------------------------------------
# item 1: --set and pipeline values are type-checked in one place
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kv", ["epochs=abc", "batch_size=three", "region=abc", "threshold=abc", "epochs=1.5",
                                "seed=abc", "crop_size=64.7", "pdml=banana", "flip=maybe", "lr=[1]"])
def test_item1_set_values_of_the_wrong_type_are_one_line(tmp_path, kv):
    _one_line_error(_cli("train", "--set", kv, "--cache-dir", tmp_path), f"{kv.split('=')[0]} must be")


def test_item1_pipeline_params_are_checked_like_set(tmp_path):
    pipe = tmp_path / "p.yaml"
    pipe.write_text("datasets: {s: {kind: synthetic, options: {size: 32, splits: {train: 2}}}}\nstages:\n"
                    "  pts: {kind: make-points, dataset: s}\n"
                    "  t: {kind: train, dataset: s, points: pts, params: {epochs: abc, pdml: banana}}\n")
    err = _one_line_error(_cli("run", pipe, "--dry-run", "--cache-dir", tmp_path / "c"))
    res = _cli("run", pipe, "--dry-run", "--cache-dir", tmp_path / "c")
    assert "epochs must be an integer, got 'abc'" in res.output, res.output
    assert err


def test_item1_fields_coerce_by_annotation_and_keep_valid_values_exactly():
    from pointparse.fields import coerce
    from pointparse.recipes import RECIPES, expand_recipe
    from pointparse.train_config import TrainConfig

    assert coerce("n", int, 3) == 3 and coerce("n", int, "4") == 4 and coerce("n", int, 2.0) == 2
    assert coerce("x", float, 1) == 1 and type(coerce("x", float, 1)) is int  # an int stays an int: same key
    assert coerce("x", float, "1e-3") == 1e-3 and coerce("o", int | None, None) is None
    assert coerce("b", bool, "no") is False and coerce("b", bool, True) is True
    for tp, bad in ((int, 1.5), (int, "abc"), (int, True), (float, "x"), (float, False), (bool, 1), (bool, "x"),
                    (str, 5), (str, None)):
        with pytest.raises(ConfigError):
            coerce("f", tp, bad)
    for name in RECIPES:  # every recipe's values come back as they were, with their types
        given = expand_recipe({"recipe": name})
        got = dataclasses.asdict(TrainConfig.from_dict({"recipe": name}))
        assert all(got[k] == v and type(got[k]) is type(v) for k, v in given.items()), name
    assert dataclasses.asdict(TrainConfig(**dataclasses.asdict(TrainConfig()))) == dataclasses.asdict(TrainConfig())


# ------------------------------------------------------------------------------------------------
# item 2: bounds on sizes that end in allocator errors
# ------------------------------------------------------------------------------------------------


def test_item2_sizes_beyond_their_bounds_are_one_line(data, tmp_path):
    c = ["--cache-dir", data["cache"]]
    _one_line_error(_cli("train", "--crop-size", "100000", *c), "crop_size", "100000")
    for w in ("-5", "100000", "3"):
        _one_line_error(_cli("evaluate", data["ckpt"], *data["ds"], "--window", w, *c), "window")
    _one_line_error(_cli("predict", data["ckpt"], data["root"] / "images", "--scales", "1e6", "--out",
                         tmp_path / "pred", *c), "scales")
    assert not (tmp_path / "pred").exists() or not any((tmp_path / "pred").iterdir())


# ------------------------------------------------------------------------------------------------
# item 5: other tracebacks
# ------------------------------------------------------------------------------------------------


def test_item5_synthetic_seed_and_pipeline_shapes_are_one_line(tmp_path):
    _one_line_error(_cli("make-points", "--option", "seed=abc", "--cache-dir", tmp_path, "-q"), "seed")
    head = "datasets: {s: {kind: synthetic, options: {size: 32, splits: {train: 2}}}}\nstages:\n"
    for body, text in (("  pts: {kind: make-points, dataset: s}\n  rep: {kind: report, runs: [pts]}\n", "runs"),
                        ("  ? [a, b]\n  : {kind: make-points, dataset: s}\n", "key")):
        (tmp_path / "p.yaml").write_text(head + body)
        _one_line_error(_cli("run", tmp_path / "p.yaml", "--dry-run", "--cache-dir", tmp_path / "c"), "p.yaml")


@pytest.mark.parametrize("coords", [[{"a": 1}], [{"x": 3, "y": 4}], {"a": 1}])
def test_item5_coco_clicks_that_are_not_points_are_one_line(data, tmp_path, coords):
    """A point written as an object of two keys was indexed as ``p[0]``: a KeyError traceback."""
    coco = tmp_path / "clicks.json"
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": "im0.png", "height": 24, "width": 24}],
                                "annotations": [{"image_id": 1, "category_id": 1, "point_coords": coords}],
                                "categories": [{"id": 1, "name": "thing"}]}))
    _one_line_error(_cli("import-clicks", coco, "--format", "coco", *data["ds"], "--cache-dir", tmp_path, "-q"),
                    "clicks.json", "annotations[0]")


@pytest.mark.parametrize("manifest, text", [({}, "'key'"), ({"outputs": {"points.json": 5}}, "points.json"),
                                            ({"key": 5}, "'key'")])
def test_item5_item15_a_points_folder_with_a_broken_manifest_is_one_line(data, tmp_path, manifest, text):
    """A manifest of ``{}`` or with ``outputs: {points.json: 5}`` was a traceback; ``"key": 5``
    (item 15) was put into the train key as it was."""
    copy = tmp_path / "pts"
    shutil.copytree(data["points"], copy)
    m = json.loads((copy / "manifest.json").read_text())
    m = manifest if manifest == {} else {**m, **manifest}
    (copy / "manifest.json").write_text(json.dumps(m))
    _one_line_error(_cli("train", *data["ds"], "--points", copy, "--epochs", "1", "--weights", "none",
                         "--cache-dir", tmp_path / "c", "-q"), "manifest.json", text)
    assert not list((tmp_path / "c").glob("train/*/*"))


# ------------------------------------------------------------------------------------------------
# item 11: zero-click point files in ablate-extension
# ------------------------------------------------------------------------------------------------


def test_item11_ablation_of_clicks_of_nothing_is_refused(data, tmp_path):
    base = ["ablate-extension", data["ckpt"], "--points", data["no_clicks"], *data["ds"], "--split", "train",
            "--methods", "region", "--cache-dir", data["cache"], "-q"]
    _one_line_error(_cli(*base), "no clicks")
    _one_line_error(_cli(*base, "--train", "--train-points", data["no_clicks"], "--epochs", "1", "--crop-size", "24"),
                    "no clicks")
    _one_line_error(_cli(*base[:3], data["points"], *base[4:], "--train", "--train-points", data["no_clicks"],
                         "--epochs", "1", "--crop-size", "24"), "no clicks")
    assert not list(data["cache"].glob("ablate-extension/*/*"))


# ------------------------------------------------------------------------------------------------
# item 12: poisoned checkpoints
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("poison", ["nan_weight", "inf_weight", "std_0", "std_nan", "mean_nan"])
def test_item12_poisoned_checkpoints_are_refused_before_use(data, tmp_path, poison):
    import torch

    ckpt = torch.load(data["ckpt"], map_location="cpu", weights_only=True)
    if poison.endswith("weight"):
        k = next(k for k, v in ckpt["model"].items() if v.is_floating_point() and v.numel() > 1)
        ckpt["model"][k].view(-1)[0] = float("nan") if poison == "nan_weight" else float("inf")
    elif poison.startswith("std"):
        ckpt["normalization"]["std"] = [0.0 if poison == "std_0" else float("nan")] * 3
    else:
        ckpt["normalization"]["mean"][1] = float("nan")
    bad = tmp_path / f"{poison}.pt"
    torch.save(ckpt, bad)
    _one_line_error(_cli("evaluate", bad, *data["ds"], "--cache-dir", tmp_path / "c", "-q"), str(bad))
    _one_line_error(_cli("predict", bad, data["root"] / "images", "--out", tmp_path / "pred", "-q"), str(bad))
    assert not (tmp_path / "pred").exists() or not any((tmp_path / "pred").iterdir())


# ------------------------------------------------------------------------------------------------
# item 13: train --points <import-clicks key>
# ------------------------------------------------------------------------------------------------


def test_item13_train_takes_an_import_clicks_key(data, tmp_path):
    txt = tmp_path / "clicks.txt"
    assert _cli("export-points", data["points"], "--format", "text", "--out", txt).exit_code == 0
    cache = tmp_path / "c"
    imp = _cli("import-clicks", txt, "--format", "text", *data["ds"], "--cache-dir", cache, "-q")
    assert imp.exit_code == 0, imp.output
    key = next(cache.glob("import-clicks/*/*/manifest.json")).parent.name
    res = _cli("train", *data["ds"], "--points", key[:12], "--epochs", "1", "--batch-size", "2", "--crop-size", "24",
               "--weights", "none", "--backbone", "resnet18", "--workers", "0", "--device", "cpu",
               "--cache-dir", cache, "-q")
    assert res.exit_code == 0, res.output


# ------------------------------------------------------------------------------------------------
# item 14: text exports of names the text format cannot hold
# ------------------------------------------------------------------------------------------------


def test_item14_text_export_refuses_names_it_cannot_round_trip(tmp_path):
    root = _folder_dataset(tmp_path / "odd", names=("a b", "#c", "d"))
    cache = tmp_path / "c"
    assert _cli("make-points", "--dataset", "folder", "--root", root, "--cache-dir", cache, "-q",
                "--workers", "0").exit_code == 0
    points = next(cache.glob("make-points/*/*/manifest.json")).parent
    err = _one_line_error(_cli("export-points", points, "--format", "text", "--out", tmp_path / "o.txt"),
                          "points.json", "'a b'", "'#c'")
    assert "coco" in err and not (tmp_path / "o.txt").exists()
    ok = _cli("export-points", points, "--format", "coco", "--out", tmp_path / "o.json")  # another format keeps them
    assert ok.exit_code == 0, ok.output


# ------------------------------------------------------------------------------------------------
# item 15: minor silent accepts
# ------------------------------------------------------------------------------------------------


def test_item15_negative_counts_are_one_line(tmp_path):
    _one_line_error(_cli("train", "--log-every", "-1", "--cache-dir", tmp_path), "log_every")
    _one_line_error(_cli("train", "--extension-start-epoch", "-3", "--cache-dir", tmp_path), "extension_start_epoch")


@pytest.mark.parametrize("damage, text", [("bool", "point_coords"), ("palette", "palette has 1 colours for 2")])
def test_item15_points_json_with_boolean_clicks_or_a_short_palette(data, tmp_path, damage, text):
    doc = json.loads((data["points"] / "points.json").read_text())
    if damage == "bool":
        doc["annotations"][0]["point_coords"] = [[True, False]]
    else:
        doc["info"]["palette"] = doc["info"]["palette"][:1]
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "points.json").write_text(json.dumps(doc))
    _one_line_error(_cli("export-points", tmp_path / "p", "--format", "text", "--out", tmp_path / "o.txt"),
                    "points.json", text)


def test_item15_pipeline_duplicate_stage_and_unknown_only(tmp_path):
    head = "datasets: {s: {kind: synthetic, options: {size: 32, splits: {train: 2, val: 2}}}}\nstages:\n"
    (tmp_path / "dup.yaml").write_text(head + "  a: {kind: make-points, dataset: s}\n"
                                              "  a: {kind: make-points, dataset: s, split: val}\n")
    _one_line_error(_cli("run", tmp_path / "dup.yaml", "--dry-run", "--cache-dir", tmp_path / "c"), "duplicate key 'a'")
    (tmp_path / "one.yaml").write_text(head + "  a: {kind: make-points, dataset: s}\n")
    _one_line_error(_cli("run", tmp_path / "one.yaml", "--only", "nosuch", "--dry-run", "--cache-dir", tmp_path / "c"),
                    "nosuch")
    ok = _cli("run", tmp_path / "one.yaml", "--only", "a", "--dry-run", "--cache-dir", tmp_path / "c")
    assert ok.exit_code == 0 and "will run" in ok.output, ok.output


def test_item15_single_file_export_does_not_overwrite_without_force(data, tmp_path):
    (tmp_path / "notes").mkdir()
    thesis = tmp_path / "notes" / "thesis.tex"
    thesis.write_text("\\chapter{mine}\n")
    _one_line_error(_cli("export-points", data["points"], "--format", "text", "--out", thesis), "thesis.tex", "--force")
    assert thesis.read_text() == "\\chapter{mine}\n"
    forced = _cli("export-points", data["points"], "--format", "text", "--out", thesis, "--force")
    assert forced.exit_code == 0 and thesis.read_text().startswith("im0 "), forced.output
