"""The named-recipe verdict of ``selftrain_study.py`` (its rule is in that module's docstring) and
README's phase-S rows, from the study's result lines: ``python benchmarks/selftrain_study.py ...
--verdict`` prints both.
"""

from __future__ import annotations

import statistics

import recipe_study as rs
import selftrain_study as st
import street_tables
import study_runner as sr


def verdict(results: list[dict], reuse: list[dict], rule: str = st.DEFAULT_RULE, views: str = "1+flip",
            epochs: int = st.EPOCHS) -> dict:
    """The named-recipe rule (``selftrain_study.py``'s docstring) on the study's lines: per dataset and round *r*,
    its seeds against ``cpu-clicks`` and FullSup trained for the same steps ((r + 1) x 12 epochs;
    round 0 *is* ``cpu-clicks``). ``reuse``: rounds 5/6's lines (12-epoch ``cpu-clicks`` and FullSup);
    ``epochs``: one round's (the study's ``--epochs``)."""
    out = {}
    for data in st.DATA:
        def runs(phase, n, rows=results, **match):
            return sr.seed_mious(rows, data, n, phase=phase, **match)
        clicks = {1: {**runs("S", epochs, reuse, row="Clicks", name=st.CLICK_RATES),
                      **runs("R0", epochs, name=st.CLICK_RATES)}}
        full = {1: runs("S", epochs, reuse, row="FullSup", name=rs.ROUND5_BASE)}
        for k in (2, 3):
            clicks[k] = runs("S", k * epochs, row="Clicks", name=st.CLICK_RATES)
            full[k] = runs("S", k * epochs, row="FullSup", name=rs.ROUND5_BASE)
        rounds = {0: clicks[1], **{r: runs("ST", epochs, name=f"r{r} {rule} {views}") for r in (1, 2)}}
        per_epoch = next((r["steps"] / (r["config"]["epochs"] + r.get("epochs_before", 0)) for r in results
                          if r.get("data") == data and r.get("steps")), None)
        d = {}
        for r, got in rounds.items():
            k = r + 1
            row = {"seeds": got, "steps": per_epoch and int(per_epoch * k * epochs), "cpu_clicks": clicks[k],
                   "fullsup": full[k], "vs_cpu_clicks": sr.paired(got, clicks[k], st.SEED_ORDER),
                   "vs_previous": sr.paired(got, rounds[r - 1], st.SEED_ORDER) if r else None}
            for name, mine in (("of_fullsup", got), ("cpu_clicks_of_fullsup", clicks[k])):
                both = [s for s in mine if s in full[k]]
                if both:
                    row[name] = statistics.mean(mine[s] for s in both) / statistics.mean(full[k][s] for s in both)
            d[f"round{r}"] = row
        out[data] = d
    means = {r: statistics.mean(statistics.mean(out[d][f"round{r}"]["seeds"].values()) for d in st.DATA)
             for r in (1, 2) if all(out[d][f"round{r}"]["seeds"] for d in st.DATA)}
    best = max(means, key=means.get, default=None)
    out["best_round"] = best
    out["named"] = best is not None and all(out[d][f"round{best}"]["vs_cpu_clicks"]["beyond_2std"] for d in st.DATA)
    return out


def print_rows(summary: dict) -> None:
    """README's rows (markdown) from :func:`verdict`."""
    fmt = street_tables._fmt

    def seeds(d):
        return " / ".join(f"{d[s]:.1f}" if s in d else "–" for s in (0, 1, 2))

    def frac(x):
        return f"{x:.2f}" if x else "–"

    def diffs(p):
        if not p or not p["diffs"]:
            return "–"
        return ", ".join(f"{x:+.1f}" for x in p["diffs"]) + f" = {fmt(p['diffs'])}"

    print("| dataset | round | steps | seeds 0 / 1 / 2 | mean ± std | round − previous round (paired) "
          "| `cpu-clicks`, same steps | round − `cpu-clicks` (paired) | FullSup, same steps | round of FullSup "
          "| `cpu-clicks` of FullSup |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for data in st.DATA:
        for r in (0, 1, 2):
            d = summary[data][f"round{r}"]
            print(f"| {data} | {r} | {d['steps'] or '–'} | {seeds(d['seeds'])} | {fmt(list(d['seeds'].values()))} | "
                  f"{diffs(d['vs_previous'])} | {fmt(list(d['cpu_clicks'].values()))} | "
                  f"{diffs(d['vs_cpu_clicks'] if r else None)} | {fmt(list(d['fullsup'].values()))} | "
                  f"{frac(d.get('of_fullsup'))} | {frac(d.get('cpu_clicks_of_fullsup'))} |")
    print(f"\nbest round {summary['best_round']}; named cpu-selftrain (beyond 2 std over cpu-clicks at equal "
          f"steps on both, three seeds): {summary['named']}")
