"""Shared Click options: which dataset split a command reads."""

from __future__ import annotations

import click
import yaml

from pointparse.errors import ConfigError
from pointparse.stages import DatasetSpec


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
