"""The machinery of the training studies (``recipe_study.py``, ``selftrain_study.py``): one run
in a worker process (train, then evaluate on the data's val split), job ids and the study that
runs jobs in a process pool, appends every result to a JSONL file and takes finished runs from
an earlier invocation (``--resume``). The plans and their rules live in the study scripts.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

BUDGET = dict(epochs=12, batch_size=8, crop_size=256, scale_min=0.5, scale_max=1.0, output_stride=16,
              backbone="efficientnet_lite0", amp="off", workers=0, log_every=1000)
FULL = dict(supervision="full", pdml=False)
POINTS = dict(pdml=False)
SEEDS = (0, 1, 2)


# ------------------------------------------------------------------------------------ one run

_STATE: dict = {}
DEFAULT_DATA = "default"  # the one dataset of --root (rounds 1-3)


def _init_worker(data: dict, device: str, threads: int, weights: str = "imagenet", keep: str | None = None) -> None:
    """``data``: name -> (root, val split, points artefact folder). Every dataset is opened and its
    images decoded once per worker process, reused by every run. ``keep``: a folder that receives
    every run's model.pt as ``<job id>.pt`` (later rounds start from them)."""
    import torch

    from pointparse.datasets import open_dataset
    from pointparse.points import load_points

    torch.set_num_threads(threads)
    _STATE.update(weights=weights, device=device, data={}, keep=keep)
    for name, (root, val_split, points_dir) in data.items():
        train = open_dataset("folder", root, split="train")
        val = open_dataset("folder", root, split=val_split)
        for ds in (train, val):
            ds.load_image = functools.lru_cache(maxsize=None)(ds.load_image)
            ds.load_mask = functools.lru_cache(maxsize=None)(ds.load_mask)
            ds.load = functools.lru_cache(maxsize=None)(ds.load)
        ps = load_points(points_dir)
        _STATE["data"][name] = {"train": train, "val": val, "points": {n: ps.points(n) for n in ps.names},
                                "points_dir": points_dir}


def _run(job: dict) -> dict:
    """Train one job and evaluate it on its data's val split. ``job["labels_dir"]`` (optional): a
    label set of the training split trained on beside the clicks (self-training rounds)."""
    import torch

    from pointparse.evaluate import EvalConfig, evaluate_model
    from pointparse.labelset import load_label_set
    from pointparse.model import IMAGENET_MEAN, IMAGENET_STD
    from pointparse.checkpoint import model_from_checkpoint
    from pointparse.train import train
    from pointparse.train_config import TrainConfig

    cfg = TrainConfig(**job["config"], weights=_STATE["weights"], device=_STATE["device"])
    data = _STATE["data"][job.get("data", DEFAULT_DATA)]
    labels = load_label_set(job["labels_dir"]) if job.get("labels_dir") else None
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            train(cfg, data["train"], data["points"] if cfg.supervision == "points" else None, tmp, progress=False,
                  labels=labels)
        except Exception as exc:  # a diverged or broken run is a result too
            return {**job, "error": f"{type(exc).__name__}: {exc}", "seconds": time.perf_counter() - t0}
        epochs = [json.loads(l) for l in (Path(tmp) / "epochs.jsonl").read_text().splitlines()]
        ckpt = torch.load(Path(tmp) / "model.pt", map_location="cpu", weights_only=True)
        if _STATE.get("keep"):
            Path(_STATE["keep"]).mkdir(parents=True, exist_ok=True)
            os.replace(Path(tmp) / "model.pt", Path(_STATE["keep"]) / f"{job_id(job)}.pt")
    model, info = model_from_checkpoint(ckpt)
    device = torch.device(_STATE["device"] if _STATE["device"] != "auto" else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    m, _ = evaluate_model(model, data["val"], info.num_classes, EvalConfig(workers=0, amp="off"), device,
                       IMAGENET_MEAN, IMAGENET_STD, progress=False)
    keep = ("epoch", "loss", "ce", "pdml", "crf", "dis_pos", "dis_neg", "active_triples", "ext_accuracy",
            "ext_coverage", "ext_pixels_per_image", "time_s")
    return {**job, "miou": 100 * m.miou, "pixel_acc": 100 * m.pixel_acc,
            "iou": [None if x != x else round(100 * float(x), 2) for x in m.iou],
            "epochs": [{k: r.get(k) for k in keep if k in r} for r in epochs],
            "seconds": time.perf_counter() - t0, "device": str(device), "env": library_versions()}


def library_versions() -> dict:
    """The versions of the libraries a run's numbers depend on: training moved between sessions
    whose pip resolutions differed (README, phase S), so every result line says which it ran on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "torchvision", "numpy", "opencv-python-headless", "pillow", "scikit-image", "timm"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


# ------------------------------------------------------------------------------------- phases


def read_jsonl(*paths) -> list[dict]:
    """The JSON lines of ``paths`` in order (blank lines skipped): results, reused runs, shared runs."""
    return [json.loads(l) for f in paths for l in Path(f).read_text(encoding="utf-8").splitlines() if l.strip()]


def job_id(job: dict) -> str:
    """A file-name-safe id of a job (its phase, data, name, row and seed; its epochs where they are
    not the budget's, so a longer baseline's kept model never replaces the round-0 model of the
    same recipe and seed)."""
    epochs = job.get("config", {}).get("epochs", BUDGET["epochs"])
    raw = (f"{job['phase']}_{job.get('data', DEFAULT_DATA)}_{job['name']}_{job['row']}_s{job['seed']}"
           + (f"_e{epochs}" if epochs != BUDGET["epochs"] else ""))
    return "".join(c if c.isalnum() or c in "-._" else "-" for c in raw)


def seed_mious(rows: list[dict], data: str, epochs: int | None = None, **match) -> dict[int, float]:
    """{seed: val mIoU} of the result lines of ``data`` whose fields equal ``match`` (and whose
    config trained ``epochs``, where given); of two lines of one seed the later wins (a job
    trained again to keep its model)."""
    return {r["seed"]: r["miou"] for r in rows if r.get("data") == data and "miou" in r
            and all(r.get(k) == v for k, v in match.items())
            and (epochs is None or r.get("config", {}).get("epochs") == epochs)}


def paired(a: dict[int, float], b: dict[int, float], seeds) -> dict:
    """Same-seed differences a − b, and whether their mean is positive and beyond 2 std — only
    ever true with a difference for every one of ``seeds``."""
    diffs = [a[s] - b[s] for s in sorted(a) if s in b]
    beyond = (len(diffs) == len(seeds) and len(diffs) > 1 and statistics.mean(diffs) > 0
              and statistics.mean(diffs) > 2 * statistics.stdev(diffs))
    return {"diffs": diffs, "beyond_2std": beyond}


def _same_job(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in ("phase", "data", "name", "row", "seed", "config"))


def _job(phase: str, name: str, row: str, config: dict, seed: int) -> dict:
    return {"phase": phase, "name": name, "row": row, "seed": seed, "config": {**BUDGET, **config, "seed": seed}}


class Study:
    def __init__(self, pool: cf.Executor, out: Path, deadline: float, seeds=SEEDS, max_jobs: int = 0,
                 done: list[dict] | None = None, runner=None, slots: int = 0):
        self.pool, self.out, self.deadline, self.seeds = pool, out, deadline, seeds
        self.slots = slots  # jobs in flight at once (0: the pool's workers)
        self.runner = runner or _run  # a module-level function of a job (pickled by reference)
        self.max_jobs = max_jobs
        self.results: list[dict] = []
        self.done = done or []  # results of an earlier, killed invocation (--resume)
        self.not_started = 0  # jobs the deadline skipped: a summary written after it is partial

    def run(self, jobs: list[dict]) -> list[dict]:
        """Run jobs (in order of priority); those not started by the deadline are skipped, those
        already in ``done`` (``--resume``) are taken from there."""
        if self.max_jobs:
            jobs = jobs[:self.max_jobs]
        todo = []
        for job in jobs:
            old = next((r for r in self.done if _same_job(r, job) and "miou" in r), None)
            if old is not None:
                self.results.append(old)
                print(f"# resumed {job_id(job)}: mIoU {old['miou']:.1f}", flush=True)
            else:
                todo.append(job)
        # at most one job per worker in the pool's queue: a job starts only if the deadline has not
        # passed when a worker frees up (submitting all at once queued them past any deadline)
        slots = self.slots or max(1, getattr(self.pool, "_max_workers", 1))
        pending, futures, done = iter(todo), {}, []

        def fill() -> None:
            while len(futures) < slots and time.time() <= self.deadline:
                job = next(pending, None)
                if job is None:
                    return
                futures[self.pool.submit(self.runner, job)] = job

        fill()
        while futures:
            finished, _ = cf.wait(futures, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                done.append(self._record(fut, futures.pop(fut)))
            fill()
        left = sum(1 for _ in pending)
        if left:
            self.not_started += left
            print(f"# deadline passed: {left} runs not started", flush=True)
        return done

    def submit(self, jobs: list[dict]) -> dict:
        """Start jobs without waiting (long runs beside later phases); :meth:`collect` them."""
        return {self.pool.submit(self.runner, job): job for job in jobs}

    def collect(self, futures: dict) -> None:
        for fut in cf.as_completed(futures):
            self._record(fut, futures[fut])

    def _record(self, fut, job) -> dict:
        try:
            res = fut.result()
        except Exception as exc:  # a crashed worker process
            res = {**job, "error": f"{type(exc).__name__}: {exc}"}
        self.results.append(res)
        with open(self.out, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(res) + "\n")
        line = f"{res['phase']:2s} {res.get('data', ''):13s} {res['name']:28s} {res['row']:9s} seed {res['seed']}"
        print(line + (f"  mIoU {res['miou']:5.1f}  acc {res['pixel_acc']:5.1f}  {res['seconds']:.0f}s"
                      if "miou" in res else f"  ERROR {res.get('error')}"), flush=True)
        return res

    def rows(self, phase: str, name: str, config: dict, which=("FullSup", "PointSup")) -> list[dict]:
        base = {"FullSup": FULL, "PointSup": POINTS}
        return [_job(phase, name, row, {**config, **base[row]}, s) for s in self.seeds for row in which]
