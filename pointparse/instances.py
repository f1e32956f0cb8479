"""The instances of one image, as make-points clicks them (one click per instance).

What an *instance* is (per image):

* with an instance map: every instance id ``> 0`` is one instance. Its class is the majority
  class of the mask under it (ignore pixels, 255, do not vote; ties go to the lower class id)
  and its pixels are the pixels of that id *that carry that class* — pixels of other classes
  under the same id (annotation disagreement) and 255 pixels are left out, so a click always
  carries the class the dense mask gives its pixel. Labelled pixels with instance id 0 (stuff
  classes, which ADE20K and the synthetic scenes give no instances) fall back to the rule below;
* without an instance map: each 8-connected component of each class (diagonally touching pixels
  belong to the same instance, as ``scipy.ndimage.label`` with a 3x3 structure).

Instances with fewer than ``min_area`` pixels are left out (they get no click).
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from . import IGNORE_INDEX
from .datasets import Instances


def _present_classes(leftover: np.ndarray, num_classes: int | None) -> list[int]:
    """Class ids (< 255) that occur in ``leftover`` uint8 [H, W]."""
    if num_classes is not None and num_classes <= 32:
        return list(range(num_classes))  # a few cheap compares beat a histogram
    hist = cv2.calcHist([leftover], [0], None, [256], [0, 256]).ravel()
    return [int(c) for c in np.flatnonzero(hist[:IGNORE_INDEX])]


#: up to this many components, overlapping boxes are found by comparing all pairs
_PAIRWISE_MAX = 256


def _contour_depths(parents: np.ndarray) -> np.ndarray:
    """Nesting depth of each contour of a ``RETR_TREE`` hierarchy (``parents`` int [N], -1 = top).

    Even depth = outer border of a component, odd = border of a hole. Pointer jumping: every
    round doubles how far each contour has looked up the tree, so deep nesting (noisy masks)
    takes log2(depth) vectorised rounds instead of a Python step per contour and level.
    """
    anc = np.asarray(parents, np.int64).copy()  # the farthest ancestor looked at so far, -1 = past the top
    depth = (anc >= 0).astype(np.int64)         # hops from each contour to ``anc``
    live = np.flatnonzero(anc >= 0)
    while len(live):
        up = anc[live]
        depth[live] += depth[up]  # right-hand sides are read before the writes: one synchronous round
        anc[live] = anc[up]
        live = live[anc[live] >= 0]
    return depth


def _components(binary: np.ndarray, oy: int, ox: int, cls: int, total: int, min_area: int, out: list) -> None:
    """Append the 8-connected components (>= ``min_area`` px) of ``binary`` uint8 [h, w] (0/non-zero,
    ``total`` foreground pixels, top-left pixel at ``(oy, ox)`` in the image) to ``out`` as
    ``(class, box, area, crop)``, ordered by box then area.

    Components come from the border-following contours of ``cv2.findContours`` (outer borders
    are 8-connected, which is the component rule) rather than a labelling pass: it costs about a
    fifth of ``cv2.connectedComponents`` and gives every component's box for free. A component's
    crop is the class pixels inside its filled outer border, less the islands nested in its
    holes; when its box meets no other component's box and its holes hold no islands, that is
    simply the class pixels of its box. (Tests check this against ``scipy.ndimage.label``.)
    """
    contours, hierarchy = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return
    hier = hierarchy[0]  # [N, 4]: next, previous, first child, parent
    nested = np.zeros(len(contours), bool)  # holes holding islands
    if len(contours) == 1 or not (hier[:, 3] >= 0).any():  # no holes: every contour is a component
        outer = np.arange(len(contours))
    else:
        depth = _contour_depths(hier[:, 3])
        outer = np.flatnonzero(depth % 2 == 0)
        # an island is an outer border at depth >= 2; its grandparent is the component around it
        nested[hier[outer[depth[outer] >= 2], 3]] = True
    if len(outer) == 1 and not nested.any():
        if total >= min_area:
            out.append((cls, (oy, ox, oy + binary.shape[0], ox + binary.shape[1]), total, binary != 0))
        return
    boxes = np.array([cv2.boundingRect(contours[i]) for i in outer], np.int64)  # x, y, w, h
    x0, y0 = boxes[:, 0], boxes[:, 1]
    x1, y1 = x0 + boxes[:, 2], y0 + boxes[:, 3]
    if len(outer) <= _PAIRWISE_MAX:
        meets = ((x0[:, None] < x1[None]) & (x0[None] < x1[:, None]) &
                 (y0[:, None] < y1[None]) & (y0[None] < y1[:, None])).sum(axis=1) > 1
    else:  # too many for the pairwise test: draw every one
        meets = np.ones(len(outer), bool)
    found = []  # (y, x, h, w, area, crop)
    for k, (i, (x, y, w, h)) in enumerate(zip(outer.tolist(), boxes.tolist())):
        if w * h < min_area:  # too small whatever its shape
            continue
        holes_with_islands = []
        hole = int(hier[i][2])
        while hole >= 0:
            if nested[hole]:
                holes_with_islands.append(hole)
            hole = int(hier[hole][0])
        box = binary[y:y + h, x:x + w]
        if not meets[k] and not holes_with_islands:
            crop = box
        else:
            crop = np.zeros((h, w), np.uint8)
            cv2.drawContours(crop, contours, i, 255, thickness=cv2.FILLED, offset=(-x, -y))
            for hole in holes_with_islands:
                island = int(hier[hole][2])
                while island >= 0:
                    cv2.drawContours(crop, contours, island, 0, thickness=cv2.FILLED, offset=(-x, -y))
                    island = int(hier[island][0])
            cv2.bitwise_and(crop, box, dst=crop)
        area = cv2.countNonZero(crop)
        if area >= min_area:
            found.append((y, x, h, w, area, crop != 0))
    found.sort(key=lambda f: f[:5])
    for y, x, h, w, area, crop in found:
        out.append((cls, (oy + y, ox + x, oy + y + h, ox + x + w), area, crop))


def find_instances(mask: np.ndarray, instances: np.ndarray | None = None, min_area: int = 16,
                   num_classes: int | None = None) -> Instances:
    """The instances of one image (rules in the module docstring).

    ``mask``: uint8 [H, W] class ids, 255 = ignore. ``instances``: non-negative integer [H, W]
    instance ids (0 = none) or ``None``. ``num_classes`` (optional) bounds the class ids to
    look for. Order: instance-map instances by id, then connected components by class and,
    within a class, by the top-left corner of their box.
    """
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    min_area = max(int(min_area), 1)
    found: list = []  # (class, (y0, x0, y1, x1), area, crop)
    leftover = mask  # labelled pixels not yet covered by an instance (255 elsewhere)

    if instances is not None:
        inst = np.asarray(instances)
        if inst.shape != mask.shape:
            raise ValueError(f"instance map {inst.shape} and mask {mask.shape} differ in shape")
        if inst.dtype.kind not in "iu":
            raise ValueError(f"instance map must hold integers, got {inst.dtype}")
        if inst.dtype.kind == "i" and inst.size and int(inst.min()) < 0:
            raise ValueError("instance ids must be >= 0")
        if inst.dtype.itemsize > 4 or inst.dtype == np.uint32:
            inst = inst.astype(np.int32)
        # One pass finds every id's box; everything after works on those crops.
        for k, sl in enumerate(ndimage.find_objects(inst), 1):
            if sl is None:
                continue
            ids = inst[sl] == k
            cls_crop = mask[sl]
            votes = np.bincount(cls_crop[ids], minlength=256)[:IGNORE_INDEX]
            cls = int(votes.argmax())  # first maximum: ties go to the lower class id
            area = int(votes[cls])
            if area < min_area:
                continue
            member = ids & (cls_crop == cls)
            x, y, bw, bh = cv2.boundingRect(member.view(np.uint8))
            oy, ox = sl[0].start + y, sl[1].start + x
            found.append((cls, (oy, ox, oy + bh, ox + bw), area, member[y:y + bh, x:x + bw]))
        leftover = np.where(inst == 0, mask, np.uint8(IGNORE_INDEX))

    for c in _present_classes(leftover, num_classes):
        # numpy, not cv2.compare: OpenCV 5 reads a scalar beside an [N<=4, 1] array as a 4-vector
        binary = (leftover == c).view(np.uint8)  # 0/1
        total = cv2.countNonZero(binary)
        if total < min_area:
            continue
        x, y, bw, bh = cv2.boundingRect(binary)  # connected components run on this box only
        _components(np.ascontiguousarray(binary[y:y + bh, x:x + bw]), y, x, c, total, min_area, found)

    return Instances.from_list(found)
