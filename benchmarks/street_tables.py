"""README Results' tables for the default network (issue: one default network for street scenes),
computed from the study's result files, so the README's numbers can be re-derived:

    python benchmarks/street_tables.py results/street-study-round4.jsonl results/street-study-round5.jsonl \
        results/street-study-round6.jsonl

Per dataset: FullSup of the default network (``v3+ adamw lr4e-4`` = ``--recipe cpu``) and of the
previous default (``cpu`` = ``--recipe cpu-aspp``), and the recipes for clicks (``v3+ adamw
lr8e-4`` + the click losses = ``--recipe cpu-clicks``; the previous ``cpu-aspp-clicks``), seed by
seed, mean ± std, the paired per-seed difference and the fraction of the same network's FullSup;
then the thin classes' IoU on CamVid. A seed that did not run is shown as "–".
"""

from __future__ import annotations

import json
import statistics
import sys

#: (README row, study name, study row)
ROWS = [
    ("FullSup, default network (`cpu`)", "v3+ adamw lr4e-4", "FullSup"),
    ("FullSup, previous default (`cpu-aspp`)", "cpu", "FullSup"),
    ("Clicks, `cpu-clicks` (default network, lr 8e-4)", "v3+ adamw lr8e-4", "Clicks"),
    ("Clicks, default network at lr 4e-4", "v3+ adamw lr4e-4", "Clicks"),
    ("Clicks, previous `cpu-aspp-clicks`", "cpu", "Clicks"),
]
PAIRS = [("v3+ adamw lr4e-4", "FullSup", "cpu", "FullSup"), ("v3+ adamw lr8e-4", "Clicks", "cpu", "Clicks")]
FRACTION_OF = {"v3+ adamw lr8e-4": "v3+ adamw lr4e-4", "v3+ adamw lr4e-4": "v3+ adamw lr4e-4", "cpu": "cpu"}
THIN = {"camvid": {"pole": 2, "sign": 6, "fence": 7, "pedestrian": 9, "bicyclist": 10}}
SEEDS = (0, 1, 2)


def _fmt(xs: list[float]) -> str:
    if not xs:
        return "–"
    if len(xs) == 1:
        return f"{xs[0]:.1f}"
    return f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs):.1f}"


def load_runs(paths: list[str]) -> dict:
    """(data, name, row, seed) -> result line of every finished run in ``paths`` (later files win;
    none repeats a run)."""
    runs: dict = {}
    for path in paths:
        for line in open(path, encoding="utf-8"):
            r = json.loads(line) if line.strip() else {}
            if "miou" in r:
                runs[(r.get("data"), r["name"], r["row"], r["seed"])] = r
    return runs


def main(paths: list[str]) -> None:
    runs = load_runs(paths)
    for data in ("labelmefacade", "camvid"):
        print(f"\n{data}\n")
        print("| run | seed 0 / 1 / 2 | mean ± std | of FullSup (same seeds) |")
        print("|---|---|---|---|")
        for label, name, row in ROWS:
            got = {s: runs[(data, name, row, s)]["miou"] for s in SEEDS if (data, name, row, s) in runs}
            if not got:
                continue
            seeds = " / ".join(f"{got[s]:.1f}" if s in got else "–" for s in SEEDS)
            full = {s: runs[(data, FRACTION_OF[name], "FullSup", s)]["miou"] for s in got
                    if (data, FRACTION_OF[name], "FullSup", s) in runs}
            frac = "" if row == "FullSup" or not full else \
                f"{statistics.mean(got[s] / full[s] for s in full):.2f} ({len(full)} seed{'s' * (len(full) > 1)})"
            print(f"| {label} | {seeds} | {_fmt(list(got.values()))} | {frac} |")
        for a, ra, b, rb in PAIRS:
            d = [runs[(data, a, ra, s)]["miou"] - runs[(data, b, rb, s)]["miou"] for s in SEEDS
                 if (data, a, ra, s) in runs and (data, b, rb, s) in runs]
            beyond = "" if len(d) < 2 else \
                f"; mean beyond 2 std: {'yes' if statistics.mean(d) > 2 * statistics.stdev(d) else 'no'}"
            print(f"\npaired {a} {ra} - {b} {rb}: {_fmt(d)} over {len(d)} seed(s): "
                  + ", ".join(f"{x:+.1f}" for x in d) + beyond)
        if data in THIN:
            print("\n| run | " + " | ".join(THIN[data]) + " |")
            print("|---|" + "---|" * len(THIN[data]))
            for label, name, row in ROWS:
                got = [runs[(data, name, row, s)] for s in SEEDS if (data, name, row, s) in runs]
                if got:
                    cells = [_fmt([r["iou"][c] for r in got if r["iou"][c] is not None]) for c in THIN[data].values()]
                    print(f"| {label} ({len(got)} seed{'s' * (len(got) > 1)}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:] or [f"results/street-study-round{r}.jsonl" for r in (4, 5, 6)])
