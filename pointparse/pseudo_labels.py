"""Pseudo-labels: a network's confident predictions on the images of a split, plus its clicks, as a
label set (:mod:`pointparse.labelset`) that the next training round reads beside the clicks.

:func:`write_pseudo_labels` is the whole job on an already-loaded :class:`~pointparse.predictor.Predictor`
(the ``pseudo-labels`` stage and a study script call the same function), in two passes:

1. :func:`predict_confidence` — whole-image (or sliding-window) inference of every image, averaged
   over ``scales`` × (identity, flip); it stores each image's predicted class (uint8) and score bin
   (uint16, :mod:`pointparse.confidence`) in a scratch folder (3 bytes a pixel: 190 MB for CamVid's
   367 images at 360×480, removed at the end) and sums the split's histogram [C, bins]. An image
   already in the scratch folder (a killed run) is read, not predicted again.
2. :func:`label_images` — the rule turns the histogram into a threshold per predicted class; each
   image's confident pixels get their predicted class, combined with another label set by
   ``combine``; clicked pixels always get their click's class; everything else is 255.

Pass 2 reads only the scratch folder, so several rules can be compared on one inference
(:func:`label_images` with other configurations into other folders). The summary (in
``labels.json``) gives per class the threshold applied and the share of its predicted pixels
kept, and, when the split has dense ground truth, the accuracy of the new pixels and the coverage
(:func:`pointparse.labelset.label_quality`), per class too, and the accuracy of the plain arg-max.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from . import IGNORE_INDEX
from .confidence import (CONFIDENCE_RULES, SCORE_BINS, class_thresholds, get_rule, probability_of, score_bins,
                         score_histogram)
from .datasets import SegmentationDataset
from .errors import ConfigError, DataError, unknown_choice
from .evaluate import _window_logits, check_window, decoded_in_thread
from .io import atomic_file, safe_name
from .keys import content_fingerprint
from .labelset import LABELS_JSON, LabelSet, LabelSetWriter, label_quality, load_label_set, quality_summary
from .points import PointSet
from .predict import SegmentationInference, parse_scales, predict_probs
from .predictor import Predictor
from .runtime import autocast_dtype

SOURCE = "pseudo-labels"
SCRATCH = "scratch"
AMP_MODES = ("auto", "off", "bf16", "fp16")


# ------------------------------------------------------------------------------------------------
# combining with another label set
# ------------------------------------------------------------------------------------------------


def _combine_none(pred, keep, other):
    return np.where(keep, pred, IGNORE_INDEX)


def _combine_intersect(pred, keep, other):
    return np.where(keep & (other == pred), pred, IGNORE_INDEX)


def _combine_fill(pred, keep, other):
    return np.where(keep, pred, other)


def _combine_agree(pred, keep, other):
    silent = other == IGNORE_INDEX
    return np.where((~silent & (other == pred)) | (silent & keep), pred, IGNORE_INDEX)


#: name -> (predicted class uint8 [H, W], confident bool [H, W], other labels uint8 [H, W]) ->
#: labels [H, W] (255 = none); clicks are drawn over the result afterwards
COMBINE_RULES: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = {
    "none": _combine_none,            # confident pseudo-labels only (no other label set)
    "intersect": _combine_intersect,  # confident, and the other set gives the same class
    "fill": _combine_fill,            # confident pseudo-labels; the other set's labels where they are not
    "agree": _combine_agree,          # the other set where the arg-max agrees (any confidence);
                                      # confident pseudo-labels where the other set is silent
}


# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------


@dataclass
class PseudoLabelConfig:
    """What a pseudo-label set is made with.

    ``rule`` (:data:`pointparse.confidence.CONFIDENCE_RULES`: ``global``, ``top-share``,
    ``per-class``, ``adaptive``) with its ``threshold`` (a probability in (0, 1)) and ``share``
    (in (0, 1]); ``combine`` (:data:`COMBINE_RULES`) with another label set: ``none`` without
    one, ``intersect`` / ``fill`` / ``agree`` with one. Inference: ``scales`` (e.g. ``(0.75, 1,
    1.25)``, probabilities averaged), ``flip``, ``window`` > 0 for sliding windows of that side
    (``window_stride`` 0 = 2/3 of it), ``amp`` (``off`` by default: bf16 logits carry about three
    significant digits, which would tie the scores a confidence ranking reads; ``auto`` = bf16 on
    CUDA). ``device`` changes nothing but speed (left out of the stage's key).
    """

    rule: str = "per-class"
    threshold: float = 0.9
    share: float = 0.5
    combine: str = "none"
    scales: tuple[float, ...] = (1.0,)
    flip: bool = True
    window: int = 0
    window_stride: int = 0
    amp: str = "off"
    device: str = "auto"

    def __post_init__(self) -> None:
        get_rule(self.rule)
        if self.combine not in COMBINE_RULES:
            raise unknown_choice("combine rule", self.combine, COMBINE_RULES)
        if self.amp not in AMP_MODES:
            raise unknown_choice("amp mode", self.amp, AMP_MODES)
        for name, ok in (("threshold", lambda v: 0.0 < v < 1.0), ("share", lambda v: 0.0 < v <= 1.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
                raise ConfigError(f"pseudo-labels {name} must be in {'(0, 1)' if name == 'threshold' else '(0, 1]'}, "
                                  f"got {v!r}")
        self.threshold, self.share = float(self.threshold), float(self.share)
        self.scales = parse_scales(self.scales if not isinstance(self.scales, (int, float)) else [self.scales])
        for name in ("window", "window_stride"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"pseudo-labels {name} must be an integer >= 0, got {v!r}")
        check_window(self.window, self.window_stride, "pseudo-labels ")  # evaluate's bounds

    def inference(self) -> dict:
        """What pass 1's maps depend on (besides the network)."""
        return {"scales": list(self.scales), "flip": self.flip, "window": self.window,
                "window_stride": self.window_stride, "amp": self.amp}


def check_combine(config: PseudoLabelConfig, has_other: bool) -> None:
    """A combine rule needs another label set, and another label set needs a combine rule."""
    if has_other and config.combine == "none":
        raise ConfigError(f"a labels reference is combined with the pseudo-labels by a rule: set combine to one of "
                          f"{', '.join(k for k in COMBINE_RULES if k != 'none')}")
    if not has_other and config.combine != "none":
        raise ConfigError(f"combine {config.combine!r} needs another label set (labels: a pseudo-labels or "
                          "extension-labels stage; --labels KEY)")


# ------------------------------------------------------------------------------------------------
# pass 1: inference into the scratch folder
# ------------------------------------------------------------------------------------------------


class _Network:
    """Class probabilities [C, H, W] (float32, on the predictor's device) of one RGB image."""

    def __init__(self, predictor: Predictor, config: PseudoLabelConfig):
        self.predictor, self.config = predictor, config
        self.amp = autocast_dtype(config.amp, predictor.device)
        C, model = predictor.info.num_classes, predictor.model
        model.to(memory_format=torch.channels_last)  # faster on CUDA and CPU alike (see evaluate_model)
        if config.window:
            stride = config.window_stride or max(1, (2 * config.window) // 3)
            self.net = lambda x: _window_logits(model, x, config.window, stride, C, self.amp)
        else:  # pads to the output stride, so the logit grid lines up with the pixels
            self.net = SegmentationInference(model).eval()

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> torch.Tensor:
        x = self.predictor.normalise(image).contiguous(memory_format=torch.channels_last)
        return predict_probs(self.net, x, self.config.scales, self.config.flip, self.amp)[0]


def _scratch_files(folder: Path, name: str) -> tuple[Path, Path]:
    return folder / f"{name}.pred.npy", folder / f"{name}.score.npy"


def _save(path: Path, array: np.ndarray) -> None:
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


def _network_fingerprint(predictor: Predictor) -> str | None:
    return content_fingerprint(predictor.path) if Path(predictor.path).is_file() else None


def predict_confidence(predictor: Predictor, dataset: SegmentationDataset, config: PseudoLabelConfig,
                       folder: str | Path, resume: bool = True, progress: bool = True) -> np.ndarray:
    """Pass 1: each image's predicted class ``<name>.pred.npy`` (uint8 [H, W]) and score bin
    ``<name>.score.npy`` (uint16 [H, W]) in ``folder``; returns the split's histogram int64 [C,
    SCORE_BINS]. With ``resume`` the images already there (same network and inference options,
    recorded in ``inference.json``) are read instead of predicted."""
    folder = Path(folder)
    C = predictor.info.num_classes
    if tuple(predictor.info.classes) != tuple(dataset.info.classes):
        raise DataError(predictor.path, f"the checkpoint predicts {C} classes ({predictor.info.protocol}) but split "
                                        f"{dataset.split!r} has {dataset.info.num_classes} ({dataset.info.protocol})")
    stamp = {"network": _network_fingerprint(predictor), "classes": list(predictor.info.classes), **config.inference()}
    marker = folder / "inference.json"
    if folder.exists() and (not resume or not marker.is_file() or json.loads(marker.read_text()) != stamp):
        shutil.rmtree(folder)  # another network's or options' maps: start over
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_file(marker) as tmp:
        tmp.write_text(json.dumps(stamp, sort_keys=True))
    names = [safe_name(n, dataset.image_path(i)) for i, n in enumerate(dataset.names)]
    hist = np.zeros((C, SCORE_BINS), np.int64)
    todo = []
    for i, name in enumerate(names):
        pred_path, score_path = _scratch_files(folder, name)
        if pred_path.is_file() and score_path.is_file():
            hist += score_histogram(np.load(pred_path), np.load(score_path), C)
        else:
            todo.append(i)
    net = _Network(predictor, config)
    decoded = decoded_in_thread(dataset, todo, load=dataset.load_image)
    try:
        for i, image in tqdm(zip(todo, decoded), total=len(todo), desc="pseudo-labels: predict", unit="img",
                             disable=not progress, leave=False, dynamic_ncols=True):
            pred, bins = score_bins(net(image))
            pred = pred.to(torch.uint8).cpu().numpy()
            bins = bins.to(torch.int32).cpu().numpy().astype(np.uint16)
            pred_path, score_path = _scratch_files(folder, names[i])
            _save(score_path, bins)
            _save(pred_path, pred)  # written last: its presence marks the image done
            hist += score_histogram(pred, bins, C)
    finally:
        decoded.close()
    return hist


# ------------------------------------------------------------------------------------------------
# pass 2: labels from the scratch folder
# ------------------------------------------------------------------------------------------------


def pseudo_label_image(pred: np.ndarray, bins: np.ndarray, thresholds: np.ndarray, clicks: np.ndarray,
                       other: np.ndarray | None = None, combine: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """One image's labels uint8 [H, W] and its confident pixels bool [H, W], from its predicted
    class ``pred`` uint8 [H, W], score bins ``bins`` [H, W], the rule's ``thresholds`` int64 [C]
    (bins), its click map ``clicks`` uint8 [H, W] (255 off the clicks) and another label set's
    labels ``other`` uint8 [H, W] (255 = none) combined by ``combine``."""
    keep = bins.astype(np.int64) >= thresholds[pred]
    if other is None:
        other = np.full(pred.shape, IGNORE_INDEX, np.uint8)
    labels = COMBINE_RULES[combine](pred, keep, other).astype(np.uint8)
    clicked = clicks != IGNORE_INDEX
    labels[clicked] = clicks[clicked]
    return labels, keep


def label_images(scratch: str | Path, hist: np.ndarray, dataset: SegmentationDataset, points: PointSet,
                 config: PseudoLabelConfig, out_dir: str | Path, other: LabelSet | None = None,
                 progress: bool = True, extra: dict | None = None) -> LabelSet:
    """Pass 2: the label set of ``dataset`` in ``out_dir`` from the maps of :func:`predict_confidence`
    in ``scratch`` and its histogram ``hist``; its summary holds the per-class thresholds, the
    kept shares and, with dense ground truth, the quality numbers (and ``extra``)."""
    check_combine(config, other is not None)
    C = dataset.info.num_classes
    thresholds = class_thresholds(config.rule, hist, config.threshold, config.share)
    writer = LabelSetWriter(out_dir, dataset.info, dataset.split, SOURCE)
    gt_known = dataset.has_dense_labels
    zeros = lambda: np.zeros(C, np.int64)  # noqa: E731
    q = {k: zeros() for k in ("new", "correct", "gt", "covered")}
    predicted, kept, labelled, pred_correct = zeros(), zeros(), zeros(), 0
    pixels = 0
    for i, name in enumerate(tqdm(dataset.names, desc="pseudo-labels: label", unit="img", disable=not progress,
                                  leave=False, dynamic_ncols=True)):
        pred_path, score_path = _scratch_files(Path(scratch), safe_name(name, dataset.image_path(i)))
        pred, bins = np.load(pred_path), np.load(score_path)
        clicks = points.label_map(name)
        if clicks.shape != pred.shape:
            raise DataError(points.path or "points.json", f"image {name!r} is {clicks.shape[1]}x{clicks.shape[0]} in the "
                                                          f"points but {pred.shape[1]}x{pred.shape[0]} in "
                                                          f"{dataset.image_path(i)}: points of another dataset?")
        lab_other = other.label(name) if other is not None else None
        labels, keep = pseudo_label_image(pred, bins, thresholds, clicks, lab_other, config.combine)
        writer.write(name, labels, dataset.image_path(i))
        predicted += np.bincount(pred.ravel(), minlength=C)[:C]
        kept += np.bincount(pred[keep], minlength=C)[:C]
        labelled += np.bincount(labels[labels != IGNORE_INDEX], minlength=C)[:C]
        pixels += labels.size
        if gt_known:
            gt = dataset.load_mask(i)
            for k, v in label_quality(labels, clicks, gt, C).items():
                q[k] += v
            pred_correct += int(np.count_nonzero((pred == gt) & (gt != IGNORE_INDEX)))
    summary = _summary(config, dataset, thresholds, predicted, kept, labelled, pixels,
                       q if gt_known else None, pred_correct)
    return writer.finish(dataset, {**summary, **(extra or {})})


def _summary(config, dataset, thresholds, predicted, kept, labelled, pixels, q, pred_correct) -> dict:
    n = len(dataset)
    rule = get_rule(config.rule)
    out = {"source": SOURCE, "rule": config.rule, **{k: getattr(config, k) for k in rule.uses},
           "combine": config.combine, **config.inference(), "images": n,
           "labelled_pixels_per_image": float(labelled.sum()) / max(n, 1),
           "labelled_share": float(labelled.sum()) / max(pixels, 1),
           "kept_share": float(kept.sum()) / max(int(predicted.sum()), 1)}
    per_class = {}
    for c, name in enumerate(dataset.info.classes):
        per_class[name] = {"threshold": float(probability_of(thresholds[c])) if predicted[c] else None,
                           "predicted_pixels": int(predicted[c]),
                           "kept_share": float(kept[c]) / float(predicted[c]) if predicted[c] else None}
    if q is not None:
        qs = quality_summary(q, dataset.info.classes, n)
        out.update(accuracy=qs["accuracy"], coverage=qs["coverage"], new_pixels_per_image=qs["new_pixels_per_image"],
                   prediction_accuracy=pred_correct / max(int(q["gt"].sum()), 1))
        for name, d in qs["per_class"].items():
            per_class[name].update(d)
    else:
        out.update(accuracy=None, coverage=None, new_pixels_per_image=None, prediction_accuracy=None)
    out["per_class"] = per_class
    return out


# ------------------------------------------------------------------------------------------------
# both passes
# ------------------------------------------------------------------------------------------------


def write_pseudo_labels(predictor: Predictor, dataset: SegmentationDataset, points: PointSet,
                        config: PseudoLabelConfig, out_dir: str | Path, other: LabelSet | None = None,
                        resume: bool = True, progress: bool = True) -> LabelSet:
    """The pseudo-label set of ``dataset`` (every image; 255 = unlabelled) in ``out_dir``, from
    ``predictor``'s confident predictions, the clicks of ``points`` and, with ``combine``, the
    label set ``other``. Killed, it continues with ``resume`` (images already predicted are not
    predicted again); a finished ``out_dir`` is returned as it is. The scratch maps are removed
    at the end. Returns the label set (its ``summary``: see :func:`label_images`)."""
    out_dir = Path(out_dir)
    check_combine(config, other is not None)
    scratch = out_dir / SCRATCH
    if resume and (out_dir / LABELS_JSON).is_file() and not scratch.exists():
        return load_label_set(out_dir)
    t0 = time.perf_counter()
    hist = predict_confidence(predictor, dataset, config, scratch, resume, progress)
    seconds = {"predict": round(time.perf_counter() - t0, 3)}  # of this process (a resumed run: the rest)
    labels = label_images(scratch, hist, dataset, points, config, out_dir, other, progress, {"seconds": seconds})
    shutil.rmtree(scratch)
    return labels


def rules_help() -> str:
    """One line per confidence rule, for the command line."""
    return "; ".join(f"{name}: {r.doc}" for name, r in CONFIDENCE_RULES.items())


