"""``pointparse`` command line: a thin Click layer over :mod:`pointparse.stages`.

Every command maps its options onto the library's dataclasses and calls one stage; all
user-facing errors are :class:`pointparse.errors.PointParseError` and become one line on stderr
with exit code 1. Each command imports its stage module when it runs (the CLI's only
function-level imports): torch loads for the commands that need it, so ``make-points``,
``cache``, ``import-clicks`` and ``--help`` start in a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import time

import click

from pointparse.cache import StageCache

from .options import (cache_option, content_option, dataset_options, echo_result, force_option, friendly,
                      parse_kv, quiet_option, spec_from_options, window_options)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="pointparse")
def main():
    """Point-supervised scene parsing: clicks from masks, PDML training, online label extension.

    Each command is a cached stage: run twice with the same inputs and parameters and the second
    run reuses the artefact instead of recomputing it.
    """


@main.command("make-points")
@dataset_options
@click.option("--click", "click_model", default="center", show_default=True,
              help="Click model: center | random | annotator.")
@click.option("--min-area", default=16, show_default=True, type=int, help="Smallest instance (pixels) that gets a click.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--sparse-labels", is_flag=True, help="Also write sparse/<image>.png label maps (255 off the clicks).")
@click.option("--workers", default=None, type=int, help="Worker processes (default: all cores; 0 = serial).")
@cache_option
@force_option
@content_option
@quiet_option
@friendly
def make_points_cmd(kind, root, split, options, click_model, min_area, seed, sparse_labels, workers, cache_dir,
                    force, content_hash, quiet):
    """Simulate one click per instance and write the points artefact.

    Output: points.json (COCO-style, detectron2 PointSup compatible), points.csv, stats.json.
    """
    from pointparse.simulate import MakePointsConfig
    from pointparse.stages.make_points import run_make_points

    cfg = MakePointsConfig(click=click_model, min_area=min_area, seed=seed, sparse_labels=sparse_labels,
                           workers=workers)
    res = run_make_points(spec_from_options(kind, root, split, options), cfg, StageCache(cache_dir), force=force,
                          content_hash=content_hash, progress=not quiet)
    echo_result(res, "make-points")
    s = res.manifest.get("summary", {})
    if s:
        n, p = s.get("num_images", 0), s.get("num_points", 0)
        click.echo(f"  {n} images, {p} clicks ({p / max(n, 1):.2f} per image); see {res.path / 'stats.json'}")


def _train_config_options() -> list[click.Option]:
    """One option per TrainConfig field (default None = the recipe's or the dataclass's value), made
    from the dataclass itself so defaults, types and help live in one place."""
    from pointparse.train_config import FIELD_HELP, TrainConfig

    defaults = TrainConfig()
    opts = []
    for f in dataclasses.fields(TrainConfig):
        name = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        help_text = f"{FIELD_HELP.get(f.name, '')} [default: {'none' if default in ('', None) else default}]"
        if isinstance(default, bool):
            decls = [f"{name}/--no-{f.name.replace('_', '-')}", f.name]
            opts.append(click.Option(decls, default=None, help=help_text))
        else:
            kind = float if f.type in ("float", "float | None") else int if f.type in ("int", "int | None") else str
            opts.append(click.Option([name, f.name], type=kind, default=None, help=help_text))
    return opts


class _TrainCommand(click.Command):
    """``train`` with its TrainConfig options made on first use: building them imports
    ``pointparse.train`` (and torch), which no other command should pay for at start-up."""

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if not getattr(self, "_config_options", False):
            at = next(i for i, p in enumerate(self.params) if p.name == "points_ref")
            self.params[at:at] = _train_config_options()
            self._config_options = True
        return super().get_params(ctx)


def _train_options(fn):
    opts = [
        click.option("--points", "points_ref", default=None, help="make-points artefact folder or cache key."),
        click.option("--labels", "labels_ref", default=None,
                     help="A label set trained on beside the clicks (pseudo-labels or extension-labels artefact "
                          "folder or key; weight --label-weight)."),
        click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                     help="Any TrainConfig value by name, e.g. --set momentum=0.95 (repeatable)."),
        click.option("--val-split", default=None, help="Evaluate the final model on this split."),
        click.option("--gpus", default=0, show_default=True, type=int, help="Processes per node via torchrun (>1 = DDP)."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


@main.command("train", cls=_TrainCommand)
@dataset_options
@_train_options
@cache_option
@force_option
@content_option
@quiet_option
@friendly
def train_cmd(kind, root, split, options, points_ref, labels_ref, sets, val_split, gpus, cache_dir, force,
              content_hash, quiet, **fields):
    """Train a DeepLab-style network from points (CE + PDML + extension) or full masks.

    Every option maps onto pointparse.train_config.TrainConfig; --recipe NAME sets many at once
    (pointparse.recipes: paper, cpu, cpu-clicks, cpu-aspp, cpu-aspp-clicks, decoder) and options
    given beside it win.
    A killed run continues from its last epoch when the same command is run again.
    """
    from pointparse.evaluate import EvalConfig
    from pointparse.stages.train import run_train
    from pointparse.train_config import TrainConfig

    given = {k: v for k, v in fields.items() if v is not None}
    given.update(parse_kv(sets))
    if given.get("supervision") == "full":  # dense masks: the point-only losses do not apply
        given.setdefault("pdml", False)
        given.setdefault("extension", "none")
    cfg = TrainConfig.from_dict(given)
    res = run_train(spec_from_options(kind, root, split, options), cfg, StageCache(cache_dir), points=points_ref,
                    val_split=val_split, eval_cfg=EvalConfig(device=cfg.device, amp=cfg.amp), gpus=gpus, force=force,
                    content_hash=content_hash, progress=not quiet, labels=labels_ref)
    echo_result(res, "train")
    s = res.manifest.get("summary") or {}
    if s.get("miou") is not None:
        click.echo(f"  {val_split}: mIoU {100 * s['miou']:.2f}  pixel acc {100 * s['pixel_acc']:.2f}%")


@main.command("evaluate")
@click.argument("checkpoint")
@dataset_options
@click.option("--flip", is_flag=True, help="Average with the horizontally flipped image.")
@window_options
@click.option("--amp", type=click.Choice(["auto", "off", "bf16", "fp16"]), default="auto", show_default=True)
@click.option("--device", default="auto", show_default=True)
@cache_option
@force_option
@content_option
@quiet_option
@friendly
def evaluate_cmd(checkpoint, kind, root, split, options, flip, window, window_stride, amp, device, cache_dir, force,
                 content_hash, quiet):
    """Evaluate CHECKPOINT (a train artefact folder, key, or model.pt) on a split with dense labels.

    Writes metrics.json (mIoU, pixel accuracy, protocol), per_class_iou.csv and confusion.npy.
    """
    from pointparse.evaluate import EvalConfig
    from pointparse.stages.evaluate import run_evaluate

    cfg = EvalConfig(flip=flip, window=window, window_stride=window_stride, amp=amp, device=device)
    res = run_evaluate(checkpoint, spec_from_options(kind, root, split, options), cfg, StageCache(cache_dir),
                       force=force, content_hash=content_hash, progress=not quiet)
    echo_result(res, "evaluate")
    s = res.manifest.get("summary", {})
    click.echo(f"  mIoU {100 * s['miou']:.2f}  pixel acc {100 * s['pixel_acc']:.2f}%  ({res.path / 'metrics.json'})")


@main.command("cache")
@click.option("--clear", "clear_stage", default=None,
              help="Delete one stage's artefacts, e.g. train ('all' for every stage). Nothing else is deleted.")
@cache_option
@friendly
def cache_cmd(clear_stage, cache_dir):
    """Show the cache root and its size per stage, or clear it."""
    cache = StageCache(cache_dir)
    if clear_stage:
        done = cache.clear(None if clear_stage == "all" else clear_stage)
        click.echo(f"removed {done.artefacts} artefact(s) and {done.unfinished} unfinished run(s) from {cache.root}")
        for stage, key, what, pid in done.skipped:
            click.echo(f"  skipped {stage} {key[:12]} ({what}): in use, pid {pid} holds its lock (a build is running); "
                       "clear it again when that command has ended")
        return
    click.echo(f"cache root: {cache.root.resolve()}")
    if cache.root.is_dir():
        for d in sorted(p for p in cache.root.iterdir() if p.is_dir() and p != cache.file_hashes):
            n = sum(1 for _ in d.glob("*/*/manifest.json"))
            click.echo(f"  {d.name:18s} {n} artefact(s)")
        if cache.file_hashes.is_dir():
            n = sum(1 for _ in cache.file_hashes.glob("*.sha256"))
            click.echo(f"  ({n} remembered dataset fingerprint(s) in {cache.file_hashes.name}/: not artefacts, "
                       "never cleared, a few bytes each)")


@main.command("run")
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE",
              help="Override any pipeline value by dotted path, e.g. defaults.train.epochs=2 (repeatable).")
@click.option("--dry-run", is_flag=True, help="Print each stage with cached / will run and its key; do nothing.")
@click.option("--only", multiple=True, help="Run only this stage and what it needs (repeatable).")
@cache_option
@force_option
@quiet_option
@friendly
def run_cmd(pipeline, overrides, dry_run, only, cache_dir, force, quiet):
    """Run a pipeline file (stages in dependency order, through the cache).

    PIPELINE is a YAML file, or the name of a shipped pipeline (quickstart, selftrain-quick,
    labelmefacade-cpu, pascal-context, ade20k). Killing a run and starting it again continues where it stopped.
    """
    from pointparse.pipeline import RunContext, load_pipeline, plan, run_pipeline, select, shipped_pipeline

    t0 = time.perf_counter()
    pipe = load_pipeline(shipped_pipeline(pipeline), list(overrides))
    ctx = RunContext(cache=StageCache(cache_dir), datasets=pipe.datasets, progress=not quiet, force=force,
                     echo=click.echo)
    if dry_run:
        needed = select(pipe, list(only))  # an unknown --only name fails here too
        for name, status, key in plan(pipe, ctx):
            if name in needed:
                click.echo(f"{name:40s} {status:10s} {key[:12] if key else '-'}")
        return
    results = run_pipeline(pipe, ctx, list(only) or None)
    click.echo(f"pipeline {pipe.name}: {len(results)} stage(s) in {time.perf_counter() - t0:.1f}s")
    # what a person wants at the end: each Table 5 and each report's Table 3 with its index.html
    from pointparse.report import format_summary

    for name, res in results.items():
        if res.stage == "ablate-extension":
            click.echo(f"{name}: {res.path / 'extension_table.csv'}")
            click.echo((res.path / "table.txt").read_text(encoding="utf-8").rstrip())
        elif res.stage == "report":
            click.echo(f"{name}:")
            click.echo(format_summary(res))
        elif res.stage == "pseudo-labels":
            click.echo(f"{name}:{pseudo.summary_line(res.manifest.get('summary') or {})}")


# The other commands live in their own modules; they import only from .options, so no cycle.
from . import ablate, clicks, labels, predict, pseudo, report  # noqa: E402

for _cmd in (ablate.ablate_extension_cmd, labels.extension_labels_cmd, report.report_cmd, clicks.import_clicks_cmd,
             clicks.export_points_cmd, predict.predict_cmd, predict.export_model_cmd, pseudo.pseudo_labels_cmd):
    main.add_command(_cmd)
