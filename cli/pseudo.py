"""``pointparse pseudo-labels``: a checkpoint's confident predictions on a split, plus its clicks, as
a label set the next ``train --labels`` reads."""

from __future__ import annotations

import click

from pointparse.cache import StageCache

from .options import cache_option, content_option, dataset_options, echo_result, force_option, friendly, quiet_option
from .options import spec_from_options, window_options


@click.command("pseudo-labels")
@click.argument("checkpoint")
@click.option("--points", "points_ref", required=True, help="make-points / import-clicks artefact (folder or key) of the split.")
@dataset_options
@click.option("--labels", "labels_ref", default=None,
              help="Another label set (pseudo-labels or extension-labels artefact) combined by --combine.")
@click.option("--rule", default="per-class", show_default=True,
              help="Which pixels are confident: global (p >= threshold) | top-share (each predicted class's most "
                   "confident share of the split) | per-class (either) | adaptive (threshold scaled per class by "
                   "its mean confidence).")
@click.option("--threshold", default=0.9, show_default=True, type=float, help="Probability threshold (global, per-class, adaptive).")
@click.option("--share", default=0.5, show_default=True, type=float, help="Share kept per predicted class (top-share, per-class).")
@click.option("--combine", default="none", show_default=True,
              help="With --labels: intersect (both agree) | fill (the other set where not confident) | agree (the "
                   "other set where the arg-max agrees, confident pixels where it is silent).")
@click.option("--scales", default="1", show_default=True, help="Comma-separated test scales, e.g. 0.75,1,1.25 (probabilities averaged).")
@click.option("--flip/--no-flip", default=True, show_default=True, help="Average with the horizontally flipped image.")
@window_options
@click.option("--amp", type=click.Choice(["auto", "off", "bf16", "fp16"]), default="off", show_default=True,
              help="Autocast for inference (off: bf16 logits would tie the confidence scores).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@cache_option
@force_option
@content_option
@quiet_option
@friendly
def pseudo_labels_cmd(checkpoint, points_ref, kind, root, split, options, labels_ref, rule, threshold, share, combine,
                      scales, flip, window, window_stride, amp, device, cache_dir, force, content_hash, quiet):
    """Label every image of a split with CHECKPOINT's confident predictions (a train artefact
    folder, key or model.pt) and its clicks: labels.json + labels/<image>.png (255 = unlabelled).

    Clicked pixels always keep their click's class. When the split has dense ground truth the
    summary gives the accuracy of the new pixels and the coverage, per class too. A killed run
    continues without predicting again the images it had done.
    """
    from pointparse.pseudo_labels import PseudoLabelConfig
    from pointparse.stages.pseudo_labels import run_pseudo_labels

    cfg = PseudoLabelConfig(rule=rule, threshold=threshold, share=share, combine=combine, scales=scales, flip=flip,
                            window=window, window_stride=window_stride, amp=amp, device=device)
    res = run_pseudo_labels(checkpoint, spec_from_options(kind, root, split, options), points_ref, cfg,
                            StageCache(cache_dir), labels=labels_ref, force=force, content_hash=content_hash,
                            progress=not quiet)
    echo_result(res, "pseudo-labels")
    click.echo(summary_line(res.manifest.get("summary") or {}))


def summary_line(s: dict) -> str:
    """One line of a pseudo-label set's summary."""
    line = (f"  {s.get('labelled_share', 0) * 100:.1f}% of the pixels labelled "
            f"({s.get('kept_share', 0) * 100:.1f}% of the predictions kept)")
    if s.get("accuracy") is not None:
        line += (f"; new pixels {s['accuracy'] * 100:.1f}% correct, ground truth covered {s['coverage'] * 100:.1f}% "
                 f"(arg-max {s['prediction_accuracy'] * 100:.1f}% correct)")
    return line
