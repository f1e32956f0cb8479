"""Every GPU number of issue 23 in one run, then the CUDA training checks. One command:

    python benchmarks/gpu_checks.py                 # on a machine with a CUDA device (~6 min on an H100)
    python benchmarks/gpu_checks.py --dry           # tiny sizes on CPU: the script runs end to end

Prints, each measured side by side in this run (same process, same data):

1. ``train-step``: full step (point CE + PDML ``paper`` + ``agree`` extension + Gated CRF, the
   paper's ResNet-101 at output stride 8, ASPP-v2, bf16 autocast, channels-last) over the bare
   step (forward, a trivial loss, backward, SGD) in images/s — eager, then with the model under
   ``torch.compile`` (``--compile``; both ratios and compiled/eager throughput, so it is kept
   only where it pays). Target >= 0.9.
2. ``sync``: one full step (losses, backward, optimiser, the trainer's on-device statistics)
   under ``torch.cuda.set_sync_debug_mode("error")``: "none" or the first synchronising call.
3. ``loader``: the training DataLoader alone (TrainSamples on generated scenes, crop as in 1,
   ``--workers`` processes, pinned) in images/s against the step's images/s. Target >= 2.
4. ``evaluate``: ``benchmarks/bench_evaluate.py`` on the device (evaluate vs bare inference).
   Target >= 0.95.
5. The CUDA training runs (AMP bf16/fp16, both heads, PDML variants, CRF, extension through the
   library's loop): one JSON line each, non-zero exit if a loss is not finite
   (``--skip-train-runs`` leaves them out).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import make_batch, timeit  # noqa: E402  (the same batch and timer as the CPU bench)

from pointparse.cache import StageCache  # noqa: E402
from pointparse.dataspec import DatasetSpec, open_spec  # noqa: E402
from pointparse.model import IMAGENET_MEAN, IMAGENET_STD, build_model  # noqa: E402
from pointparse.points import load_points  # noqa: E402
from pointparse.simulate import MakePointsConfig  # noqa: E402
from pointparse.stages.make_points import run_make_points  # noqa: E402
from pointparse.step_stats import EpochSums  # noqa: E402
from pointparse.objective import compute_losses  # noqa: E402
from pointparse.train import train  # noqa: E402
from pointparse.train_config import TrainConfig  # noqa: E402
from pointparse.transforms import AugmentConfig, TrainSamples, collate  # noqa: E402

RUNS = {
    "resnet101 os8 aspp-v2 bf16 PDML paper + agree": dict(backbone="resnet101", output_stride=8, head="aspp-v2",
                                                          amp="bf16", extension="agree"),
    "resnet101 os8 deeplabv3+ fp16 PDML normalized + CRF": dict(backbone="resnet101", output_stride=8,
                                                                head="deeplabv3+", amp="fp16",
                                                                pdml_variant="normalized", crf_weight=0.1),
    "lite0 os16 deeplabv3+ bf16 PDML relative + argmax ext": dict(head="deeplabv3+", amp="bf16",
                                                                   pdml_variant="relative",
                                                                   extension="score+region"),
    "lite0 os16 deeplabv3+ full masks bf16": dict(head="deeplabv3+", amp="bf16", supervision="full", pdml=False),
}


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def step_fns(cfg: TrainConfig, classes: int, batch: dict, dev: torch.device, compiled: bool):
    """(bare, full) step closures on one model, optionally under torch.compile."""
    torch.manual_seed(0)
    model = build_model(cfg.model_config(classes)).to(dev).train()
    channels_last = dev.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if compiled else model
    opt = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)
    amp = torch.bfloat16 if dev.type == "cuda" else None
    gen = torch.Generator().manual_seed(0)
    image = batch["image"].contiguous(memory_format=torch.channels_last) if channels_last else batch["image"]
    acc = EpochSums(dev, extension=True)

    def bare():
        with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = net(image)["logits"].float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def full(it: int = 0):
        res = compute_losses(net, batch, cfg, 0, gen, amp, channels_last)
        opt.zero_grad(set_to_none=True)
        res.loss.backward()
        opt.step()
        acc.add(it, res, batch)  # what the trainer does every step (its read is once per log_every)

    return bare, full


def check_train_step(args, dev: torch.device) -> float:
    cfg = TrainConfig(backbone=args.backbone, output_stride=args.output_stride, weights="none", head="aspp-v2",
                      pdml=True, extension="agree", crf_weight=0.1, batch_size=args.batch, crop_size=args.crop)
    batch = {k: (v.to(dev) if torch.is_tensor(v) else v)
             for k, v in make_batch(args.batch, args.crop, args.classes, args.clicks).items()}
    step_images_s = 0.0
    eager_full = None
    for compiled in ([False, True] if args.compile else [False]):
        bare, full = step_fns(cfg, args.classes, batch, dev, compiled)
        times = {"bare": [], "full": []}
        for _ in range(2):  # interleaved rounds: drift hits both alike
            times["bare"].append(timeit(bare, args.warmup, args.reps))
            times["full"].append(timeit(full, args.warmup, args.reps))
        tb, tf = min(times["bare"]), min(times["full"])
        what = "torch.compile" if compiled else "eager"
        extra = ""
        if compiled and eager_full is not None:
            extra = f"; compiled/eager full-step throughput {eager_full / tf:.3f} (keep --compile only if > 1)"
        print(f"train-step [{what}] {args.backbone} OS{args.output_stride} aspp-v2 PDML+agree+CRF {'bf16' if dev.type == 'cuda' else 'fp32'}, batch "
              f"{args.batch}, {args.crop} px, {args.classes} classes: bare {args.batch / tb:.1f} img/s, full "
              f"{args.batch / tf:.1f} img/s, ratio {tb / tf:.3f} (target >= 0.9){extra}", flush=True)
        if not compiled:
            eager_full = tf
            step_images_s = args.batch / tf
        if dev.type == "cuda" and not compiled:
            full()
            sync(dev)
            torch.cuda.set_sync_debug_mode("error")
            try:
                full()
                verdict = "none"
            except RuntimeError as exc:
                verdict = f"SYNC: {str(exc).splitlines()[0]}"
            finally:
                torch.cuda.set_sync_debug_mode("default")
            sync(dev)
            print(f"sync inside the step (set_sync_debug_mode('error')): {verdict}", flush=True)
    return step_images_s


def check_loader(args, ds, points, step_images_s: float, dev: torch.device) -> None:
    samples = TrainSamples(ds, points, AugmentConfig(args.crop, 0.5, 1.5, True), IMAGENET_MEAN, IMAGENET_STD, seed=0)
    loader = torch.utils.data.DataLoader(samples, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                                         collate_fn=collate, pin_memory=dev.type == "cuda", drop_last=True,
                                         persistent_workers=args.workers > 0)
    for _ in range(2):  # the first pass starts the workers
        n, t0 = 0, time.perf_counter()
        for batch in loader:
            n += batch["image"].shape[0]
        dt = time.perf_counter() - t0
    rate = n / dt
    ratio = rate / step_images_s if step_images_s else float("nan")
    print(f"loader: {args.workers} workers, {args.crop} px crops of {args.size} px scenes: {rate:.1f} img/s = "
          f"{ratio:.2f}x the full step's {step_images_s:.1f} img/s (target >= 2)", flush=True)


def check_evaluate(args, dev: torch.device) -> None:
    script = Path(__file__).resolve().parent / "bench_evaluate.py"
    cmd = [sys.executable, str(script), "--device", str(dev), "--images", str(args.eval_images),
           "--size", str(args.size), "--rounds", str(args.eval_rounds), "--backbone", args.eval_backbone,
           "--threads", str(args.eval_threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    print("evaluate: " + " ".join(cmd[1:]), flush=True)
    print(out.stdout.rstrip() or out.stderr[-2000:], flush=True)


def train_runs(args, ds, points, cuda: bool) -> bool:
    ok = True
    for name, over in RUNS.items():
        cfg = TrainConfig(**{"weights": "none", "epochs": args.epochs, "batch_size": 16, "crop_size": args.size,
                             "lr": 2.5e-3, "device": args.device, "workers": 4 if cuda else 0, **over})
        if args.dry:
            cfg = dataclasses.replace(cfg, backbone="efficientnet_lite0", output_stride=16, batch_size=2, epochs=1)
        sync(torch.device(args.device))
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as run:
            row = train(cfg, ds, points if cfg.supervision == "points" else None, run, progress=False)
        sync(torch.device(args.device))
        finite = all(math.isfinite(row[k]) for k in ("loss", "ce", "pdml", "crf"))
        ok &= finite
        res = {"run": name, "seconds": round(time.perf_counter() - t0, 1),
               "images_per_s": round(row["images_per_s"], 1), "loss": row["loss"], "ce": row["ce"],
               "pdml": row["pdml"], "crf": row["crf"], "dis_pos": row.get("dis_pos"), "dis_neg": row.get("dis_neg"),
               "ext_accuracy": row.get("ext_accuracy"), "finite": finite,
               "max_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None}
        print(json.dumps(res), flush=True)
        if args.out:
            with open(args.out, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(res) + "\n")
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (the point); cpu with --dry for a smoke test")
    ap.add_argument("--dry", action="store_true", help="tiny sizes on CPU: check the script runs end to end")
    ap.add_argument("--backbone", default="resnet101")
    ap.add_argument("--output-stride", type=int, default=8)
    ap.add_argument("--batch", type=int, default=10, help="images per step (the paper's batch 10)")
    ap.add_argument("--crop", type=int, default=321)
    ap.add_argument("--classes", type=int, default=59)
    ap.add_argument("--clicks", type=int, default=13)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure the step with the model under torch.compile")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 16, help="loader processes (16 on the host)")
    ap.add_argument("--images", type=int, default=64, help="generated training scenes")
    ap.add_argument("--size", type=int, default=512, help="scene size (crops of --crop are taken from it)")
    ap.add_argument("--eval-images", type=int, default=40)
    ap.add_argument("--eval-rounds", type=int, default=3)
    ap.add_argument("--eval-threads", type=int, default=4)
    ap.add_argument("--eval-backbone", default="resnet101")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--skip-train-runs", action="store_true")
    ap.add_argument("--out", default=None, help="JSON lines of the training runs")
    args = ap.parse_args()
    if args.dry:
        args.device = "cpu"
        args.backbone, args.output_stride, args.eval_backbone = "efficientnet_lite0", 16, "efficientnet_lite0"
        args.batch, args.crop, args.classes, args.warmup, args.reps = 2, 65, 5, 0, 1
        args.compile, args.workers, args.images, args.size = False, 2, 4, 96
        args.eval_images, args.eval_rounds, args.eval_threads = 2, 1, 1
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("no CUDA device (use --dry for the CPU smoke test)")
    print(f"device {torch.cuda.get_device_name(dev) if cuda else 'cpu'}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs", flush=True)
    step_images_s = check_train_step(args, dev)
    with tempfile.TemporaryDirectory() as tmp:
        cache = StageCache(tmp)
        spec = DatasetSpec("synthetic", options={"seed": 0, "size": args.size, "splits": {"train": args.images}})
        ds = open_spec(spec, cache)
        ps = load_points(run_make_points(spec, MakePointsConfig(), cache, progress=False).path)
        points = {n: ps.points(n) for n in ps.names}
        check_loader(args, ds, points, step_images_s, dev)
        check_evaluate(args, dev)
        ok = True if args.skip_train_runs else train_runs(args, ds, points, cuda)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
