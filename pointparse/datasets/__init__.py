"""Dataset readers: one registry of dataset kinds, each yielding image, class mask, instances.

Conventions (every reader converts to these, whatever the on-disk format):

* image: ``uint8`` [H, W, 3] RGB;
* class mask: ``uint8`` [H, W] with class ids ``0..C-1`` and ``IGNORE_INDEX`` (255) for
  unlabelled pixels (ADE20K's 0 "other", PASCAL-Context's background under the 59-class
  protocol, COCO crowd regions, VOC boundaries);
* instances: ``int32`` [H, W], 0 = no instance, ``>0`` = instance id unique within the image,
  or ``None`` when the dataset has no instance annotation (make-points then falls back to
  connected components of each class).

Class names, palettes and protocols are described by YAML files in the repository's top-level
``datasets/`` folder (installed as ``pointparse.descriptors``).

Modules: :mod:`.classes` (DatasetInfo, palettes, descriptors, classes files), :mod:`.base` (the
reader base class, its records, the checks and mask decoding every reader shares), one module
per reader (:mod:`.folder`, :mod:`.ade20k`, :mod:`.pascal_context`, :mod:`.coco` with its RLE
decoder :mod:`.rle`) and :mod:`.registry` (kind name -> reader, :func:`open_dataset`).
"""

from .ade20k import ADE20K_INSTANCE_CATEGORIES, ADE20K_SPLITS, ADE20KDataset, ade20k_instances
from .base import ClickInstances, Instances, Sample, SegmentationDataset
from .classes import DatasetInfo, default_palette, descriptor_path, load_descriptor, parse_classes_file
from .coco import CocoDataset
from .folder import FolderDataset
from .pascal_context import PASCAL_CONTEXT_PROTOCOLS, PascalContextDataset
from .registry import DATASET_KINDS, open_dataset

__all__ = [
    "ADE20K_INSTANCE_CATEGORIES",
    "ADE20K_SPLITS",
    "ADE20KDataset",
    "ClickInstances",
    "CocoDataset",
    "DATASET_KINDS",
    "DatasetInfo",
    "FolderDataset",
    "Instances",
    "PASCAL_CONTEXT_PROTOCOLS",
    "PascalContextDataset",
    "Sample",
    "SegmentationDataset",
    "ade20k_instances",
    "default_palette",
    "descriptor_path",
    "load_descriptor",
    "open_dataset",
    "parse_classes_file",
]
