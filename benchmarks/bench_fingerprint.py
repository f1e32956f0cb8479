"""Benchmark the dataset fingerprint of a cache key: size+mtime against bytes, with and without the memo.

Measures, interleaved, on one split of a folder dataset (default: a generated one of 512 PNG pairs
of 512x512; ``--root`` a real one):

  (a)  ``--stat-hash``: relative path, size and mtime of every image and mask;
  (b)  bytes, no memo (what ``--content-hash`` cost before the memo, on every command);
  (c)  bytes with the memo, first command (reads, then remembers);
  (d)  bytes with the memo, a later command (the memo answers: one ``stat`` per file);

and prints (b)/(a), (c)/(a), (d)/(a). The files are read from the page cache after the first
repeat (warm), so (b) and (c) are a floor: on a cold network file system reading costs more. Target:
(d)/(a) <= 1.5, so fingerprinting by content costs a later command about what size+mtime does.

    python benchmarks/bench_fingerprint.py [--images 512] [--repeat 5]
    python benchmarks/bench_fingerprint.py --root ../shared/data/labelmefacade --split train
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pointparse.datasets import open_dataset
from pointparse.keys import fingerprint_files


def make_folder(root: Path, n: int, size: int) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("0 ground 0:128:0\n1 thing 128:0:0\n")
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / "images" / f"{i:05d}.png")
        Image.fromarray((rng.random((size, size)) < 0.3).astype(np.uint8)).save(root / "masks" / f"{i:05d}.png")
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=None, help="a folder dataset (default: generate one)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root) if args.root else make_folder(Path(tmp) / "data", args.images, args.size)
        ds = open_dataset("folder", root, split=args.split)
        files = list(ds.files())
        mib = sum(Path(f).stat().st_size for f in files) / 2**20
        print(f"# {root}: {len(files)} files, {mib:.0f} MiB")
        times = {k: [] for k in "abcd"}
        for r in range(args.repeat):
            memo = Path(tmp) / f"memo{r}"
            runs = {"a": lambda: fingerprint_files(files, base=ds.root),
                    "b": lambda: fingerprint_files(files, content=True, base=ds.root),
                    "c": lambda: fingerprint_files(files, content=True, base=ds.root, memo=memo),
                    "d": lambda: fingerprint_files(files, content=True, base=ds.root, memo=memo)}
            got = {}
            for k, fn in runs.items():  # c before d: d finds c's entry
                t = time.perf_counter()
                got[k] = fn()
                times[k].append(time.perf_counter() - t)
            assert got["b"] == got["c"] == got["d"], "the memo changed the fingerprint"
        med = {k: statistics.median(v) for k, v in times.items()}
        names = {"a": "size+mtime (--stat-hash)", "b": "bytes, no memo", "c": "bytes, memo, first command",
                 "d": "bytes, memo, later command"}
        for k in "abcd":
            print(f"({k}) {names[k]:<28} {1000 * med[k]:9.1f} ms  ({k})/(a) {med[k] / med['a']:6.2f}")
        print(f"target (d)/(a) <= 1.5: {'met' if med['d'] / med['a'] <= 1.5 else 'NOT met'}")


if __name__ == "__main__":
    main()
