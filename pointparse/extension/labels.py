"""An offline method's labels of a whole split, as a label set (:mod:`pointparse.labelset`).

Offline methods (``superpixel``, ``kmeans``, ``sam``) are computed once, before training, for
every image of a split from its clicks; the result trains like dense masks
(:class:`pointparse.labelset.LabelSetDataset`). :func:`write_extension_labels` writes the images
a :class:`~pointparse.labelset.LabelSetWriter` does not have yet (so a killed run continues
where it stopped) and :func:`label_set_quality` measures a finished set against the split's
dense ground truth when it has one. The cached stage is
:mod:`pointparse.stages.extension_labels`.
"""

from __future__ import annotations

import numpy as np

from .. import IGNORE_INDEX
from ..datasets import SegmentationDataset
from ..labelset import LabelSet, LabelSetWriter, label_quality, quality_summary
from ..points import PointSet
from .ablation import Network, SplitView, iter_extended
from .methods import AblationRow


def write_extension_labels(writer: LabelSetWriter, dataset: SegmentationDataset, points: PointSet, row: AblationRow,
                           kmeans_features: str = "embeddings", network: Network | None = None, sam=None,
                           workers: int = 0, progress: bool = False) -> dict:
    """Label the images of ``dataset`` that ``writer`` lacks with ``row``'s method; returns
    ``{"computed": n, "reused": m, "new_pixels_per_image": ...}`` over the images computed now.

    ``sam``: a :class:`pointparse.sam.labeller.SamLabeller` (the ``sam`` method);
    ``network``: the checkpoint kmeans on embeddings needs; ``workers``: processes for superpixel
    / kmeans (the labels do not depend on it).
    """
    todo = [i for i in range(len(dataset)) if not writer.has(dataset.names[i], dataset.image_path(i))]
    view = SplitView(dataset, todo)
    new = 0
    for j, sample, cmap, labels, _ in iter_extended(view, points.label_map, row, kmeans_features, network, workers,
                                                    with_mask=False, progress=progress, sam=sam):
        writer.write(sample.name, labels, view.image_path(j))
        new += int(np.count_nonzero((labels != IGNORE_INDEX) & (cmap == IGNORE_INDEX)))
    return {"computed": len(todo), "reused": len(dataset) - len(todo),
            "new_pixels_per_image": new / max(len(todo), 1)}


def label_set_quality(labels: LabelSet, dataset: SegmentationDataset, points: PointSet) -> dict | None:
    """:func:`pointparse.labelset.quality_summary` of ``labels`` against the split's dense masks
    (None when the split has none)."""
    if not dataset.has_dense_labels:
        return None
    tot = None
    for i, name in enumerate(dataset.names):
        q = label_quality(labels.label(name), points.label_map(name), dataset.load_mask(i), dataset.info.num_classes)
        tot = q if tot is None else {k: tot[k] + q[k] for k in tot}
    if tot is None:
        return None
    return quality_summary(tot, dataset.info.classes, len(dataset))
