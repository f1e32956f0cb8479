"""``pointparse report``: the paper's tables and figures from cached artefacts (a thin Click layer
over :func:`pointparse.stages.report.run_report`)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import click

from pointparse.cache import StageCache
from pointparse.dataspec import DatasetSpec
from pointparse.errors import ConfigError
from pointparse.io import atomic_out_dir, check_out_dir

from .options import cache_option, echo_result, force_option, friendly, parse_kv


def parse_runs(items) -> dict[str, str | list[str]]:
    """``NAME=REF[,REF...]`` strings → ordered dict; empty or repeated names are errors.

    The *last* ``=`` separates name and reference, so names like ``pdml α=0`` work (artefact
    folders and cache keys rarely contain ``=``). Several comma-separated references (one per
    seed) make one row of the seeds table.
    """
    runs: dict[str, str | list[str]] = {}
    for item in items or ():
        name, sep, ref = item.rpartition("=")
        name, ref = name.strip(), ref.strip()
        if not sep or not name or not ref:
            raise ConfigError(f"--run expects NAME=REF (a name, '=', an artefact folder or cache key), got {item!r}")
        if name in runs:
            raise ConfigError(f"run name {name!r} is given twice; names label the table rows and must be unique "
                              "(give several seeds as NAME=REF1,REF2)")
        refs = [r.strip() for r in ref.split(",") if r.strip()]
        runs[name] = refs if len(refs) > 1 else refs[0]
    return runs


@click.command("report")
@click.option("--run", "run_items", multiple=True, metavar="NAME=REF",
              help="A run to report: a name, '=', and a train or evaluate artefact (folder or cache key); the "
                   "last '=' ends the name; NAME=REF1,REF2,... for one run over several seeds. Repeatable; the "
                   "order is the table order.")
@click.option("--all-runs", is_flag=True,
              help="Report every finished train artefact with metrics in the cache (named after its settings).")
@click.option("--extension", "extension_ref", default=None, metavar="REF",
              help="An ablate-extension artefact (folder or key) or its extension_table.csv, for Table 5.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Also copy the report into this folder (new, empty, or an earlier report --out; replaced).")
@click.option("--qualitative-images", default=4, show_default=True, type=int,
              help="Images in the qualitative grid (0 = no grid).")
@click.option("--dataset", "kind", default=None,
              help="Dataset kind for the qualitative grid (default: the split the runs were evaluated on).")
@click.option("--root", default="", help="Its root folder.")
@click.option("--split", default="val", show_default=True, help="Its split (with --dataset).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE", help="Its reader options (with --dataset).")
@click.option("--device", default="auto", show_default=True, help="Where the grid's predictions run: auto | cpu | cuda.")
@cache_option
@force_option
@friendly
def report_cmd(run_items, all_runs, extension_ref, out_dir, qualitative_images, kind, root, split, options, device,
               cache_dir, force):
    """Write the paper's Tables 3–6 (CSV) and Figures 3–6 (PNG) for a set of runs, with index.md and a
    self-contained index.html.

    Example: pointparse report --run fullsup=KEY1 --run pointsup=KEY2 --run pdml=KEY3 --run pdml+ext=KEY4
    """
    # pandas, matplotlib (and torch for the grid): loaded when a report is made, not by `pointparse --help`
    from pointparse.report import discover_runs, format_summary
    from pointparse.stages.report import run_report

    cache = StageCache(cache_dir)
    if out_dir:  # refuse before any work, not after it
        check_out_dir(out_dir, "report", stage="report", cache_root=cache.root)
    runs = parse_runs(run_items)
    if all_runs:
        for name, path in discover_runs(cache).items():
            runs.setdefault(name, str(path))
    if not runs:
        raise ConfigError("name the runs to report with --run NAME=REF (repeatable), or use --all-runs")
    if kind is None and (root or options):
        raise ConfigError("--root/--option describe the qualitative grid's dataset: give --dataset too")
    dataset = DatasetSpec(kind=kind, root=root, split=split, options=parse_kv(options)) if kind else None
    res = run_report(runs, cache, extension=extension_ref, qualitative_images=qualitative_images, dataset=dataset,
                     device=device, force=force)
    echo_result(res, "report")
    where = res.path
    if out_dir:
        with atomic_out_dir(out_dir, "report", stage="report", cache_root=cache.root) as tmp:
            shutil.copytree(res.path, tmp, dirs_exist_ok=True)
        where = Path(out_dir)
        click.echo(f"  copied to {where}")
    click.echo(format_summary(dataclasses.replace(res, path=where)))
