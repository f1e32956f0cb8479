"""``pointparse extension-labels``: dense labels for a split from its clicks (sam, superpixel, kmeans)."""

from __future__ import annotations

import click

from pointparse.cache import StageCache

from .options import (cache_option, content_option, dataset_options, echo_result, force_option, friendly,
                      quiet_option, spec_from_options)


@click.command("extension-labels")
@dataset_options
@click.option("--points", "points_ref", required=True, help="make-points / import-clicks artefact (folder or key) of the split.")
@click.option("--method", default="sam", show_default=True, help="sam | superpixel | kmeans.")
@click.option("--sam-rule", default=None, help="SAM's mask choice and overlap rule (default: the measured best; "
                                               "see pointparse.sam.rules.RULES).")
@click.option("--sam-checkpoint", default=None, type=click.Path(dir_okay=False),
              help="A SAM checkpoint (ViT-B/L/H or MobileSAM); default: the MobileSAM the 'sam' extra ships.")
@click.option("--kmeans-features", type=click.Choice(["embeddings", "rgbxy"]), default="embeddings", show_default=True)
@click.option("--checkpoint", default=None, help="Train artefact, key or model.pt (kmeans on embeddings only).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--batch-size", default=0, show_default=True, type=int,
              help="Images per SAM encoder call (0 = 8 on CUDA, 1 on CPU).")
@click.option("--workers", default=2, show_default=True, type=int, help="Processes for superpixel / kmeans.")
@cache_option
@force_option
@content_option
@quiet_option
@friendly
def extension_labels_cmd(kind, root, split, options, points_ref, method, sam_rule, sam_checkpoint, kmeans_features,
                         checkpoint, device, batch_size, workers, cache_dir, force, content_hash, quiet):
    """Label every image of a split from its clicks and write a label set (labels.json +
    labels/<image>.png, 255 = unlabelled) to train on (train stage 'labels', or ablate-extension --train).

    Cached and resumable: a killed run continues with the images it had not written.
    """
    # torch: loaded when this command runs, not when the CLI starts
    from pointparse.sam.rules import DEFAULT_RULE
    from pointparse.stages.extension_labels import ExtensionLabelsConfig, run_extension_labels

    cfg = ExtensionLabelsConfig(method=method, sam_rule=sam_rule or DEFAULT_RULE, sam_checkpoint=sam_checkpoint,
                                kmeans_features=kmeans_features, device=device, batch_size=batch_size, workers=workers)
    res = run_extension_labels(spec_from_options(kind, root, split, options), points_ref, cfg, StageCache(cache_dir),
                               checkpoint=checkpoint, force=force, content_hash=content_hash, progress=not quiet)
    echo_result(res, "extension-labels")
    s = res.manifest.get("summary") or {}
    if s.get("accuracy") is not None:
        click.echo(f"  {s['images']} images; against the dense masks: accuracy of new pixels {100 * s['accuracy']:.1f}%, "
                   f"coverage {100 * s['coverage']:.1f}%, {s['new_pixels_per_image']:.0f} new pixels per image")
    else:
        click.echo(f"  {s.get('images', '?')} images labelled")
