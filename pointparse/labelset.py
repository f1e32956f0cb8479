"""Label sets: dense labels for the images of one split, made from its clicks.

An extension method run offline (``superpixel``, ``kmeans``, ``sam``) or a network's confident
predictions (``pseudo-labels``) turn a split's clicks into denser labels; a train stage reads
them beside the clicks (its ``labels`` reference). Every such source writes the same artefact
layout, so the trainer reads one format:

* ``labels.json`` — ``{"format": 1, "split", "source", "classes", "palette", "images": {name:
  {"file": "labels/<name>.png", "height", "width"}}, "summary": {...}}``, written last;
* ``labels/<name>.png`` — a palette PNG of ``uint8`` class ids ``0..C-1``, **255 = unlabelled**,
  the size of the image it labels.

Writing is resumable: each PNG is renamed into place whole (:func:`pointparse.images.write_label_png`),
so after a kill :meth:`LabelSetWriter.has` tells which images are done and a stage building into
its ``.partial`` folder continues with the rest.

:func:`label_quality` measures a label set against dense ground truth (when the split has it):
accuracy of the *new* pixels (labelled, not clicked) and coverage of the ground truth, overall and
per class — the numbers of Table 5 and of the SAM / pseudo-label studies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import IGNORE_INDEX
from .datasets import DatasetInfo, SegmentationDataset
from .errors import DataError
from .images import image_size, read_label, write_label_png
from .io import read_json, safe_name, write_json

LABELS_JSON = "labels.json"
LABELS_DIR = "labels"
FORMAT = 1


@dataclass
class LabelSet:
    """A finished label set (:func:`load_label_set`). ``label(name)`` gives ``uint8`` [H, W]
    (255 = unlabelled), checked against the size and classes the index records."""

    path: Path
    split: str
    source: str
    classes: tuple[str, ...]
    images: dict[str, dict]
    summary: dict = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.images)

    def file(self, name: str) -> Path:
        if name not in self.images:
            raise DataError(self.path / LABELS_JSON, f"no labels for image {name!r}")
        return self.path / self.images[name]["file"]

    def label(self, name: str) -> np.ndarray:
        p = self.file(name)
        lab = read_label(p)
        rec = self.images[name]
        if lab.shape != (rec["height"], rec["width"]):
            raise DataError(p, f"label map is {lab.shape[1]}x{lab.shape[0]}, labels.json says "
                               f"{rec['width']}x{rec['height']}")
        bad = (lab != IGNORE_INDEX) & (lab >= len(self.classes))
        if bad.any():
            raise DataError(p, f"class id {int(lab[bad][0])} outside 0..{len(self.classes) - 1} (255 = unlabelled)")
        return lab.astype(np.uint8, copy=False)


class LabelSetWriter:
    """Writes a label set into ``folder`` (a stage's temporary or ``.partial`` folder)."""

    def __init__(self, folder: str | Path, info: DatasetInfo, split: str, source: str):
        self.folder = Path(folder)
        self.info, self.split, self.source = info, split, source
        (self.folder / LABELS_DIR).mkdir(parents=True, exist_ok=True)
        self._palette = np.asarray(info.palette, np.uint8)

    def _rel(self, name: str, source: str | Path) -> str:
        return f"{LABELS_DIR}/{safe_name(name, source)}.png"

    def has(self, name: str, source: str | Path = LABELS_JSON) -> bool:
        """Whether image ``name`` was written (by this run or by a killed one before it)."""
        return (self.folder / self._rel(name, source)).is_file()

    def write(self, name: str, labels: np.ndarray, source: str | Path = LABELS_JSON) -> None:
        """``labels`` ``uint8`` [H, W], 255 = unlabelled; ``source`` names where ``name`` came from
        (a name that is not a plain file name is an error naming it)."""
        labels = np.asarray(labels)
        if labels.ndim != 2:
            raise ValueError(f"labels must be [H, W], got shape {labels.shape}")
        write_label_png(self.folder / self._rel(name, source), labels.astype(np.uint8, copy=False), self._palette)

    def finish(self, dataset: SegmentationDataset, summary: dict | None = None) -> LabelSet:
        """Write ``labels.json`` for every image of ``dataset`` (each must have been written)."""
        images = {}
        for i, name in enumerate(dataset.names):
            rel = self._rel(name, dataset.image_path(i))
            if not (self.folder / rel).is_file():
                raise DataError(self.folder / rel, f"missing: image {name!r} was not labelled")
            h, w = image_size(self.folder / rel)
            images[name] = {"file": rel, "height": h, "width": w}
        doc = {"format": FORMAT, "split": self.split, "source": self.source, "classes": list(self.info.classes),
               "palette": [list(map(int, c)) for c in self.info.palette], "images": images,
               "summary": summary or {}}
        write_json(self.folder / LABELS_JSON, doc)
        return load_label_set(self.folder)


def load_label_set(folder: str | Path) -> LabelSet:
    """A label set from an artefact folder (or its ``labels.json``); malformed indexes are one
    :class:`DataError` naming the file."""
    folder = Path(folder)
    if folder.name == LABELS_JSON:
        folder = folder.parent
    path = folder / LABELS_JSON
    doc = read_json(path)

    def bad(problem: str) -> DataError:
        return DataError(path, f"malformed label set: {problem}")

    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise bad(f"expected an object with \"format\": {FORMAT} (a pseudo-labels or extension-labels artefact)")
    classes, images = doc.get("classes"), doc.get("images")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes) or not classes:
        raise bad("'classes' must be a non-empty list of names")
    if not isinstance(images, dict):
        raise bad("'images' must map image names to their label files")
    for name, rec in images.items():
        ok = isinstance(rec, dict) and isinstance(rec.get("file"), str) and all(
            isinstance(rec.get(k), int) and not isinstance(rec.get(k), bool) and rec[k] > 0 for k in ("height", "width"))
        if not ok:
            raise bad(f"images[{name!r}] needs 'file', 'height' and 'width'")
        rel = Path(rec["file"])
        if rel.is_absolute() or ".." in rel.parts or rel.parts[:1] != (LABELS_DIR,):
            raise bad(f"images[{name!r}] file {rec['file']!r} is not inside {LABELS_DIR}/")
    return LabelSet(folder, str(doc.get("split", "")), str(doc.get("source", "")), tuple(classes), dict(images),
                    dict(doc.get("summary") or {}))


def check_label_set(labels: LabelSet, dataset: SegmentationDataset) -> None:
    """Before training: the label set has the dataset's classes and every image at its size."""
    check_label_set_names(labels, dataset)
    for i, name in enumerate(dataset.names):
        rec = labels.images[name]
        h, w = dataset.image_size(i)
        if (rec["height"], rec["width"]) != (h, w):
            raise DataError(labels.file(name), f"labels are {rec['width']}x{rec['height']} but image "
                                               f"{dataset.image_path(i)} is {w}x{h}")


def check_label_set_names(labels: LabelSet, dataset: SegmentationDataset) -> None:
    """The label set has the dataset's classes and an entry for every image (no file is read:
    the sizes are checked as each label map is read)."""
    if tuple(labels.classes) != tuple(dataset.info.classes):
        raise DataError(labels.path / LABELS_JSON, f"its classes ({len(labels.classes)}) are not the dataset's "
                                                   f"({dataset.info.num_classes}, {dataset.info.protocol}): "
                                                   "labels made for another dataset?")
    missing = [n for n in dataset.names if n not in labels.images]
    if missing:
        raise DataError(labels.path / LABELS_JSON, f"has no labels for {len(missing)} of the {len(dataset)} images "
                                                   f"of split {dataset.split!r}, e.g. {missing[0]!r} (it was made "
                                                   f"for split {labels.split!r})")


class LabelSetDataset(SegmentationDataset):
    """``dataset`` with its masks replaced by a label set's labels (255 = unlabelled), images and
    names unchanged: train on the labels as dense masks (an offline extension row's ``--train``),
    or read them beside the clicks (a train stage's ``labels``). Checked by
    :func:`check_label_set` on construction."""

    def __init__(self, dataset: SegmentationDataset, labels: LabelSet):
        check_label_set(labels, dataset)
        super().__init__(dataset.root, dataset.split, dataset.info)
        self.base, self.labels = dataset, labels
        self.names = list(dataset.names)

    def image_path(self, i: int) -> Path:
        return self.base.image_path(i)

    def mask_path(self, i: int) -> Path:
        return self.labels.file(self.names[i])

    def image_size(self, i: int) -> tuple[int, int]:
        return self.base.image_size(i)

    def load_image(self, i: int) -> np.ndarray:
        return self.base.load_image(i)

    def load_mask(self, i: int) -> np.ndarray:
        return self.labels.label(self.names[i])


def label_quality(labels: np.ndarray, clicks: np.ndarray, gt: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
    """Counts of one image's labels ``labels`` [H, W] against ground truth ``gt`` [H, W] (both
    ``uint8``, 255 = none), given its click map ``clicks`` [H, W] (255 off the clicks).

    Returns int64 arrays [C] indexed by class: ``new`` (labelled, not clicked, where the ground
    truth is known, by the label given), ``correct`` (of those, equal to the ground truth),
    ``gt`` (ground-truth pixels per class) and ``covered`` (of those, labelled with any class).
    Sum them over images and finish with :func:`quality_summary`.
    """
    known = gt != IGNORE_INDEX
    lab = labels != IGNORE_INDEX
    new = lab & known & (clicks == IGNORE_INDEX)
    C = num_classes
    return {
        "new": np.bincount(labels[new], minlength=C)[:C].astype(np.int64),
        "correct": np.bincount(labels[new & (labels == gt)], minlength=C)[:C].astype(np.int64),
        "gt": np.bincount(gt[known], minlength=C)[:C].astype(np.int64),
        "covered": np.bincount(gt[known & lab], minlength=C)[:C].astype(np.int64),
    }


def quality_summary(counts: dict[str, np.ndarray], classes, images: int) -> dict:
    """Totals and per-class numbers from summed :func:`label_quality` counts: ``accuracy`` of the
    new pixels, ``coverage`` of the ground truth (share of its pixels carrying a label),
    ``new_pixels_per_image``; per class the accuracy of the pixels given that class and the
    coverage of that class's ground truth (``None`` where undefined)."""

    def ratio(a, b):
        return float(a) / float(b) if b else None

    new, correct, gt, covered = (counts[k] for k in ("new", "correct", "gt", "covered"))
    return {
        "images": int(images),
        "accuracy": ratio(correct.sum(), new.sum()),
        "coverage": ratio(covered.sum(), gt.sum()),
        "new_pixels_per_image": float(new.sum()) / max(int(images), 1),
        "per_class": {str(name): {"accuracy": ratio(correct[c], new[c]), "coverage": ratio(covered[c], gt[c]),
                                  "new_pixels": int(new[c])} for c, name in enumerate(classes)},
    }
