"""Human clicks: every import format, validation errors, round trips, the stage and training on them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import pointparse.cli.main  # noqa: F401  (the group first: the command modules import from it)
from pointparse.cache import StageCache
from pointparse.cli.clicks import export_points_cmd, import_clicks_cmd
from pointparse.clicks import CLICK_FORMATS, export_points, import_clicks, pixel_index
from pointparse.datasets import open_dataset
from pointparse.errors import ConfigError, DataError
from pointparse.images import read_label
from pointparse.io import read_json
from pointparse.dataspec import DatasetSpec, open_spec
from pointparse.points import load_points
from pointparse.simulate import MakePointsConfig, make_points
from pointparse.stages.import_clicks import ImportClicksConfig, run_import_clicks
from pointparse.stages.train import run_train
from pointparse.train_config import TrainConfig

CLASSES = "0 ground 0:128:0\n1 thing 128:0:0\n2 sky 0:0:128\n"
SIZES = {"im0": (32, 40), "im1": (24, 24), "im2": (40, 32)}  # name -> (height, width)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A flat folder dataset: three images of different sizes, masks with two instances each."""
    root = tmp_path_factory.mktemp("ds")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    (root / "classes.txt").write_text(CLASSES)
    rng = np.random.default_rng(0)
    for name, (h, w) in SIZES.items():
        mask = np.zeros((h, w), np.uint8)
        mask[: h // 3] = 2
        mask[h // 2: h // 2 + 6, 4:12] = 1
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    return root


@pytest.fixture(scope="module")
def ds(root):
    return open_dataset("folder", root, split="train")


def _text_file(path: Path) -> Path:
    # edges included: (0, 0) and the far corner of each image; im1 has no clicks
    path.write_text("# name cls,y,x ...\n"
                    "im0 2,0,0 1,17,5 0,31,39\n"
                    "images/im2.png 0,39,31 2,3,30 1,21,6 1,22,7\n"
                    "\n")
    return path


def _import(path, fmt, ds, out: Path, class_map=None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    import_clicks(path, fmt, ds, class_map, out)
    return out


def _clicks(points_dir) -> dict:
    ps = load_points(points_dir)
    return {n: (ps.image_sizes[n], [tuple(int(v) for v in (*xy, c)) for xy, c in zip(*ps.points(n))])
            for n in ps.names}


def _sorted(d: dict) -> dict:
    return {n: (size, sorted(c)) for n, (size, c) in d.items()}


def test_pixel_index_convention():
    assert pixel_index(0.0) == 0 and pixel_index(3.99) == 3 and pixel_index(4) == 4
    assert pixel_index(40.0, 40) == 39  # the far edge belongs to the last pixel
    assert pixel_index(40.01, 40) == 40  # beyond it is outside (validation reports it)
    for bad in (float("nan"), "3", None, True):
        with pytest.raises(ValueError):
            pixel_index(bad)


def test_text_import_writes_a_human_points_artefact(ds, tmp_path):
    out = _import(_text_file(tmp_path / "clicks.txt"), "text", ds, tmp_path / "a")
    got = _clicks(out)
    assert got == {"im0": ((32, 40), [(0, 0, 2), (5, 17, 1), (39, 31, 0)]),
                   "im1": ((24, 24), []),
                   "im2": ((40, 32), [(31, 39, 0), (30, 3, 2), (6, 21, 1), (7, 22, 1)])}
    doc = read_json(out / "points.json")
    assert doc["info"]["source"] == "human" and doc["info"]["format"] == "text"
    assert {a["source"] for a in doc["annotations"]} == {"human"}
    assert [im["file_name"] for im in doc["images"]] == ["images/im0.png", "images/im1.png", "images/im2.png"]
    stats = read_json(out / "stats.json")
    assert stats["num_points"] == 7 and stats["images_without_points_names"] == ["im1"]
    assert stats["points_per_class"] == {"ground": 2, "thing": 3, "sky": 2}
    csv = (out / "points.csv").read_text().splitlines()
    assert csv[0] == "image,x,y,class_id,class_name,instance_area,source" and len(csv) == 8


@pytest.mark.parametrize("fmt", sorted(CLICK_FORMATS))
@pytest.mark.parametrize("source", ["human", "simulated"])
def test_round_trip_every_format(fmt, source, ds, tmp_path):
    if source == "human":
        original = _import(_text_file(tmp_path / "clicks.txt"), "text", ds, tmp_path / "a")
    else:
        original = tmp_path / "a"
        original.mkdir()
        make_points(ds, MakePointsConfig(workers=0, min_area=4), original, progress=False)
    exported = tmp_path / ("exported" if CLICK_FORMATS[fmt].folder else f"exported.{fmt}")
    export_points(original, fmt, exported)
    back = _import(exported, fmt, ds, tmp_path / "b")
    a, b = _clicks(original), _clicks(back)
    assert sum(len(c) for _, c in a.values()) >= 6
    if fmt == "sparse-png":  # a label map has no click order: raster order comes back
        a, b = _sorted(a), _sorted(b)
    assert b == a


def test_sparse_png_export_is_a_palette_label_map(ds, tmp_path):
    original = _import(_text_file(tmp_path / "clicks.txt"), "text", ds, tmp_path / "a")
    export_points(original, "sparse-png", tmp_path / "sparse")
    img = Image.open(tmp_path / "sparse" / "im0.png")
    assert img.mode == "P" and img.size == (40, 32)
    lab = read_label(tmp_path / "sparse" / "im0.png")
    assert (lab != 255).sum() == 3 and lab[17, 5] == 1 and lab[31, 39] == 0
    assert img.getpalette()[3:6] == [128, 0, 0]  # class 1 "thing"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not an earlier output of export-points"):
        export_points(original, "sparse-png", tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_sparse_png_export_never_replaces_a_folder_it_did_not_write(ds, tmp_path):
    """A folder of someone's own PNGs is refused; an earlier export is replaced (issue 15, item 2)."""
    original = _import(_text_file(tmp_path / "clicks.txt"), "text", ds, tmp_path / "a")
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(photos / "holiday.png")
    with pytest.raises(DataError, match="not an earlier output"):
        export_points(original, "sparse-png", photos)
    assert sorted(p.name for p in photos.iterdir()) == ["holiday.png"]
    export_points(original, "sparse-png", tmp_path / "sparse")
    export_points(original, "sparse-png", tmp_path / "sparse")  # an earlier export: replaced
    assert (tmp_path / "sparse" / "im0.png").is_file()


def test_label_studio_real_export_shape(ds, tmp_path):
    """Percent coordinates, upload-prefixed names, cancelled annotations, other result types."""
    tasks = [
        {"id": 7, "data": {"image": "/data/upload/3/1a2b3c4d-im0.png"},
         "annotations": [
             {"id": 1, "was_cancelled": False, "result": [
                 {"id": "a", "type": "keypointlabels", "from_name": "kp", "to_name": "image",
                  "original_width": 40, "original_height": 32, "image_rotation": 0,
                  "value": {"x": 13.75, "y": 50.0, "width": 0.6, "keypointlabels": ["thing"]}},
                 {"id": "b", "type": "keypointlabels", "original_width": 40, "original_height": 32,
                  "value": {"x": 100.0, "y": 100.0, "keypointlabels": ["sky"]}},
                 {"id": "c", "type": "rectanglelabels", "original_width": 40, "original_height": 32,
                  "value": {"x": 1, "y": 1, "width": 5, "height": 5, "rectanglelabels": ["thing"]}}]},
             {"id": 2, "was_cancelled": True, "result": [
                 {"id": "d", "type": "keypointlabels", "original_width": 40, "original_height": 32,
                  "value": {"x": 50, "y": 50, "keypointlabels": ["ground"]}}]}],
         "predictions": [{"result": [{"type": "keypointlabels", "original_width": 40, "original_height": 32,
                                      "value": {"x": 1, "y": 1, "keypointlabels": ["ground"]}}]}]},
        {"id": 8, "data": {"image": "http://host/data/local-files/?d=images/im2.png"},
         "annotations": [{"id": 3, "result": [
             {"id": "e", "type": "keypointlabels", "original_width": 32, "original_height": 40,
              "value": {"x": 0.0, "y": 2.5, "keypointlabels": ["ground"]}}]}]},
    ]
    f = tmp_path / "ls.json"
    f.write_text(json.dumps(tasks))
    got = _clicks(_import(f, "label-studio", ds, tmp_path / "a"))
    # 13.75 % of 40 = 5.5 -> pixel 5; 50 % of 32 = 16; 100 % -> last pixel; 2.5 % of 40 = 1.0 -> 1
    assert got["im0"][1] == [(5, 16, 1), (39, 31, 2)]
    assert got["im2"][1] == [(0, 1, 0)]
    assert got["im1"][1] == []


def test_cvat_points_and_other_shapes(ds, tmp_path):
    f = tmp_path / "annotations.xml"
    f.write_text("""<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta><task><name>t</name></task></meta>
  <image id="0" name="frames/im1.png" width="24" height="24">
    <points label="thing" occluded="0" source="manual" points="10.50,3.20;4.99,7.00" z_order="0"/>
    <box label="thing" occluded="0" xtl="1" ytl="1" xbr="5" ybr="5" z_order="0"/>
    <points label="sky" points="24.00,0.00"/>
  </image>
</annotations>""")
    got = _clicks(_import(f, "cvat", ds, tmp_path / "a"))
    assert got["im1"][1] == [(10, 3, 1), (4, 7, 1), (23, 0, 2)]


def test_coco_pointsup_categories_negatives_and_floats(ds, tmp_path):
    doc = {"images": [{"id": 5, "file_name": "im0.jpg", "height": 32, "width": 40}],
           "categories": [{"id": 1, "name": "Ground"}, {"id": 2, "name": "thing"}],
           "annotations": [
               {"id": 1, "image_id": 5, "category_id": 2, "point_coords": [[3.7, 20.2], [9, 9]],
                "point_labels": [1, 0]},
               {"id": 2, "image_id": 5, "category_id": 1, "point_coords": [[0, 31]]}]}
    f = tmp_path / "coco.json"
    f.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"'Ground' \(1 click\)"):
        _import(f, "coco", ds, tmp_path / "x")
    got = _clicks(_import(f, "coco", ds, tmp_path / "a", class_map={"Ground": "ground"}))
    assert got["im0"][1] == [(3, 20, 1), (0, 31, 0)]  # the negative point (label 0) is no click


def test_wtp_with_class_map_file(ds, tmp_path):
    f = tmp_path / "wtp.json"
    f.write_text(json.dumps({"im2": [{"x": 6, "y": 21, "cls": 15, "rank": 1},
                                     {"x": 1, "y": 1, "cls": 0, "rank": 2},
                                     {"x": 2, "y": 2, "cls": 99, "rank": 3}]}))
    cmap = tmp_path / "map.yaml"
    cmap.write_text("15: thing\n99: null   # 'unsure' clicks are dropped\n")
    got = _clicks(_import(f, "wtp", ds, tmp_path / "a", class_map=cmap))
    assert got["im2"][1] == [(6, 21, 1), (1, 1, 0)]
    bad = tmp_path / "bad.yaml"
    bad.write_text("15: person\n")
    with pytest.raises(DataError, match=r"bad\.yaml.*'15' -> 'person'.*classes: ground, thing, sky"):
        _import(f, "wtp", ds, tmp_path / "b", class_map=bad)


def test_every_invalid_click_in_one_error_and_nothing_written(ds, tmp_path):
    f = tmp_path / "clicks.txt"
    f.write_text("im0 1,5,5 1,32,0 0,0,40\n"      # y=32 and x=40 lie outside the 40x32 image
                 "im9 1,1,1\n"                     # no such image
                 "im1 1,3 2,1,1\n")                # malformed token
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DataError) as err:
        import_clicks(f, "text", ds, None, out)
    msg = str(err.value)
    assert msg.startswith(str(f)) and "4 invalid click entries" in msg
    assert "line 1: click at pixel x=0, y=32 lies outside image 'im0' (40x32)" in msg
    assert "line 1: click at pixel x=40, y=0 lies outside" in msg and msg.count("outside") == 2
    assert "'im9' is not in" in msg and "line 3: expected cls,y,x, got '1,3'" in msg
    assert not any(out.iterdir())


def test_unmapped_labels_listed_once_and_long_lists_capped(ds, tmp_path):
    f = tmp_path / "clicks.txt"
    f.write_text("im0 car,1,1 car,2,2 tree,3,3 7,4,4 thing,5,5\n")
    with pytest.raises(DataError) as err:
        import_clicks(f, "text", ds, None, tmp_path)
    msg = str(err.value)
    assert "'car' (2 clicks)" in msg and "'tree' (1 click)" in msg and "7 (1 click)" in msg
    assert "'thing'" not in msg.split("classes:")[0]
    many = tmp_path / "many.txt"
    many.write_text("im1 " + " ".join(f"0,{30 + k},0" for k in range(30)) + "\n")
    with pytest.raises(DataError, match=r"(?s)30 invalid click entries.*\.\.\. and 10 more"):
        import_clicks(many, "text", ds, None, tmp_path)


def test_size_in_file_must_match_the_dataset(ds, tmp_path):
    f = tmp_path / "a.xml"
    f.write_text('<annotations><image name="im0.png" width="80" height="64">'
                 '<points label="thing" points="1,1"/></image></annotations>')
    with pytest.raises(DataError, match="gives image 'im0' as 80x64 but the dataset image is 40x32"):
        import_clicks(f, "cvat", ds, None, tmp_path)


def test_malformed_files_and_unknown_format(ds, tmp_path):
    f = tmp_path / "x.json"
    f.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        import_clicks(f, "wtp", ds, None, tmp_path)
    f.write_text("<annotations>")
    with pytest.raises(DataError, match="not valid XML"):
        import_clicks(f, "cvat", ds, None, tmp_path)
    with pytest.raises(ConfigError, match="valid choices: coco, cvat, label-studio, sparse-png, text, wtp"):
        import_clicks(f, "yolo", ds, None, tmp_path)
    with pytest.raises(DataError, match="reads a file, not a folder"):
        import_clicks(tmp_path, "text", ds, None, tmp_path)


def test_import_clicks_params_reject_an_unknown_format():
    """A pipeline stage's params are checked before any work, with one error naming every format."""
    with pytest.raises(ConfigError, match=r"^unknown click format 'yolo'; valid choices: coco, cvat, label-studio, "
                                          r"sparse-png, text, wtp$"):
        ImportClicksConfig("yolo")
    with pytest.raises(ConfigError, match="class_map must be a mapping"):
        ImportClicksConfig("text", class_map=["a"])
    assert ImportClicksConfig("text", {"Car": "car"}).class_map == {"Car": "car"}


def test_stage_caches_on_content_and_class_map(root, tmp_path):
    cache = StageCache(tmp_path / "cache")
    spec = DatasetSpec(kind="folder", root=str(root), split="train")
    f = _text_file(tmp_path / "clicks.txt")
    first = run_import_clicks(f, "text", spec, cache, progress=False)
    assert not first.cached and first.path.parent.parent.name == "import-clicks"
    assert first.manifest["summary"] == {"num_images": 3, "num_points": 7}
    copy = tmp_path / "renamed.txt"
    copy.write_bytes(f.read_bytes())
    again = run_import_clicks(copy, "text", spec, cache, progress=False)
    assert again.cached and again.key == first.key  # same bytes, same key
    mapped = run_import_clicks(f, "text", spec, cache, class_map={"1": "sky"}, progress=False)
    assert mapped.key != first.key and _clicks(mapped.path)["im0"][1][1] == (5, 17, 2)
    f.write_text(f.read_text().replace("1,17,5", "1,17,6"))
    changed = run_import_clicks(f, "text", spec, cache, progress=False)
    assert changed.key != first.key and _clicks(changed.path)["im0"][1][1] == (6, 17, 1)
    assert cache.find(first.path) == first.path


def test_cli_import_and_export(root, tmp_path):
    f = _text_file(tmp_path / "clicks.txt")
    cache = tmp_path / "cache"
    runner = CliRunner()
    res = runner.invoke(import_clicks_cmd, [str(f), "--format", "text", "--dataset", "folder", "--root", str(root),
                                            "--cache-dir", str(cache), "-q"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "7 clicks" in res.output
    key = next(cache.glob("import-clicks/*/*/manifest.json")).parent.name
    out = tmp_path / "ls.json"
    res = runner.invoke(export_points_cmd, [key[:10], "--format", "label-studio", "--out", str(out),
                                            "--cache-dir", str(cache)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert len(json.loads(out.read_text())) == 3
    bad = tmp_path / "bad.txt"
    bad.write_text("nope 1,1,1\n")
    res = runner.invoke(import_clicks_cmd, [str(bad), "--format", "text", "--dataset", "folder", "--root", str(root),
                                            "--cache-dir", str(cache), "-q"], catch_exceptions=False)
    assert res.exit_code == 1 and "'nope' is not in" in res.output and "Traceback" not in res.output
    res = runner.invoke(import_clicks_cmd, [str(bad), "--format", "yolo", "--root", str(root)])
    assert res.exit_code == 2 and "label-studio" in res.output


def test_training_on_imported_clicks(tmp_path):
    """One epoch of PDML training from a click file, exactly as from simulated points."""
    torch.set_num_threads(1)
    cache = StageCache(tmp_path / "cache")
    spec = DatasetSpec(kind="synthetic", split="train", options={"seed": 3, "size": 64, "splits": {"train": 4}})
    ds = open_spec(spec, cache)
    rng = np.random.default_rng(1)
    lines = []
    for i, name in enumerate(ds.names):  # an "annotator" clicking six pixels of each image
        mask = ds.load_mask(i)
        ys, xs = rng.integers(0, mask.shape[0], 6), rng.integers(0, mask.shape[1], 6)
        lines.append(f"{name} " + " ".join(f"{ds.info.classes[mask[y, x]]},{y},{x}" for y, x in zip(ys, xs)))
    f = tmp_path / "clicks.txt"
    f.write_text("\n".join(lines) + "\n")
    imported = run_import_clicks(f, "text", spec, cache, progress=False)
    cfg = TrainConfig(weights="none", epochs=1, batch_size=4, crop_size=48, workers=0, log_every=1)
    res = run_train(spec, cfg, cache, points=imported.path, progress=False)
    assert (res.path / "model.pt").is_file()
    row = json.loads((res.path / "epochs.jsonl").read_text().splitlines()[0])
    assert np.isfinite(row["loss"]) and row["triples_per_step"] > 0
    assert res.manifest["inputs"]["points"] == imported.key


@pytest.mark.parametrize("evil", ["../../escaped", "/tmp/pointparse-escaped-abs", "..", "a/b"])
def test_sparse_png_export_refuses_names_that_leave_the_folder(ds, tmp_path, evil):
    """A crafted image name in points.json never becomes a path outside --out (issue 15, item 3)."""
    original = _import(_text_file(tmp_path / "clicks.txt"), "text", ds, tmp_path / "a")
    doc = json.loads((original / "points.json").read_text())
    doc["images"][0]["name"] = evil
    doc["images"][0]["file_name"] = evil + ".png"
    (original / "points.json").write_text(json.dumps(doc))
    out = tmp_path / "deep" / "er" / "out"
    out.parent.mkdir(parents=True)
    before = set(tmp_path.rglob("*"))
    res = CliRunner().invoke(export_points_cmd, [str(original), "--format", "sparse-png", "--out", str(out)])
    assert res.exit_code != 0 and "not a plain file name" in res.output and "Traceback" not in res.output
    assert set(tmp_path.rglob("*")) == before and not Path("/tmp/pointparse-escaped-abs.png").exists()


def test_safe_name_accepts_plain_names_only():
    from pointparse.io import safe_name

    assert safe_name("2008_000002", "x.json") == "2008_000002" and safe_name("a..b c", "x") == "a..b c"
    for bad in ("", ".", "..", "../x", "a/b", "a\\b", "/abs", "a\0b"):
        with pytest.raises(DataError, match="not a plain file name"):
            safe_name(bad, "x.json")


def test_label_studio_value_not_an_object_is_listed(ds, tmp_path):
    """``"value": [1, 2]`` is one listed entry in the one error, not an AttributeError (issue 15, item 7)."""
    tasks = [{"id": 7, "data": {"image": "im0.png"}, "annotations": [{"result": [
        {"type": "keypointlabels", "original_width": 40, "original_height": 32, "value": [1, 2]},
        {"type": "keypointlabels", "original_width": 40, "original_height": 32, "value": "x"}]}]}]
    f = tmp_path / "ls.json"
    f.write_text(json.dumps(tasks))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DataError) as err:
        import_clicks(f, "label-studio", ds, None, out)
    msg = str(err.value)
    assert msg.startswith(str(f)) and "2 invalid click entries" in msg
    assert "task 7 annotation 0 result 0: 'value' must be an object with x, y and keypointlabels, got [1, 2]" in msg
    assert not any(out.iterdir())


def test_a_click_file_without_clicks_is_refused(ds, root, tmp_path):
    """0 clicks (an empty file, or every label mapped to null) is one error, no artefact (issue 15, item 8)."""
    f = tmp_path / "empty.txt"
    f.write_text("# nothing clicked yet\n")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DataError, match=r"empty.txt: no clicks to import \(text\): nothing to train on"):
        import_clicks(f, "text", ds, None, out)
    dropped = tmp_path / "dropped.txt"
    dropped.write_text("im0 thing,1,1 thing,2,2\n")
    with pytest.raises(DataError, match="the class map drops all 2 read"):
        import_clicks(dropped, "text", ds, {"thing": None}, out)
    assert not any(out.iterdir())
    res = CliRunner().invoke(import_clicks_cmd, [str(f), "--format", "text", "--dataset", "folder",
                                                 "--root", str(root), "--cache-dir", str(tmp_path / "c")])
    assert res.exit_code == 1 and "no clicks to import" in res.output and "Traceback" not in res.output, res.output
    assert not list((tmp_path / "c").glob("import-clicks/*/*/manifest.json"))
