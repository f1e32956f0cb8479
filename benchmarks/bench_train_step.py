"""Training-step overhead: the full step (point CE + PDML + online extension) vs the bare model.

Both are measured in one run on the same batch and model: the bare step is forward, a trivial
loss on the logits, backward and an SGD step; the full step is :func:`pointparse.objective.compute_losses`
(upsampling, extension under no_grad, point CE, embedding sampling, PDML[, Gated CRF]) + backward
+ step. The ratio full/bare of images per second is the number to watch (target ≥ 0.95).
``--compare-heads`` instead times the bare step of every head of the model registry side by side
(the decoder's cost per image against the paper's ASPP-v2).

    python benchmarks/bench_train_step.py --batch 8 --crop 321 --classes 59
    python benchmarks/bench_train_step.py --head deeplabv3+ --crf-weight 0.3 --pdml-variant normalized
    python benchmarks/bench_train_step.py --compare-heads --crop 256 --classes 9

The GPU numbers of issue 23 (ResNet-101 OS 8, bf16, the sync check, ``--compile``, the loader)
are printed together by ``benchmarks/gpu_checks.py``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pointparse.heads import HEADS
from pointparse.model import build_model
from pointparse.objective import compute_losses
from pointparse.train_config import TrainConfig


def make_batch(b: int, crop: int, classes: int, clicks: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(b * clicks, 2, generator=g) * (crop - 1)
    cls = torch.randint(0, classes, (b * clicks,), generator=g)
    bidx = torch.arange(b).repeat_interleave(clicks)
    points = torch.full((b, crop, crop), 255, dtype=torch.long)
    points[bidx, xy[:, 1].round().long(), xy[:, 0].round().long()] = cls
    dense = torch.randint(0, classes, (b, crop, crop), generator=g)
    return {"image": torch.randn(b, 3, crop, crop, generator=g), "dense": dense, "points": points,
            "valid": torch.ones(b, crop, crop, dtype=torch.bool),
            "points_xy": xy, "points_cls": cls, "batch_index": bidx, "image_ids": bidx, "index": torch.arange(b)}


def timeit(fn, warmup: int, reps: int) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=321)
    ap.add_argument("--classes", type=int, default=59)
    ap.add_argument("--clicks", type=int, default=13, help="clicks per image (paper: 12.3 / 14.0)")
    ap.add_argument("--extension", default="score+region")
    ap.add_argument("--head", default="aspp-v2", choices=sorted(HEADS))
    ap.add_argument("--pdml-variant", default="paper")
    ap.add_argument("--crf-weight", type=float, default=0.0)
    ap.add_argument("--compare-heads", action="store_true", help="bare step of every head, side by side")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="the model under torch.compile (both steps)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    if args.compare_heads:
        compare_heads(args, dev)
        return
    cfg = TrainConfig(backbone=args.backbone, weights="none", extension=args.extension, pdml=True,
                      batch_size=args.batch, crop_size=args.crop, head=args.head, pdml_variant=args.pdml_variant,
                      crf_weight=args.crf_weight)
    model = build_model(cfg.model_config(args.classes)).to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)
    if args.compile:  # the optimiser holds the parameters; the compiled wrapper shares them
        model = torch.compile(model)
    batch = {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in
             make_batch(args.batch, args.crop, args.classes, args.clicks).items()}
    gen = torch.Generator().manual_seed(0)

    def bare():
        out = model(batch["image"])
        loss = out["logits"].float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def full():
        res = compute_losses(model, batch, cfg, epoch=0, generator=gen, amp_dtype=None)
        opt.zero_grad(set_to_none=True)
        res.loss.backward()
        opt.step()

    rows = []
    for name, fn in (("bare", bare), ("full", full), ("bare (again)", bare), ("full (again)", full)):
        t = timeit(fn, 1, args.reps)
        rows.append((name, t))
        print(f"{name:14s} {1000 * t:9.1f} ms/step  {args.batch / t:7.2f} img/s", flush=True)
    tb = min(t for n, t in rows if n.startswith("bare"))
    tf = min(t for n, t in rows if n.startswith("full"))
    print(f"\n{args.backbone} {args.head} batch {args.batch} crop {args.crop} classes {args.classes} "
          f"ext {args.extension} pdml {args.pdml_variant} crf {args.crf_weight:g}{' compiled' if args.compile else ''} on {dev}: "
          f"full/bare throughput ratio = {tb / tf:.3f} (target >= 0.95)")


def compare_heads(args, dev: torch.device) -> None:
    """Bare training step of each head on one batch, interleaved twice; ratios to ASPP-v2."""
    batch = make_batch(args.batch, args.crop, args.classes, args.clicks)["image"].to(dev)
    steps = {}
    for head in HEADS:
        model = build_model(TrainConfig(backbone=args.backbone, weights="none", head=head)
                            .model_config(args.classes)).to(dev).train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)

        def step(model=model, opt=opt):
            loss = model(batch)["logits"].float().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        steps[head] = step
    times = {h: [] for h in HEADS}
    for _ in range(2):  # interleaved rounds: drift on a shared machine hits every head alike
        for head, fn in steps.items():
            times[head].append(timeit(fn, 1, args.reps))
    base = min(times["aspp-v2"])
    for head, ts in times.items():
        t = min(ts)
        print(f"{head:12s} {1000 * t / args.batch:8.1f} ms/image  x{t / base:.2f} of aspp-v2 "
              f"({args.backbone}, batch {args.batch}, crop {args.crop}, {dev})", flush=True)


if __name__ == "__main__":
    main()
