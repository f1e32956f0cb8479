"""Benchmark make-points against the cost of merely decoding the masks.

Generates synthetic scenes (default 256 images of 512x512 with ~15 instances each: ~10 things
plus stuff components) into a temporary folder, then measures in one run:

  (a)  decode only: ``images.read_label`` on every mask PNG (images/s);
  (b)  ``make_points`` with the ``center`` click model, serial;
  (c)  the same with 2 worker processes;

prints (b)/(a) and (c)/(a), and checks that (b) and (c) wrote identical files. Target:
(c)/(a) >= 0.5. Breakdown rows help read the result: the dataset reader alone
(``dataset.load``: decoding plus its checks), the click simulation alone on masks already in
memory, and the per-run cost of starting and stopping the worker pool with no work in it. That
cost does not grow with the dataset, which is why the default is 256 images rather than a
handful: a real split has thousands (ADE20K: 20,210). By default instances come from connected components of each class (masks only, the
PASCAL-Context path); ``--instances`` keeps the 16-bit instance maps (the ADE20K/COCO path).
The machine's load average is printed: on a shared machine the parallel row is only
meaningful when two cores are actually free.

    python benchmarks/bench_make_points.py [--images 64] [--size 512] [--repeat 3] [--instances]
    python benchmarks/bench_make_points.py --root ../shared/data/labelmefacade --split train   # real masks

``--libraries`` adds rows for two compiled single-pass alternatives to the OpenCV calls, on the
same masks (``pip install connected-components-3d edt``; measured, not used by make-points):
cc3d's multi-label 8-connected labelling with ``scipy.ndimage.find_objects`` for the boxes (the
same instances: checked), cc3d's own statistics, and edt's multi-label distance transform of the
whole image (what centre clicks would need in place of one transform per instance).

COCO mode (``--coco``) measures make-points on a COCO instances json against the converter a
COCO user knows from detectron2's PointSup tools (``prepare_coco_point_annotations_without_masks``):
load the json, decode every annotation's mask with pycocotools, draw one random pixel in its
box, label it from the mask, write the json. That converter is written out below
(:func:`bbox_random_points`) and runs in the same process, interleaved with make-points, and both
are timed in CPU seconds (user + system of this process, so other work on the machine does not
count). make-points runs serially and includes opening the dataset (reading and checking the
json) and writing its artefact. Target: ``--click random`` at least 2x the converter's speed,
``--click center`` at least 1x. By default a json like a street-scene dataset is generated
(367 images of 360x480, 35-60 RLE instances each, a fifth of them polygons, 2 % crowd);
``--coco-ann FILE --coco-images DIR`` measures a real one.

    python benchmarks/bench_make_points.py --coco [--repeat 5]
    python benchmarks/bench_make_points.py --coco --coco-ann ../shared/data/voc-coco-sample/data_dataset_coco/annotations.json \
        --coco-images ../shared/data/voc-coco-sample/data_dataset_coco
"""

from __future__ import annotations

import argparse
import copy
import filecmp
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pointparse.datasets import CocoDataset, FolderDataset
from pointparse.images import read_label
from pointparse.simulate import MakePointsConfig, image_rng, make_points, simulate_clicks
from pointparse.pool import fork_pool
from pointparse.synthetic import SyntheticConfig, generate_scenes


def _best_of(repeat: int, fn) -> float:
    """Fastest of ``repeat`` runs (seconds): the one least disturbed by other processes."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def synthetic_coco(root: Path, images: int = 367, height: int = 360, width: int = 480,
                   per_image: tuple[int, int] = (35, 60), classes: int = 11, polygons: float = 0.2,
                   crowd: float = 0.02, seed: int = 0) -> tuple[Path, Path]:
    """A COCO instances json of random overlapping blobs (sizes log-uniform from 6 px to 0.8 of
    the short side; a ``polygons`` share stored as polygons, the rest as compressed RLE; a
    ``crowd`` share marked iscrowd) and blank JPEGs; returns (json path, image folder)."""
    import cv2
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    img_dir = root / "images"
    img_dir.mkdir(parents=True)
    blank = np.full((height, width, 3), 127, np.uint8)
    ims, anns = [], []
    for i in range(images):
        name = f"img{i:05d}.jpg"
        cv2.imwrite(str(img_dir / name), blank)
        ims.append({"id": i + 1, "file_name": name, "height": height, "width": width})
        for _ in range(int(rng.integers(per_image[0], per_image[1] + 1))):
            size = float(np.exp(rng.uniform(np.log(6), np.log(0.8 * min(height, width)))))
            k = int(rng.integers(5, 12))
            ang = np.sort(rng.uniform(0, 2 * np.pi, k))
            rad = size * rng.uniform(0.3, 0.6, k)
            stretch = rng.uniform(0.5, 2.0)
            pts = np.stack([rng.uniform(0, width) + rad * np.cos(ang),
                            rng.uniform(0, height) + rad * stretch * np.sin(ang)], 1)
            pts = np.clip(pts, 0, [width - 1, height - 1])
            is_crowd = bool(rng.random() < crowd)
            if rng.random() < polygons and not is_crowd:
                segm = [pts.ravel().round(2).tolist()]
                rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
            else:
                m = np.zeros((height, width), np.uint8)
                cv2.fillPoly(m, [np.rint(pts).astype(np.int32)], 1)
                rle = mask_utils.encode(np.asfortranarray(m))
                segm = {"size": [height, width], "counts": rle["counts"].decode("ascii")}
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(rng.integers(1, classes + 1)),
                         "segmentation": segm, "area": float(mask_utils.area(rle)),
                         "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": int(is_crowd)})
    ann_file = root / "instances.json"
    ann_file.write_text(json.dumps({"images": ims, "annotations": anns,
                                    "categories": [{"id": c, "name": f"class{c}"} for c in range(1, classes + 1)]}))
    return ann_file, img_dir


def bbox_random_points(ann_file: Path, out_file: Path, seed: int = 0) -> int:
    """The detectron2-style converter: every annotation's mask decoded in full by pycocotools, one
    uniformly random pixel of its json box, labelled 1 if the mask covers it, written as json.
    Returns the number of annotations."""
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    with open(ann_file) as f:
        doc = json.load(f)
    anns = doc.pop("annotations")
    out = copy.deepcopy(doc)
    sizes = {im["id"]: (im["height"], im["width"]) for im in doc["images"]}
    points = []
    for ann in anns:
        h, w = sizes[ann["image_id"]]
        segm = ann.pop("segmentation")
        if isinstance(segm, list):  # polygons: one RLE of their union
            rle = mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
        elif isinstance(segm["counts"], list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(segm, h, w)
        else:
            rle = segm
        mask = mask_utils.decode(rle)
        x, y, bw, bh = ann["bbox"]
        xy = np.floor(rng.random((1, 2)) * [bw, bh] + [x, y]).astype(int)
        xy = np.minimum(xy, [w - 1, h - 1])
        new = copy.deepcopy(ann)
        new["point_coords"] = xy.tolist()
        new["point_labels"] = mask[xy[:, 1], xy[:, 0]].tolist()
        points.append(new)
    out["annotations"] = points
    with open(out_file, "w") as f:
        json.dump(out, f)
    return len(points)


def _cpu_best_of(repeat: int, fns: dict) -> dict:
    """Best CPU seconds (user + system of this process) of each function, ``repeat`` rounds
    interleaved so that a busy spell on the machine hits all of them alike."""
    best = {k: float("inf") for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.process_time()
            fn()
            best[k] = min(best[k], time.process_time() - t0)
    return best


def coco_main(args) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-make-points-coco-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        if args.coco_ann:
            ann_file, img_dir = Path(args.coco_ann).resolve(), Path(args.coco_images).resolve()
        else:
            ann_file, img_dir = synthetic_coco(tmp / "coco")
        gen_s = time.perf_counter() - t0
        root = ann_file.parent
        outs = {}

        def converter() -> None:
            outs["converter"] = bbox_random_points(ann_file, tmp / "converter.json")

        def make(click: str):
            def run() -> None:
                ds = CocoDataset(root, "bench", ann_file=str(ann_file), image_dir=str(img_dir))
                out = tmp / f"out-{click}"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                outs[click] = make_points(ds, MakePointsConfig(click=click, workers=0), out, progress=False)
            return run

        best = _cpu_best_of(args.repeat, {"converter": converter, "random": make("random"), "center": make("center")})
    load1, load5, _ = os.getloadavg()
    st = outs["random"]
    print(f"COCO {ann_file if args.coco_ann else 'synthetic'}: {st['num_images']} images, {outs['converter']} "
          f"annotations, {st['num_points']} clicks (min_area 16); generated in {gen_s:.1f} s; best of "
          f"{args.repeat} (interleaved); {os.cpu_count()} CPUs, load average {load1:.1f}/{load5:.1f}")
    print(f"{'measurement (serial, CPU seconds)':<44}{'seconds':>9}{'speed vs (a)':>14}")
    for name, key in (("(a) bbox-random converter (detectron2-style)", "converter"),
                      ("(b) make-points --click random", "random"),
                      ("(c) make-points --click center", "center")):
        print(f"{name:<44}{best[key]:>9.3f}{best['converter'] / best[key]:>13.2f}x")
    r, c = best["converter"] / best["random"], best["converter"] / best["center"]
    print(f"target (b) >= 2x (a): {'met' if r >= 2 else 'not met'} ({r:.2f}x); "
          f"(c) >= 1x (a): {'met' if c >= 1 else 'not met'} ({c:.2f}x)")
    return 0


def library_rows(samples: list, num_classes: int, repeat: int) -> list[tuple[str, float]]:
    """Seconds over ``samples`` (serial, OpenCV on one thread) of make-points' OpenCV steps and of
    their cc3d / edt counterparts; raises if cc3d's instances differ from find_instances'."""
    import cc3d
    import cv2
    import edt
    import numpy as np
    from scipy import ndimage

    from pointparse.datasets import Instances
    from pointparse.instances import find_instances
    from pointparse.simulate import click_instances
    from pointparse.pool import opencv_single_threaded

    def labels(mask):  # class + 1, so that 255 (ignore) wraps to 0, cc3d's background
        return cc3d.connected_components(mask + np.uint8(1), connectivity=8, out_dtype=np.uint16)

    def cc3d_instances(mask):
        found = []
        lab = labels(mask)
        for j, sl in enumerate(ndimage.find_objects(lab), 1):
            crop = lab[sl] == j
            area = cv2.countNonZero(crop.view(np.uint8))
            if area >= 16:
                y0, x0 = sl[0].start, sl[1].start
                found.append((int(mask[y0, x0 + int(crop[0].argmax())]), (y0, x0, sl[0].stop, sl[1].stop), area, crop))
        found.sort(key=lambda f: (f[0], f[1][0], f[1][1], f[1][2] - f[1][0], f[1][3] - f[1][1], f[2]))
        return Instances.from_list(found)

    masks = [s.mask for s in samples]
    with opencv_single_threaded():
        ref = [find_instances(m, None, 16, num_classes) for m in masks]
        for a, b in zip(ref, map(cc3d_instances, masks)):
            same = (np.array_equal(a.boxes, b.boxes) and np.array_equal(a.classes, b.classes)
                    and np.array_equal(a.areas, b.areas) and all(map(np.array_equal, a.crops, b.crops)))
            if not same:
                raise AssertionError("cc3d's instances differ from find_instances'")
        return [
            ("OpenCV: instances (find_instances)", _best_of(repeat, lambda: [find_instances(m, None, 16, num_classes) for m in masks])),
            ("cc3d: labelling only", _best_of(repeat, lambda: [labels(m) for m in masks])),
            ("cc3d + find_objects: same instances", _best_of(repeat, lambda: [cc3d_instances(m) for m in masks])),
            ("cc3d: labelling + cc3d.statistics", _best_of(repeat, lambda: [cc3d.statistics(labels(m)) for m in masks])),
            ("OpenCV: centre clicks, per instance", _best_of(repeat, lambda: [click_instances(f, "center") for f in ref])),
            ("edt: multi-label transform, image", _best_of(repeat, lambda: [
                edt.edt(labels(m), black_border=True, parallel=1) for m in masks])),
        ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--things", type=int, nargs=2, default=(9, 12), metavar=("MIN", "MAX"),
                    help="thing instances drawn per image (stuff components come on top)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement; the fastest counts")
    ap.add_argument("--click", default="center")
    ap.add_argument("--instances", action="store_true", help="keep instance maps (default: masks only)")
    ap.add_argument("--root", default=None, help="a real folder dataset instead of generated scenes")
    ap.add_argument("--split", default="train", help="its split (with --root)")
    ap.add_argument("--libraries", action="store_true", help="also measure cc3d / edt against the OpenCV steps")
    ap.add_argument("--coco", action="store_true", help="COCO mode: make-points vs a bbox-random converter")
    ap.add_argument("--coco-ann", default=None, help="a COCO instances json (default: generate one)")
    ap.add_argument("--coco-images", default=None, help="the folder its file_name entries are relative to")
    args = ap.parse_args(argv)
    if args.coco or args.coco_ann:
        if args.coco_ann and not args.coco_images:
            ap.error("--coco-ann needs --coco-images")
        return coco_main(args)

    with tempfile.TemporaryDirectory(prefix="bench-make-points-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        if args.root:
            ds = FolderDataset(Path(args.root), args.split)
        else:
            root = generate_scenes(tmp / "scenes", SyntheticConfig(
                seed=0, size=args.size, splits={"bench": args.images}, instances=tuple(args.things),
                image_format="jpg"))
            if not args.instances:
                shutil.rmtree(root / "instances")
            ds = FolderDataset(root, "bench")
        gen_s = time.perf_counter() - t0
        n = len(ds)
        masks = [ds.mask_path(i) for i in range(n)]

        decode_s = _best_of(args.repeat, lambda: [read_label(p) for p in masks])
        load_s = _best_of(args.repeat, lambda: [ds.load(i, with_image=False) for i in range(n)])
        samples = [ds.load(i, with_image=False) for i in range(n)]
        k = ds.info.num_classes
        clicks_s = _best_of(args.repeat, lambda: [
            simulate_clicks(s.mask, s.instances, args.click, 16, image_rng(0, s.name), k) for s in samples])

        def idle_pool() -> None:
            with fork_pool(args.workers) as pool:
                list(pool.map(abs, range(args.workers * 4)))

        libraries = library_rows(samples, k, args.repeat) if args.libraries else []
        pool_s = _best_of(args.repeat, idle_pool)
        outs = {}

        def run(workers: int) -> None:
            out = tmp / f"out-{workers}"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            stats = make_points(ds, MakePointsConfig(click=args.click, workers=workers), out, progress=False)
            outs[workers] = (out, stats)

        serial_s = _best_of(args.repeat, lambda: run(1))
        par_s = _best_of(args.repeat, lambda: run(args.workers))
        same = all(filecmp.cmp(outs[1][0] / f, outs[args.workers][0] / f, shallow=False)
                   for f in ("points.json", "points.csv", "stats.json"))

    stats = outs[1][1]
    load1, load5, _ = os.getloadavg()
    what = f"{args.root} ({args.split})" if args.root else f"synthetic {args.size}x{args.size}"
    print(f"{n} images {what}, {stats['points_per_image']['mean']:.1f} points/image "
          f"({'instance maps + stuff components' if args.instances else 'connected components of masks'}), "
          f"click={args.click}; generated in {gen_s:.1f} s; best of {args.repeat}; "
          f"{os.cpu_count()} CPUs, load average {load1:.1f}/{load5:.1f}")
    print(f"{'measurement':<40}{'seconds':>9}{'images/s':>10}{'ratio to (a)':>14}")
    rows = [("(a) decode masks (images.read_label)", decode_s),
            ("    dataset.load only (breakdown)", load_s),
            ("    click simulation only (breakdown)", clicks_s),
            ("(b) make-points serial", serial_s),
            (f"(c) make-points {args.workers} workers", par_s)]
    for name, s in rows:
        print(f"{name:<40}{s:>9.3f}{n / s:>10.1f}{decode_s / s:>14.2f}")
    print(f"{f'    {args.workers}-worker pool start/stop, no work':<40}{pool_s:>9.3f}   (a per-run cost, in (c))")
    if libraries:
        print(f"compiled alternatives (serial, OpenCV on one thread; ms per image; cc3d's instances equal find_instances'):")
        for name, sec in libraries:
            print(f"    {name:<40}{1e3 * sec / n:>8.2f} ms")
    print(f"serial and parallel outputs identical: {same}")
    ratio = decode_s / par_s
    print(f"target (c)/(a) >= 0.5: {'met' if ratio >= 0.5 else 'not met'} ({ratio:.2f})")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
