"""The ``ablate-extension`` stage: Table 5 (extension methods compared) over a split with dense GT.

Cached stages, each a :class:`~pointparse.stages.base.Stage`:

* ``extension-row`` (:class:`ExtensionRow`): one table row's counts and example overlays. Key: the
  row, the method's constants, ``limit`` / ``examples``, the split's fingerprint, the points
  artefact's key and (methods that need the network) the checkpoint's bytes. Adding a threshold
  later computes only that row.
* ``extension-labels`` (:class:`~pointparse.stages.extension_labels.ExtensionLabels`, with
  ``train``): the offline labels of the training split that superpixel / kmeans / sam rows train
  on — the same stage a pipeline or ``pointparse extension-labels`` runs, so its artefact is shared.
* ``ablation-evaluate`` (:class:`AblationEvaluate`, with ``train`` and ``limit``): a trained row's
  metrics on the used images only.
* ``ablate-extension`` (:class:`AblateExtension`): the table, keyed by the rows' keys (and, with
  ``train``, the train and evaluation keys of each row).

The table's plan and the rows' runs share one key computation (:meth:`ExtensionRow.plan`). With
``train`` the table's key depends on the trained models, so it is known only after they ran
(:class:`~pointparse.stages.base.KeyUnknown`). The algorithms live in :mod:`pointparse.extension`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, ClassVar

import pandas as pd

from ..cache import StageCache, StageResult
from ..keys import content_fingerprint
from ..dataspec import SYNTHETIC_KIND, DatasetSpec, dataset_fingerprint, open_spec
from ..datasets import SegmentationDataset
from ..errors import ConfigError, DataError
from ..evaluate import EvalConfig
from ..extension.ablation import Network, SplitView, extension_row, subset_indices
from ..extension.methods import AblationConfig, AblationRow, AblationTrainConfig, get_method
from ..extension.table import AblationResult, write_table
from ..points import PointSet, load_points
from ..predictor import resolve_checkpoint
from .base import KeyUnknown, PipelineEntry, RunContext, Stage, Upstream, UpstreamMap
from .extension_labels import ExtensionLabels, ExtensionLabelsConfig
from .extension_rows import (AblationEvaluate, ExtensionRow, check_dense, check_network, check_points_cover,
                             row_train_config)
from .evaluate import run_evaluate
from .train import run_train

# ------------------------------------------------------------------------------------------------
# the table
# ------------------------------------------------------------------------------------------------


@dataclass
class AblateExtension(Stage):
    """Table 5 over the split ``spec`` (dense ground truth) from the clicks of ``points``.

    ``checkpoint``: the train artefact (folder) or model.pt the score methods, kmeans on
    embeddings and ``train`` from the checkpoint need. With ``train`` each row's labels also train
    a model (clicks of ``train_points`` for online rows) evaluated on the split. ``row_builder``
    replaces :func:`pointparse.extension.ablation.extension_row` (tests spy on it). ``dataset``:
    the split already opened (else opened on first use).

    :meth:`run` runs the rows (and trainings) first and then the table, whose key is made from
    theirs; :meth:`ablate` returns all of them (:class:`AblationResult`).
    """

    name: ClassVar[str] = "ablate-extension"
    version: ClassVar[int] = 2
    params_type: ClassVar[type] = AblationConfig
    fields: ClassVar[tuple[str, ...]] = ("dataset", "split", "train")
    refs: ClassVar[tuple[str, ...]] = ("checkpoint", "points", "train_points")

    spec: DatasetSpec
    config: AblationConfig
    cache: StageCache
    points: Upstream
    checkpoint: Upstream | None = None
    train: AblationTrainConfig | None = None
    train_points: Upstream | None = None
    content_hash: bool = True
    progress: bool = True
    row_builder: Callable = field(default=extension_row, repr=False)
    dataset: SegmentationDataset | None = field(default=None, repr=False)

    @classmethod
    def from_pipeline(cls, entry: PipelineEntry, upstream: UpstreamMap, ctx: RunContext) -> "AblateExtension":
        # train: a mapping of AblationTrainConfig fields; its clicks come from the train_points stage
        train, tp = entry.spec.get("train"), upstream.get("train_points")
        tcfg = None
        if train is not None:
            tcfg = AblationTrainConfig(**{**train, "points": _ref(tp[0]) if tp else train.get("points")})
        ckpt = upstream.get("checkpoint")
        return cls(ctx.dataset_for(entry, "val"), AblationConfig(**entry.params), ctx.cache, upstream["points"][0],
                   ckpt[0] if ckpt else None, tcfg, tp[0] if tp else None, progress=ctx.progress)

    # --- what the rows share (loaded on first use) ---------------------------------------------

    def split_dataset(self) -> SegmentationDataset:
        if self.dataset is None:
            self.dataset = open_spec(self.spec, self.cache)
        return self.dataset

    @cached_property
    def view(self) -> SplitView:
        ds = self.split_dataset()
        return SplitView(ds, subset_indices(len(ds), self.config.limit))

    @cached_property
    def point_set(self) -> PointSet:
        return load_points(self.points.require_path())

    @cached_property
    def network(self) -> Network | None:
        return Network(self.checkpoint.require_path(), self.config.device, self.cache) if self.checkpoint else None

    @property
    def _memo(self) -> Path | None:
        """The cache's fingerprint memo; none for :func:`plan_ablation`, which plans without a cache."""
        return self.cache.file_hashes if self.cache is not None else None

    @cached_property
    def dataset_fp(self) -> dict:
        ds = None if self.spec.kind == SYNTHETIC_KIND else self.split_dataset()
        return dataset_fingerprint(self.spec, ds, self.content_hash, self._memo)

    @cached_property
    def checkpoint_fp(self) -> str | None:
        """The checkpoint file's bytes (its path never enters a key)."""
        return content_fingerprint(resolve_checkpoint(self.checkpoint.require_path())) if self.checkpoint else None

    @property
    def train_spec(self) -> DatasetSpec:
        return self.spec.with_split(self.train.split)

    @cached_property
    def train_dataset(self) -> SegmentationDataset:
        return open_spec(self.train_spec, self.cache)

    @cached_property
    def train_dataset_fp(self) -> dict:
        return dataset_fingerprint(self.train_spec, self.train_dataset, self.content_hash, self._memo)

    @cached_property
    def train_points_artefact(self) -> Upstream:
        """``train_points``, or the artefact ``train.points`` names."""
        return self.train_points or Upstream.find_points(self.train.points, self.cache)

    @cached_property
    def train_point_set(self) -> PointSet:
        return load_points(self.train_points_artefact.require_path())

    # --- the stage -----------------------------------------------------------------------------

    def check(self) -> None:
        """Every input, before any row runs."""
        ds = self.split_dataset()
        check_dense(ds)
        check_points_cover(self.point_set, self.view, self.point_set.path)
        _check_has_clicks(self.point_set, "every row would extend nothing (a table of 0 new pixels)")
        if self.network is not None:
            check_network(self.network, ds)
        needs = [r.label for r in self.config.rows() if get_method(r.method).needs_network(self.config.kmeans_features)]
        if needs and self.network is None:
            raise ConfigError(f"row(s) {', '.join(needs)} need a checkpoint")
        if self.train is not None:
            check_points_cover(self.train_point_set, self.train_dataset, self.train_point_set.path)
            _check_has_clicks(self.train_point_set, "--train would learn from nothing (a CE of 0 and an mIoU "
                                                    "of an untrained network)")
            if self.train.init == "checkpoint" and self.network is None:
                raise ConfigError("--train from the checkpoint needs a checkpoint")

    def plan(self):
        if self.train is not None:
            raise KeyUnknown("train")  # the table's key holds the trained models' keys: known once they exist
        rows = self.config.rows()
        return _table_plan(rows, [ExtensionRow(self, r).key() for r in rows], [None] * len(rows))

    def run(self, force: bool = False) -> StageResult:
        return self.ablate(force).table

    def ablate(self, force: bool = False) -> AblationResult:
        """Check the inputs, run every row (and its training), then the table."""
        self.check()
        rows = self.config.rows()
        row_results = [ExtensionRow(self, r).run(force) for r in rows]
        trained = [self._train_row(r) for r in rows] if self.train is not None else [None] * len(rows)
        params, inputs = _table_plan(rows, [r.key for r in row_results],
                                     [None if tr is None else [tr[0].key, tr[1].key] for tr in trained])

        def build(tmp: Path) -> dict:
            write_table(tmp, rows, row_results, trained)
            return {"summary": {"rows": len(rows), "split": self.spec.split, "images": len(self.view)}}

        table = self.cache.run(self.name, self.version, params, inputs, build, force=force)
        return AblationResult(table, row_results, pd.read_csv(table.path / "extension_table.csv"), trained)

    def offline_labels(self, row: AblationRow) -> ExtensionLabels:
        """The ``extension-labels`` stage an offline row trains on (labels of the training split)."""
        c = self.config
        cfg = ExtensionLabelsConfig(method=row.method, sam_rule=c.sam_rule, sam_checkpoint=c.sam_checkpoint,
                                    kmeans_features=c.kmeans_features, device=c.device, workers=c.workers)
        ckpt = Upstream("train", None, self.network.path) if cfg.needs_network else None
        return ExtensionLabels(self.train_spec, cfg, self.cache, self.train_points_artefact, ckpt, self.content_hash,
                               self.progress, dataset=self.train_dataset)

    def _train_row(self, row: AblationRow) -> tuple[StageResult, StageResult]:
        """(train, evaluation) artefacts of a model trained on ``row``'s labels."""
        tcfg = row_train_config(row, self.train, self.network, self.config.device)
        if get_method(row.method).online:
            tres = run_train(self.train_spec, tcfg, self.cache, points=self.train_points_artefact.path,
                             content_hash=self.content_hash, progress=self.progress)
        else:
            labels = self.offline_labels(row).run()
            tres = run_train(self.train_spec, tcfg, self.cache, points=self.train_points_artefact.path,
                             labels=labels.path, content_hash=self.content_hash, progress=self.progress)
        if self.config.limit is not None and len(self.view) < len(self.split_dataset()):
            eres = AblationEvaluate(tres.path / "model.pt", self.spec, self.view, self.dataset_fp, self.config.device,
                                    self.cache, self.progress).run()
        else:
            eres = run_evaluate(tres.path, self.spec, EvalConfig(workers=0, device=self.config.device), self.cache,
                                content_hash=self.content_hash, progress=self.progress)
        return tres, eres


def _check_has_clicks(points: PointSet, consequence: str) -> None:
    """A points artefact without a single click: refused before any row, or the ablation "works"."""
    if points.num_points == 0:
        raise DataError(points.path, f"holds no clicks for its {len(points.names)} images: {consequence}")


def _table_plan(rows: list[AblationRow], row_keys: list[str], trained_keys: list) -> tuple[dict, dict]:
    """The table's (params, inputs): its rows, and the keys of their artefacts (and trainings)."""
    params = {"rows": [dataclasses.asdict(r) for r in rows], "train": any(t is not None for t in trained_keys)}
    return params, {"rows": row_keys, "trained": trained_keys}


def _ref(up: Upstream) -> str:
    """An upstream artefact as a reference: its folder, or in a dry run before it ran its key."""
    return str(up.path if up.path is not None else up.key)


# ------------------------------------------------------------------------------------------------
# one call
# ------------------------------------------------------------------------------------------------


def run_ablation(checkpoint: str | Path | None, spec: DatasetSpec, points: str | Path, cfg: AblationConfig,
                 cache: StageCache, train: AblationTrainConfig | None = None, force: bool = False,
                 content_hash: bool = True, progress: bool = True, row_builder: Callable | None = None) -> AblationResult:
    """:class:`AblateExtension` in one call (the library's and the CLI's entry).

    ``points``: a make-points artefact (folder or key) of the split; ``checkpoint``: a train
    artefact, key or .pt file (needed by score methods, kmeans on embeddings and ``train`` from the
    checkpoint). Every input is checked before any work. The table artefact holds
    ``extension_table.csv``, ``per_class_accuracy.csv``, ``table.txt`` and
    ``examples/<row>_<image>.png``.
    """
    ckpt = Upstream("train", None, resolve_checkpoint(checkpoint, cache)) if checkpoint is not None else None
    stage = AblateExtension(spec, cfg, cache, Upstream.find_points(points, cache), ckpt, train,
                            content_hash=content_hash, progress=progress, row_builder=row_builder or extension_row)
    return stage.ablate(force)


def plan_ablation(spec: DatasetSpec, dataset: SegmentationDataset | None, points_key: str, checkpoint: Path | None,
                  cfg: AblationConfig, content_hash: bool = True) -> str:
    """The key :func:`run_ablation` (without ``train``) gives its table artefact, computed without
    running anything. ``dataset``: the split opened (None: opened here; synthetic needs none);
    ``checkpoint``: the model.pt file or None."""
    ckpt = Upstream("train", None, Path(checkpoint)) if checkpoint is not None else None
    return AblateExtension(spec, cfg, None, Upstream("make-points", points_key, None), ckpt,  # type: ignore[arg-type]
                           content_hash=content_hash, dataset=dataset).key()
