"""Evaluation overhead: ``evaluate_model`` (data loading, inference, confusion matrix) vs bare inference.

Both run in one process on the same images: bare = the model's forward + upsampling + argmax on
pre-loaded tensors; evaluate = the full :func:`pointparse.evaluate.evaluate_model` path reading
the images and masks from disk (on CPU a decoding thread runs ahead of inference). For each
intra-op thread count (``torch.set_num_threads``, default 1 and 2) both are warmed up, then run
in ``--rounds`` alternating rounds; it prints the ratio of the best throughputs and the median
(and range) of the per-round paired ratios — this machine's timings wander by 10-15 %
between rounds, so the median of many rounds is the figure to read (target >= 0.95). The
confusion matrix of every evaluate run is checked against the one the bare pass gives: the
metrics must not change. It also prints what decoding costs per image (decoding + normalising,
one thread) beside a forward pass: where every core runs the forward, that CPU time cannot be
hidden, so the ratio cannot exceed about ``bound`` = forward / (forward + decoding).

``--data ROOT`` measures the first ``--images`` images of a folder dataset's ``--split`` (copied,
files as they are) instead of synthetic scenes, whose 256 px noisy PNGs are the worst case: PNG
inflation of near-incompressible pixels costs more per pixel than a JPEG or a real photo's PNG.

    python benchmarks/bench_evaluate.py --images 40 --size 256 --threads 1 2 --rounds 12
    python benchmarks/bench_evaluate.py --data ../shared/data/camvid --images 20 --threads 1 2 --rounds 12
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from pointparse.datasets import open_dataset
from pointparse.evaluate import ConfusionMatrix, EvalConfig, evaluate_model, predict_logits
from pointparse.model import IMAGENET_MEAN, IMAGENET_STD, build_model
from pointparse.pool import loader_workers, opencv_single_threaded, worker_count
from pointparse.synthetic import SyntheticConfig, generate_scenes
from pointparse.transforms import EvalSamples, normalise_array


def first_images(data: str, split: str, n: int, out: Path) -> Path:
    """A folder dataset of the first ``n`` images of ``data``'s ``split`` (files copied as they are)."""
    src = open_dataset("folder", data, split=split)
    for i in range(min(n, len(src))):
        for f in (src.image_path(i), src.mask_path(i)):
            if f is not None:
                (out / f.relative_to(src.root)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, out / f.relative_to(src.root))
    for f in src.extra_files():
        shutil.copy2(f, out / f.relative_to(src.root))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--data", default=None, help="a folder dataset root (default: synthetic scenes)")
    ap.add_argument("--split", default="val", help="--data's split")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="intra-op thread counts to measure")
    ap.add_argument("--rounds", type=int, default=12, help="alternating bare/evaluate rounds per thread count")
    ap.add_argument("--workers", type=int, default=None,
                    help="loader processes (default: what evaluate picks, 0 on CPU and 2 on CUDA)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        if args.data:
            root = first_images(args.data, args.split, args.images, Path(tmp) / "s")
        else:
            root = generate_scenes(Path(tmp) / "s", SyntheticConfig(seed=0, size=args.size, splits={"val": args.images}))
        ds = open_dataset("folder", root, split=args.split if args.data else "val")
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

        def full() -> None:
            _, cm = evaluate_model(model, ds, k, cfg, dev, IMAGENET_MEAN, IMAGENET_STD, progress=False)
            if not torch.equal(cm.mat, reference[torch.get_num_threads()]):
                raise SystemExit("evaluate's confusion matrix differs from bare inference's")

        def timed(fn) -> float:
            t0 = time.perf_counter()
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t0

        def decoding() -> float:  # the decoding work per image, on one thread (as the thread runs it)
            with opencv_single_threaded():
                t0 = time.perf_counter()
                for i in range(len(ds)):
                    normalise_array(ds.load(i, with_instances=False).image, samples.mean, samples.std)
            return (time.perf_counter() - t0) / len(ds)

        before = torch.get_num_threads()
        decode_s = min(decoding() for _ in range(3))
        rows = []
        for threads in args.threads:
            torch.set_num_threads(threads)
            confusion_of_bare()  # also the warm-up: oneDNN builds its kernels on the first passes
            timed(bare), timed(full)
            bares, fulls = [], []
            for _ in range(args.rounds):
                bares.append(timed(bare))
                fulls.append(timed(full))
            fwd = min(bares) / len(ds)
            paired = sorted(b / f for b, f in zip(bares, fulls))
            rows.append((threads, len(ds) / min(bares), len(ds) / min(fulls), min(bares) / min(fulls), paired,
                         1000 * fwd, fwd / (fwd + decode_s)))
        torch.set_num_threads(before)
    load1, load5, _ = os.getloadavg()
    what = f"{args.data} {args.split}" if args.data else f"synthetic {args.size}px"
    workers = loader_workers(cfg.workers, dev)
    print(f"{len(ds)} images ({what}), {args.backbone}, {dev}, {workers} loader process(es)"
          f"{' (a decoding thread)' if not workers else ''}; {args.rounds} alternating rounds after a warm-up; "
          f"{worker_count(None)} CPUs, load average {load1:.1f}/{load5:.1f}; confusion matrices identical to bare "
          "inference's: True")
    print(f"{'threads':<8}{'bare img/s':>11}{'evaluate img/s':>16}{'best ratio':>12}"
          f"{'median ratio (range)':>30}{'forward ms':>12}{'bound':>7}")
    for threads, b, f, r, paired, fwd, bound in rows:
        print(f"{threads:<8}{b:>11.2f}{f:>16.2f}{r:>12.3f}{paired[len(paired) // 2]:>12.3f} "
              f"({paired[0]:.3f}-{paired[-1]:.3f}){fwd:>12.1f}{bound:>7.3f}")
    print(f"decoding + normalising: {1000 * decode_s:.2f} ms per image on one thread; bound = forward / (forward + "
          "decoding): the ratio left when no core is free for decoding")
    print("target: ratio >= 0.95")


if __name__ == "__main__":
    main()
