"""The sub-stages of ``ablate-extension`` (:mod:`pointparse.stages.ablate_extension`) and the checks
its inputs pass before any work.

* ``extension-row`` (:class:`ExtensionRow`): one table row's counts and example overlays;
* ``ablation-evaluate`` (:class:`AblationEvaluate`): a trained row's metrics on the used images;
* :func:`row_train_config`: the training configuration of a row (``--train``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..cache import StageCache
from ..dataspec import DatasetSpec, class_difference
from ..datasets import SegmentationDataset
from ..errors import ConfigError, DataError
from ..evaluate import EvalConfig, evaluate_model, write_metrics
from ..extension.ablation import Network, SplitView
from ..extension.kmeans import KMEANS_MAX_ITER
from ..extension.methods import AblationConfig, AblationRow, AblationTrainConfig, get_method
from ..extension.superpixel import SLIC_COMPACTNESS, SUPERPIXEL_RANGE, SUPERPIXELS_PER_CLICK
from ..keys import content_fingerprint
from ..predictor import Predictor
from ..train_config import TrainConfig
from .base import Stage
from .train import check_points_match


# ------------------------------------------------------------------------------------------------
# input checks (before any work)
# ------------------------------------------------------------------------------------------------


def check_points_cover(points, dataset: SegmentationDataset, points_path: Path) -> None:
    """The points artefact must have the dataset's classes and every used image, at its size."""
    check_points_match(points.info, dataset, points_path)
    names = set(points.names)
    missing = [n for n in dataset.names if n not in names]
    made_for = points.meta.get("split")
    hint = f" (it was made for split {made_for!r}; run make-points on split {dataset.split!r})" if made_for else ""
    if len(missing) == len(dataset.names):
        raise DataError(points_path, f"holds none of the {len(dataset)} images of split {dataset.split!r}{hint}")
    if missing:
        raise DataError(points_path, f"has no clicks for {len(missing)} of the {len(dataset)} images of split "
                                     f"{dataset.split!r}, e.g. {missing[0]!r}{hint}")
    for i, name in enumerate(dataset.names):
        if tuple(points.image_sizes[name]) != tuple(dataset.image_size(i)):
            (h, w), (ph, pw) = dataset.image_size(i), points.image_sizes[name]
            raise DataError(points_path, f"image {name!r} is {pw}x{ph} in the points but {w}x{h} in "
                                         f"{dataset.image_path(i)}: points from another dataset?")


def check_dense(dataset: SegmentationDataset) -> None:
    if not dataset.has_dense_labels:
        raise DataError(dataset.root, f"split {dataset.split!r} has no dense ground truth; the extension "
                                      "accuracy needs a split with dense masks (e.g. --split val)")


def check_network(network: Network, dataset: SegmentationDataset) -> None:
    if tuple(network.info.classes) != tuple(dataset.info.classes):
        raise DataError(network.path, f"the checkpoint predicts {network.info.num_classes} classes "
                                      f"({network.info.protocol}) but split {dataset.split!r} of {dataset.root} has "
                                      f"{dataset.info.num_classes} ({dataset.info.protocol}): "
                                      f"{class_difference(network.info.classes, dataset.info.classes)}")


# ------------------------------------------------------------------------------------------------
# the sub-stages
# ------------------------------------------------------------------------------------------------


def row_params(row: AblationRow, cfg: AblationConfig) -> dict:
    """What a row's labels depend on besides its inputs: the row, the method's constants, and the
    used images / overlays (``limit``, ``examples``)."""
    p: dict[str, Any] = {"row": dataclasses.asdict(row), "limit": cfg.limit, "examples": int(cfg.examples)}
    if row.method == "superpixel":
        p["superpixel"] = {"per_click": SUPERPIXELS_PER_CLICK, "range": list(SUPERPIXEL_RANGE),
                           "compactness": SLIC_COMPACTNESS}
    if row.method == "kmeans":
        p["kmeans"] = {"features": cfg.kmeans_features, "max_iter": KMEANS_MAX_ITER}
    if row.method == "sam":
        from ..sam.labeller import sam_key_parts

        p["sam"] = sam_key_parts(cfg.sam_rule, cfg.sam_checkpoint)[0]
    if get_method(row.method).threshold:
        p["inference"] = {"window": 0, "flip": False, "amp": "off"}
    return p


@dataclass
class _RowStage(Stage):
    """A sub-stage of one table row: it shares the table stage's cache and already-read inputs."""

    #: the :class:`~pointparse.stages.ablate_extension.AblateExtension` whose row this is (not
    #: imported here: that module imports this one)
    ablation: Any = field(repr=False)
    row: AblationRow

    @property
    def cache(self) -> StageCache:
        return self.ablation.cache

    def _inputs(self, dataset_fp: dict, points_key: str) -> dict:
        """The split's fingerprint, the clicks' key and, for methods that need the network, the
        checkpoint's bytes (for ``sam``, the SAM weights' sha256)."""
        inputs = {"dataset": dataset_fp, "points": points_key}
        cfg = self.ablation.config
        if get_method(self.row.method).needs_network(cfg.kmeans_features):
            inputs["checkpoint"] = self.ablation.checkpoint_fp
        if self.row.method == "sam":
            from ..sam.labeller import sam_key_parts

            inputs.update(sam_key_parts(cfg.sam_rule, cfg.sam_checkpoint)[1])
        return inputs


@dataclass
class ExtensionRow(_RowStage):
    """One row of ``ablation``'s table: ``counts.json`` and ``examples/<image>.png``."""

    name: ClassVar[str] = "extension-row"
    version: ClassVar[int] = 2

    def plan(self):
        a = self.ablation
        return row_params(self.row, a.config), self._inputs(a.dataset_fp, a.points.require_key())

    def build(self, tmp: Path) -> dict:
        a = self.ablation
        doc = a.row_builder(a.view, a.point_set, self.row, a.config, a.network, tmp, a.progress)
        return {"summary": {"label": self.row.label, **{k: doc["totals"][k] for k in
                                                       ("accuracy", "coverage", "new_pixels_per_image")}}}


@dataclass
class AblationEvaluate(Stage):
    """``evaluate`` of ``checkpoint`` (a model.pt) on the images of ``view`` only (``--limit``)."""

    name: ClassVar[str] = "ablation-evaluate"
    version: ClassVar[int] = 1

    checkpoint: Path
    spec: DatasetSpec
    view: SplitView
    dataset_fp: dict
    device: str
    cache: StageCache
    progress: bool = True

    @property
    def eval_config(self) -> EvalConfig:
        return EvalConfig(workers=0, device=self.device)

    def plan(self):
        params = {"eval": dataclasses.replace(self.eval_config, device=""), "indices": self.view.indices}
        return params, {"dataset": self.dataset_fp, "checkpoint": content_fingerprint(self.checkpoint)}

    def build(self, tmp: Path) -> dict:
        pred = Predictor.from_checkpoint(self.checkpoint, self.device)
        info = pred.info
        metrics, cm = evaluate_model(pred.model, self.view, info.num_classes, self.eval_config, pred.device,
                                     list(pred.mean), list(pred.std), progress=self.progress)
        d = write_metrics(tmp, metrics, cm, info, {"split": self.spec.split, "images": len(self.view)})
        return {"summary": {"miou": d["miou"], "pixel_acc": d["pixel_acc"]}, "checkpoint": str(self.checkpoint)}


def row_train_config(row: AblationRow, train: AblationTrainConfig, network: Network | None,
                     device: str) -> TrainConfig:
    """The configuration that trains on ``row``'s labels: the checkpoint's own training
    configuration (or the defaults without one) with ``train``'s schedule; online rows train from
    clicks with the row's extension, offline rows on their labels beside the clicks (no PDML, CRF or
    class balance)."""
    base = TrainConfig.from_dict(network.predictor.train_config) if network is not None else TrainConfig()
    common = dict(epochs=int(train.epochs), batch_size=int(train.batch_size), crop_size=int(train.crop_size),
                  workers=train.workers, device=device, extension_start_epoch=0,
                  lr=float(train.lr) if train.lr is not None else base.lr)
    if train.init == "checkpoint":
        if network is None:
            raise ConfigError("--train with init=checkpoint needs a checkpoint")
        common["weights"] = str(network.path)
    elif base.weights != "imagenet":
        common["weights"] = "imagenet"
    if get_method(row.method).online:
        return dataclasses.replace(base, supervision="points", extension=row.method,
                                   threshold=row.threshold if row.threshold is not None else base.threshold,
                                   region=row.region if row.region is not None else base.region, **common)
    # offline labels (which keep every click) train beside the clicks: point CE + CE on the labels,
    # nothing else, so the row measures the labels
    return dataclasses.replace(base, supervision="points", pdml=False, extension="none", class_balance="none",
                               crf_weight=0.0, label_weight=1.0, **common)
