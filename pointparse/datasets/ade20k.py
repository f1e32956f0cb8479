"""The ADE20K SceneParsing reader (``kind: ade20k``, protocol ``ade20k-150``) and the instance
maps of the ADE instance challenge (:func:`ade20k_instances`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import IGNORE_INDEX
from ..errors import DataError
from ..images import list_images, read_rgb_label
from .base import StemPairedDataset, check_instance_size, check_raw_range, label_lut, pair_by_stem, require_dir
from .classes import DatasetInfo, load_descriptor

#: accepted split names -> ADEChallengeData2016 folder names
ADE20K_SPLITS = {"train": "training", "val": "validation", "test": "testing"}
#: the ADE instance challenge annotates 100 "thing" categories (R channel 1..100)
ADE20K_INSTANCE_CATEGORIES = 100


def ade20k_instances(rgb: np.ndarray, mask: np.ndarray, path: Path | None = None) -> np.ndarray:
    """Instance ids from an ADE instance-challenge PNG, made consistent with the class mask.

    ``rgb`` is the ``uint8`` [H, W, 3] file: R = instance category (1..100, 0 = none), G = instance
    id. An instance is a distinct (R, G) pair with R > 0. Its class in the 150-class protocol is
    the majority label of the class ``mask`` ([H, W] ``uint8``, 255 = ignore) under it, which
    needs no category mapping table. Pixels of the instance that the class mask labels otherwise
    (ignore, or another class where the two annotation releases disagree) are dropped from the
    instance, so every instance is class-pure and any click inside it carries its class; an
    instance with no labelled pixel disappears. Returns ``int32`` [H, W], 0 = no instance,
    ids 1..N numbered in (R, G) order. Stuff classes have no instances (0) in this map.
    """
    r = rgb[..., 0]
    if int(r.max(initial=0)) > ADE20K_INSTANCE_CATEGORIES:
        vals = sorted(int(v) for v in np.unique(r[r > ADE20K_INSTANCE_CATEGORIES]))[:10]
        raise DataError(
            path or "<instance map>",
            f"red channel value(s) {vals} outside 0..{ADE20K_INSTANCE_CATEGORIES}: not an ADE instance-challenge "
            "annotation (R = category 1..100, G = instance id)",
        )
    inst = np.zeros(mask.shape, dtype=np.int32)
    fg = r > 0
    if not fg.any():
        return inst
    key = r[fg].astype(np.int32) * 256 + rgb[..., 1][fg]
    _, idx = np.unique(key, return_inverse=True)
    n = int(idx.max()) + 1
    labels = mask[fg].astype(np.int64)
    counts = np.bincount(idx * 256 + labels, minlength=n * 256).reshape(n, 256)
    counts[:, IGNORE_INDEX] = 0
    majority = counts.argmax(axis=1)
    keep = (labels == majority[idx]) & (counts.max(axis=1) > 0)[idx]
    # renumber the surviving instances 1..M so ids stay dense
    _, new = np.unique(idx[keep], return_inverse=True)
    vals = np.zeros(idx.shape, dtype=np.int32)
    vals[keep] = new.astype(np.int32) + 1
    inst[fg] = vals
    return inst


class ADE20KDataset(StemPairedDataset):
    """ADE20K SceneParsing (``ADEChallengeData2016``), protocol ``ade20k-150``::

        ADEChallengeData2016/images/{training,validation}/ADE_*.jpg
        ADEChallengeData2016/annotations/{training,validation}/ADE_*.png          uint8, 0..150
        ADEChallengeData2016/annotations_instance/{training,validation}/ADE_*.png optional, RGB

    ``root`` is the ``ADEChallengeData2016`` folder or its parent; ``train``/``val``/``test`` are
    aliases of ``training``/``validation``/``testing`` (``testing`` may lack annotations).
    Labels: raw 0 ("other", not one of the 150 classes) → 255 ignore, raw k in 1..150 → k-1
    (mmsegmentation's ``reduce_zero_label``). Any other raw value is an error, which also catches
    masks that were already reduced to 0..149 + 255. Instances (when ``annotations_instance/``
    exists, as released with the Places instance challenge) come from :func:`ade20k_instances`.
    """

    kind = "ade20k"
    NUM_RAW_CLASSES = 150

    def __init__(self, root: str | Path, split: str = "train"):
        root = Path(root)
        require_dir(root, "dataset root")
        base = root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root
        sub = ADE20K_SPLITS.get(split, split)
        super().__init__(base, sub, DatasetInfo.from_dict(load_descriptor("ade20k")))
        img_dir = base / "images" / sub
        if not img_dir.is_dir():
            raise DataError(
                img_dir,
                f"images folder for split {split!r} does not exist; root must be ADEChallengeData2016 or its "
                "parent, splits are training/validation (aliases train/val)",
            )
        self._images = list_images(img_dir)
        self.names = [p.stem for p in self._images]
        self._require_nonempty(img_dir)
        ann_dir = base / "annotations" / sub
        if ann_dir.is_dir():
            self._masks = pair_by_stem(self._images, ann_dir, "annotation")
        elif sub == "testing":
            self._masks = None
        else:
            raise DataError(ann_dir, "annotations folder does not exist")
        inst_dir = base / "annotations_instance" / sub
        self._inst = pair_by_stem(self._images, inst_dir, "instance annotation") if inst_dir.is_dir() else None
        self._lut = label_lut({k: k - 1 for k in range(1, self.NUM_RAW_CLASSES + 1)})

    def _check_raw(self, raw: np.ndarray, path: Path) -> None:
        check_raw_range(raw, self.NUM_RAW_CLASSES, path, "ADE20K SceneParsing: 0 = other, 1..150 = classes")

    def _decode_instances(self, i: int, mask: np.ndarray) -> np.ndarray | None:
        p = self.instance_path(i)
        if p is None:
            return None
        rgb = read_rgb_label(p)
        check_instance_size(p, rgb.shape, mask.shape)
        return ade20k_instances(rgb, mask, p)
