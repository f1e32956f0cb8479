"""The report's figures from its runs: what each figure shows, read from the :class:`RunData`, and
the PNGs drawn (:mod:`pointparse.report.plots`, :mod:`~pointparse.report.qualitative`,
:mod:`~pointparse.report.extension_plot`).

:func:`make_figures` writes every figure it has data for and says why it skipped the others. The
qualitative grid reopens the evaluation split (or the dataset given) and runs each checkpoint on
a few images, which needs torch; the other figures read only the artefacts' files.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..cache import StageCache
from ..dataspec import DatasetSpec, open_spec
from ..errors import ConfigError, DataError
from .extension_plot import extension_plot
from .plots import distance_curves, distance_histograms, per_class_iou_bars, run_colors, training_curves
from .qualitative import qualitative_grid
from .runs import RunData


def _class_order(runs: list[RunData]) -> tuple[list[str], str]:
    """Classes sorted by the full-supervision run's IoU (else by mean IoU over runs), NaN last."""
    full = next((r for r in runs if r.supervision == "full"), None)
    if full is not None:
        key, note = full.iou, f"full-supervision IoU, run '{full.name}'"
    else:
        stack = np.stack([r.iou for r in runs])
        seen = (~np.isnan(stack)).sum(0)
        key = np.where(seen > 0, np.nan_to_num(stack).sum(0) / np.maximum(seen, 1), np.nan)
        note = "mean IoU over runs"
    order = sorted(range(len(runs[0].classes)), key=lambda c: (math.isnan(key[c]), -np.nan_to_num(key[c])))
    return [runs[0].classes[c] for c in order], note


def _distance_hists(run: RunData) -> dict | None:
    p = run.distances_path
    if p is None:
        return None
    try:
        with np.load(p, allow_pickle=False) as z:
            epochs = sorted({int(k.split("_", 1)[1]) for k in z.files if k.startswith("pos_")
                             and f"neg_{k.split('_', 1)[1]}" in z.files})
            if not epochs:
                return None
            first, last = epochs[0], epochs[-1]
            return {"first": (first, z[f"pos_{first}"], z[f"neg_{first}"]),
                    "last": (last, z[f"pos_{last}"], z[f"neg_{last}"]), "label": run.hyper_label()}
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(p, f"unreadable pair distances ({exc.__class__.__name__}: {exc})") from None


def _qualitative_samples(runs: list[RunData], n: int, dataset, cache: StageCache, device: str) -> tuple[list[dict], list[str], Any]:
    """Images, ground truth and each run's prediction for ``n`` images spread over the eval split."""
    with_ckpt = [r for r in runs if r.checkpoint is not None]
    if dataset is None:
        spec_d = next((r.eval_spec for r in with_ckpt if r.eval_spec), None)
        if spec_d is None:
            raise ConfigError("the qualitative grid needs the evaluation images, but no run records a dataset that "
                              "can be reopened: pass the dataset (--dataset/--root/--split) or qualitative_images=0")
        dataset = DatasetSpec(**spec_d)
    try:
        ds = open_spec(dataset, cache)
    except DataError as exc:  # e.g. the dataset moved since training
        raise DataError(exc.path, f"{exc.problem} (opening {dataset.kind} split {dataset.split!r} for the qualitative "
                                  "grid; pass the dataset explicitly or qualitative_images=0)") from None
    if tuple(ds.info.classes) != runs[0].classes:
        raise DataError(ds.root, f"the qualitative dataset has {ds.info.num_classes} classes ({ds.info.protocol}) "
                                 f"but the runs were evaluated on {len(runs[0].classes)} ({runs[0].protocol})")
    if not ds.has_dense_labels:
        raise DataError(ds.root, f"split {ds.split!r} has no dense ground truth to show")
    idx = sorted({int(round(v)) for v in np.linspace(0, len(ds) - 1, min(n, len(ds)))})
    samples = []
    for i in idx:
        s = ds.load(i, with_instances=False)
        samples.append({"name": s.name, "image": s.image, "gt": s.mask, "preds": {}})
    # torch: only a report that draws the grid loads it (importing pointparse.report stays torch-free)
    from ..evaluate import EvalConfig, predict_logits
    from ..predictor import Predictor
    from ..runtime import resolve_device

    dev = resolve_device(device)
    cfg = EvalConfig(amp="off", workers=0, device=str(dev))
    for r in with_ckpt:
        pred = Predictor.from_checkpoint(r.checkpoint, dev)
        info = pred.info
        if tuple(info.classes) != runs[0].classes:
            raise DataError(pred.path, f"run {r.name!r}: the checkpoint predicts other classes than its metrics list")
        for s in samples:
            x = pred.normalise(s["image"])
            s["preds"][r.name] = predict_logits(pred.model, x, cfg, info.num_classes).argmax(1)[0].cpu().numpy().astype(np.uint8)
        del pred
    title = f"Qualitative comparison: {ds.info.name} ({ds.info.protocol}), split {ds.split!r}"
    return samples, [r.name for r in with_ckpt], (ds.info, title)


def make_figures(runs: list[RunData], out: Path, ext_table, qualitative_images: int, dataset,
                 cache: StageCache, device: str) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """Write every PNG; returns [(file name, caption)] and {figure: why it was skipped}."""
    colors = run_colors([r.name for r in runs])
    figs: list[tuple[str, str]] = []
    skipped: dict[str, str] = {}

    order, note = _class_order(runs)
    per_class_iou_bars({r.name: r.iou for r in runs}, runs[0].classes, {r.name: r.miou for r in runs},
                       order, colors, out / "per_class_iou.png", note)
    figs.append(("per_class_iou.png", f"Per-class IoU (Table 6 as bars); classes sorted by {note}."))

    dist = {r.name: {"epochs": [e["epoch"] for e in r.epochs],
                     "pos": [np.nan if e.get("dis_pos") is None else e["dis_pos"] for e in r.epochs],
                     "neg": [np.nan if e.get("dis_neg") is None else e["dis_neg"] for e in r.epochs],
                     "label": r.hyper_label()}
            for r in runs if r.pdml and any(e.get("dis_pos") is not None for e in r.epochs)}
    if dist:
        distance_curves(dist, colors, out / "distances.png")
        figs.append(("distances.png", "Mean distance of positive pairs dis(+) and negative pairs dis(−) per epoch, "
                                      "and their gap (paper Figure 3: without L_p, i.e. α = 0, nothing holds the "
                                      "absolute distances down)."))
    else:
        skipped["distances.png"] = "no PDML run with dis(+)/dis(−) in its epochs.jsonl"

    hists = {r.name: h for r in runs if r.pdml for h in [_distance_hists(r)] if h is not None}
    if hists:
        distance_histograms(hists, out / "distance_histograms.png")
        figs.append(("distance_histograms.png", "Distribution of positive and negative pair distances at the first "
                                                "and the last epoch (paper Figure 4)."))
    else:
        skipped["distance_histograms.png"] = "no PDML run with a distances.npz"

    if qualitative_images > 0:
        if any(r.checkpoint is not None for r in runs):
            samples, names, (info, title) = _qualitative_samples(runs, qualitative_images, dataset, cache, device)
            qualitative_grid(samples, names, info.classes, info.palette, out / "qualitative.png", title)
            figs.append(("qualitative.png", "Image, ground truth and each run's prediction (paper Figures 5–6); "
                                            "pale beige = ignored (255)."))
        else:
            skipped["qualitative.png"] = "no run has a model.pt"
    else:
        skipped["qualitative.png"] = "qualitative_images = 0"

    curves = {r.name: r.epochs for r in runs if r.epochs}
    if curves:
        training_curves(curves, {r.name: r.miou for r in runs}, colors, out / "training_curves.png")
        figs.append(("training_curves.png", "Loss terms per epoch and validation mIoU."))
    else:
        skipped["training_curves.png"] = "no run has an epochs.jsonl"

    traj = {r.name: {"epochs": [e["epoch"] for e in r.epochs],
                     "acc": [np.nan if e.get("ext_accuracy") is None else e["ext_accuracy"] for e in r.epochs],
                     "coverage": [np.nan if e.get("ext_coverage") is None else e["ext_coverage"] for e in r.epochs]}
            for r in runs if r.extension != "none" and any(e.get("ext_accuracy") is not None for e in r.epochs)}
    if ext_table is not None or traj:
        extension_plot(ext_table, traj, colors, out / "extension.png")
        figs.append(("extension.png", "Pixel-wise extension accuracy against coverage of the labelled pixels, per "
                                      "extension method (Table 5) and per epoch of the runs trained with extension."))
    else:
        skipped["extension.png"] = "no extension table and no run trained with online extension"
    return figs, skipped

