"""Table 3 at CPU scale, several seeds: full vs points vs points+PDML vs points+PDML+extension.

Runs the four rows of the paper's Table 3 through the cached stages for each seed and prints
mIoU / pixel accuracy per row as mean ± std over seeds, plus each PDML run's last-epoch dis(+),
dis(−) and the PDML/CE loss ratio (the scale question: are the embedding distances comparable to
the margin m = 20?). Extra ``--variant name:key=value,...`` rows test a hypothesis (e.g. a smaller
PDML weight or margin) side by side in the same run.

    python benchmarks/table3_seeds.py --dataset synthetic --seeds 0 1 2
    python benchmarks/table3_seeds.py --dataset folder --root ../shared/data/labelmefacade \
        --val-split val --epochs 12 --crop 256 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import yaml

from pointparse.cache import StageCache
from pointparse.evaluate import EvalConfig
from pointparse.simulate import MakePointsConfig
from pointparse.dataspec import DatasetSpec
from pointparse.stages.make_points import run_make_points
from pointparse.stages.train import run_train
from pointparse.train_config import TrainConfig

ROWS = {
    "FullSup": dict(supervision="full", pdml=False),
    "PointSup": dict(pdml=False),
    "PointSup+PDML": dict(pdml=True),
    "PointSup+PDML+Ext": dict(pdml=True, extension="score+region"),
}


def _parse_variant(text: str) -> tuple[str, dict]:
    name, _, body = text.partition(":")
    kv = {}
    for item in filter(None, body.split(",")):
        k, v = item.split("=", 1)
        kv[k] = yaml.safe_load(v)
    return name, kv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--root", default="")
    ap.add_argument("--option", action="append", default=[], help="dataset option key=value (YAML value)")
    ap.add_argument("--train-split", default="train")
    ap.add_argument("--val-split", default="val")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2.5e-3)
    ap.add_argument("--extension-start-epoch", type=int, default=0)
    ap.add_argument("--rows", nargs="+", default=list(ROWS))
    ap.add_argument("--variant", action="append", default=[], help="extra row: name:key=value,... (TrainConfig)")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()

    options = {}
    for item in args.option:
        k, v = item.split("=", 1)
        options[k] = yaml.safe_load(v)
    if args.dataset == "synthetic" and not options:
        options = {"seed": 0, "size": 128, "splits": {"train": 160, "val": 60}}
    spec = DatasetSpec(kind=args.dataset, root=args.root, split=args.train_split, options=options)
    cache = StageCache(args.cache_dir)
    points = run_make_points(spec, MakePointsConfig(), cache, progress=False)
    rows = {r: ROWS[r] for r in args.rows}
    for v in args.variant:
        name, kv = _parse_variant(v)
        rows[name] = {"pdml": True, **kv}
    results: dict[str, list[dict]] = {r: [] for r in rows}
    for seed in args.seeds:
        for name, kw in rows.items():
            cfg = TrainConfig(**{"epochs": args.epochs, "batch_size": args.batch_size, "crop_size": args.crop,
                                 "lr": args.lr, "seed": seed, "workers": 1,
                                 "extension_start_epoch": args.extension_start_epoch, **kw})
            t0 = time.perf_counter()
            res = run_train(spec, cfg, cache, points=points.path if cfg.supervision == "points" else None,
                            val_split=args.val_split, eval_cfg=EvalConfig(workers=1), progress=False)
            m = json.loads((res.path / "metrics.json").read_text())
            last = json.loads((res.path / "epochs.jsonl").read_text().splitlines()[-1])
            row = {"seed": seed, "miou": m["miou"], "pixel_acc": m["pixel_acc"], "dis_pos": last.get("dis_pos"),
                   "dis_neg": last.get("dis_neg"), "ce": last["ce"], "pdml": last["pdml"],
                   "ext_acc": last.get("ext_accuracy"), "time_s": time.perf_counter() - t0, "cached": res.cached,
                   "path": str(res.path)}
            results[name].append(row)
            print(f"seed {seed} {name:22s} mIoU {100 * m['miou']:6.2f}  acc {100 * m['pixel_acc']:6.2f}  "
                  f"dis+ {_f(row['dis_pos'])} dis- {_f(row['dis_neg'])}  ce {row['ce']:.3f} pdml {row['pdml']:.3f}  "
                  f"ext_acc {_f(row['ext_acc'], 100)}  {row['time_s']:.0f}s{' (cached)' if res.cached else ''}",
                  flush=True)
    print(f"\npoints: {points.manifest.get('summary')}  ({points.path})")
    print(f"{'row':22s} {'mIoU mean±std':>16s} {'pixel acc mean±std':>20s}  seeds")
    for name, rs in results.items():
        mi = [100 * r["miou"] for r in rs]
        pa = [100 * r["pixel_acc"] for r in rs]
        print(f"{name:22s} {_ms(mi):>16s} {_ms(pa):>20s}  {' '.join(f'{v:.1f}' for v in mi)}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1))


def _f(v, scale=1.0):
    return "  n/a" if v is None else f"{scale * v:5.2f}"


def _ms(vals):
    if len(vals) == 1:
        return f"{vals[0]:.2f}"
    return f"{statistics.mean(vals):.2f}±{statistics.stdev(vals):.2f}"


if __name__ == "__main__":
    main()
