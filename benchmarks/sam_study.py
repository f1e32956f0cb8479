"""SAM labels study (issue 21, item 4): ``cpu-clicks`` trained on the clicks plus SAM's labels.

Same budget, data, val splits, 2 x 1-thread worker processes and machinery (``study_runner.py``)
as ``recipe_study.py`` round 6 and ``selftrain_study.py``. For each dataset the training split's
SAM label set is made first by the library's ``extension-labels`` stage (the shipped MobileSAM,
the default rule ``clean-smallest-0.8``, make-points' clicks; cached in ``--cache``, so a killed
study resumes it), its quality (accuracy of the new pixels, coverage, per class) written as a
result line. Then ``cpu-clicks`` (round 5's ``v3+ adamw lr8e-4`` + ``CLICKS``, 12 epochs from
ImageNet) trains on the clicks plus that label set (``label_weight`` 1: the clicks' class-balanced
CE and the Gated CRF as in ``cpu-clicks``, plus plain CE on the SAM pixels; clicks always kept by
the labels). Same optimiser steps as ``cpu-clicks``: the label set costs SAM's CPU, no training.

**Plan and rules** (written 2026-12-05 22:25, before any of its runs):

* Seeds 2, 1, 0 on LabelMeFacade, then on CamVid (the cheaper dataset first, so a cut leaves
  whole datasets). The paired baselines are the existing ``cpu-clicks`` and FullSup (the default
  network, ``cpu``) runs of the same seed in ``--reuse`` (recipe_study rounds 4-6, as
  ``street_tables.py`` reads them); nothing of theirs is retrained.
* **The named recipe** ``cpu-sam`` (``cpu-clicks`` + ``labels:`` an ``extension-labels`` stage
  with ``method: sam``) is the README's recommendation for clicks *if* on both datasets the
  mean paired (same seed) difference to ``cpu-clicks`` is positive and larger than 2 std of
  those differences. The issue's aim (>= 0.85 of FullSup) is reported as met or not, as the
  ratio of the seed means; it does not decide the recipe. Otherwise the result is reported as
  negative, with the labels' per-class quality beside it.
* Runs that do not finish are reported as not run; no seed is replaced.

    python benchmarks/sam_study.py --data labelmefacade=../shared/data/labelmefacade \\
        --data camvid=../shared/data/camvid --cache SAMCACHE --keep MODELS \\
        --reuse results/street-study-round4.jsonl --reuse results/street-study-round5.jsonl \\
        --reuse results/street-study-round6.jsonl --out results/sam-study.jsonl [--resume]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import statistics
import time
from pathlib import Path

import recipe_study as rs
import street_tables
import study_runner as sr

CLICK_RATES = "v3+ adamw lr8e-4"  # ``cpu-clicks``
FULL_NAME = rs.ROUND5_BASE  # ``cpu``
RECIPE = {**rs.ROUND5_SCREEN[CLICK_RATES], **rs.CLICKS}
DATA = ("labelmefacade", "camvid")
SEED_ORDER = (2, 1, 0)
ROW = "Clicks+SAM"


def _run_sam(job: dict) -> dict:
    res = sr._run(job)
    res.pop("labels_dir", None)  # a path of this machine; the label line's key names the set
    return res


def sam_labels(spec, points_key: str, cache, threads: int) -> tuple[str, dict]:
    """The split's SAM label set (the library's stage; cached, resumable) and its quality line."""
    import torch

    from pointparse.labelset import load_label_set
    from pointparse.stages.extension_labels import ExtensionLabelsConfig, run_extension_labels

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    res = run_extension_labels(spec, points_key, ExtensionLabelsConfig(method="sam", device="cpu"), cache,
                               progress=True)
    s = load_label_set(res.path).summary
    q = s.get("quality") or {}
    line = {"phase": "labels", "key": res.key, "cached": res.cached, "seconds": time.perf_counter() - t0,
            "threads": threads, **{k: s.get(k) for k in ("method", "sam_rule", "images", "accuracy", "coverage",
                                                          "new_pixels_per_image")},
            "per_class": q.get("per_class")}
    return str(res.path), line


def verdict(results: list[dict], base: dict) -> dict:
    """The plan's rule (module docstring) on this study's runs and the baselines."""
    out = {}
    for data in DATA:
        mine = {r["seed"]: r["miou"] for r in results if r.get("data") == data and r.get("row") == ROW and "miou" in r}
        clicks = {s: base[(data, CLICK_RATES, "Clicks", s)]["miou"] for s in mine if (data, CLICK_RATES, "Clicks", s) in base}
        full = {s: base[(data, FULL_NAME, "FullSup", s)]["miou"] for s in mine if (data, FULL_NAME, "FullSup", s) in base}
        diffs = [mine[s] - clicks[s] for s in sorted(mine) if s in clicks]
        d = {"seeds": sorted(mine), "sam": mine, "cpu_clicks": clicks, "fullsup": full, "paired": diffs}
        if diffs:
            d["paired_mean"] = statistics.mean(diffs)
            d["paired_std"] = statistics.stdev(diffs) if len(diffs) > 1 else None
            d["beyond_2std"] = (len(diffs) == len(SEED_ORDER) and d["paired_mean"] > 0
                                and d["paired_mean"] > 2 * d["paired_std"])
        if mine and full and set(full) == set(mine):
            d["of_fullsup"] = statistics.mean(mine.values()) / statistics.mean(full.values())
            d["clicks_of_fullsup"] = (statistics.mean(clicks.values()) / statistics.mean(full.values())
                                      if set(clicks) == set(mine) else None)
        out[data] = d
    out["named"] = all(out[d].get("beyond_2std") for d in DATA)
    out["aim_085"] = all((out[d].get("of_fullsup") or 0) >= 0.85 for d in DATA)
    return out


def print_tables(summary: dict, labels: list[dict]) -> None:
    """README Results' rows (markdown) from :func:`verdict`'s summary and the label lines."""
    print("| dataset | SAM labels: accuracy / coverage | `cpu-sam` seeds 0 / 1 / 2 | mean ± std | `cpu-clicks` | "
          "paired difference | FullSup (`cpu`) | `cpu-sam` / `cpu-clicks` of FullSup |")
    print("|---|---|---|---|---|---|---|---|")
    for data in DATA:
        d = summary.get(data) or {}
        lab = next((l for l in labels if l.get("data") == data), None)
        q = f"{100 * lab['accuracy']:.1f} / {100 * lab['coverage']:.1f} %" if lab else "–"
        sam = {int(k): v for k, v in (d.get("sam") or {}).items()}
        seeds = " / ".join(f"{sam[s]:.1f}" if s in sam else "–" for s in (0, 1, 2))
        diffs = d.get("paired") or []
        paired = (", ".join(f"{x:+.1f}" for x in diffs) + f" = {street_tables._fmt(diffs)}") if diffs else "–"
        frac = (f"{d['of_fullsup']:.2f} / {d['clicks_of_fullsup']:.2f}" if d.get("of_fullsup") and
                d.get("clicks_of_fullsup") else "–")
        print(f"| {data} | {q} | {seeds} | {street_tables._fmt(list(sam.values()))} | {street_tables._fmt(list((d.get('cpu_clicks') or {}).values()))} | "
              f"{paired} | {street_tables._fmt(list((d.get('fullsup') or {}).values()))} | {frac} |")
    print(f"\nnamed (beyond 2 std on both): {summary.get('named')}; aim 0.85 of FullSup on both: {summary.get('aim_085')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", action="append", required=True, metavar="NAME=ROOT")
    ap.add_argument("--cache", required=True, help="a pointparse cache folder (points, SAM labels; resumable)")
    ap.add_argument("--keep", required=True, help="folder that receives every run's model as <job id>.pt")
    ap.add_argument("--reuse", action="append", default=[], help="results JSONL holding the baselines")
    ap.add_argument("--out", required=True, help="results JSONL (appended)")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sam-threads", type=int, default=2, help="torch threads for SAM (before the trainings)")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEED_ORDER))
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--epochs", type=int, default=None, help="smoke tests only")
    ap.add_argument("--tables", action="store_true", help="print README's rows from --out and --reuse, run nothing")
    args = ap.parse_args()
    if args.tables:
        lines = sr.read_jsonl(args.out)
        runs = [r for r in lines if r.get("row") == ROW and "miou" in r]
        print_tables(verdict(runs, street_tables.load_runs(args.reuse)), [l for l in lines if l.get("phase") == "labels"])
        return
    if args.epochs:
        sr.BUDGET["epochs"] = args.epochs

    from pointparse.cache import StageCache
    from pointparse.dataspec import DatasetSpec
    from pointparse.simulate import MakePointsConfig
    from pointparse.stages.make_points import run_make_points

    roots = dict(d.split("=", 1) for d in args.data)
    order = [d for d in DATA if d in roots]
    cache = StageCache(args.cache)
    done = []
    if args.resume and Path(args.out).exists():
        done = sr.read_jsonl(args.out)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    data, label_dirs = {}, {}
    for name in order:
        spec = DatasetSpec("folder", roots[name], "train")
        pts = run_make_points(spec, MakePointsConfig(), cache, progress=False)
        data[name] = (roots[name], "val", str(pts.path))
        label_dirs[name], line = sam_labels(spec, pts.key, cache, args.sam_threads)
        line["data"] = name
        print(f"# {name} SAM labels {line['key']}: accuracy {line['accuracy']:.3f} coverage {line['coverage']:.3f} "
              f"({line['seconds']:.0f} s)", flush=True)
        with open(args.out, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")
    jobs = [{**sr._job("SAM", CLICK_RATES, ROW, RECIPE, seed), "data": name, "labels": "sam clean-smallest-0.8",
             "labels_dir": label_dirs[name]} for name in order for seed in args.seeds]
    init = (data, "cpu", args.threads, "imagenet", args.keep)
    with cf.ProcessPoolExecutor(args.parallel, mp_context=mp.get_context("spawn"), initializer=sr._init_worker,
                                initargs=init) as pool:
        study = sr.Study(pool, Path(args.out), float("inf"), done=done, runner=_run_sam)
        study.run(jobs)
    summary = verdict(study.results, street_tables.load_runs(args.reuse))
    with open(args.out, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"summary": summary, "budget": sr.BUDGET, "seeds": args.seeds, "data": order}) + "\n")
    print(json.dumps(summary, indent=1), flush=True)
    print_tables(summary, [r for r in sr.read_jsonl(args.out) if r.get("phase") == "labels"])


if __name__ == "__main__":
    main()
