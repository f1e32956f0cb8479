"""Image decoding: :func:`pointparse.images.read_image` (OpenCV where it gives PIL's pixels) vs
PIL for every file, on the images of the given folders, side by side in alternating rounds;
prints ms per image (best round) and the ratio, and checks the pixels are identical.

    python benchmarks/bench_decode.py ../shared/data/camvid/images/train ../shared/data/labelmefacade/images/train
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from pointparse import images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--images", type=int, default=40, help="first N images of each folder")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    opencv = images._OPENCV_FLAGS

    def per_image(paths, flags) -> float:
        images._OPENCV_FLAGS = flags
        t0 = time.perf_counter()
        for p in paths:
            images.read_image(p)
        images._OPENCV_FLAGS = opencv
        return 1e3 * (time.perf_counter() - t0) / len(paths)

    print(f"{'folder':<40}{'images':>7}{'read_image ms':>15}{'PIL ms':>9}{'speed-up':>10}  identical")
    for folder in args.folders:
        paths = images.list_images(folder)[:args.images]
        if not paths:
            raise SystemExit(f"{folder}: no images")
        same = all(np.array_equal(images.read_image(p), _pil(p)) for p in paths)
        fast, slow = zip(*[(per_image(paths, opencv), per_image(paths, None)) for _ in range(args.rounds)])
        print(f"{str(folder)[-40:]:<40}{len(paths):>7}{min(fast):>15.2f}{min(slow):>9.2f}"
              f"{min(slow) / min(fast):>9.2f}x  {same}")


def _pil(path) -> np.ndarray:
    flags, images._OPENCV_FLAGS = images._OPENCV_FLAGS, None
    try:
        return images.read_image(path)
    finally:
        images._OPENCV_FLAGS = flags


if __name__ == "__main__":
    main()
