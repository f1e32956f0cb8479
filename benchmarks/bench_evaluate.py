"""Evaluation overhead: ``evaluate_model`` (data loading, inference, confusion matrix) vs bare inference.

Both run in one process on the same synthetic images: bare = the model's forward + upsampling +
argmax on pre-loaded tensors; evaluate = the full :func:`pointparse.evaluate.evaluate_model` path
reading the images and masks from disk. Prints images/s and the ratio (target ≥ 0.95).

    python benchmarks/bench_evaluate.py --images 40 --size 321
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from pointparse.datasets import open_dataset
from pointparse.evaluate import EvalConfig, evaluate_model, predict_logits
from pointparse.model import IMAGENET_MEAN, IMAGENET_STD, build_model
from pointparse.pool import loader_workers
from pointparse.synthetic import SyntheticConfig, generate_scenes
from pointparse.transforms import EvalSamples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=None,
                    help="loader processes (default: what evaluate picks, 0 on CPU and 2 on CUDA)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = generate_scenes(Path(tmp) / "s", SyntheticConfig(seed=0, size=args.size, splits={"val": args.images}))
        ds = open_dataset("folder", root, split="val")
        model = build_model({"backbone": args.backbone, "num_classes": ds.info.num_classes, "weights": "none"})
        model.to(dev).eval()
        cfg = EvalConfig(workers=args.workers, device=args.device)
        samples = EvalSamples(ds, IMAGENET_MEAN, IMAGENET_STD)
        # the tensors evaluate_model's loader hands the model: contiguous NCHW batches, made channels-last
        # exactly as evaluate_model does (a permuted HWC view would silently be a faster NHWC input)
        model.to(memory_format=torch.channels_last)
        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        preloaded = [samples[i]["image"][None].contiguous().to(dev).contiguous(memory_format=fmt)
                     for i in range(len(samples))]

        def bare():
            with torch.no_grad():
                for x in preloaded:
                    predict_logits(model, x, cfg, ds.info.num_classes).argmax(1)

        def full():
            evaluate_model(model, ds, ds.info.num_classes, cfg, dev, IMAGENET_MEAN, IMAGENET_STD, progress=False)

        times = {}
        for name, fn in (("bare", bare), ("evaluate", full), ("bare", bare), ("evaluate", full)):
            t0 = time.perf_counter()
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter() - t0
            times[name] = min(times.get(name, float("inf")), t)
            print(f"{name:10s} {len(ds) / t:7.2f} img/s", flush=True)
        print(f"\nevaluate/bare throughput ratio = {times['bare'] / times['evaluate']:.3f} (target >= 0.95; "
              f"{args.images} images {args.size}px, {args.backbone}, {dev}, {loader_workers(cfg.workers, dev)} loader worker(s))")


if __name__ == "__main__":
    main()
