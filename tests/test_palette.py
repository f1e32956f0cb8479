"""No class shares the ignore colour: figures (``report.qualitative.colorize``) and palette PNGs
(``images.write_label_png``), for a folder dataset without a palette whose class 0 is a real class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pointparse import IGNORE_INDEX
from pointparse.datasets import default_palette, open_dataset
from pointparse.images import IGNORE_COLOUR, ignore_colour, write_label_png
from pointparse.report.qualitative import colorize


def _street_folder(root: Path) -> Path:
    """classes.txt without colours: class 0 is 'sky', a real class (no palette.txt either)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("sky\nbuilding\nroad\n")
    Image.fromarray(np.full((8, 12, 3), 90, np.uint8)).save(root / "images" / "a.png")
    mask = np.zeros((8, 12), np.uint8)
    mask[:, 4:8] = 1
    mask[:, 8:] = IGNORE_INDEX
    Image.fromarray(mask).save(root / "masks" / "a.png")
    return root


def _png_palette(path: Path) -> np.ndarray:
    img = Image.open(path)
    assert img.mode == "P"
    pal = np.asarray(img.getpalette(), np.uint8)
    return np.pad(pal, (0, 768 - len(pal))).reshape(256, 3)


def test_voc_void_colour_is_the_colour_maps_entry_255():
    assert IGNORE_COLOUR == (224, 224, 192)
    assert default_palette(256)[255] == IGNORE_COLOUR
    assert IGNORE_COLOUR not in default_palette(255)  # the map gives no class index VOC's void colour


def test_class_zero_of_a_folder_dataset_never_looks_like_ignore(tmp_path: Path):
    ds = open_dataset("folder", _street_folder(tmp_path / "street"), "train")
    pal = ds.info.palette
    assert ds.info.classes[0] == "sky" and len(pal) == 3
    assert IGNORE_COLOUR not in pal
    mask = ds.load_mask(0)
    assert {0, 1, IGNORE_INDEX} <= set(np.unique(mask).tolist())

    # figure: sky (class 0) and ignored pixels get different colours
    rgb = colorize(mask, pal)
    sky, ignored = tuple(rgb[0, 0]), tuple(rgb[0, -1])
    assert sky == tuple(pal[0]) and ignored == IGNORE_COLOUR and sky != ignored
    assert ignored not in {tuple(c) for c in pal}

    # palette PNG (make-points --sparse-labels, extension labels, predictions): entry 255 is the
    # ignore colour, entries 0..C-1 the classes, and the ids read back unchanged
    png = tmp_path / "sparse.png"
    write_label_png(png, mask, palette=np.asarray(pal, np.uint8))
    table = _png_palette(png)
    assert tuple(table[255]) == IGNORE_COLOUR
    np.testing.assert_array_equal(table[:3], np.asarray(pal, np.uint8))
    assert all(tuple(table[c]) != tuple(table[255]) for c in range(3))
    np.testing.assert_array_equal(np.asarray(Image.open(png)), mask)


def test_a_full_256_entry_palette_still_gets_the_ignore_colour_at_255(tmp_path: Path):
    pal = np.zeros((256, 3), np.uint8)  # as predict builds it: classes, then zeros
    pal[:2] = [(0, 0, 0), (10, 200, 10)]
    write_label_png(tmp_path / "p.png", np.array([[0, 1, 255]], np.uint8), palette=pal)
    assert tuple(_png_palette(tmp_path / "p.png")[255]) == IGNORE_COLOUR


def test_a_class_with_the_void_colour_moves_ignore_elsewhere(tmp_path: Path):
    pal = [(224, 224, 192), (255, 255, 255), (0, 0, 0)]  # a user palette that takes VOC's void colour
    colour = ignore_colour(pal)
    assert colour not in pal and colour == (254, 254, 254)
    rgb = colorize(np.array([[0, 1, 2, 255]], np.uint8), pal)
    assert tuple(rgb[0, 3]) == colour
    write_label_png(tmp_path / "u.png", np.array([[0, 255]], np.uint8), palette=np.asarray(pal, np.uint8))
    assert tuple(_png_palette(tmp_path / "u.png")[255]) == colour
    assert ignore_colour(None) == ignore_colour([]) == IGNORE_COLOUR
