"""What every command shares: error handling, result lines, and the cache / dataset options."""

from __future__ import annotations

import functools

import click
import yaml

from pointparse.cache import CACHE_ENV
from pointparse.errors import ConfigError, PointParseError
from pointparse.oserrors import os_error
from pointparse.dataspec import DatasetSpec


def parse_kv(items) -> dict:
    """``key=value`` strings → dict; values parsed as YAML scalars/lists (``size=[64,96]``)."""
    out = {}
    for item in items or ():
        if "=" not in item:
            raise ConfigError(f"expected key=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v)
        except yaml.YAMLError:
            out[k.strip()] = v
    return out


def dataset_options(fn):
    """``--dataset KIND --root PATH --split NAME --option key=value``."""
    opts = [
        click.option("--dataset", "kind", default="synthetic", show_default=True,
                     help="Dataset kind: ade20k | pascal-context | coco | folder | synthetic."),
        click.option("--root", default="", help="Dataset root folder (not needed for synthetic)."),
        click.option("--split", default="train", show_default=True),
        click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
                     help="Reader option, repeatable (e.g. protocol=60, ann_file=..., ignore_classes=various)."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def spec_from_options(kind: str, root: str, split: str, options) -> DatasetSpec:
    return DatasetSpec(kind=kind, root=root, split=split, options=parse_kv(options))


def friendly(fn):
    """Turn library errors into one clear message and a non-zero exit (no traceback); so too any
    operating-system error (a full disk, a read-only folder, a symlink loop), named by its file."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PointParseError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:  # one the library did not word itself: still one line naming the file
            raise click.ClickException(str(os_error(exc))) from None

    return wrapper


def echo_result(result, what: str) -> None:
    state = "reused cached" if result.cached else "wrote"
    click.echo(f"{what}: {state} artefact {result.path}  (key {result.key[:12]})")


def window_options(fn):
    """``--window N --window-stride S``: sliding-window inference (EvalConfig / PseudoLabelConfig fields)."""
    fn = click.option("--window-stride", default=0, type=int,
                      help="Step between windows (0 = 2/3 of --window; at most --window).")(fn)
    return click.option("--window", default=0, type=int, help="Sliding-window crop size (0 = whole image).")(fn)


cache_option = click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                            help=f"Cache root (default: ${CACHE_ENV} or ./.pointparse-cache).")
force_option = click.option("--force", is_flag=True, help="Recompute even when a cached artefact matches.")
content_option = click.option("--content-hash/--stat-hash", default=True, show_default=True,
                              help="Fingerprint dataset files by their bytes (read once per untouched split; "
                                   "a copied or touched dataset keeps its artefacts) or by size+mtime.")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
