"""An offline row's labels as a dataset to train on (``ablate-extension --train``).

Offline methods (superpixel, kmeans) become a folder dataset of full masks
(:func:`write_offline_labels`) trained with full-mask CE; online methods train from the clicks
with that extension mode (the configuration of either: :func:`pointparse.stages.extension_rows.row_train_config`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from .. import IGNORE_INDEX
from ..datasets import SegmentationDataset
from ..io import safe_name, write_label_png
from ..points import PointSet
from .ablation import Network, iter_extended
from .methods import AblationRow


def write_offline_labels(dataset: SegmentationDataset, points: PointSet, row: AblationRow, kmeans_features: str,
                         network: Network | None, out_dir: Path, workers: int = 0, progress: bool = False) -> dict:
    """A folder dataset (``out_dir``, layout of :class:`pointparse.datasets.FolderDataset`) whose
    masks are ``row``'s extended labels of ``dataset`` (255 where unlabelled) and whose images are
    copies of the originals; split name = ``dataset.split``. Returns summary numbers."""
    info = dataset.info
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"{c} {name} {r}:{g}:{b}" for c, (name, (r, g, b)) in enumerate(zip(info.classes, info.palette))]
    (out_dir / "classes.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    img_dir, mask_dir = out_dir / "images" / dataset.split, out_dir / "masks" / dataset.split
    img_dir.mkdir(parents=True)
    mask_dir.mkdir(parents=True)
    pal = np.asarray(info.palette, np.uint8)
    new = labelled = 0
    for i, sample, cmap, labels, _ in iter_extended(dataset, points.label_map, row, kmeans_features, network,
                                                    workers, with_mask=False, progress=progress):
        src = Path(dataset.image_path(i))
        name = safe_name(sample.name, src)  # names come from files: untrusted
        shutil.copyfile(src, img_dir / f"{name}{src.suffix.lower()}")
        write_label_png(mask_dir / f"{name}.png", labels, palette=pal)
        labelled += int(np.count_nonzero(labels != IGNORE_INDEX))
        new += int(np.count_nonzero((labels != IGNORE_INDEX) & (cmap == IGNORE_INDEX)))
    return {"images": len(dataset), "new_pixels_per_image": new / max(len(dataset), 1),
            "labelled_pixels_per_image": labelled / max(len(dataset), 1)}
