"""Synthetic scenes: config checks, determinism, the folder layout and what the scenes contain."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pointparse import IGNORE_INDEX
from pointparse.datasets import FolderDataset
from pointparse.errors import ConfigError
from pointparse.images import read_label
from pointparse.synthetic import (
    CLASSES,
    PALETTE,
    STUFF_CLASSES,
    THING_CLASSES,
    SyntheticConfig,
    generate_scenes,
    image_rng,
    render_scene,
)

SMALL = dict(seed=3, size=64, splits={"train": 4, "val": 2}, instances=(2, 4))


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kwargs, word", [
    (dict(size=16), "size"),
    (dict(size=(128, 64)), "size"),
    (dict(size=(64, 2000)), "size"),
    (dict(size="big"), "size"),
    (dict(instances=(5, 2)), "instances"),
    (dict(splits={}), "splits"),
    (dict(splits={"train": 0}), "train"),
    (dict(splits={"../x": 2}), "split name"),
    (dict(image_format="gif"), "png, jpg"),
])
def test_config_rejects_bad_values(kwargs, word):
    with pytest.raises(ConfigError, match=word.replace(".", r"\.")):
        SyntheticConfig(**kwargs)


def test_config_normalises_lists_from_yaml():
    cfg = SyntheticConfig(size=[64, 96], instances=[1, 3])
    assert cfg.size == (64, 96) and cfg.instances == (1, 3)
    assert SyntheticConfig(size=[80, 80]).size == 80


def test_generate_is_deterministic_and_seed_dependent(tmp_path):
    a = generate_scenes(tmp_path / "a", SyntheticConfig(**SMALL))
    b = generate_scenes(tmp_path / "b", SyntheticConfig(**SMALL))
    c = generate_scenes(tmp_path / "c", SyntheticConfig(**{**SMALL, "seed": 4}))
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert fa == fb
    assert fa.keys() == fc.keys()
    assert fa["images/train/train_00000.png"] != fc["images/train/train_00000.png"]
    # Image i depends only on (seed, split, i): more images keep the first ones unchanged.
    d = generate_scenes(tmp_path / "d", SyntheticConfig(**{**SMALL, "splits": {"train": 6}}))
    assert _files(d)["masks/train/train_00003.png"] == fa["masks/train/train_00003.png"]


def test_layout_is_read_by_folder_dataset(tmp_path):
    root = generate_scenes(tmp_path / "scenes", SyntheticConfig(**SMALL))
    assert not [p for p in tmp_path.iterdir() if p.name != "scenes"], "temporary folder left behind"
    train, val = FolderDataset(root, "train"), FolderDataset(root, "val")
    assert (len(train), len(val)) == (4, 2)
    assert train.info.classes == CLASSES and train.info.palette == PALETTE
    assert train.names[0] == "train_00000" and val.names[0] == "val_00000"
    for i in range(len(train)):
        s = train.load(i)
        assert s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8
        assert s.mask.dtype == np.uint8 and s.mask.max() < len(CLASSES)
        assert not (s.mask == IGNORE_INDEX).any()
        inst = s.instances
        assert inst is not None and inst.shape == s.mask.shape
        # Stuff pixels carry instance id 0, thing pixels a unique id of one thing class.
        assert (inst[s.mask < len(STUFF_CLASSES)] == 0).all()
        assert (inst[s.mask >= len(STUFF_CLASSES)] > 0).all()
        for k in np.unique(inst[inst > 0]):
            assert len(np.unique(s.mask[inst == k])) == 1
        ids = np.unique(inst[inst > 0])
        assert (ids == np.arange(1, len(ids) + 1)).all(), "thing ids are 1..K"
    # The instance maps are 16-bit PNGs, the masks palette PNGs.
    assert read_label(train.instance_path(0)).dtype == np.int32
    with Image.open(train.mask_path(0)) as im:
        assert im.mode == "P"
    with Image.open(train.instance_path(0)) as im:
        assert im.mode.startswith("I")


def test_generate_replaces_existing_folder_and_writes_jpg(tmp_path):
    out = tmp_path / "scenes"
    generate_scenes(out, SyntheticConfig(**SMALL))
    generate_scenes(out, SyntheticConfig(**{**SMALL, "splits": {"train": 2}, "image_format": "jpg"}))
    assert sorted(p.name for p in (out / "images" / "train").iterdir()) == ["train_00000.jpg", "train_00001.jpg"]
    assert not (out / "images" / "val").exists()
    assert len(FolderDataset(out, "train")) == 2


def test_size_range_varies_per_image(tmp_path):
    root = generate_scenes(tmp_path / "s", SyntheticConfig(seed=1, size=(64, 96), splits={"train": 6}))
    ds = FolderDataset(root, "train")
    sizes = [ds.image_size(i) for i in range(len(ds))]
    assert all(64 <= h <= 96 and 64 <= w <= 96 for h, w in sizes)
    assert len(set(sizes)) > 1


def test_scenes_have_stuff_components_things_and_textures():
    """Scenes are learnable but not trivial: split stuff, several things, textured classes."""
    split_stuff = 0
    things = []
    colour_means: dict[int, list[np.ndarray]] = {}
    for i in range(16):
        rng = image_rng(0, "train", i)
        image, mask, inst = render_scene(rng, 96, 96, 5)
        assert image.shape == (96, 96, 3) and mask.shape == inst.shape == (96, 96)
        things.append(int(inst.max()))
        for c in range(len(STUFF_CLASSES)):
            n, _ = cv2.connectedComponents((mask == c).view(np.uint8), connectivity=8)
            split_stuff += n - 1 >= 2
        for c in range(len(CLASSES)):
            sel = mask == c
            if sel.sum() > 50:
                pix = image[sel].astype(np.float64)
                # texture, not a flat colour
                assert pix.std(axis=0).max() > 3.0, f"class {CLASSES[c]} is flat"
                colour_means.setdefault(c, []).append(pix.mean(axis=0))
    assert split_stuff >= 3, "stuff regions should sometimes be split into several components"
    assert max(things) >= 3 and min(things) >= 1
    assert any(c >= len(STUFF_CLASSES) for c in colour_means), "no thing class rendered"
    # Per-image variation: the same class does not have one exact colour across images.
    for c, means in colour_means.items():
        if len(means) >= 3:
            assert np.ptp(np.stack(means), axis=0).max() > 5.0, f"class {CLASSES[c]} has a fixed colour"


def test_thing_and_stuff_class_lists():
    assert CLASSES == STUFF_CLASSES + THING_CLASSES
    assert len(PALETTE) == len(CLASSES) and len(set(PALETTE)) == len(PALETTE)
