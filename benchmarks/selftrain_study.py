"""Self-training study (issue 22): pseudo-label rounds from clicks on the default network.

Same budget, data, val splits and 2 x 1-thread processes as ``recipe_study.py`` round 6, with
the same machinery (``study_runner.py``: workers, :class:`study_runner.Study`, the job layout,
results as JSONL lines) and round 5's recipes.
Round 0 is the click recipe ``cpu-clicks`` (round 5's ``v3+ adamw lr8e-4`` + ``CLICKS``, 12
epochs from ImageNet). Round *r* >= 1 trains the same recipe from ImageNet on the clicks plus the
pseudo-labels (``label_weight`` 1) that round *r - 1*'s model gives the training split
(:func:`pointparse.pseudo_labels.write_pseudo_labels`, made inside the run's worker from the
kept model of its parent). Every result line carries ``steps``: the optimiser steps of the run
and of all the runs its labels came from (``epochs_before``), so rows compare at equal budgets.
The verdict and README's rows (``--verdict``) are ``selftrain_verdict.py``'s.

**Plan and rules** (written 2026-12-05 19:20, before any of its runs on real data; the rules are applied by
the code below, so a resumed study cannot drift from them):

* **Q — pseudo-label quality, no training** (``benchmarks/pseudo_label_rules.py`` on the kept
  round-0 models of seed 2, both training splits, the four rules ``global:0.9``,
  ``top-share:0.5``, ``per-class:0.9:0.5``, ``adaptive:0.9``, views ``1+flip`` and
  ``0.75,1,1.25+flip``; lines in ``results/pseudo-label-rules.jsonl`` with ``--tag`` the
  dataset's name, given as ``--quality``).
  **Rule (multi-scale):** the training rounds use ``0.75,1,1.25+flip`` only if, for the
  ``per-class`` rule, it raises the accuracy of the new pixels by >= 1.0 point at a coverage no
  lower by more than 1.0 point on *both* datasets; else ``1+flip`` (a third of the inference).
* **R — the rule screen** (seed 2, both datasets): round 1 with each of the four rules
  (8 trainings). **Rule:** the rule with the best mean rank of val mIoU over the two datasets;
  a tie goes to ``per-class`` (the stage's default), then to the lower mean-rank list order.
  One seed only, for cost: its noise (std ~1.3 mIoU on LabelMeFacade between seeds) is stated
  beside the result.
* **S — seeds** (seed-major, 2 then 1 then 0, so a deadline leaves whole seeds), per dataset:
  round 0 (the kept model of ``recipe_study.py`` rounds 5/6 where one exists, else trained
  again as phase ``R0``), round 1 and round 2 with the chosen rule, and the equal-step
  baselines: ``cpu-clicks`` and FullSup (the default network) at 24 epochs (= round 1's steps)
  and at 36 epochs (= round 2's); FullSup at 12 epochs is rounds 5/6's.
* **The named recipe:** the round (1 or 2) with the higher mean val mIoU over both datasets'
  seed means is named ``cpu-selftrain`` *if* on both datasets its mean paired (same seed)
  difference to ``cpu-clicks`` at equal steps is positive and larger than 2 std of those
  differences; README Results report it as a fraction of FullSup at equal steps. Otherwise no
  recipe is named and the result is reported as negative, with what each factor did.
* **Phase S in pieces** (added 2026-12-06 06:30, before any phase-S run): kept models do not
  outlive a session here, so phase S runs seed by seed with ``--rounds 1`` first (round 1 and the
  24-epoch baselines; round 0 is not trained again where round 1 already has a result), and
  ``--shared results/selftrain-sam-study.jsonl`` takes the FullSup jobs that study already ran.
  One or two seeds decide nothing: the named-recipe rule below is applied only to three seeds;
  fewer are reported as paired differences per seed, nothing more.
  Added 2026-12-06 06:50, after seed 2's first phase-S line (LabelMeFacade ``cpu-clicks`` at 24
  epochs, 30.5, above round 1's 27.7): ``--only labelmefacade --seeds 1 0 --rounds 1`` next,
  because a LabelMeFacade run costs a quarter of a CamVid one, so only there do three seeds of
  round 1 fit in a session. The rule needs both datasets; this completes one of them.
* **Round 2 on LabelMeFacade** (added 2026-12-06 08:56, before any round-2 run): round 1's
  models of seeds 0 and 1 are kept from the last session, seed 2's is not (phase R's). Two
  invocations run side by side (``--only labelmefacade --rounds 2``, one ``--seeds 0 1``, one
  ``--seeds 2``, ``--parallel 3`` each) so that seed 2's chain (round 0 and round 1 trained
  again, then round 2) overlaps the other seeds' round 2 and 36-epoch baselines. Seed 2's round 0
  and round 1 are then trained again in this session's environment: their later lines are the
  ones the verdict reads (round 1's pairs with the 24-epoch ``cpu-clicks`` of the same session).
  Round 2 is named by the rule above only if it passes on both datasets; LabelMeFacade alone
  can only reject it.
* **CamVid seeds 1 and 0 of round 1** (added 2026-12-06 11:45, before their runs): two
  invocations side by side (``--only camvid --rounds 1 --parallel 2 --deadline 3600``, one
  ``--seeds 1``, one ``--seeds 0``): round 0 trained again (no kept model), then round 1 and
  ``cpu-clicks`` at 24 epochs. The deadline keeps FullSup at 24 epochs of these seeds from
  starting (it would add ~50 min to a ~100-min run that has to end inside the session); CamVid's
  FullSup at equal steps stays seed 2's, and fractions of it are over seed 2.
  Added 2026-12-06 13:31, after those runs and before these: the session had 60 minutes left, so
  the same two invocations again with ``--resume --parallel 1`` and no deadline run the one job
  each has left, FullSup at 24 epochs of its seed; a run not finished by the session's end is
  killed and reported as not run.
* SAM labels (combined with the pseudo-labels) are not in this plan: they need the SAM label
  sets of both training splits (issue 21), a later plan.

    python benchmarks/selftrain_study.py --data labelmefacade=../shared/data/labelmefacade \\
        --data camvid=../shared/data/camvid --keep MODELS --reuse results/street-study-round6.jsonl \\
        --quality results/pseudo-label-rules.jsonl --out results/selftrain-study.jsonl \\
        --parallel 2 --threads 1 [--resume] [--deadline SECONDS] \\
        [--seeds 2 1 0] [--rounds 1] [--shared results/selftrain-sam-study.jsonl]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

import recipe_study as rs
import study_runner as sr

CLICK_RATES = "v3+ adamw lr8e-4"  # the click recipe's rates (round 5) = ``cpu-clicks``
ROUND0 = {**rs.ROUND5_SCREEN[CLICK_RATES], **rs.CLICKS}
FULLSUP = {**rs.N_CANDIDATES[rs.ROUND5_BASE], **sr.FULL}
RULES = {"per-class": dict(rule="per-class", threshold=0.9, share=0.5),
         "global": dict(rule="global", threshold=0.9),
         "top-share": dict(rule="top-share", share=0.5),
         "adaptive": dict(rule="adaptive", threshold=0.9)}
DEFAULT_RULE = "per-class"
VIEWS = {"1+flip": dict(scales=[1.0], flip=True), "0.75,1,1.25+flip": dict(scales=[0.75, 1.0, 1.25], flip=True)}
DATA = ("labelmefacade", "camvid")
SCREEN_SEED = 2
SEED_ORDER = (2, 1, 0)
EPOCHS = sr.BUDGET["epochs"]
MS_GAIN, MS_COVERAGE_LOSS = 1.0, 1.0  # points, the multi-scale rule


def _run_selftrain(job: dict) -> dict:
    """A job of this study in a worker: with ``parent`` (the job whose kept model labels the
    split) the pseudo-labels are made first (kept beside the models, reused by a resumed run),
    combined with the label set in ``other_dir`` where the job names one."""
    from pointparse.labelset import load_label_set
    from pointparse.points import load_points
    from pointparse.predictor import Predictor
    from pointparse.pseudo_labels import PseudoLabelConfig, write_pseudo_labels

    data = sr._STATE["data"][job["data"]]
    quality = None
    if job.get("parent"):
        parent = Path(sr._STATE["keep"]) / f"{job['parent']}.pt"
        out = Path(sr._STATE["keep"]) / "pseudo" / sr.job_id(job)
        predictor = Predictor.from_checkpoint(parent, "cpu" if sr._STATE["device"] == "auto" else sr._STATE["device"])
        labels = write_pseudo_labels(predictor, data["train"], load_points(data["points_dir"]),
                                     PseudoLabelConfig(**job["pseudo"]), out, progress=False,
                                     other=load_label_set(job["other_dir"]) if job.get("other_dir") else None)
        s = labels.summary
        quality = {k: s.get(k) for k in ("accuracy", "coverage", "labelled_share", "kept_share", "prediction_accuracy")}
        quality["per_class"] = {c: {k: d.get(k) for k in ("accuracy", "coverage", "kept_share")}
                                for c, d in s["per_class"].items()}
        job = {**job, "labels_dir": str(out)}
    res = sr._run(job)
    for path in ("labels_dir", "other_dir"):  # paths of this machine; the set is keep/pseudo/<job id>
        res.pop(path, None)
    per_epoch = len(data["train"]) // job["config"]["batch_size"]  # drop_last
    res["steps"] = (job["config"]["epochs"] + job.get("epochs_before", 0)) * per_epoch
    if quality is not None:
        res["pseudo_quality"] = quality
    return res


def choose_views(quality_file: str | None) -> tuple[str, dict]:
    """The multi-scale rule (docstring) on ``pseudo_label_rules.py`` lines; ``1+flip`` without them."""
    if not quality_file or not Path(quality_file).exists():
        return "1+flip", {"reason": "no quality lines"}
    rows = sr.read_jsonl(quality_file)
    got = {}
    for r in rows:
        if r["rule"] == "per-class:0.9:0.5":
            got[(r.get("tag") or "", r["views"])] = r["summary"]
    verdict = {}
    for data in DATA:
        one, ms = got.get((data, "1+flip")), got.get((data, "0.75,1,1.25+flip"))
        if one is None or ms is None:
            return "1+flip", {"reason": f"no per-class lines for {data}"}
        verdict[data] = (100 * (ms["accuracy"] - one["accuracy"]), 100 * (ms["coverage"] - one["coverage"]))
    pays = all(g >= MS_GAIN and c >= -MS_COVERAGE_LOSS for g, c in verdict.values())
    return ("0.75,1,1.25+flip" if pays else "1+flip"), {"gain_and_coverage_change": verdict}


def _job(phase: str, name: str, row: str, config: dict, data: str, seed: int, epochs: int | None = None,
         **extra) -> dict:
    job = sr._job(phase, name, row, {**config, "epochs": epochs or EPOCHS}, seed)
    return {**job, "data": data, **extra}


def round0(data: str, seed: int) -> dict:
    """Round 5/6's click-recipe job (same phase, name and config, so its result and kept model are reused)."""
    return _job("S", CLICK_RATES, "Clicks", ROUND0, data, seed)


def round_n(parent: dict, rule: str, views: str, r: int) -> dict:
    pseudo = {**RULES[rule], **VIEWS[views]}
    return _job("ST", f"r{r} {rule} {views}", "Clicks+PL", ROUND0, parent["data"], parent["seed"],
                parent=sr.job_id(parent), pseudo=pseudo, epochs_before=EPOCHS * r)


class SelfTrainStudy(sr.Study):
    def __init__(self, *a, reuse: list[dict], keep: str, **kw):
        super().__init__(*a, runner=_run_selftrain, **kw)
        self.reuse, self.keep = reuse, keep

    def kept(self, job: dict) -> bool:
        return (Path(self.keep) / f"{sr.job_id(job)}.pt").exists()

    def known(self, job: dict) -> bool:
        """A result for ``job`` is at hand (this invocation's, or a resumed line)."""
        return any(sr._same_job(r, job) and "miou" in r for r in self.results + self.done)

    def ensure_models(self, jobs: list[dict]) -> None:
        """Make sure each job's model is kept: a later round labels its images with it. A resumed
        result whose model is gone (another machine, a cleaned folder) still counts as a result,
        but the job is trained again when its model is needed, appending a second line (the later
        one is the one to read)."""
        gone = [j for j in jobs if not self.kept(j)]
        self.done = [r for r in self.done if not any(sr._same_job(r, j) for j in gone)]
        self.results = [r for r in self.results if not any(sr._same_job(r, j) for j in gone)]
        self.run(jobs)

    def run(self, jobs: list[dict]) -> list[dict]:
        """As :meth:`study_runner.Study.run`, skipping the jobs this invocation has already run
        (the rule screen's round 1 of the chosen rule is phase S's seed-2 round 1)."""
        return super().run([j for j in jobs if not any(sr._same_job(r, j) for r in self.results)])

    def ensure_round0(self, pairs: list[tuple[str, int]]) -> dict:
        """Round-0 jobs whose model is kept: reused when possible, else trained again (phase R0)."""
        out, todo = {}, []
        for data, seed in pairs:
            job = round0(data, seed)
            mine = next((r for r in self.results if sr._same_job(r, {**job, "phase": "R0"})), None)
            old = next((r for r in self.reuse if sr._same_job(r, job) and "miou" in r), None)
            if old is not None and self.kept(job) and mine is None:
                self.results.append(old)
                print(f"# round 0 reused {sr.job_id(job)}: mIoU {old['miou']:.1f}", flush=True)
            else:
                job = {**job, "phase": "R0"}
                todo.append(job)
            out[(data, seed)] = job
        self.ensure_models(todo)
        return out

    def parents(self, pairs: list[tuple[str, int]], settled) -> dict:
        """Round 0 of each (dataset, seed) pair, its model made sure of only where
        ``settled(round-0 job)`` is false (a later job still needs it)."""
        out = {(d, s): round0(d, s) for d, s in pairs}
        return {**out, **self.ensure_round0([p for p in pairs if not settled(out[p])])}


def mean_rank(results: list[dict], names: list[str]) -> dict:
    ranks = {n: [] for n in names}
    for data in DATA:
        got = {n: next((r["miou"] for r in results if r["name"] == n and r["data"] == data and "miou" in r), None)
               for n in names}
        order = sorted((n for n in names if got[n] is not None), key=lambda n: -got[n])
        for i, n in enumerate(order):
            ranks[n].append(i + 1)
    return {n: statistics.mean(v) if len(v) == len(DATA) else None for n, v in ranks.items()}


def plan(study: SelfTrainStudy, views: str, seeds=SEED_ORDER, rounds: int = 2, only=DATA) -> dict:
    """The screen on both datasets, then phase S on the datasets in ``only``."""
    r0 = study.parents([(d, SCREEN_SEED) for d in DATA],
                       lambda p: all(study.known(round_n(p, rule, views, 1)) for rule in RULES))
    screen = [round_n(r0[(d, SCREEN_SEED)], rule, views, 1) for d in DATA for rule in RULES]  # short runs first
    study.run(screen)
    names = [f"r1 {rule} {views}" for rule in RULES]
    ranks = mean_rank(study.results, names)
    ranked = [n for n in names if ranks[n] is not None]
    best = min(ranked, key=lambda n: (ranks[n], n != f"r1 {DEFAULT_RULE} {views}", names.index(n)), default=None)
    rule = best.split(" ")[1] if best else DEFAULT_RULE
    print(f"# rule screen: mean ranks {ranks}; rule {rule}", flush=True)
    for seed in seeds:
        r1_of = lambda p: round_n(p, rule, views, 1)  # noqa: E731
        # round 0 is needed unless round 1 has a result and round 2 is not run or has a result or
        # round 1's model
        r0 = study.parents([(d, seed) for d in only], lambda p: study.known(r1_of(p)) and (
            rounds < 2 or study.kept(r1_of(p)) or study.known(round_n(r1_of(p), rule, views, 2))))
        r1 = {d: r1_of(r0[(d, seed)]) for d in only}
        study.run([*r1.values(),
                   *[_job("S", CLICK_RATES, "Clicks", ROUND0, d, seed, 2 * EPOCHS) for d in only],
                   *[_job("S", rs.ROUND5_BASE, "FullSup", FULLSUP, d, seed, 2 * EPOCHS) for d in only]])
        if rounds < 2:
            continue
        study.ensure_models([r1[d] for d in only if not study.known(round_n(r1[d], rule, views, 2))])
        study.run([*[round_n(r1[d], rule, views, 2) for d in only],
                   *[_job("S", CLICK_RATES, "Clicks", ROUND0, d, seed, 3 * EPOCHS) for d in only],
                   *[_job("S", rs.ROUND5_BASE, "FullSup", FULLSUP, d, seed, 3 * EPOCHS) for d in only]])
    return {"plan": "selftrain", "views": views, "rule_ranks": ranks, "rule": rule,
            "runs_not_started": study.not_started}  # > 0: a deadline cut this invocation short


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", action="append", required=True, metavar="NAME=ROOT",
                    help="labelmefacade=ROOT and camvid=ROOT (folder datasets)")
    ap.add_argument("--out", required=True, help="results JSONL (appended)")
    ap.add_argument("--keep", required=True, help="folder of the kept models (<job id>.pt) and pseudo-label sets")
    ap.add_argument("--reuse", action="append", default=[], help="results JSONL of recipe_study rounds 5/6 (round 0)")
    ap.add_argument("--quality", default=None, help="pseudo_label_rules.py JSONL (phase Q, the multi-scale rule)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--deadline", type=float, default=0, help="seconds after which no new run starts (0 = none)")
    ap.add_argument("--resume", action="store_true", help="take runs already in --out instead of running them again")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEED_ORDER), help="phase S's seeds, in order")
    ap.add_argument("--rounds", type=int, choices=(1, 2), default=2,
                    help="phase S's last round: 1 runs round 1 and the 24-epoch baselines only (no model is "
                         "trained again where round 1 has a result)")
    ap.add_argument("--only", choices=DATA, action="append", default=[],
                    help="run phase S on this dataset only (repeatable; default both); the screen is both's")
    ap.add_argument("--shared", action="append", default=[],
                    help="another study's results JSONL: its lines of the same jobs count as resumed "
                         "(phase S's FullSup jobs are selftrain_sam_study.py's)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per round (smoke tests only)")
    ap.add_argument("--verdict", action="store_true",
                    help="print the named-recipe rule's verdict and README's rows from --out (and --shared), "
                         "run nothing")
    args = ap.parse_args()
    global EPOCHS
    if args.epochs:
        EPOCHS = sr.BUDGET["epochs"] = args.epochs

    from pointparse.cache import StageCache
    from pointparse.dataspec import DatasetSpec
    from pointparse.simulate import MakePointsConfig
    from pointparse.stages.make_points import run_make_points

    roots = dict(d.split("=", 1) for d in args.data)
    if set(roots) != set(DATA):
        ap.error(f"give --data for exactly {', '.join(DATA)}")
    views, why = choose_views(args.quality)
    print(f"# views {views} ({why})", flush=True)
    reuse = sr.read_jsonl(*args.reuse)
    done = []
    if (args.resume or args.verdict) and Path(args.out).exists():
        done = sr.read_jsonl(args.out)
    done += sr.read_jsonl(*args.shared)
    if args.verdict:
        from selftrain_verdict import print_rows, verdict  # the study's module is __main__ here

        summary = verdict([r for r in done if "miou" in r], reuse,
                          next((r["summary"]["rule"] for r in reversed(done) if "rule" in r.get("summary", {})),
                               DEFAULT_RULE), views, EPOCHS)
        print(json.dumps(summary, indent=1))
        print_rows(summary)
        return
    with tempfile.TemporaryDirectory() as cache_dir:
        data = {}
        for name, root in roots.items():
            pts = run_make_points(DatasetSpec("folder", root, "train"), MakePointsConfig(), StageCache(cache_dir),
                                  progress=False)
            data[name] = (root, "val", str(pts.path))
        deadline = time.time() + args.deadline if args.deadline else float("inf")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        init = (data, args.device, args.threads, "imagenet", args.keep)
        with cf.ProcessPoolExecutor(args.parallel, mp_context=mp.get_context("spawn"), initializer=sr._init_worker,
                                    initargs=init) as pool:
            study = SelfTrainStudy(pool, Path(args.out), deadline, done=done, reuse=reuse, keep=args.keep)
            summary = {**plan(study, views, tuple(args.seeds), args.rounds, tuple(args.only) or DATA),
                       "only": args.only, "views_rule": why}
    with open(args.out, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"summary": summary, "budget": sr.BUDGET, "argv": sys.argv[1:]}) + "\n")
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
