"""CUDA code paths that CPU stand-ins only approximate: AMP training steps (bf16 and fp16 with a
GradScaler), channels-last, both heads on ResNet-101 at output stride 8 (the paper's network),
PDML variants, the Gated CRF loss and the online extension, through the library's own training
loop on generated scenes. Prints one line per run (images/s, final losses, finite or not) and
exits non-zero if any loss is not finite.

    python benchmarks/gpu_checks.py            # on a machine with a CUDA device
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

from pointparse.cache import StageCache
from pointparse.simulate import MakePointsConfig
from pointparse.dataspec import DatasetSpec, open_spec
from pointparse.points import load_points
from pointparse.stages.make_points import run_make_points
from pointparse.train import train
from pointparse.train_config import TrainConfig

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--device", default="cuda", help="cuda (the point); cpu for a smoke test of this script")
    ap.add_argument("--out", default=None, help="JSON lines of the results")
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        sys.exit("no CUDA device")
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        cache = StageCache(tmp)
        spec = DatasetSpec("synthetic", options={"seed": 0, "size": args.size, "splits": {"train": args.images}})
        ds = open_spec(spec, cache)
        pts = run_make_points(spec, MakePointsConfig(), cache, progress=False)
        ps = load_points(pts.path)
        points = {n: ps.points(n) for n in ps.names}
        for name, over in RUNS.items():
            cfg = TrainConfig(**{"weights": "none", "epochs": args.epochs, "batch_size": 16, "crop_size": args.size,
                                 "lr": 2.5e-3, "device": args.device, "workers": 4 if cuda else 0, **over})
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as run:
                row = train(cfg, ds, points if cfg.supervision == "points" else None, run, progress=False)
            if cuda:
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            finite = all(math.isfinite(row[k]) for k in ("loss", "ce", "pdml", "crf"))
            ok &= finite
            res = {"run": name, "seconds": round(dt, 1), "images_per_s": round(row["images_per_s"], 1),
                   "loss": row["loss"], "ce": row["ce"], "pdml": row["pdml"], "crf": row["crf"],
                   "dis_pos": row.get("dis_pos"), "dis_neg": row.get("dis_neg"),
                   "ext_accuracy": row.get("ext_accuracy"), "finite": finite,
                   "max_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None}
            print(json.dumps(res), flush=True)
            if args.out:
                with open(args.out, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(res) + "\n")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
