"""Dataset readers (being split into one module per reader; see :mod:`.base`)."""

from .base import (
    ADE20K_INSTANCE_CATEGORIES,
    ADE20K_SPLITS,
    DATASET_KINDS,
    PASCAL_CONTEXT_PROTOCOLS,
    ADE20KDataset,
    ClickInstances,
    CocoDataset,
    DatasetInfo,
    FolderDataset,
    Instances,
    PascalContextDataset,
    Sample,
    SegmentationDataset,
    ade20k_instances,
    default_palette,
    descriptor_path,
    load_descriptor,
    open_dataset,
    parse_classes_file,
)
