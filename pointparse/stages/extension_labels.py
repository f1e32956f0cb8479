"""The ``extension-labels`` stage: dense labels for every image of a split from its clicks, made
offline by ``superpixel``, ``kmeans`` or ``sam`` — a label set (:mod:`pointparse.labelset`:
``labels.json`` + ``labels/<name>.png``, 255 = unlabelled) that a train stage reads as masks.

Key: the method and its constants (superpixel's counts, K-means' features and iterations, SAM's
rule by name and definition), the split's fingerprint, the points artefact's key, and the bytes
of what the method runs: the checkpoint (kmeans on embeddings) or the SAM weights (sha256; the
shipped MobileSAM or ``sam_checkpoint``). Device, batch size and worker count change only speed.
Resumable: images already written by a killed run are kept (``<key>.partial``); a progress bar
counts the rest. ``ablate-extension --train`` trains its offline rows on this same stage.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from ..cache import StageCache, StageResult
from ..dataspec import SYNTHETIC_KIND, DatasetSpec, dataset_fingerprint, open_spec
from ..datasets import SegmentationDataset
from ..errors import ConfigError, unknown_choice
from ..extension.ablation import Network
from ..extension.kmeans import KMEANS_MAX_ITER
from ..extension.labels import label_set_quality, write_extension_labels
from ..extension.methods import KMEANS_FEATURES, OFFLINE_METHODS, AblationRow, get_method
from ..extension.superpixel import SLIC_COMPACTNESS, SUPERPIXEL_RANGE, SUPERPIXELS_PER_CLICK
from ..keys import content_fingerprint
from ..labelset import LabelSetWriter
from ..points import PointSet, load_points
from ..predictor import resolve_checkpoint
from ..sam.rules import DEFAULT_RULE, get_rule
from .base import PipelineEntry, RunContext, Stage, Upstream, UpstreamMap
from .extension_rows import check_network, check_points_cover


@dataclass
class ExtensionLabelsConfig:
    """What ``extension-labels`` computes (pipeline ``params``; CLI options of the same names).

    ``method``: ``sam`` | ``superpixel`` | ``kmeans``. ``sam_rule``: SAM's mask choice and overlap
    rule (:data:`pointparse.sam.rules.RULES`); ``sam_checkpoint``: a SAM checkpoint file (ViT-B/L/H
    or MobileSAM; None = the MobileSAM the ``sam`` extra ships). ``kmeans_features``:
    ``embeddings`` (needs ``checkpoint``) or ``rgbxy``. Speed only, outside the key: ``device``
    (auto = CUDA when available), ``batch_size`` (images per SAM encoder call; 0 = 8 on CUDA, 1
    on CPU), ``workers`` (processes for superpixel / kmeans).
    """

    method: str = "sam"
    sam_rule: str = DEFAULT_RULE
    sam_checkpoint: str | None = None
    kmeans_features: str = "embeddings"
    device: str = "auto"
    batch_size: int = 0
    workers: int = 2

    def __post_init__(self) -> None:
        if self.method not in OFFLINE_METHODS:
            if self.method in ("score", "region", "score+region", "agree"):
                raise ConfigError(f"extension method {self.method!r} runs during training (train --extension "
                                  f"{self.method}); extension-labels computes {', '.join(OFFLINE_METHODS)}")
            raise unknown_choice("offline extension method", self.method, OFFLINE_METHODS)
        get_rule(self.sam_rule)
        if self.kmeans_features not in KMEANS_FEATURES:
            raise unknown_choice("K-means feature kind", self.kmeans_features, KMEANS_FEATURES)
        if int(self.batch_size) < 0 or int(self.workers) < 0:
            raise ConfigError("batch_size and workers must be >= 0")

    @property
    def row(self) -> AblationRow:
        return AblationRow(self.method)

    @property
    def needs_network(self) -> bool:
        return get_method(self.method).needs_network(self.kmeans_features)


def method_params(cfg: ExtensionLabelsConfig) -> dict:
    """The method and the constants its labels depend on (no speed settings, no paths)."""
    p: dict[str, Any] = {"method": cfg.method}
    if cfg.method == "superpixel":
        p["superpixel"] = {"per_click": SUPERPIXELS_PER_CLICK, "range": list(SUPERPIXEL_RANGE),
                           "compactness": SLIC_COMPACTNESS}
    elif cfg.method == "kmeans":
        p["kmeans"] = {"features": cfg.kmeans_features, "max_iter": KMEANS_MAX_ITER}
    elif cfg.method == "sam":
        from ..sam.labeller import sam_key_parts

        p["sam"] = sam_key_parts(cfg.sam_rule, cfg.sam_checkpoint)[0]
    return p


def method_inputs(cfg: ExtensionLabelsConfig, checkpoint_fp: str | None) -> dict:
    """The bytes the method runs besides the data: the checkpoint (kmeans on embeddings) or the
    SAM weights' sha256."""
    if cfg.method == "sam":
        from ..sam.labeller import sam_key_parts

        return sam_key_parts(cfg.sam_rule, cfg.sam_checkpoint)[1]
    if cfg.needs_network:
        return {"checkpoint": checkpoint_fp}
    return {}


@dataclass
class ExtensionLabels(Stage):
    """``points``: the clicks (make-points / import-clicks artefact of the split); ``checkpoint``:
    a train artefact, only for kmeans on embeddings. ``dataset``: the split already opened;
    ``sam``: an existing :class:`pointparse.sam.labeller.SamLabeller` (tests pass one around a
    tiny model)."""

    name: ClassVar[str] = "extension-labels"
    version: ClassVar[int] = 2  # 1: a copied-images folder dataset inside ablate-extension
    params_type: ClassVar[type] = ExtensionLabelsConfig
    fields: ClassVar[tuple[str, ...]] = ("dataset", "split")
    refs: ClassVar[tuple[str, ...]] = ("points", "checkpoint")
    required: ClassVar[tuple[str, ...]] = ("points",)

    spec: DatasetSpec
    config: ExtensionLabelsConfig
    cache: StageCache
    points: Upstream
    checkpoint: Upstream | None = None
    content_hash: bool = True
    progress: bool = True
    dataset: SegmentationDataset | None = field(default=None, repr=False)
    sam: Any = field(default=None, repr=False)

    @classmethod
    def from_pipeline(cls, entry: PipelineEntry, upstream: UpstreamMap, ctx: RunContext) -> "ExtensionLabels":
        ckpt = upstream.get("checkpoint")
        return cls(ctx.dataset_for(entry), ExtensionLabelsConfig(**entry.params), ctx.cache, upstream["points"][0],
                   ckpt[0] if ckpt else None, progress=ctx.progress)

    def split_dataset(self) -> SegmentationDataset:
        if self.dataset is None:
            self.dataset = open_spec(self.spec, self.cache)
        return self.dataset

    @cached_property
    def point_set(self) -> PointSet:
        return load_points(self.points.require_path())

    @cached_property
    def checkpoint_file(self) -> Path | None:
        return resolve_checkpoint(self.checkpoint.require_path()) if self.checkpoint is not None else None

    def plan(self):
        cfg = self.config
        ds = None if self.spec.kind == SYNTHETIC_KIND else self.split_dataset()
        inputs = {"dataset": dataset_fingerprint(self.spec, ds, self.content_hash, self.cache.file_hashes),
                  "points": self.points.require_key()}
        if cfg.needs_network and self.checkpoint is None:
            raise ConfigError(f"extension method {cfg.method!r} with {cfg.kmeans_features} features needs a checkpoint")
        fp = content_fingerprint(self.checkpoint_file) if cfg.needs_network else None
        return method_params(cfg), {**inputs, **method_inputs(cfg, fp)}

    def check(self) -> None:
        ds = self.split_dataset()
        check_points_cover(self.point_set, ds, self.point_set.path)
        if self.config.needs_network:
            if self.checkpoint is None:
                raise ConfigError(f"extension method {self.config.method!r} with {self.config.kmeans_features} "
                                  "features needs a checkpoint")
            check_network(self.network, ds)

    @cached_property
    def network(self) -> Network | None:
        return Network(self.checkpoint_file, self.config.device, self.cache) if self.config.needs_network else None

    def run_options(self) -> dict:
        return {"resume": True}  # a killed run keeps the images it wrote (<key>.partial)

    def build(self, tmp: Path) -> dict:
        cfg, ds = self.config, self.split_dataset()
        writer = LabelSetWriter(tmp, ds.info, self.spec.split, f"extension-labels:{cfg.method}")
        sam = self.sam
        if cfg.method == "sam" and sam is None:
            from ..sam.labeller import SamLabeller

            sam = SamLabeller(cfg.sam_rule, cfg.sam_checkpoint, cfg.device, cfg.batch_size or None)
        done = write_extension_labels(writer, ds, self.point_set, cfg.row, cfg.kmeans_features, self.network, sam,
                                      cfg.workers, self.progress)
        labels = writer.finish(ds)
        quality = label_set_quality(labels, ds, self.point_set)
        summary = {"method": cfg.method, "images": len(ds), **done}
        if cfg.method == "sam":
            summary["sam_rule"] = cfg.sam_rule
        if quality is not None:
            summary.update({k: quality[k] for k in ("accuracy", "coverage", "new_pixels_per_image")})
        writer.finish(ds, {**summary, "quality": quality})
        return {"summary": summary, "dataset_spec": dataclasses.asdict(self.spec)}


def run_extension_labels(spec: DatasetSpec, points: str | Path, cfg: ExtensionLabelsConfig, cache: StageCache,
                         checkpoint: str | Path | None = None, force: bool = False, content_hash: bool = True,
                         progress: bool = True, sam=None) -> StageResult:
    """:class:`ExtensionLabels` in one call (the library's and the CLI's entry). ``points``: a
    make-points or import-clicks artefact (folder or key) of the split; ``checkpoint``: a train
    artefact, key or model.pt (kmeans on embeddings only)."""
    pts = Upstream.find_points(points, cache)
    ckpt = Upstream("train", None, resolve_checkpoint(checkpoint, cache)) if checkpoint is not None else None
    return ExtensionLabels(spec, cfg, cache, pts, ckpt, content_hash, progress, sam=sam).run(force)
