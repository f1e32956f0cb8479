"""Image decoding: :func:`pointparse.images.read_image` (OpenCV where it gives PIL's pixels) vs
PIL for every file, on the images of the given folders, side by side in alternating rounds;
prints ms per image (best round) and the ratio, and checks the pixels are identical.

    python benchmarks/bench_decode.py ../shared/data/camvid/images/train ../shared/data/labelmefacade/images/train
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from pointparse import images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--images", type=int, default=40, help="first N images of each folder")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    def per_image(paths) -> float:
        t0 = time.perf_counter()
        for p in paths:
            images.read_image(p)
        return 1e3 * (time.perf_counter() - t0) / len(paths)

    def pil_ms(paths) -> float:
        with pil_only():
            return per_image(paths)

    print(f"{'folder':<40}{'images':>7}{'read_image ms':>15}{'PIL ms':>9}{'speed-up':>10}  identical")
    for folder in args.folders:
        paths = images.list_images(folder)[:args.images]
        if not paths:
            raise SystemExit(f"{folder}: no images")
        with pil_only():
            reference = [images.read_image(p) for p in paths]
        same = all(np.array_equal(images.read_image(p), ref) for p, ref in zip(paths, reference))
        fast, slow = zip(*[(per_image(paths), pil_ms(paths)) for _ in range(args.rounds)])
        print(f"{str(folder)[-40:]:<40}{len(paths):>7}{min(fast):>15.2f}{min(slow):>9.2f}"
              f"{min(slow) / min(fast):>9.2f}x  {same}")


@contextlib.contextmanager
def pil_only() -> Iterator[None]:
    """``read_image`` as before its OpenCV path: PIL for every file."""
    flags, images._OPENCV_FLAGS = images._OPENCV_FLAGS, None
    try:
        yield
    finally:
        images._OPENCV_FLAGS = flags


if __name__ == "__main__":
    main()
