"""``import-clicks`` / ``export-points``: human clicks from annotation tools in and out."""

from __future__ import annotations

from pathlib import Path

import click

from pointparse.cache import StageCache
from pointparse.clicks import CLICK_FORMATS, export_points
from pointparse.errors import DataError
from pointparse.stages.import_clicks import run_import_clicks

from .options import (cache_option, content_option, dataset_options, echo_result, force_option, friendly,
                      quiet_option, spec_from_options)

_FORMAT_HELP = "; ".join(f"{f.name}: {f.description}" for f in CLICK_FORMATS.values())


@click.command("import-clicks")
@click.argument("file", type=click.Path(exists=True, path_type=Path))
@click.option("--format", "fmt", required=True, type=click.Choice(sorted(CLICK_FORMATS)), help=_FORMAT_HELP)
@dataset_options
@click.option("--class-map", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="YAML/JSON file mapping tool labels to dataset classes ('Car: car'; null drops a label).")
@cache_option
@force_option
@content_option
@quiet_option
@friendly
def import_clicks_cmd(file, fmt, kind, root, split, options, class_map, cache_dir, force, content_hash, quiet):
    """Import human clicks from FILE into a points artefact (use it with train --points).

    Every click is checked: its image must be in the split, the click inside the image and its
    label a dataset class (directly or through --class-map). All problems are reported at once.
    """
    res = run_import_clicks(file, fmt, spec_from_options(kind, root, split, options), StageCache(cache_dir),
                            class_map=class_map, force=force, content_hash=content_hash, progress=not quiet)
    echo_result(res, "import-clicks")
    s = res.manifest.get("summary", {})
    n, p = s.get("num_images", 0), s.get("num_points", 0)
    click.echo(f"  {n} images, {p} clicks ({p / max(n, 1):.2f} per image); see {res.path / 'stats.json'}")


@click.command("export-points")
@click.argument("ref")
@click.option("--format", "fmt", required=True, type=click.Choice(sorted(CLICK_FORMATS)), help=_FORMAT_HELP)
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path),
              help="Output file (a folder for sparse-png).")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@cache_option
@friendly
def export_points_cmd(ref, fmt, out_path, force, cache_dir):
    """Export the clicks of REF (a points artefact folder or cache key) to an annotation format."""
    p = Path(ref)
    # a points.json, or a folder holding one, needs no manifest (e.g. a copied artefact)
    cache = StageCache(cache_dir)
    folder = p if p.is_file() or (p / "points.json").is_file() else cache.find(ref)
    if folder.is_dir() and not (folder / "points.json").is_file():
        raise DataError(folder, "not a points artefact (no points.json): pass a make-points or import-clicks artefact")
    export_points(folder, fmt, out_path, cache_root=cache.root, force=force)
    click.echo(f"export-points: wrote {fmt} to {out_path}")
