"""How fast does SAM label a split, and where does the time go?

    python benchmarks/bench_sam.py --root ../shared/data/camvid --images 8 [--device cuda --batch-size 8]

Runs :class:`pointparse.sam.labeller.SamLabeller` (the shipped MobileSAM, the default rule) over
``--images`` images of a folder dataset's train split, evenly spaced, with their make-points
clicks, exactly as the ``extension-labels`` stage does (reader thread, batched encoder, one
decoder call per image, painting), after one warm-up image. Prints images/s and the share of
the wall time spent in the image encoder, in SAM's prompt encoder + mask decoder, in painting,
and everything else (reading, resizing not hidden by the reader thread, bookkeeping). On CUDA
the timer synchronises around the encoder and decoder calls.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from pointparse.cache import StageCache
from pointparse.dataspec import DatasetSpec, open_spec
from pointparse.extension.ablation import subset_indices
from pointparse.extension.methods import click_coordinates
from pointparse.points import load_points
from pointparse.sam.labeller import SamLabeller
from pointparse.sam.rules import DEFAULT_RULE
from pointparse.simulate import MakePointsConfig
from pointparse.stages.make_points import run_make_points


class _Synced:
    """Wraps a SamMasker so that CUDA work is finished inside the timed calls."""

    def __init__(self, masker):
        self.m, self.device = masker, masker.device

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def prepare(self, image):
        return self.m.prepare(image)

    def embed(self, batch):
        out = self.m.embed(batch)
        self._sync()
        return out

    def decode(self, *a):
        out = self.m.decode(*a)
        self._sync()
        return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True, help="a folder dataset with a train split (e.g. CamVid)")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=None, help="images per encoder call (default: 8 CUDA, 1 CPU)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rule", default=DEFAULT_RULE)
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "pointparse-bench-sam"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = DatasetSpec("folder", args.root, "train")
    cache = StageCache(args.cache)
    ds = open_spec(spec, cache)
    pts = load_points(run_make_points(spec, MakePointsConfig(), cache, progress=False).path)
    idx = subset_indices(len(ds), args.images + 1)

    def load(i):
        ys, xs, cls = click_coordinates(pts.label_map(ds.names[i]))
        return i, ds.load_image(i), ys, xs, cls

    lab = SamLabeller(args.rule, device=args.device, batch_size=args.batch_size)
    lab.masker = _Synced(lab.masker)
    list(lab.label_many([lambda: load(idx[0])]))  # warm-up (allocations, first-call dispatch)
    timer: dict = {}
    t0 = time.perf_counter()
    n = sum(1 for _ in lab.label_many([lambda i=i: load(i) for i in idx[1:]], timer))
    wall = time.perf_counter() - t0
    clicks = sum(len(pts.points(ds.names[i])[1]) for i in idx[1:]) / n
    enc, dec, paint = (timer.get(k, 0.0) for k in ("encoder", "decoder", "paint"))
    print(f"{n} images ({clicks:.1f} clicks each), device {lab.masker.device}, batch {lab.batch_size}, "
          f"{torch.get_num_threads()} threads: {n / wall:.2f} images/s ({wall / n:.2f} s per image)")
    print(f"  image encoder {100 * enc / wall:.1f} %, prompt encoder + mask decoder {100 * dec / wall:.1f} %, "
          f"painting {100 * paint / wall:.1f} %, other {100 * (wall - enc - dec - paint) / wall:.1f} %")
    print(f"  outside the image encoder: {100 * (wall - enc) / wall:.1f} %; outside SAM (encoder and decoder): "
          f"{100 * (wall - enc - dec) / wall:.1f} %")


if __name__ == "__main__":
    main()
