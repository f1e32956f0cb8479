"""make-points: instances, click models, the COCO-style artefact, stats, workers and loading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from pointparse import IGNORE_INDEX
from pointparse.datasets import FolderDataset, Instances
from pointparse.errors import ConfigError, DataError
from pointparse.images import read_label, write_image, write_label_png
from pointparse.instances import _contour_depths, find_instances
from pointparse.points import load_points, point_label_map
from pointparse.simulate import CLICK_MODELS, MakePointsConfig, image_rng, make_points, simulate_clicks
from pointparse.synthetic import STUFF_CLASSES, SyntheticConfig, generate_scenes, render_scene
from pointparse.synthetic import image_rng as scene_rng

EIGHT = np.ones((3, 3), bool)  # 8-connectivity structure for the independent reference


def _folder(root: Path, masks: dict[str, np.ndarray], instances: dict[str, np.ndarray] | None = None,
            classes=("a", "b", "c")) -> FolderDataset:
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(f"{i} {n} {i * 40}:{i * 20}:{200 - i * 30}\n" for i, n in enumerate(classes)))
    for name, mask in masks.items():
        write_image(root / "images" / "train" / f"{name}.png", np.zeros(mask.shape + (3,), np.uint8))
        write_label_png(root / "masks" / "train" / f"{name}.png", mask)
        if instances is not None:
            p = root / "instances" / "train" / f"{name}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(instances[name].astype(np.uint16)).save(p)
    return FolderDataset(root, "train")


def _scenes(tmp_path: Path, n: int = 8, keep_instances: bool = True) -> FolderDataset:
    root = generate_scenes(tmp_path / "scenes", SyntheticConfig(seed=5, size=(64, 80), splits={"train": n}, instances=(2, 6)))
    if not keep_instances:
        import shutil
        shutil.rmtree(root / "instances")
    return FolderDataset(root, "train")


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -- instances --------------------------------------------------------------------------------


def test_connected_components_are_8_connected():
    mask = np.full((8, 8), IGNORE_INDEX, np.uint8)
    mask[0:2, 0:2] = 0
    mask[2:4, 2:4] = 0  # touches the first block only diagonally
    mask[6:8, 6:8] = 0
    found = find_instances(mask, None, min_area=1)
    assert sorted(found.areas.tolist()) == [4, 8]
    assert (found.classes == 0).all()
    # The diagonal pair is one instance whose crop covers both blocks.
    big = int(np.argmax(found.areas))
    assert found.boxes[big].tolist() == [0, 0, 4, 4]
    assert found.crops[big].sum() == 8


def _scipy_components(mask: np.ndarray, min_area: int) -> list[tuple]:
    """(class, box, area, crop bytes) per 8-connected component, from scipy.ndimage.label."""
    out = []
    for c in np.unique(mask[mask != IGNORE_INDEX]).tolist():
        lab, _ = ndimage.label(mask == c, structure=EIGHT)
        for j, sl in enumerate(ndimage.find_objects(lab), 1):
            crop = lab[sl] == j
            if crop.sum() >= min_area:
                out.append((c, (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop), int(crop.sum()), crop.tobytes()))
    return sorted(out)


@pytest.mark.parametrize("kind", ["noise", "blobs", "rings"])
def test_components_match_scipy_labelling(kind):
    """Components come from contours: nested islands, touching boxes and diagonal contacts included."""
    rng = np.random.default_rng({"noise": 0, "blobs": 1, "rings": 2}[kind])
    for trial in range(60):
        h, w = (int(v) for v in rng.integers(1, 48, 2))
        if kind == "noise":  # deep nesting: islands in holes in islands, many components per class
            mask = rng.integers(0, 3, (h, w)).astype(np.uint8)
        elif kind == "blobs":
            small = rng.integers(0, 4, (max(1, h // 5), max(1, w // 5))).astype(np.uint8)
            mask = np.kron(small, np.ones((5, 5), np.uint8))[:h, :w]
            mask = np.pad(mask, ((0, h - mask.shape[0]), (0, w - mask.shape[1])), mode="edge")
        else:  # concentric squares alternating between two classes
            yy, xx = np.mgrid[:h, :w]
            ring = np.minimum(np.minimum(yy, xx), np.minimum(h - 1 - yy, w - 1 - xx))
            mask = ((ring // int(rng.integers(1, 4))) % 2).astype(np.uint8)
        mask[rng.random((h, w)) < 0.05] = IGNORE_INDEX
        for min_area in (1, 4):
            found = find_instances(mask, None, min_area=min_area)
            got = sorted((int(c), tuple(int(v) for v in b), int(a), crop.tobytes())
                         for c, b, a, crop in zip(found.classes, found.boxes, found.areas, found.crops))
            assert got == _scipy_components(mask, min_area), (kind, trial, min_area)


def test_contour_depths_of_forests_and_deep_chains():
    # two trees: 0 <- 1 <- 2 and 3 <- 4, 3 <- 5 <- 6 <- 7
    parents = np.array([-1, 0, 1, -1, 3, 3, 5, 6])
    assert _contour_depths(parents).tolist() == [0, 1, 2, 0, 1, 1, 2, 3]
    # a chain 10,000 deep given in scrambled order (concentric rings of a noisy mask)
    rng = np.random.default_rng(0)
    order = rng.permutation(10_000)  # order[k] = the contour at depth k
    chain = np.empty(10_000, np.int64)
    chain[order[0]] = -1
    chain[order[1:]] = order[:-1]
    expected = np.empty(10_000, np.int64)
    expected[order] = np.arange(10_000)
    assert (_contour_depths(chain) == expected).all()
    assert _contour_depths(np.zeros(0, np.int64)).tolist() == []


def test_min_area_gives_one_click_per_large_instance_and_none_below():
    mask = np.full((20, 20), IGNORE_INDEX, np.uint8)
    mask[0:3, 0:5] = 1    # 15 px
    mask[6:10, 0:4] = 1   # 16 px
    mask[12:16, 0:4] = 1  # 17 px with the next pixel
    mask[16, 0] = 1
    mask[0:4, 10:14] = 2  # 16 px of another class
    xy, classes, areas, boxes = simulate_clicks(mask, None, "center", min_area=16)
    assert sorted(zip(classes.tolist(), areas.tolist())) == [(1, 16), (1, 17), (2, 16)]
    assert (mask[xy[:, 1], xy[:, 0]] == classes).all()
    xy15, _, areas15, _ = simulate_clicks(mask, None, "center", min_area=15)
    assert sorted(areas15.tolist()) == [15, 16, 16, 17]


def test_instance_map_majority_class_ignore_and_stuff_fallback():
    mask = np.zeros((6, 8), np.uint8)          # class 0 stuff everywhere ...
    inst = np.zeros((6, 8), np.int32)
    inst[0:3, 0:5] = 7                          # ... except instance 7 (15 px):
    mask[0:3, 0:2] = 2                          # 6 px of class 2
    mask[0:2, 2:4] = 1                          # 4 px of class 1
    mask[2, 2:5] = IGNORE_INDEX                 # 3 px ignore
    mask[0:2, 4] = IGNORE_INDEX                 # 2 px ignore
    inst[4:6, 6:8] = 9                          # instance 9: a 2-2 tie between classes 1 and 2
    mask[4:6, 6] = 2
    mask[4:6, 7] = 1
    found = find_instances(mask, inst, min_area=1)
    assert found.classes.tolist() == [2, 1, 0]  # id 7, id 9 (tie -> lower id), stuff component
    assert found.areas.tolist() == [6, 2, 48 - 15 - 4]
    xy, classes, _, _ = simulate_clicks(mask, inst, "center", min_area=1)
    x, y = xy[0]
    assert inst[y, x] == 7 and mask[y, x] == 2
    x, y = xy[2]
    assert inst[y, x] == 0 and mask[y, x] == 0
    # The class-1 pixels under instance 7 belong to no instance: never clicked, not stuff.
    assert not any(inst[y, x] == 7 and mask[y, x] == 1 for x, y in xy)


def _reference_instances(mask, inst, min_area):
    """Independent reference: key -> (class, pixel count), with scipy's 8-connected labelling."""
    ref, keymap = {}, {}
    leftover = mask.copy()
    if inst is not None:
        for k in np.unique(inst[inst > 0]):
            sel = (inst == k) & (mask != IGNORE_INDEX)
            classes, counts = np.unique(mask[sel], return_counts=True)
            c = int(classes[np.argmax(counts)])
            if counts.max() >= min_area:
                ref[("id", int(k))] = c
        leftover = np.where(inst == 0, mask, IGNORE_INDEX)
    for c in np.unique(leftover[leftover != IGNORE_INDEX]):
        lab, n = ndimage.label(leftover == c, structure=EIGHT)
        sizes = np.bincount(lab.ravel())
        keymap[int(c)] = lab
        for j in range(1, n + 1):
            if sizes[j] >= min_area:
                ref[("cc", int(c), j)] = int(c)
    return ref, keymap


@pytest.mark.parametrize("click", sorted(CLICK_MODELS))
@pytest.mark.parametrize("with_instances", [True, False])
def test_each_instance_gets_exactly_one_click_inside_it(click, with_instances):
    for i in range(6):
        rng = scene_rng(11, "t", i)
        _, mask, inst = render_scene(rng, 72, 88, 6)
        inst = inst.astype(np.int32) if with_instances else None
        xy, classes, areas, _ = simulate_clicks(mask, inst, click, min_area=16, rng=image_rng(0, str(i)))
        ref, keymap = _reference_instances(mask, inst, 16)
        keys = []
        for (x, y), c in zip(xy, classes):
            assert mask[y, x] == c, "a click must carry its instance's class"
            if inst is not None and inst[y, x] > 0:
                keys.append(("id", int(inst[y, x])))
            else:
                keys.append(("cc", int(c), int(keymap[int(c)][y, x])))
        assert len(keys) == len(set(keys)), "two clicks on one instance"
        assert dict(zip(keys, classes.tolist())) == ref


def test_center_click_is_the_deepest_pixel_with_border_and_ties():
    mask = np.full((12, 14), IGNORE_INDEX, np.uint8)
    mask[3:8, 2:11] = 0                       # 5 x 9 rectangle: ridge of maxima on row 5
    mask[0:5, 0:3] = 1                        # touches the image corner: the border counts
    xy, classes, _, _ = simulate_clicks(mask, None, "center", min_area=1)
    got = dict(zip(classes.tolist(), map(tuple, xy.tolist())))
    assert got[0] == (6, 5)                   # middle of the ridge, not its left end
    assert got[1] == (1, 2)                   # row 2 of rows 0..4, column 1 of columns 0..2


def test_center_click_on_large_instance_is_deep_and_inside():
    mask = np.full((140, 140), IGNORE_INDEX, np.uint8)
    mask[10:130, 20:120] = 3                  # 120 x 100: takes the coarse-grid path
    mask[60:62, 20:70] = IGNORE_INDEX         # a notch
    xy, _, _, _ = simulate_clicks(mask, None, "center", min_area=1)
    x, y = xy[0]
    assert mask[y, x] == 3
    dist = ndimage.distance_transform_edt(np.pad(mask == 3, 1))[1:-1, 1:-1]
    assert dist[y, x] >= dist.max() - 8


def test_random_and_annotator_clicks_depend_on_the_rng():
    mask = np.zeros((40, 40), np.uint8)
    a = simulate_clicks(mask, None, "random", 16, image_rng(0, "x"))[0]
    b = simulate_clicks(mask, None, "random", 16, image_rng(0, "x"))[0]
    c = simulate_clicks(mask, None, "random", 16, image_rng(1, "x"))[0]
    d = simulate_clicks(mask, None, "random", 16, image_rng(0, "y"))[0]
    assert (a == b).all() and not ((a == c).all() and (a == d).all())
    noisy = {tuple(simulate_clicks(mask, None, "annotator", 16, image_rng(s, "x"))[0][0]) for s in range(8)}
    assert len(noisy) > 1


def test_random_clicks_drawn_in_one_call_equal_one_draw_per_instance():
    """click_instances draws all random clicks of an image at once; that must give the clicks,
    and leave the generator in the state, of one ``random_click`` per instance (numpy's bounded
    integers do this today; this test catches a numpy that stops doing it)."""
    from pointparse.simulate import click_instances, random_click

    gen = np.random.default_rng(4)
    areas = [1, 2, 3, 17, 255, 256, 1000, 65537, 300001]
    crops, boxes = [], []
    for a in areas:
        w = int(gen.integers(1, 700))
        crop = np.zeros((-(-a // w) + 1, w), bool)
        crop.ravel()[np.sort(gen.choice(crop.size, a, replace=False))] = True
        crops.append(crop)
        boxes.append((3, 5, 3 + crop.shape[0], 5 + crop.shape[1]))
    found = Instances(np.arange(len(areas)), np.array(boxes), np.array(areas), crops)
    one, each = np.random.default_rng(9), np.random.default_rng(9)
    xy, *_ = click_instances(found, "random", one)
    ref = [random_click(c, a, each) for c, a in zip(crops, areas)]
    np.testing.assert_array_equal(xy, [(5 + c, 3 + r) for r, c in ref])
    assert one.bit_generator.state == each.bit_generator.state


def test_unknown_click_model_lists_valid_ones():
    with pytest.raises(ConfigError, match="annotator, center, random"):
        MakePointsConfig(click="corner")
    with pytest.raises(ConfigError, match="unknown click model 'corner'"):
        simulate_clicks(np.zeros((4, 4), np.uint8), click="corner")


@pytest.mark.parametrize("kwargs", [dict(min_area=0), dict(workers=-1), dict(min_area=2.5)])
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ConfigError):
        MakePointsConfig(**kwargs)


def test_point_label_map():
    lab = point_label_map(np.array([[1, 2], [3, 0], [1, 2]]), np.array([4, 5, 6]), 3, 5)
    expected = np.full((3, 5), IGNORE_INDEX, np.uint8)
    expected[2, 1] = 6  # the later click on the same pixel wins
    expected[0, 3] = 5
    assert (lab == expected).all() and lab.dtype == np.uint8
    with pytest.raises(ValueError, match="outside"):
        point_label_map(np.array([[5, 0]]), np.array([1]), 3, 5)


# -- the artefact -----------------------------------------------------------------------------


def test_artefact_and_stats_on_a_hand_made_dataset(tmp_path):
    a = np.zeros((6, 8), np.uint8)
    a[:, 4:] = 1                                   # two halves: 2 points, 48 labelled px
    b = np.full((6, 8), IGNORE_INDEX, np.uint8)
    b[1:4, 1:4] = 2                                # one 3x3 block: 1 point, 9 labelled px
    b[5, 7] = 0                                    # 1 px: below min_area, still labelled
    c = np.full((6, 8), IGNORE_INDEX, np.uint8)    # nothing labelled
    ds = _folder(tmp_path / "ds", {"a": a, "b": b, "c": c})
    out = tmp_path / "out"
    out.mkdir()
    stats = make_points(ds, MakePointsConfig(min_area=4, workers=1), out, progress=False)

    assert stats["num_images"] == 3 and stats["num_points"] == 3
    assert stats["points_per_image"] == {"mean": 1.0, "median": 1.0, "min": 0, "max": 2}
    assert stats["labelled_pixels"] == 58
    assert stats["annotated_pixel_ratio"] == pytest.approx(3 / 58)
    assert stats["points_per_class"] == {"a": 1, "b": 1, "c": 1}
    assert stats["images_without_points"] == 1 and stats["images_without_points_names"] == ["c"]
    assert json.loads((out / "stats.json").read_text()) == stats

    doc = json.loads((out / "points.json").read_text())
    assert doc["categories"] == [{"id": 0, "name": "a"}, {"id": 1, "name": "b"}, {"id": 2, "name": "c"}]
    assert doc["images"][0] == {"id": 1, "name": "a", "file_name": "images/train/a.png", "height": 6, "width": 8}
    assert doc["info"]["classes"] == ["a", "b", "c"] and doc["info"]["click"] == "center"
    assert doc["info"]["min_area"] == 4 and doc["info"]["seed"] == 0
    anns = doc["annotations"]
    assert [x["id"] for x in anns] == [1, 2, 3] and [x["image_id"] for x in anns] == [1, 1, 2]
    assert [x["category_id"] for x in anns] == [0, 1, 2]
    for ann in anns:
        assert ann["point_labels"] == [1] and ann["source"] == "simulated" and ann["iscrowd"] == 0
        (x, y), = ann["point_coords"]
        bx, by, bw, bh = ann["bbox"]
        assert bx <= x < bx + bw and by <= y < by + bh
    assert anns[2]["bbox"] == [1, 1, 3, 3] and anns[2]["point_coords"] == [[2, 2]]
    assert anns[2]["instance_area"] == 9

    csv = pd.read_csv(out / "points.csv")
    assert list(csv.columns) == ["image", "x", "y", "class_id", "class_name", "instance_area", "source"]
    assert csv["image"].tolist() == ["a", "a", "b"]
    assert csv["class_name"].tolist() == ["a", "b", "c"]
    assert csv[["x", "y"]].values.tolist() == [a["point_coords"][0] for a in anns]
    assert not (out / "sparse").exists()


def test_points_json_is_written_as_write_json_writes_it(tmp_path):
    """points.json's annotations are formatted directly; the file must still be what
    ``io.write_json(doc, indent=None)`` gives: one line, keys sorted, for simulated and human clicks."""
    from types import SimpleNamespace

    from pointparse.io import write_json
    from pointparse.points import write_points_artefact

    a = np.zeros((6, 8), np.uint8)
    a[:, 4:] = 1
    ds = _folder(tmp_path / "ds", {"a": a, "b": np.full((6, 8), IGNORE_INDEX, np.uint8)}, classes=("x", "ü ,\"q"))
    for name, images, source in [
        ("sim", None, "simulated"),
        ("human", [SimpleNamespace(name="a", height=6, width=8, xy=np.array([[1, 2], [7, 5]]), classes=np.array([1, 0]),
                                   labelled_pixels=48),
                   SimpleNamespace(name="b", height=6, width=8, xy=np.zeros((0, 2), np.int64),
                                   classes=np.zeros(0, np.int64), labelled_pixels=0)], "human"),
    ]:
        out = tmp_path / name
        out.mkdir()
        if images is None:
            make_points(ds, MakePointsConfig(min_area=4, workers=1), out, progress=False)
        else:
            write_points_artefact(out, ds, images, {"source": source}, source=source)
        text = (out / "points.json").read_text(encoding="utf-8")
        write_json(tmp_path / "ref.json", json.loads(text), indent=None)
        assert text == (tmp_path / "ref.json").read_text(encoding="utf-8")
        assert len(json.loads(text)["annotations"]) == 2


def test_same_seed_is_byte_identical_and_workers_do_not_change_output(tmp_path):
    ds = _scenes(tmp_path, n=8)
    runs = {}
    for tag, cfg in {
        "serial": MakePointsConfig(click="annotator", seed=3, workers=1, sparse_labels=True),
        "again": MakePointsConfig(click="annotator", seed=3, workers=0, sparse_labels=True),
        "parallel": MakePointsConfig(click="annotator", seed=3, workers=2, sparse_labels=True),
        "other-seed": MakePointsConfig(click="annotator", seed=4, workers=1, sparse_labels=True),
    }.items():
        out = tmp_path / tag
        out.mkdir()
        make_points(ds, cfg, out, progress=tag == "parallel")
        runs[tag] = _files(out)
    assert runs["serial"] == runs["again"] == runs["parallel"]
    assert runs["serial"]["points.json"] != runs["other-seed"]["points.json"]
    assert len([k for k in runs["serial"] if k.startswith("sparse/")]) == 8


@pytest.mark.parametrize("click", ["center", "random"])
def test_parallel_equals_serial_with_connected_components(tmp_path, click):
    ds = _scenes(tmp_path, n=6, keep_instances=False)
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        out.mkdir()
        make_points(ds, MakePointsConfig(click=click, workers=workers), out, progress=False)
        outs.append(_files(out))
    assert outs[0] == outs[1]


def test_sparse_labels_and_load_points_round_trip(tmp_path):
    ds = _scenes(tmp_path, n=4)
    out = tmp_path / "out"
    out.mkdir()
    stats = make_points(ds, MakePointsConfig(sparse_labels=True, workers=1), out, progress=False)
    points = load_points(out)
    assert points.info == ds.info
    assert points.names == ds.names and len(points) == 4
    assert points.num_points == stats["num_points"]
    csv = pd.read_csv(out / "points.csv")
    for i, name in enumerate(ds.names):
        sample = ds.load(i, with_image=False)
        assert points.image_sizes[name] == sample.mask.shape
        xy, classes = points.points(name)
        assert xy.dtype == np.int64 and classes.dtype == np.int64 and xy.shape == (len(classes), 2)
        rows = csv[csv["image"] == name]
        assert xy.tolist() == rows[["x", "y"]].values.tolist()
        assert (sample.mask[xy[:, 1], xy[:, 0]] == classes).all()
        with Image.open(out / "sparse" / f"{name}.png") as im:
            assert im.mode == "P"
        sparse = read_label(out / "sparse" / f"{name}.png")
        assert (sparse == points.label_map(name)).all()
        assert (sparse != IGNORE_INDEX).sum() == len(np.unique(xy, axis=0))
    with pytest.raises(DataError, match="no image named 'nope'"):
        points.points("nope")


def _valid_doc(tmp_path) -> dict:
    ds = _folder(tmp_path / "ds", {"a": np.zeros((4, 5), np.uint8)})
    out = tmp_path / "out"
    out.mkdir()
    make_points(ds, MakePointsConfig(min_area=1, workers=1), out, progress=False)
    return json.loads((out / "points.json").read_text())


@pytest.mark.parametrize("edit, problem", [
    (lambda d: d.pop("annotations"), "missing key 'annotations'"),
    (lambda d: d["info"].pop("classes"), "'info' is not a dataset description"),
    (lambda d: d["annotations"][0].update(category_id=7), "category id 7"),
    (lambda d: d["annotations"][0].update(point_coords=[[5, 0]]), r"point \(5, 0\) lies outside image 'a'"),
    (lambda d: d["annotations"][0].update(image_id=99), "unknown image id 99"),
    (lambda d: d["annotations"][0].pop("point_coords"), "needs 'image_id'"),
    (lambda d: d["images"].append(dict(d["images"][0])), "appears twice"),
    (lambda d: d["categories"].pop(), r"category ids must be 0\.\.2 \(the dataset's classes\)"),
])
def test_malformed_points_json_names_file_and_problem(tmp_path, edit, problem):
    doc = _valid_doc(tmp_path)
    edit(doc)
    bad = tmp_path / "bad" / "points.json"
    bad.parent.mkdir()
    bad.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=problem) as err:
        load_points(bad.parent)
    assert err.value.path == bad
    assert str(bad) in str(err.value)


def test_load_points_missing_or_not_json(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_points(tmp_path)
    (tmp_path / "points.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_points(tmp_path)


@pytest.mark.parametrize("workers", [1, 2])
def test_data_errors_from_the_dataset_propagate(tmp_path, workers):
    ds = _scenes(tmp_path, n=5)
    broken = ds.mask_path(3)
    broken.write_bytes(b"this is not a png")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DataError) as err:
        make_points(ds, MakePointsConfig(workers=workers), out, progress=False)
    assert err.value.path == broken
    assert "cannot decode image file" in err.value.problem


def test_bad_class_id_error_propagates_from_workers(tmp_path):
    masks = {n: np.zeros((8, 8), np.uint8) for n in "abcd"}
    masks["c"][0, 0] = 9  # only classes 0..2 exist
    ds = _folder(tmp_path / "ds", masks)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DataError, match=r"class id\(s\) \[9\]") as err:
        make_points(ds, MakePointsConfig(workers=2), out, progress=False)
    assert err.value.path.name == "c.png"


def test_output_folder_must_exist(tmp_path):
    ds = _folder(tmp_path / "ds", {"a": np.zeros((4, 4), np.uint8)})
    with pytest.raises(DataError, match="output folder does not exist"):
        make_points(ds, MakePointsConfig(workers=1), tmp_path / "missing", progress=False)


def test_synthetic_scenes_give_paper_like_click_counts(tmp_path):
    """Stuff components + things: a handful of clicks per image, every image annotated."""
    ds = _scenes(tmp_path, n=8)
    out = tmp_path / "out"
    out.mkdir()
    stats = make_points(ds, MakePointsConfig(workers=1), out, progress=False)
    assert stats["images_without_points"] == 0
    assert 3 <= stats["points_per_image"]["mean"] <= 20
    assert sum(stats["points_per_class"][c] for c in STUFF_CLASSES) > 0
    assert stats["num_points"] == sum(stats["points_per_class"].values())
