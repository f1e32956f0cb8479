"""Evaluation overhead: ``evaluate_model`` (data loading, inference, confusion matrix) vs bare inference.

Both run in one process on the same synthetic images: bare = the model's forward + upsampling +
argmax on pre-loaded tensors; evaluate = the full :func:`pointparse.evaluate.evaluate_model` path
reading the images and masks from disk (on CPU a decoding thread overlaps it with inference).
For each intra-op thread count (``torch.set_num_threads``, default 1 and 2) both are warmed up,
then run in ``--rounds`` alternating rounds; the ratio of the best throughputs is printed with
the range of the per-round ratios (target >= 0.95), and beside it the ratio with PIL decoding
every file (no OpenCV path, :mod:`pointparse.images`), measured in the same rounds. The
confusion matrix of every evaluate run is checked against the one the bare pass gives: the
metrics must not change.

    python benchmarks/bench_evaluate.py --images 40 --size 256 --threads 1 2 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from pointparse.datasets import open_dataset
from pointparse.evaluate import EvalConfig, evaluate_model, predict_logits
from pointparse.evaluate import ConfusionMatrix
from pointparse.model import IMAGENET_MEAN, IMAGENET_STD, build_model
from pointparse.pool import loader_workers
from pointparse.synthetic import SyntheticConfig, generate_scenes
from pointparse.transforms import EvalSamples

from bench_decode import pil_only


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="intra-op thread counts to measure")
    ap.add_argument("--rounds", type=int, default=5, help="alternating bare/evaluate rounds per thread count")
    ap.add_argument("--workers", type=int, default=None,
                    help="loader processes (default: what evaluate picks, 0 on CPU and 2 on CUDA)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = generate_scenes(Path(tmp) / "s", SyntheticConfig(seed=0, size=args.size, splits={"val": args.images}))
        ds = open_dataset("folder", root, split="val")
        k = ds.info.num_classes
        model = build_model({"backbone": args.backbone, "num_classes": k, "weights": "none"})
        model.to(dev).eval()
        cfg = EvalConfig(workers=args.workers, device=args.device)
        samples = EvalSamples(ds, IMAGENET_MEAN, IMAGENET_STD)
        # the tensors evaluate_model's loader hands the model: contiguous NCHW batches, made channels-last
        # exactly as evaluate_model does (a permuted HWC view would silently be a faster NHWC input)
        model.to(memory_format=torch.channels_last)
        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        preloaded = [samples[i]["image"][None].contiguous().to(dev).contiguous(memory_format=fmt)
                     for i in range(len(samples))]
        dense = [samples[i]["dense"][None].to(dev) for i in range(len(samples))]
        reference = {}

        def bare():
            with torch.no_grad():
                for x in preloaded:
                    predict_logits(model, x, cfg, k).argmax(1)

        def confusion_of_bare() -> None:  # untimed: the matrix evaluate must reproduce
            cm = ConfusionMatrix(k, device=dev)
            with torch.no_grad():
                for x, y in zip(preloaded, dense):
                    cm.update(predict_logits(model, x, cfg, k).argmax(1), y)
            reference[torch.get_num_threads()] = cm.mat

        def full():
            _, cm = evaluate_model(model, ds, k, cfg, dev, IMAGENET_MEAN, IMAGENET_STD, progress=False)
            if not torch.equal(cm.mat, reference[torch.get_num_threads()]):
                raise SystemExit("evaluate's confusion matrix differs from bare inference's")

        def full_pil():  # the decoding before OpenCV's path (pointparse.images): PIL for every file
            with pil_only():
                full()

        def timed(fn) -> float:
            t0 = time.perf_counter()
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t0

        before = torch.get_num_threads()
        results = []
        for threads in args.threads:
            torch.set_num_threads(threads)
            confusion_of_bare()  # also the warm-up: oneDNN builds its kernels on the first passes
            timed(bare), timed(full), timed(full_pil)
            bares, fulls, pils = [], [], []
            for _ in range(args.rounds):
                bares.append(timed(bare))
                fulls.append(timed(full))
                pils.append(timed(full_pil))
            paired = sorted(b / f for b, f in zip(bares, fulls))
            results.append((threads, len(ds) / min(bares), len(ds) / min(fulls), min(bares) / min(fulls), paired,
                            min(bares) / min(pils)))
        torch.set_num_threads(before)
    load1, load5, _ = os.getloadavg()
    print(f"{args.images} images {args.size}px, {args.backbone}, {dev}, {loader_workers(cfg.workers, dev)} loader "
          f"process(es){' (decoding thread)' if loader_workers(cfg.workers, dev) == 0 else ''}; {args.rounds} alternating "
          f"rounds after a warm-up; {os.cpu_count()} CPUs, load average {load1:.1f}/{load5:.1f}; "
          f"confusion matrices identical to bare inference's: True")
    print(f"{'intra-op threads':<18}{'bare img/s':>12}{'evaluate img/s':>16}{'ratio (best)':>14}  per-round ratios"
          f"{'PIL-only decoding ratio':>28}")
    for threads, b, f, r, paired, pil in results:
        print(f"{threads:<18}{b:>12.2f}{f:>16.2f}{r:>14.3f}  {paired[0]:.3f}-{paired[-1]:.3f} "
              f"(median {paired[len(paired) // 2]:.3f}){pil:>12.3f}")
    print("target: ratio >= 0.95")


if __name__ == "__main__":
    main()
