"""Self-training from ``cpu-sam`` (issue 22, phase T): round 1 on the clicks plus the round-0
model's confident predictions combined with the SAM labels.

Same budget, data, val splits, 2 x 1-thread worker processes and machinery (``study_runner.py``)
as ``selftrain_study.py`` and ``sam_study.py``. Round 0 is ``cpu-sam`` (``cpu-clicks`` + the
training split's SAM labels, 12 epochs from ImageNet): ``sam_study.py``'s kept models of seeds
0/1/2 in ``--keep`` (``SAM_<data>_..._s<seed>.pt``) and its result lines in ``--reuse``. Round 1
labels the training split with that model (:func:`pointparse.pseudo_labels.write_pseudo_labels`,
the ``per-class`` rule at 0.9 / 0.5 and the views of ``selftrain_study``'s multi-scale rule on
phase Q's lines), combined with the same SAM label set (``sam_study.py``'s, found in ``--cache``
by the key of its labels line in ``--reuse``) by ``agree``, then trains ``cpu-sam``'s
recipe from ImageNet for 12 epochs on the clicks plus that set (``label_weight`` 1). Its
``steps`` count round 0's too (24 epochs' worth).

**Plan and rules** (written 2026-12-06 00:50, before any of its runs):

* Why ``agree`` (fixed, not screened, for cost): the SAM labels' known failure is a mask of a
  click's surroundings (LabelMeFacade ``various``: 20 % accurate), their known gap coverage (34 %
  of LabelMeFacade's pixels, building 15 %). ``agree`` keeps a SAM pixel only where the round-0
  network's arg-max agrees with it (drops the wrong masks) and fills SAM's silence with the
  network's confident pixels (the coverage). ``fill`` would keep every wrong SAM pixel,
  ``intersect`` adds no coverage. The per-class rule won phase R's LabelMeFacade screen (seed 2).
* Jobs, seed-major (2, 1, 0), so a cut leaves whole seeds: round 1 on LabelMeFacade and CamVid,
  then the equal-step baselines on LabelMeFacade: FullSup (the default network, ``cpu``) and
  ``cpu-sam`` at 24 epochs. CamVid's equal-step baselines (FullSup and ``cpu-sam`` at 24 epochs,
  ~55 min each here) come after all seeds. The FullSup jobs are ``selftrain_study.py``'s phase-S
  jobs (same phase, name, config), so either study takes the other's lines with ``--resume``.
* **Rule:** round 1 is named ``cpu-sam-selftrain`` and becomes README's recipe for clicks *if*
  on both datasets its mean paired (same seed) difference to ``cpu-sam`` at equal steps (24
  epochs) is positive and larger than 2 std of those differences; reported as a fraction of
  FullSup at 24 epochs. Otherwise ``cpu-sam`` stays the recipe and the result is reported as
  negative. Also reported, deciding nothing: round 1 against round 0 (12 epochs, paired) and the
  combined labels' accuracy and coverage per class.
* Runs that do not finish are reported as not run; no seed is replaced.

    python benchmarks/selftrain_sam_study.py --data labelmefacade=../shared/data/labelmefacade \\
        --data camvid=../shared/data/camvid --cache SAMCACHE --keep MODELS \\
        --reuse results/sam-study.jsonl --quality results/pseudo-label-rules.jsonl \\
        --out results/selftrain-sam-study.jsonl [--resume] [--deadline SECONDS] [--shared results/selftrain-study.jsonl]
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
import sam_study
import selftrain_study as st
import street_tables
import study_runner as sr

DATA = ("labelmefacade", "camvid")
SEED_ORDER = (2, 1, 0)
RULE, COMBINE = "per-class", "agree"
ROW = "Clicks+SAM+PL"


def round0(data: str, seed: int) -> dict:
    """``sam_study.py``'s job (its id names the kept model; its line is the round-0 result)."""
    return {**sr._job("SAM", sam_study.CLICK_RATES, sam_study.ROW, sam_study.RECIPE, seed), "data": data,
            "labels": "sam clean-smallest-0.8"}


def jobs_for(seed: int, views: str, sam_dirs: dict, epochs: int) -> tuple[list[dict], list[dict]]:
    """(this seed's jobs in order, its CamVid equal-step baselines: run after every seed)."""
    def round1(data):
        parent = round0(data, seed)
        pseudo = {**st.RULES[RULE], **st.VIEWS[views], "combine": COMBINE}
        return {**sr._job("T", f"r1 {RULE} {COMBINE} {views}", ROW, sam_study.RECIPE, seed), "data": data,
                "parent": sr.job_id(parent), "pseudo": pseudo, "other_dir": sam_dirs[data], "epochs_before": epochs}

    def baselines(data):
        return [st._job("S", rs.ROUND5_BASE, "FullSup", st.FULLSUP, data, seed, 2 * epochs),
                {**st._job("T", sam_study.CLICK_RATES, sam_study.ROW, sam_study.RECIPE, data, seed, 2 * epochs),
                 "labels_dir": sam_dirs[data]}]

    return [round1("labelmefacade"), round1("camvid"), *baselines("labelmefacade")], baselines("camvid")


def verdict(results: list[dict], reuse: list[dict]) -> dict:
    """The plan's rule (module docstring) on this study's runs and round 0's lines."""
    seeds_of = sr.seed_mious

    def paired(a, b):
        return sr.paired(a, b, SEED_ORDER)

    out = {}
    for data in DATA:
        r1 = seeds_of(results, data, phase="T", row=ROW)
        sam24 = seeds_of(results, data, phase="T", row=sam_study.ROW)
        full24 = seeds_of(results, data, 2 * sr.BUDGET["epochs"], phase="S", row="FullSup")
        r0 = seeds_of(reuse, data, phase="SAM", row=sam_study.ROW)
        d = {"round1": r1, "cpu_sam_24": sam24, "fullsup_24": full24, "round0": r0,
             "vs_cpu_sam_24": paired(r1, sam24), "vs_round0": paired(r1, r0)}
        if r1 and full24 and set(full24) >= set(r1):
            d["of_fullsup_24"] = statistics.mean(r1.values()) / statistics.mean(full24[s] for s in r1)
        out[data] = d
    out["named"] = all(out[d]["vs_cpu_sam_24"]["beyond_2std"] for d in DATA)
    return out


def print_tables(summary: dict, runs: list[dict]) -> None:
    """README Results' rows (markdown) from :func:`verdict`'s summary and the round-1 lines."""
    fmt = street_tables._fmt

    def seeds(d):
        d = {int(k): v for k, v in (d or {}).items()}
        return " / ".join(f"{d[s]:.1f}" if s in d else "–" for s in (0, 1, 2))

    def paired(p):
        return (", ".join(f"{x:+.1f}" for x in p["diffs"]) + f" = {fmt(p['diffs'])}") if p["diffs"] else "–"

    print("| dataset | round-1 labels: accuracy / coverage | round 1 seeds 0 / 1 / 2 | mean ± std | round 0 "
          "(`cpu-sam`, 12 ep.) | round 1 − round 0 | `cpu-sam` 24 ep. | round 1 − `cpu-sam` 24 ep. | FullSup 24 ep. "
          "| round 1 of FullSup 24 ep. |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for data in DATA:
        d = summary[data]
        q = [r["pseudo_quality"] for r in runs if r.get("data") == data and r.get("row") == ROW and r.get("pseudo_quality")]
        lab = (f"{100 * statistics.mean(x['accuracy'] for x in q):.1f} / {100 * statistics.mean(x['coverage'] for x in q):.1f} %"
               if q else "–")
        frac = f"{d['of_fullsup_24']:.2f}" if d.get("of_fullsup_24") else "–"
        print(f"| {data} | {lab} | {seeds(d['round1'])} | {fmt(list(d['round1'].values()))} | "
              f"{fmt(list(d['round0'].values()))} | {paired(d['vs_round0'])} | {fmt(list(d['cpu_sam_24'].values()))} | "
              f"{paired(d['vs_cpu_sam_24'])} | {fmt(list(d['fullsup_24'].values()))} | {frac} |")
    print(f"\nnamed (beyond 2 std over cpu-sam at 24 epochs on both): {summary['named']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", action="append", required=True, metavar="NAME=ROOT")
    ap.add_argument("--cache", required=True, help="sam_study.py's cache folder (points and SAM label sets)")
    ap.add_argument("--keep", required=True, help="sam_study.py's kept models; receives this study's")
    ap.add_argument("--reuse", action="append", default=[], help="sam_study.py's results (round 0)")
    ap.add_argument("--quality", default=None, help="pseudo_label_rules.py JSONL (the views rule)")
    ap.add_argument("--out", required=True, help="results JSONL (appended)")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEED_ORDER))
    ap.add_argument("--deadline", type=float, default=0, help="seconds after which no new run starts (0 = none)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--shared", action="append", default=[],
                    help="selftrain_study.py's results JSONL: its FullSup lines count as this study's (same jobs)")
    ap.add_argument("--verdict", action="store_true", help="print the rule's verdict and README's rows from --out, "
                                                           "run nothing")
    args = ap.parse_args()
    reuse = sr.read_jsonl(*args.reuse)
    done = []
    if (args.resume or args.verdict) and Path(args.out).exists():
        done = sr.read_jsonl(args.out)
    done += sr.read_jsonl(*args.shared)
    epochs = sr.BUDGET["epochs"]
    if args.verdict:
        runs = [r for r in done if "miou" in r]
        summary = verdict(runs, reuse)
        print(json.dumps(summary, indent=1))
        print_tables(summary, runs)
        return

    from pointparse.cache import StageCache
    from pointparse.datasets import open_dataset
    from pointparse.dataspec import DatasetSpec
    from pointparse.labelset import load_label_set
    from pointparse.simulate import MakePointsConfig
    from pointparse.stages.make_points import run_make_points

    roots = dict(d.split("=", 1) for d in args.data)
    if set(roots) != set(DATA):
        ap.error(f"give --data for exactly {', '.join(DATA)}")
    views, why = st.choose_views(args.quality)
    print(f"# views {views} ({why})", flush=True)
    cache = StageCache(args.cache)
    data, sam_dirs = {}, {}
    for name, root in roots.items():
        spec = DatasetSpec("folder", root, "train")
        pts = run_make_points(spec, MakePointsConfig(), cache, progress=False)
        data[name] = (root, "val", str(pts.path))
        # sam_study.py's set by the key of its labels line: this study's keys move with the files'
        # times (a re-synced copy of the data), and remaking the sets would cost SAM's 49 min
        line = next((r for r in reuse if r.get("phase") == "labels" and r.get("data") == name), None)
        sam_dir = cache.path_for("extension-labels", line["key"]) if line else None
        if sam_dir is None or not (sam_dir / "manifest.json").is_file():
            ap.error(f"{name}: sam_study.py's SAM label set is not in --cache {args.cache} (its labels line in --reuse)")
        if sorted(load_label_set(sam_dir).names) != sorted(open_dataset("folder", root, split="train").names):
            ap.error(f"{sam_dir}: the SAM label set does not cover {name}'s training split")
        sam_dirs[name] = str(sam_dir)
    for data_name in DATA:
        for seed in args.seeds:
            parent = Path(args.keep) / f"{sr.job_id(round0(data_name, seed))}.pt"
            if not parent.is_file():
                ap.error(f"{parent}: round 0's model is missing (run sam_study.py with --keep {args.keep})")
    deadline = time.time() + args.deadline if args.deadline else float("inf")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    init = (data, "cpu", args.threads, "imagenet", args.keep)
    with cf.ProcessPoolExecutor(args.parallel, mp_context=mp.get_context("spawn"), initializer=sr._init_worker,
                                initargs=init) as pool:
        study = sr.Study(pool, Path(args.out), deadline, done=done, runner=st._run_selftrain)
        now, later = zip(*(jobs_for(seed, views, sam_dirs, epochs) for seed in args.seeds))
        study.run([j for js in (*now, *later) for j in js])  # one queue: no worker waits for a seed's last run
    summary = verdict(study.results, reuse)
    with open(args.out, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"summary": summary, "budget": sr.BUDGET, "seeds": args.seeds, "views": views}) + "\n")
    print(json.dumps(summary, indent=1), flush=True)


if __name__ == "__main__":
    main()
