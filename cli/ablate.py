"""``pointparse ablate-extension``: the paper's Table 5 (extension methods compared) in one command."""

from __future__ import annotations

import click

from pointparse.cache import StageCache
from pointparse.dataspec import DatasetSpec
from pointparse.errors import ConfigError
from pointparse.io import check_out_dir

from .options import cache_option, content_option, force_option, friendly, parse_kv, quiet_option


def _split_list(values, cast, what: str) -> tuple | None:
    """Repeatable and/or comma-separated option values → tuple (None when not given)."""
    out = []
    for v in values or ():
        for part in str(v).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                out.append(cast(part))
            except ValueError:
                raise ConfigError(f"{what}: cannot read {part!r}") from None
    return tuple(out) or None


@click.command("ablate-extension")
@click.argument("checkpoint")
@click.option("--points", "points_ref", required=True, help="make-points artefact (folder or key) of the split.")
@click.option("--dataset", "kind", default="synthetic", show_default=True,
              help="Dataset kind: ade20k | pascal-context | coco | folder | synthetic.")
@click.option("--root", default="", help="Dataset root folder (not needed for synthetic).")
@click.option("--split", default="val", show_default=True, help="Split with dense ground truth to measure on.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE", help="Reader option, repeatable.")
@click.option("--methods", multiple=True, metavar="M[,M...]",
              help="superpixel | kmeans | score | region | score+region | agree | sam (default: Table 5's rows and "
                   "agree; sam needs the 'sam' extra).")
@click.option("--thresholds", multiple=True, metavar="T[,T...]",
              help="Score thresholds for score / score+region / agree (default: 0.7 / 0.5..0.9 as Table 5).")
@click.option("--region", default=5, show_default=True, type=int, help="Square side around each click.")
@click.option("--kmeans-features", type=click.Choice(["embeddings", "rgbxy"]), default="embeddings",
              show_default=True, help="K-means on the network's embeddings or on colour + position.")
@click.option("--sam-rule", default=None, help="The sam row's mask rule (default: the measured best; "
                                               "pointparse.sam.rules.RULES).")
@click.option("--sam-checkpoint", default=None, type=click.Path(dir_okay=False),
              help="SAM checkpoint for the sam row (ViT-B/L/H or MobileSAM; default: the shipped MobileSAM).")
@click.option("--limit", default=None, type=int, help="Use only N images of the split, evenly spaced.")
@click.option("--examples", default=3, show_default=True, type=int, help="Images with overlay PNGs per method.")
@click.option("--workers", default=2, show_default=True, type=int,
              help="Processes for superpixel / kmeans (0 = serial; same result).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--train", "do_train", is_flag=True, help="Also train a model on each method's labels and evaluate it.")
@click.option("--train-split", default="train", show_default=True)
@click.option("--train-points", default=None, help="make-points artefact of --train-split (needed with --train).")
@click.option("--epochs", default=10, show_default=True, type=int)
@click.option("--batch-size", default=8, show_default=True, type=int)
@click.option("--crop-size", default=321, show_default=True, type=int)
@click.option("--lr", default=None, type=float, help="Learning rate (default: the checkpoint's).")
@click.option("--init", type=click.Choice(["checkpoint", "imagenet"]), default="checkpoint", show_default=True,
              help="Start each training from the checkpoint's weights or from ImageNet.")
@click.option("--train-workers", default=None, type=int,
              help="DataLoader processes for training (default: 0 on CPU, up to 4 per GPU).")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Also copy the table folder here (new, empty, or an earlier ablate-extension --out; replaced).")
@cache_option
@force_option
@content_option
@quiet_option
@friendly
def ablate_extension_cmd(checkpoint, points_ref, kind, root, split, options, methods, thresholds, region,
                         kmeans_features, sam_rule, sam_checkpoint, limit, examples, workers, device, do_train,
                         train_split, train_points,
                         epochs, batch_size, crop_size, lr, init, train_workers, out_dir, cache_dir, force,
                         content_hash, quiet):
    """Compare ways of extending clicks (Table 5) on a split with dense ground truth.

    CHECKPOINT is a train artefact folder, cache key or model.pt. Writes extension_table.csv
    (extension accuracy, new pixels per image, coverage[, mIoU, pixel accuracy], time),
    per_class_accuracy.csv and examples/<method>_<image>.png. Each row is cached on its own, so
    adding a threshold later computes only that row.
    """
    # torch and pandas: loaded when this command runs, not when the CLI starts
    from pointparse.extension.methods import AblationConfig, AblationTrainConfig
    from pointparse.extension.table import copy_table
    from pointparse.sam.rules import DEFAULT_RULE
    from pointparse.stages.ablate_extension import run_ablation

    cache = StageCache(cache_dir)
    if out_dir:  # refuse before any work, not after it
        check_out_dir(out_dir, "ablate-extension", stage="ablate-extension", cache_root=cache.root)
    cfg = AblationConfig(methods=_split_list(methods, str, "--methods"),
                         thresholds=_split_list(thresholds, float, "--thresholds"), region=region,
                         kmeans_features=kmeans_features, limit=limit, examples=examples, workers=workers,
                         device=device, sam_rule=sam_rule or DEFAULT_RULE, sam_checkpoint=sam_checkpoint)
    train = None
    if do_train:
        train = AblationTrainConfig(split=train_split, points=train_points, epochs=epochs, batch_size=batch_size,
                                    crop_size=crop_size, lr=lr, init=init, workers=train_workers)
    spec = DatasetSpec(kind=kind, root=root, split=split, options=parse_kv(options))
    res = run_ablation(checkpoint, spec, points_ref, cfg, cache, train=train, force=force,
                       content_hash=content_hash, progress=not quiet)
    done = sum(not r.cached for r in res.rows)
    click.echo(f"ablate-extension: {len(res.rows)} rows ({done} computed, {len(res.rows) - done} reused); "
               f"table {res.table.path}  (key {res.table.key[:12]})")
    if out_dir:
        click.echo(f"  copied to {copy_table(res, out_dir, cache.root)}")
    click.echo((res.table.path / "table.txt").read_text(encoding="utf-8").rstrip())
