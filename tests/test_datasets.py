"""Dataset readers: tiny fake layouts of every kind, label conventions and bad input.

Every layout is written into ``tmp_path`` with PIL; nothing here reads real data.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pointparse.datasets as datasets_mod
import pointparse.datasets.base as datasets_base
import pointparse.datasets.coco as datasets_coco
from pointparse import IGNORE_INDEX
from pointparse.datasets import (
    DATASET_KINDS,
    DatasetInfo,
    ade20k_instances,
    load_descriptor,
    open_dataset,
    parse_classes_file,
)
from pointparse.datasets.rle import rle_crops
from pointparse.errors import ConfigError, DataError

H, W = 24, 32

# pycocotools' decode trips numpy 2's copy-keyword deprecation; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


# -- helpers ------------------------------------------------------------------------------------


def write_png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr)).save(path)
    return path


def write_jpg(path: Path, h: int = H, w: int = W, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, quality=90)
    return path


def stripes(values, h: int = H, w: int = W) -> np.ndarray:
    """A uint8 [h, w] map with one vertical band per value, left to right."""
    out = np.zeros((h, w), dtype=np.uint8)
    for k, bounds in enumerate(np.array_split(np.arange(w), len(values))):
        out[:, bounds] = values[k]
    return out


def assert_roundtrip(info: DatasetInfo) -> None:
    d = json.loads(json.dumps(info.to_dict()))
    assert DatasetInfo.from_dict(d) == info
    assert len(info.palette) == info.num_classes


# -- folder kind --------------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "facade"
    root.mkdir()
    (root / "classes.txt").write_text(
        "# id name colour\n0 various 0:0:0\n1 building 128:0:0\n2 traffic light 250:170:30\n255 void\n"
    )
    for k, name in enumerate(("a", "b")):
        write_jpg(root / "images" / "train" / f"{name}.jpg", seed=k)
        write_png(root / "masks" / "train" / f"{name}.png", stripes([0, 1, 2, IGNORE_INDEX]))
    write_jpg(root / "images" / "val" / "c.jpg")
    write_png(root / "masks" / "val" / "c.png", stripes([2, 1]))
    return root


def test_folder_reads_ids_palette_and_ignore(folder: Path):
    ds = open_dataset("folder", folder, "train")
    assert ds.names == ["a", "b"]
    assert ds.info.classes == ("various", "building", "traffic light")
    assert ds.info.palette == ((0, 0, 0), (128, 0, 0), (250, 170, 30))
    assert ds.info.protocol == "folder-3"
    s = ds.load(0)
    assert s.image.shape == (H, W, 3) and s.image.dtype == np.uint8
    assert s.mask.dtype == np.uint8
    assert s.mask.flags.writeable  # callers may edit it; PIL's own array of an "L" PNG is read-only
    np.testing.assert_array_equal(s.mask, stripes([0, 1, 2, IGNORE_INDEX]))
    assert s.instances is None and not ds.has_instances
    assert len(open_dataset("folder", folder, "val")) == 1
    assert folder / "classes.txt" in ds.files()
    assert_roundtrip(ds.info)


def test_folder_ignore_classes_renumbers(folder: Path):
    ds = open_dataset("folder", folder, "train", ignore_classes="various")
    assert ds.info.classes == ("building", "traffic light")
    assert ds.info.protocol == "folder-2-ignore-various"
    np.testing.assert_array_equal(ds.load_mask(0), stripes([IGNORE_INDEX, 0, 1, IGNORE_INDEX]))
    with pytest.raises(ConfigError, match="sky"):
        open_dataset("folder", folder, "train", ignore_classes="sky")


def test_folder_instances_flat_layout(tmp_path: Path):
    root = tmp_path / "flat"
    (root).mkdir()
    (root / "classes.txt").write_text("bg\nthing\n")
    write_jpg(root / "images" / "x.png")
    write_png(root / "labels" / "x.png", stripes([0, 1]))
    inst = np.zeros((H, W), dtype=np.uint16)
    inst[:, W // 2 :] = 300  # 16-bit ids survive
    write_png(root / "instances" / "x.png", inst)
    ds = open_dataset("folder", root, "anything")
    s = ds.load(0, with_image=False)
    assert s.image is None
    assert s.instances.dtype == np.int32 and set(np.unique(s.instances)) == {0, 300}
    assert ds.info.palette == datasets_mod.default_palette(2)[:2]


def test_folder_mask_only_load_never_decodes_images(folder: Path, monkeypatch):
    def boom(path):
        raise AssertionError(f"decoded {path}")

    monkeypatch.setattr(datasets_base, "read_image", boom)
    ds = open_dataset("folder", folder, "train")
    assert ds.load(1, with_image=False).mask.shape == (H, W)


def _missing_root(root):
    return root.parent / "nowhere", root.parent / "nowhere"


def _missing_images(root):
    import shutil

    shutil.rmtree(root / "images")
    return root, root / "images"


def _image_without_mask(root):
    write_jpg(root / "images" / "train" / "lonely.jpg")
    return root, root / "images" / "train" / "lonely.jpg"


def _empty(root):
    for p in (root / "images" / "train").iterdir():
        p.unlink()
    return root, root / "images" / "train"


def _missing_split(root):
    return root, root / "images" / "test"


def _bad_classes(root):
    (root / "classes.txt").write_bytes(b"\xff\xfe\x00garbage")
    return root, root / "classes.txt"


@pytest.mark.parametrize(
    "breaker", [_missing_root, _missing_images, _image_without_mask, _empty, _missing_split, _bad_classes]
)
def test_folder_bad_layout_names_the_file(folder: Path, breaker):
    root, culprit = breaker(folder)
    split = "test" if breaker is _missing_split else "train"
    with pytest.raises(DataError) as err:
        open_dataset("folder", root, split)
    assert err.value.path == culprit
    assert str(culprit) in str(err.value)


def test_folder_size_mismatch_names_mask(folder: Path):
    write_png(folder / "masks" / "train" / "b.png", np.zeros((H + 2, W), dtype=np.uint8))
    ds = open_dataset("folder", folder, "train")
    for with_image in (True, False):
        with pytest.raises(DataError, match="but its image b.jpg") as err:
            ds.load(1, with_image=with_image)
        assert err.value.path == folder / "masks" / "train" / "b.png"
    assert ds.load(1, check_size=False).mask.shape == (H + 2, W)


def test_folder_class_id_outside_classes(folder: Path):
    write_png(folder / "masks" / "train" / "a.png", stripes([0, 7]))
    ds = open_dataset("folder", folder, "train")
    with pytest.raises(DataError, match=r"\[7\]") as err:
        ds.load(0, with_image=False)
    assert err.value.path == folder / "masks" / "train" / "a.png"


@pytest.mark.parametrize("which", ["masks/train/a.png", "images/train/a.jpg"])
def test_folder_corrupt_file(folder: Path, which: str):
    (folder / which).write_bytes(b"not an image at all")
    ds = open_dataset("folder", folder, "train")
    with pytest.raises(DataError, match="cannot") as err:
        ds.load(0, with_image=False)  # header read is enough to catch a broken image
    assert err.value.path == folder / which


def test_classes_file_forms(tmp_path: Path):
    p = tmp_path / "classes.txt"
    p.write_text("0 a\n1 b 1:2\n")
    with pytest.raises(DataError, match="line 2"):
        parse_classes_file(p)
    p.write_text("0 a\n2 b\n")
    with pytest.raises(DataError, match="expected 1"):
        parse_classes_file(p)
    p.write_text("a\nb\na\n")
    with pytest.raises(DataError, match="more than once"):
        parse_classes_file(p)
    p.write_text("0 a 1,2,3\n1 b c 4:5:6\n")
    assert parse_classes_file(p) == (("a", "b c"), ((1, 2, 3), (4, 5, 6)))


# -- registry -----------------------------------------------------------------------------------


def test_registry_and_unknown_kind(tmp_path: Path):
    assert set(DATASET_KINDS) == {"folder", "ade20k", "pascal-context", "coco"}
    with pytest.raises(ConfigError) as err:
        open_dataset("cityscapes", tmp_path)
    for kind in DATASET_KINDS:
        assert kind in str(err.value)


def test_unknown_option_lists_valid_ones(folder: Path):
    with pytest.raises(ConfigError, match="ignore_classes") as err:
        open_dataset("folder", folder, "train", protocol="59")
    assert "protocol" in str(err.value)
    with pytest.raises(ConfigError, match="none"):
        open_dataset("ade20k", folder, "train", ignore_classes="x")


def test_descriptors_are_consistent():
    ade = DatasetInfo.from_dict(load_descriptor("ade20k"))
    pc59 = DatasetInfo.from_dict(load_descriptor("pascal-context-59"))
    pc60 = DatasetInfo.from_dict(load_descriptor("pascal-context-60"))
    assert (ade.num_classes, pc59.num_classes, pc60.num_classes) == (150, 59, 60)
    assert (ade.protocol, pc59.protocol, pc60.protocol) == ("ade20k-150", "pascal-context-59", "pascal-context-60")
    assert ade.classes[:3] == ("wall", "building", "sky") and ade.classes[-1] == "flag"
    assert pc60.classes[0] == "background" and pc59.classes == pc60.classes[1:]
    assert pc59.palette == pc60.palette[1:]
    for info in (ade, pc59, pc60):
        assert_roundtrip(info)
        assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in info.palette)
        assert len(set(info.classes)) == info.num_classes


# -- ADE20K -------------------------------------------------------------------------------------


def _ade(tmp_path: Path, instances: bool = True) -> Path:
    base = tmp_path / "ade" / "ADEChallengeData2016"
    for split, prefix in (("training", "ADE_train"), ("validation", "ADE_val")):
        for k in range(2):
            name = f"{prefix}_{k + 1:08d}"
            write_jpg(base / "images" / split / f"{name}.jpg", seed=k)
            write_png(base / "annotations" / split / f"{name}.png", stripes([0, 1, 13, 150]))
            if instances:
                rgb = np.zeros((H, W, 3), dtype=np.uint8)
                band = W // 4
                # two instances of one category (R=4) in the "person" band (raw 13 -> class 12)
                rgb[: H // 2, 2 * band : 3 * band] = (4, 1, 0)
                rgb[H // 2 :, 2 * band : 3 * band] = (4, 2, 0)
                # same G as above but another category: a distinct instance, in the raw-150 band
                rgb[:, 3 * band :] = (9, 1, 0)
                write_png(base / "annotations_instance" / split / f"{name}.png", rgb)
    return tmp_path / "ade"


def test_ade20k_labels_and_split_aliases(tmp_path: Path):
    parent = _ade(tmp_path, instances=False)
    for root in (parent, parent / "ADEChallengeData2016"):
        for split in ("val", "validation"):
            ds = open_dataset("ade20k", root, split)
            assert ds.split == "validation" and ds.names == ["ADE_val_00000001", "ADE_val_00000002"]
    assert ds.info.protocol == "ade20k-150" and ds.info.num_classes == 150
    s = ds.load(0)
    np.testing.assert_array_equal(s.mask, stripes([IGNORE_INDEX, 0, 12, 149]))
    assert s.instances is None and not ds.has_instances
    assert len(open_dataset("ade20k", parent, "train")) == 2
    assert_roundtrip(ds.info)


def test_ade20k_instances(tmp_path: Path):
    root = _ade(tmp_path)
    ds = open_dataset("ade20k", root, "train")
    assert ds.has_instances
    s = ds.load(1, with_image=False)
    inst = s.instances
    assert inst.dtype == np.int32 and inst.shape == (H, W)
    band = W // 4
    top, bottom, right = inst[0, 2 * band], inst[-1, 2 * band], inst[0, -1]
    assert len({top, bottom, right}) == 3 and 0 not in {top, bottom, right}
    assert set(np.unique(inst)) == {0, top, bottom, right}
    assert (inst[:, : 2 * band] == 0).all()  # "other" and stuff: no instance
    for iid in (top, bottom, right):  # every instance is class-pure
        assert len(np.unique(s.mask[inst == iid])) == 1


def test_ade20k_instances_follow_the_class_mask():
    mask = np.full((4, 6), IGNORE_INDEX, dtype=np.uint8)
    mask[:, :4] = 7
    mask[:, 4] = 3
    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    rgb[:, :5] = (2, 5, 0)  # one instance over 16 pixels of class 7, 4 of class 3
    rgb[:, 5] = (2, 6, 0)  # an instance entirely on ignored pixels vanishes
    inst = ade20k_instances(rgb, mask)
    expected = np.zeros((4, 6), dtype=np.int32)
    expected[:, :4] = 1
    np.testing.assert_array_equal(inst, expected)
    rgb[0, 0] = (101, 1, 0)
    with pytest.raises(DataError, match="101"):
        ade20k_instances(rgb, mask, Path("x.png"))


def test_ade20k_bad_input(tmp_path: Path):
    root = _ade(tmp_path, instances=False)
    base = root / "ADEChallengeData2016"
    bad = base / "annotations" / "training" / "ADE_train_00000001.png"
    write_png(bad, stripes([0, 151]))
    ds = open_dataset("ade20k", root, "train")
    with pytest.raises(DataError, match=r"\[151\]") as err:
        ds.load_mask(0)
    assert err.value.path == bad
    bad.unlink()
    with pytest.raises(DataError, match="ADE_train_00000001.jpg"):
        open_dataset("ade20k", root, "train")
    with pytest.raises(DataError, match="training/validation"):
        open_dataset("ade20k", tmp_path, "train")


# -- PASCAL-Context -----------------------------------------------------------------------------


def _pascal(tmp_path: Path) -> Path:
    voc = tmp_path / "VOCdevkit" / "VOC2010"
    lists = voc / "ImageSets" / "SegmentationContext"
    lists.mkdir(parents=True)
    ids = ["2008_000002", "2008_000003"]
    for k, iid in enumerate(ids):
        write_jpg(voc / "JPEGImages" / f"{iid}.jpg", seed=k)
        write_png(voc / "SegmentationClassContext" / f"{iid}.png", stripes([0, 1, 59]))
    (lists / "train.txt").write_text("\n".join(ids) + "\n")
    (lists / "val.txt").write_text(ids[1] + "\n")
    return tmp_path / "VOCdevkit"


def test_pascal_context_protocols(tmp_path: Path):
    root = _pascal(tmp_path)
    ds59 = open_dataset("pascal-context", root, "train")
    ds60 = open_dataset("pascal-context", root / "VOC2010", "train", protocol="60")
    assert (ds59.info.protocol, ds60.info.protocol) == ("pascal-context-59", "pascal-context-60")
    assert ds59.names == ["2008_000002", "2008_000003"]
    np.testing.assert_array_equal(ds59.load(0).mask, stripes([IGNORE_INDEX, 0, 58]))
    s60 = ds60.load(0, with_image=False)
    np.testing.assert_array_equal(s60.mask, stripes([0, 1, 59]))
    assert s60.instances is None and not ds60.has_instances
    assert ds59.info.classes[0] == "aeroplane" and ds60.info.classes[1] == "aeroplane"
    assert len(open_dataset("pascal-context", root, "val", protocol=59)) == 1
    assert_roundtrip(ds59.info)
    assert_roundtrip(ds60.info)
    with pytest.raises(ConfigError, match="59, 60"):
        open_dataset("pascal-context", root, "train", protocol="61")


def test_pascal_context_bad_input(tmp_path: Path):
    root = _pascal(tmp_path)
    voc = root / "VOC2010"
    lst = voc / "ImageSets" / "SegmentationContext" / "train.txt"
    lst.write_text("2008_000002\n2008_999999\n")
    with pytest.raises(DataError, match="2008_999999") as err:
        open_dataset("pascal-context", root, "train")
    assert err.value.path == lst
    with pytest.raises(DataError) as err:
        open_dataset("pascal-context", root, "trainval")
    assert err.value.path == voc / "ImageSets" / "SegmentationContext" / "trainval.txt"
    bad = write_png(voc / "SegmentationClassContext" / "2008_000003.png", stripes([0, 60]))
    ds = open_dataset("pascal-context", root, "val")
    with pytest.raises(DataError, match=r"\[60\]") as err:
        ds.load(0)
    assert err.value.path == bad


# -- COCO ---------------------------------------------------------------------------------------


def _uncompressed_rle(m: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, zeros first."""
    flat = np.asarray(m, dtype=np.uint8).flatten(order="F")
    counts, cur, run = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(run)
            cur, run = v, 0
        run += 1
    counts.append(run)
    return {"counts": counts, "size": list(m.shape)}


def _coco(tmp_path: Path, split: str = "val") -> tuple[Path, dict]:
    from pycocotools import mask as mask_utils

    root = tmp_path / "coco"
    write_jpg(root / f"{split}2017" / "000000000001.jpg")
    write_jpg(root / f"{split}2017" / "000000000002.jpg", seed=1)
    small = np.zeros((H, W), dtype=np.uint8)
    small[8:12, 10:16] = 1
    rle = mask_utils.encode(np.asfortranarray(small))
    rle["counts"] = rle["counts"].decode("ascii")
    crowd = np.zeros((H, W), dtype=np.uint8)
    crowd[12:20, 14:28] = 1  # smaller than the person polygon, overlapping it
    data = {
        "images": [
            {"id": 1, "file_name": "000000000001.jpg", "height": H, "width": W},
            {"id": 2, "file_name": "000000000002.jpg", "height": H, "width": W},
        ],
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
        "annotations": [
            # a large person polygon, a small car RLE on top of it, a crowd of people
            {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0,
             "segmentation": [[2, 2, 20, 2, 20, 16, 2, 16]]},
            {"id": 11, "image_id": 1, "category_id": 3, "iscrowd": 0, "segmentation": rle},
            {"id": 12, "image_id": 1, "category_id": 1, "iscrowd": 1, "segmentation": _uncompressed_rle(crowd)},
        ],
    }
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(data))
    return root, data


def test_coco_masks_crowd_and_instances(tmp_path: Path):
    root, data = _coco(tmp_path)
    ds = open_dataset("coco", root, "val")
    assert ds.info.classes == ("person", "car", "dog")  # category-id order 1, 3, 18
    assert ds.info.protocol == "coco-3"
    assert ds.names == ["000000000001", "000000000002"]
    s = ds.load(0)
    assert s.mask.dtype == np.uint8 and s.instances.dtype == np.int32
    assert s.mask[3, 3] == 0 and s.instances[3, 3] == 1  # person polygon
    assert s.mask[9, 12] == 1 and s.instances[9, 12] == 2  # the small car stays visible on top
    assert s.mask[14, 16] == IGNORE_INDEX and s.instances[14, 16] == 0  # crowd over the person
    assert s.mask[18, 25] == IGNORE_INDEX and s.instances[18, 25] == 0  # crowd alone
    assert s.mask[0, W - 1] == IGNORE_INDEX and s.instances[0, W - 1] == 0  # no annotation
    assert set(np.unique(s.mask)) == {0, 1, IGNORE_INDEX}
    # the decoding agrees with pycocotools' own annToMask
    from pycocotools.coco import COCO

    coco = COCO(str(root / "annotations" / "instances_val2017.json"))
    person = coco.annToMask(coco.anns[10]).astype(bool)
    car = coco.annToMask(coco.anns[11]).astype(bool)
    crowd = coco.annToMask(coco.anns[12]).astype(bool)
    np.testing.assert_array_equal(s.instances == 1, person & ~car & ~crowd)
    np.testing.assert_array_equal(s.instances == 2, car)
    np.testing.assert_array_equal(s.mask == IGNORE_INDEX, ~(person | car) | (crowd & ~car))
    empty = ds.load(1, with_image=False)
    assert (empty.mask == IGNORE_INDEX).all() and (empty.instances == 0).all()
    assert ds.files()[-1] == root / "annotations" / "instances_val2017.json"
    assert_roundtrip(ds.info)


def test_coco_options_and_bad_input(tmp_path: Path):
    root, data = _coco(tmp_path, split="mine")
    moved = root / "labels.json"
    (root / "annotations" / "instances_mine2017.json").rename(moved)
    with pytest.raises(DataError, match="ann_file"):
        open_dataset("coco", root, "mine")
    ds = open_dataset("coco", root, "x", ann_file="labels.json", image_dir="mine2017")
    assert len(ds) == 2
    (root / "mine2017" / "000000000002.jpg").unlink()
    with pytest.raises(DataError, match="does not exist") as err:
        open_dataset("coco", root, "x", ann_file=str(moved), image_dir="mine2017")
    assert err.value.path == root / "mine2017" / "000000000002.jpg"
    write_jpg(root / "mine2017" / "000000000002.jpg", h=H + 1)
    ds = open_dataset("coco", root, "x", ann_file="labels.json", image_dir="mine2017")
    with pytest.raises(DataError, match="labels.json") as err:
        ds.load(1, with_image=False)
    assert err.value.path == root / "mine2017" / "000000000002.jpg"
    data["annotations"][0]["category_id"] = 99
    moved.write_text(json.dumps(data))
    with pytest.raises(DataError, match="99") as err:
        open_dataset("coco", root, "x", ann_file="labels.json", image_dir="mine2017")
    assert err.value.path == moved


# -- COCO: the box-wise RLE decoder and make-points' shortcut ------------------------------------


def _blob(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random uint8 0/1 mask: a rectangle, scattered pixels, a full column band, or nothing."""
    m = np.zeros((h, w), np.uint8)
    kind = rng.integers(5)
    if kind == 0:
        y, x = rng.integers(0, h), rng.integers(0, w)
        m[y:y + rng.integers(1, h + 1), x:x + rng.integers(1, w + 1)] = 1
    elif kind == 1:
        m[rng.random((h, w)) < rng.choice([0.01, 0.3, 0.9])] = 1
    elif kind == 2:  # runs that wrap from one column into the next
        x = rng.integers(0, w)
        m[rng.integers(0, h):, x] = 1
        m[:, x + 1:x + 1 + rng.integers(0, 3)] = 1
    elif kind == 3:
        m[:] = 1
    return m


def test_rle_crops_decode_like_pycocotools():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    for _ in range(60):
        h, w = int(rng.integers(1, 30)), int(rng.integers(1, 30))
        masks = [_blob(rng, h, w) for _ in range(int(rng.integers(1, 9)))]
        strings = [mask_utils.encode(np.asfortranarray(m))["counts"] for m in masks]
        for m, got in zip(masks, rle_crops(strings, h, w)):
            area, y0, x0, crop_t = got
            assert area == m.sum()
            if area == 0:
                assert crop_t is None
                continue
            ys, xs = np.nonzero(m)
            assert (y0, x0) == (ys.min(), xs.min())
            np.testing.assert_array_equal(crop_t.T, m[y0:ys.max() + 1, x0:xs.max() + 1].astype(bool))
    # what the decoder does not vouch for is left to pycocotools (None): the wrong pixel count, an
    # empty string, a character outside the alphabet, a value cut off at the end
    good = mask_utils.encode(np.asfortranarray(np.eye(4, dtype=np.uint8)))["counts"]
    assert rle_crops([good], 4, 4)[0][0] == 4
    assert rle_crops([good, good, b"", good[:-1] + b"~", good + b"h"], 4, 5)[0] is None
    got = rle_crops([b"", good, good[:-1] + b"\x01", b"0" + b"h", good], 4, 4)
    assert got[0] is None and got[2] is None and got[3] is None
    assert got[1][0] == 4 and got[4][0] == 4  # neighbours of bad strings decode unharmed


def _coco_scene(tmp_path: Path, images: int = 4, per_image: int = 40, h: int = 30, w: int = 40) -> Path:
    """A COCO json of random overlapping annotations in every form: compressed RLE (str and
    uncompressed list), polygons, crowd regions, empty segmentations and empty masks."""
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(3)
    root = tmp_path / "scene"
    ims, anns = [], []
    for i in range(images):
        write_jpg(root / "val2017" / f"{i}.jpg", h=h, w=w, seed=i)
        ims.append({"id": 7 + i, "file_name": f"{i}.jpg", "height": h, "width": w})
        for _ in range(per_image if i else 300):  # the first image: more ids than uint8 holds
            m = _blob(rng, h, w)
            r = rng.random()
            if r < 0.15:
                segm = _uncompressed_rle(m)
            elif r < 0.3:
                x, y = rng.uniform(0, w, 4), rng.uniform(0, h, 4)
                segm = [np.stack([x, y], 1).ravel().round(1).tolist()]
            elif r < 0.33:
                segm = []
            else:
                segm = {"size": [h, w], "counts": mask_utils.encode(np.asfortranarray(m))["counts"].decode("ascii")}
            anns.append({"id": len(anns) + 1, "image_id": 7 + i, "category_id": int(rng.integers(1, 4)),
                         "iscrowd": int(rng.random() < 0.08), "segmentation": segm})
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps({
        "images": ims, "annotations": anns, "categories": [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]}))
    return root


@pytest.mark.parametrize("pairwise", [1024, 0])
def test_coco_click_instances_equal_the_search_on_loaded_maps(tmp_path: Path, monkeypatch, pairwise):
    from pointparse.instances import find_instances

    monkeypatch.setattr(datasets_coco, "_PAIRWISE_BOXES", pairwise)  # 0: paint everything
    ds = open_dataset("coco", _coco_scene(tmp_path), "val")
    for i in range(len(ds)):
        s = ds.load(i, with_image=False)
        for min_area in (1, 5, 16):
            ref = find_instances(s.mask, s.instances, min_area, ds.info.num_classes)
            got = ds.click_instances(i, min_area)
            assert (got.name, got.height, got.width) == (s.name, *s.mask.shape)
            assert got.labelled_pixels == np.count_nonzero(s.mask != IGNORE_INDEX)
            np.testing.assert_array_equal(got.instances.classes, ref.classes)
            np.testing.assert_array_equal(got.instances.boxes, ref.boxes)
            np.testing.assert_array_equal(got.instances.areas, ref.areas)
            for a, b in zip(got.instances.crops, ref.crops):
                np.testing.assert_array_equal(a, b)
        assert len(ref) > 3


def test_coco_click_instances_check_the_image_size(tmp_path: Path):
    root, data = _coco(tmp_path)
    write_jpg(root / "val2017" / "000000000001.jpg", h=H + 1)
    ds = open_dataset("coco", root, "val")
    with pytest.raises(DataError, match="instances_val2017.json") as err:
        ds.click_instances(0, 16)
    assert err.value.path == root / "val2017" / "000000000001.jpg"
