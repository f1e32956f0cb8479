"""The COCO reader (``kind: coco``): class and instance maps painted from an instances json, and
make-points' shortcut that reads each annotation's visible pixels without painting whole maps
(:meth:`CocoDataset.click_instances`)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from .. import IGNORE_INDEX
from ..errors import DataError
from ..io import read_json
from .base import ClickInstances, Instances, SegmentationDataset, require_dir
from .classes import DatasetInfo, default_palette
from .rle import rle_crops

#: up to this many annotations per image, the ones whose boxes meet are found by comparing all pairs
_PAIRWISE_BOXES = 1024

class CocoDataset(SegmentationDataset):
    """COCO-style instance annotations (any json in that format), protocol ``coco-<K>``::

        root/annotations/instances_{split}2017.json    option ann_file (relative to root or absolute)
        root/{split}2017/<file_name>                   option image_dir; file_name may hold subfolders

    Categories are renumbered 0..K-1 in category-id order (names from the json; palette
    :func:`default_palette`). The class mask holds things only: pixels no annotation covers are
    255, and so are crowd regions. Polygons and (un)compressed RLE decode exactly as
    ``pycocotools.coco.COCO.annToMask`` does. Annotations are painted from the largest area to
    the smallest so small objects stay visible where masks overlap; crowd regions take part in
    that order as 255. Instances: one id per non-crowd annotation (1..N in json order).
    """

    kind = "coco"
    options = {
        "ann_file": "instances json, relative to root (default annotations/instances_<split>2017.json)",
        "image_dir": "folder that the json's file_name entries are relative to (default <split>2017)",
    }

    def __init__(self, root: str | Path, split: str = "train", ann_file: str | None = None, image_dir: str | None = None):
        root = Path(root)
        require_dir(root, "dataset root")
        ann = _under(root, ann_file or f"annotations/instances_{split}2017.json")
        if not ann.is_file():
            hint = "" if ann_file else "; set the ann_file option for another layout"
            raise DataError(ann, f"COCO annotation file does not exist{hint}")
        img_dir = _under(root, image_dir or f"{split}2017")
        if not img_dir.is_dir():
            hint = "" if image_dir else "; set the image_dir option for another layout"
            raise DataError(img_dir, f"image folder does not exist{hint}")
        data = read_json(ann)
        self.ann_file, self.image_dir = ann, img_dir
        cats = self._categories(data)
        info = DatasetInfo(
            name=root.resolve().name,
            protocol=f"coco-{len(cats)}",
            classes=tuple(c[1] for c in cats),
            palette=default_palette(len(cats)),
        )
        super().__init__(root, split, info)
        self._cat_index = {cid: k for k, (cid, _) in enumerate(cats)}
        self._images = self._image_entries(data)
        self.names = [Path(im["file_name"]).stem for im in self._images]
        self._require_nonempty(ann)
        self._require_unique_names(ann)
        missing = [self.image_path(i) for i in range(len(self)) if not self.image_path(i).is_file()]
        if missing:
            more = f" ({len(missing)} of {len(self)} listed images are missing)" if len(missing) > 1 else ""
            raise DataError(missing[0], f"image listed in {ann} does not exist{more}")
        self._anns = self._group_annotations(data)
        self._last: tuple[int, np.ndarray, np.ndarray] | None = None

    # -- json validation -----------------------------------------------------------------------
    def _categories(self, data) -> list[tuple[int, str]]:
        if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
            raise DataError(self.ann_file, "not a COCO instances json: needs lists 'images', 'annotations' and 'categories'")
        cats = []
        for c in data["categories"]:
            if not isinstance(c, dict) or not isinstance(c.get("id"), int) or "name" not in c:
                raise DataError(self.ann_file, f"category entry {c!r} needs an integer 'id' and a 'name'")
            cats.append((c["id"], str(c["name"])))
        cats.sort()
        ids = [c[0] for c in cats]
        if len(set(ids)) != len(ids):
            raise DataError(self.ann_file, "two categories share an id")
        if not cats:
            raise DataError(self.ann_file, "the json lists no categories")
        if len(cats) > IGNORE_INDEX:
            raise DataError(self.ann_file, f"{len(cats)} categories; at most {IGNORE_INDEX} fit in uint8 masks beside the ignore label")
        return cats

    def _image_entries(self, data) -> list[dict]:
        out, seen = [], set()
        for im in data["images"]:
            if not isinstance(im, dict) or not all(k in im for k in ("id", "file_name", "height", "width")):
                raise DataError(self.ann_file, f"image entry {str(im)[:120]} needs 'id', 'file_name', 'height' and 'width'")
            if not all(isinstance(im[k], int) and im[k] > 0 for k in ("height", "width")):
                raise DataError(self.ann_file, f"image {im['id']!r}: height and width must be positive integers")
            if im["id"] in seen:
                raise DataError(self.ann_file, f"image id {im['id']!r} is listed twice")
            seen.add(im["id"])
            out.append(im)
        return out

    def _group_annotations(self, data) -> dict:
        by_image: dict = {im["id"]: [] for im in self._images}
        for a in data["annotations"]:
            if not isinstance(a, dict) or "image_id" not in a or "category_id" not in a:
                raise DataError(self.ann_file, f"annotation {str(a)[:120]} needs 'image_id' and 'category_id'")
            aid = a.get("id", "?")
            if a["image_id"] not in by_image:
                raise DataError(self.ann_file, f"annotation {aid} refers to image_id {a['image_id']!r}, which 'images' does not list")
            if a["category_id"] not in self._cat_index:
                raise DataError(self.ann_file, f"annotation {aid} has category_id {a['category_id']!r}, which 'categories' does not list")
            if "segmentation" not in a:
                raise DataError(self.ann_file, f"annotation {aid} has no 'segmentation' (polygons or RLE are needed for masks)")
            by_image[a["image_id"]].append(a)
        return by_image

    # -- hooks ---------------------------------------------------------------------------------
    def image_path(self, i: int) -> Path:
        return self.image_dir / self._images[i]["file_name"]

    def mask_path(self, i: int) -> Path | None:
        """The json: the masks are painted from it."""
        return self.ann_file

    def instance_path(self, i: int) -> Path | None:
        return self.ann_file

    def files(self) -> list[Path]:
        return [self.image_path(i) for i in range(len(self))] + self.extra_files()

    def extra_files(self) -> list[Path]:
        return [self.ann_file]

    def _size_mismatch(self, i: int, mask_hw: tuple[int, int], image_hw: tuple[int, int]) -> DataError:
        im = self._images[i]
        return DataError(
            self.image_path(i),
            f"image is {image_hw[1]}x{image_hw[0]} but {self.ann_file.name} lists it (id {im['id']}) as {mask_hw[1]}x{mask_hw[0]}",
        )

    def _rle_and_area(self, ann: dict, h: int, w: int):
        """(compressed RLE, pixel area) built the way ``COCO.annToRLE`` does; None if no polygon."""
        segm = ann["segmentation"]
        try:
            if isinstance(segm, list):
                if not segm:
                    return None
                rle = mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
            elif isinstance(segm, dict) and isinstance(segm.get("counts"), list):
                rle = mask_utils.frPyObjects(segm, h, w)
            elif isinstance(segm, dict) and "counts" in segm and "size" in segm:
                rle = segm
            else:
                raise ValueError(f"unsupported segmentation {str(segm)[:80]}")
            if [int(v) for v in rle["size"]] != [h, w]:
                raise ValueError(f"RLE size {rle['size']} differs from the image's {h}x{w} (height x width)")
            area = int(mask_utils.area(rle))
        except Exception as exc:  # pycocotools raises bare Exception on unsupported input
            raise DataError(self.ann_file, f"annotation {ann.get('id', '?')}: cannot decode segmentation ({exc})") from None
        return rle, area

    def _layers(self, i: int) -> tuple[int, int, list]:
        """(H, W, layers) of image ``i``: its annotations in painting order (largest pixel area first,
        json order among equals) as ``(id, class, y0, x0, crop_t, area)``; ``id`` 0 and class 255
        for crowd regions; ``crop_t`` bool [w, h] is the annotation's tight box *transposed*
        (RLE runs go down the columns). Each RLE is decoded once, into its box only
        (:func:`rle_crops`); one that is not a well-formed RLE of the image's size is decoded by
        pycocotools, as before."""
        im = self._images[i]
        h, w = int(im["height"]), int(im["width"])
        hw = [h, w]
        entries = []  # [area or None, order, rle, iid, class]
        next_id = 1
        for order, ann in enumerate(self._anns[im["id"]]):
            crowd = bool(ann.get("iscrowd", 0))
            iid = 0
            if not crowd:  # ids follow json order whether or not the mask is empty
                iid, next_id = next_id, next_id + 1
            segm = ann["segmentation"]
            if (type(segm) is dict and type(segm.get("counts")) in (str, bytes) and segm.get("size") == hw
                    and type(segm["size"][0]) is int and type(segm["size"][1]) is int):
                rle, area = segm, None  # compressed RLE of the right size: the decoder gives its area
            else:  # polygons, uncompressed RLE, anything odd: pycocotools, and its errors
                decoded = self._rle_and_area(ann, h, w)
                if decoded is None:
                    continue
                rle, area = decoded
            entries.append([area, order, rle, iid, IGNORE_INDEX if crowd else self._cat_index[ann["category_id"]]])
        counts = [e[2]["counts"] for e in entries]
        crops = rle_crops([c.encode("utf-8") if type(c) is str else c for c in counts], h, w)
        for e, got in zip(entries, crops):
            if got is None or (e[0] is not None and got[0] != e[0]):  # not an RLE the decoder vouches for
                if e[0] is None:
                    try:
                        e[0] = int(mask_utils.area(e[2]))
                    except Exception as exc:  # pycocotools raises bare Exception on unsupported input
                        raise DataError(self.ann_file, f"annotation {self._anns[im['id']][e[1]].get('id', '?')}: "
                                                       f"cannot decode segmentation ({exc})") from None
                sel = mask_utils.decode(e[2]).astype(bool)
                x, y, bw, bh = cv2.boundingRect(sel.view(np.uint8))
                got = (int(np.count_nonzero(sel)), y, x, sel[y:y + bh, x:x + bw].T) if bw else (0, 0, 0, None)
            elif e[0] is None:
                e[0] = got[0]
            e.append(got)
        entries.sort(key=lambda e: (-e[0], e[1]))
        return h, w, [(iid, cls, got[1], got[2], got[3], got[0]) for _, _, _, iid, cls, got in entries if got[0]]

    @staticmethod
    def _paint_ids_t(h: int, w: int, layers: list) -> np.ndarray:
        """The instance map of painted ``layers``, transposed: [W, H] (crowd regions paint 0), in the
        smallest unsigned type that holds the ids (painting and reading it back is memory-bound)."""
        top = max((layer[0] for layer in layers), default=0)
        inst_t = np.zeros((w, h), dtype=np.uint8 if top < 256 else np.uint16 if top < 65536 else np.int32)
        for iid, _, y0, x0, crop_t, _ in layers:
            bw, bh = crop_t.shape
            np.copyto(inst_t[x0:x0 + bw, y0:y0 + bh], iid, where=crop_t)
        return inst_t

    def _paint(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        h, w, layers = self._layers(i)
        inst = self._paint_ids_t(h, w, layers).T.astype(np.int32, order="C")
        # every pixel's class is that of the last annotation painted over it: a look-up of its id
        # (crowd regions and pixels no annotation covers have id 0 and class 255)
        table = np.full(len(self._anns[self._images[i]["id"]]) + 1, IGNORE_INDEX, np.uint8)
        for iid, cls, *_ in layers:
            if iid:
                table[iid] = cls
        return table[inst], inst

    def click_instances(self, i: int, min_area: int) -> ClickInstances | None:
        """Each non-crowd annotation's visible pixels (those no later-painted annotation covers).

        Only annotations whose box meets another's are painted, and only those whose box meets a
        later-painted one's are read back (inside their own box); the others are visible whole.
        """
        h, w, layers = self._layers(i)
        image_hw = self.image_size(i)
        if (h, w) != image_hw:
            raise self._size_mismatch(i, (h, w), image_hw)
        min_area = max(int(min_area), 1)
        n = len(layers)
        if 1 < n <= _PAIRWISE_BOXES:
            x0, y0 = np.array([layer[3] for layer in layers]), np.array([layer[2] for layer in layers])
            x1 = x0 + np.array([layer[4].shape[0] for layer in layers])
            y1 = y0 + np.array([layer[4].shape[1] for layer in layers])
            meets = ((x0[:, None] < x1[None]) & (x0[None] < x1[:, None]) &
                     (y0[:, None] < y1[None]) & (y0[None] < y1[:, None]))
            np.fill_diagonal(meets, False)
            covered = np.triu(meets).any(axis=1).tolist()  # a later annotation may hide some pixels
            inst_t = self._paint_ids_t(h, w, [layer for layer, m in zip(layers, meets.any(axis=1).tolist()) if m])
        else:
            covered = [n > 1] * n
            inst_t = self._paint_ids_t(h, w, layers) if n > 1 else None
        found, labelled = [], 0
        for (iid, cls, y0, x0, crop_t, area), hidden in zip(layers, covered):
            if not iid:  # crowd
                continue
            if not hidden:
                labelled += area
                if area >= min_area:
                    bw, bh = crop_t.shape
                    found.append((iid, cls, (y0, x0, y0 + bh, x0 + bw), area, np.ascontiguousarray(crop_t.T)))
                continue
            bw, bh = crop_t.shape
            vis = inst_t[x0:x0 + bw, y0:y0 + bh] == iid
            seen = cv2.countNonZero(vis.view(np.uint8))
            labelled += seen
            if seen < min_area:
                continue
            if seen < area:  # partly covered: the box may shrink
                y, x, bh, bw = cv2.boundingRect(vis.view(np.uint8))  # transposed: x is the row
                vis, y0, x0 = vis[x:x + bw, y:y + bh], y0 + y, x0 + x
            found.append((iid, cls, (y0, x0, y0 + bh, x0 + bw), seen, np.ascontiguousarray(vis.T)))
        found.sort(key=lambda f: f[0])  # instance-id order, as find_instances gives
        return ClickInstances(self.names[i], h, w, labelled, Instances.from_list([f[1:] for f in found]))

    def _decode_mask(self, i: int) -> np.ndarray:
        mask, inst = self._paint(i)
        self._last = (i, mask, inst)  # load() asks for the instances next: paint once
        return mask

    def _decode_instances(self, i: int, mask: np.ndarray) -> np.ndarray | None:
        last = self._last
        if last is not None and last[0] == i:
            return last[2]
        return self._paint(i)[1]


def _under(root: Path, p: str | Path) -> Path:
    p = Path(p)
    return p if p.is_absolute() else root / p
