"""Benchmark make-points against the cost of merely decoding the masks.

Generates synthetic scenes (default 256 images of 512x512 with ~15 instances each: ~10 things
plus stuff components) into a temporary folder, then measures in one run:

  (a)  decode only: ``io.read_label`` on every mask PNG (images/s);
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
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from pointparse.datasets import FolderDataset
from pointparse.io import read_label
from pointparse.points import MakePointsConfig, image_rng, make_points, simulate_clicks
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
    args = ap.parse_args(argv)

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
    rows = [("(a) decode masks (io.read_label)", decode_s),
            ("    dataset.load only (breakdown)", load_s),
            ("    click simulation only (breakdown)", clicks_s),
            ("(b) make-points serial", serial_s),
            (f"(c) make-points {args.workers} workers", par_s)]
    for name, s in rows:
        print(f"{name:<40}{s:>9.3f}{n / s:>10.1f}{decode_s / s:>14.2f}")
    print(f"{f'    {args.workers}-worker pool start/stop, no work':<40}{pool_s:>9.3f}   (a per-run cost, in (c))")
    print(f"serial and parallel outputs identical: {same}")
    ratio = decode_s / par_s
    print(f"target (c)/(a) >= 0.5: {'met' if ratio >= 0.5 else 'not met'} ({ratio:.2f})")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
