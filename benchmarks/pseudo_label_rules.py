"""Pseudo-label rules compared on one split: accuracy, coverage and cost, from one inference per view.

For each test-time view setting (``--views``: scales and flip) the checkpoint predicts every image
of the split once (:func:`pointparse.pseudo_labels.predict_confidence`, timed); then every rule of
``--rules`` labels the split from those maps (:func:`pointparse.pseudo_labels.label_images`,
timed). One line per (views, rule) is printed and appended to ``--jsonl``: the share of pixels
labelled, the share of predictions kept, and with dense ground truth the accuracy of the new
pixels, the coverage, the arg-max accuracy and per class the accuracy / coverage / kept share,
with the seconds per image of each pass (wall clock and process CPU time). Nothing is cached;
everything is written into a temporary folder.

    # the quickstart's scenes, a checkpoint trained in seconds (README, Pseudo-labels)
    python benchmarks/pseudo_label_rules.py CKPT --points KEY --option seed=0 --option size=128 \\
        --option 'splits={train: 160, val: 60}' --views 1 1+flip 0.75,1,1.25+flip \\
        --rules global:0.9 global:0.7 top-share:0.5 top-share:0.3 per-class:0.9:0.5 adaptive:0.9
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from pointparse.cache import StageCache
from pointparse.cli.options import parse_kv
from pointparse.dataspec import DatasetSpec, open_spec
from pointparse.points import load_points
from pointparse.predictor import Predictor
from pointparse.pseudo_labels import PseudoLabelConfig, label_images, predict_confidence


def rule_config(text: str, views: dict) -> PseudoLabelConfig:
    """``global:0.9``, ``top-share:0.5``, ``per-class:0.9:0.5``, ``adaptive:0.9`` → a config."""
    name, *values = text.split(":")
    values = [float(v) for v in values]
    if name == "top-share":
        return PseudoLabelConfig(rule=name, share=values[0] if values else 0.5, **views)
    kw = {"threshold": values[0]} if values else {}
    if len(values) > 1:
        kw["share"] = values[1]
    return PseudoLabelConfig(rule=name, **kw, **views)


def view_options(text: str) -> dict:
    """``1``, ``1+flip``, ``0.75,1,1.25+flip`` → scales and flip."""
    scales, _, flip = text.partition("+")
    return {"scales": scales, "flip": flip == "flip"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="train artefact folder, key or model.pt")
    ap.add_argument("--points", required=True, help="make-points / import-clicks artefact (folder or key)")
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--root", default="")
    ap.add_argument("--split", default="train")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--views", nargs="+", default=["1+flip"])
    ap.add_argument("--rules", nargs="+", default=["global:0.9", "top-share:0.5", "per-class:0.9:0.5", "adaptive:0.9"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--jsonl", default=None, help="append one line per (views, rule) here")
    ap.add_argument("--tag", default=None, help="a name written into each JSONL line (e.g. the dataset's)")
    args = ap.parse_args()
    cache = StageCache(args.cache_dir)
    spec = DatasetSpec(args.dataset, args.root, args.split, parse_kv(args.option))
    ds = open_spec(spec, cache)
    points = load_points(cache.find(args.points))
    predictor = Predictor.from_checkpoint(args.checkpoint, args.device, cache)
    n = len(ds)
    print(f"{n} images of {spec.kind} {spec.split}, {ds.info.num_classes} classes, device {predictor.device}")
    print(f"{'views':18s} {'rule':22s} {'labelled':>8s} {'kept':>6s} {'acc':>6s} {'cov':>6s} {'argmax':>6s} "
          f"{'min cls acc':>11s} {'min cls cov':>11s} {'predict s/img':>13s} {'label s/img':>11s}")
    with tempfile.TemporaryDirectory() as tmp:
        for views in args.views:
            vo = view_options(views)
            scratch = Path(tmp) / "scratch"
            w0, c0 = time.perf_counter(), time.process_time()
            hist = predict_confidence(predictor, ds, PseudoLabelConfig(**vo), scratch, resume=False, progress=False)
            predict = ((time.perf_counter() - w0) / n, (time.process_time() - c0) / n)
            for text in args.rules:
                cfg = rule_config(text, vo)
                w0, c0 = time.perf_counter(), time.process_time()
                s = label_images(scratch, hist, ds, points, cfg, Path(tmp) / text.replace(":", "_"), progress=False).summary
                label = ((time.perf_counter() - w0) / n, (time.process_time() - c0) / n)
                pc = s["per_class"].values()
                accs = [d["accuracy"] for d in pc if d.get("accuracy") is not None]
                covs = [d["coverage"] for d in pc if d.get("coverage") is not None]

                def pct(v):
                    return f"{100 * v:6.1f}" if v is not None else "     -"

                print(f"{views:18s} {text:22s} {pct(s['labelled_share'])}  {pct(s['kept_share'])} "
                      f"{pct(s['accuracy'])} {pct(s['coverage'])} {pct(s['prediction_accuracy'])} "
                      f"{pct(min(accs) if accs else None):>11s} {pct(min(covs) if covs else None):>11s} "
                      f"{predict[0]:8.3f} ({predict[1]:.2f} cpu) {label[0]:6.3f} ({label[1]:.2f} cpu)")
                if args.jsonl:
                    with open(args.jsonl, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps({"tag": args.tag, "views": views, "rule": text, "images": n, "checkpoint": predictor.path.name,
                                             "predict_s_per_image": predict[0], "predict_cpu_s_per_image": predict[1],
                                             "label_s_per_image": label[0], "label_cpu_s_per_image": label[1],
                                             "summary": s}) + "\n")


if __name__ == "__main__":
    main()
