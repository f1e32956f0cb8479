"""Label sets: the one artefact layout every dense label source writes and the trainer reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pointparse import IGNORE_INDEX
from pointparse.datasets import FolderDataset
from pointparse.errors import DataError
from pointparse.images import write_image, write_label_png
from pointparse.labelset import (LABELS_JSON, LabelSetDataset, LabelSetWriter, check_label_set, label_quality, load_label_set,
                                 quality_summary)


def _folder(root: Path, n: int = 2, size=(6, 8)) -> FolderDataset:
    (root / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("0 a 10:20:30\n1 b 40:50:60\n2 c 70:80:90\n")
    for i in range(n):
        write_image(root / "images" / "train" / f"im{i}.png", np.zeros(size + (3,), np.uint8))
        write_label_png(root / "masks" / "train" / f"im{i}.png", np.full(size, i % 3, np.uint8))
    return FolderDataset(root, "train")


def test_written_labels_read_back_and_resume_sees_what_was_written(tmp_path):
    ds = _folder(tmp_path / "d")
    w = LabelSetWriter(tmp_path / "out", ds.info, "train", "test")
    lab = np.full((6, 8), IGNORE_INDEX, np.uint8)
    lab[1:3, 2:5] = 2
    assert not w.has("im0")
    w.write("im0", lab)
    assert w.has("im0") and not w.has("im1")
    with pytest.raises(DataError, match="im1.*not labelled"):
        w.finish(ds)
    w.write("im1", np.zeros((6, 8), np.uint8))
    ls = w.finish(ds, {"note": 1})
    again = load_label_set(tmp_path / "out")
    assert again.names == ["im0", "im1"] and again.source == "test" and again.summary == {"note": 1}
    np.testing.assert_array_equal(ls.label("im0"), lab)
    check_label_set(again, ds)


def test_a_label_set_of_another_dataset_or_size_is_refused(tmp_path):
    ds = _folder(tmp_path / "d")
    w = LabelSetWriter(tmp_path / "out", ds.info, "train", "test")
    for n in ds.names:
        w.write(n, np.zeros((6, 8), np.uint8))
    ls = w.finish(ds)
    other = _folder(tmp_path / "e", n=3)
    with pytest.raises(DataError, match="no labels for 1 of the 3"):
        check_label_set(ls, other)
    small = _folder(tmp_path / "f", size=(5, 8))
    with pytest.raises(DataError, match="labels are 8x6 but image"):
        check_label_set(ls, small)


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.update(format=7), "format"),
    (lambda d: d.update(classes=[]), "classes"),
    (lambda d: d["images"]["im0"].update(file="../../etc/passwd"), "not inside labels/"),
    (lambda d: d["images"]["im0"].update(height=True), "height"),
])
def test_malformed_index_is_one_error_naming_the_file(tmp_path, edit, match):
    ds = _folder(tmp_path / "d")
    w = LabelSetWriter(tmp_path / "out", ds.info, "train", "test")
    for n in ds.names:
        w.write(n, np.zeros((6, 8), np.uint8))
    w.finish(ds)
    doc = json.loads((tmp_path / "out" / LABELS_JSON).read_text())
    edit(doc)
    (tmp_path / "out" / LABELS_JSON).write_text(json.dumps(doc))
    with pytest.raises(DataError, match=match) as e:
        load_label_set(tmp_path / "out")
    assert LABELS_JSON in str(e.value)


def test_a_label_file_with_a_class_outside_the_list_is_an_error(tmp_path):
    ds = _folder(tmp_path / "d")
    w = LabelSetWriter(tmp_path / "out", ds.info, "train", "test")
    for n in ds.names:
        w.write(n, np.zeros((6, 8), np.uint8))
    ls = w.finish(ds)
    write_label_png(ls.file("im1"), np.full((6, 8), 9, np.uint8))
    with pytest.raises(DataError, match="class id 9"):
        ls.label("im1")


def test_quality_counts_new_pixels_only_and_coverage_of_the_ground_truth():
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 255]], np.uint8)
    clicks = np.full_like(gt, 255)
    clicks[0, 0] = 0
    labels = np.array([[0, 1, 1, 255], [255, 0, 0, 2]], np.uint8)
    c = label_quality(labels, clicks, gt, 3)
    # new (labelled, not clicked, gt known): (0,1)=1 wrong, (0,2)=1 right, (1,1)=0 right, (1,2)=0 wrong
    assert c["new"].tolist() == [2, 2, 0] and c["correct"].tolist() == [1, 1, 0]
    assert c["gt"].tolist() == [4, 3, 0] and c["covered"].tolist() == [3, 2, 0]
    s = quality_summary(c, ("a", "b", "c"), images=1)
    assert s["accuracy"] == 0.5 and s["coverage"] == 5 / 7 and s["new_pixels_per_image"] == 4
    assert s["per_class"]["c"]["accuracy"] is None and s["per_class"]["b"]["coverage"] == 2 / 3


def test_the_dataset_view_reads_the_labels_as_masks_and_the_original_images(tmp_path):
    ds = _folder(tmp_path / "d")
    w = LabelSetWriter(tmp_path / "out", ds.info, "train", "test")
    for i, n in enumerate(ds.names):
        w.write(n, np.full((6, 8), 2 - i, np.uint8))
    view = LabelSetDataset(ds, w.finish(ds))
    s = view.load(1)
    assert view.names == ds.names and s.name == "im1" and (s.mask == 1).all() and s.image.shape == (6, 8, 3)
    assert view.image_path(0) == ds.image_path(0) and view.has_dense_labels and not view.has_instances
