"""Label extension: turning the clicks of an image into more labelled pixels.

Online (during training, from the network's current scores; the names below are re-exported
from there, so ``from pointparse.extension import online_extension`` keeps working):

* ``online``: Eq. 6-7 (``score``, ``region``, ``score+region``, ``agree``) and the Table 5
  counts (:func:`extension_stats`); ``squares``: the same evaluated at the click squares only
  (the training fast path, fixed shapes, no host sync).

Offline (computed once, before training) and their comparison, the paper's Table 5:

* ``methods``: the registry of extension methods, a table row (:class:`AblationRow`), the grid
  and the ablation's configuration;
* ``superpixel``: SLIC superpixels; ``kmeans``: K-means seeded at the clicks (dense and
  upsampled features); ``offline``: both over images in worker processes;
* ``ablation``: one method over a dataset split (inference, counts, overlays); ``labels``: an
  offline row's labels as a folder dataset a model trains on; ``table``: the table assembled,
  formatted and copied.

The cached stage that runs all of it is :mod:`pointparse.stages.ablate_extension`. This package
imports only ``online`` here, so the trainer does not load the ablation's modules.
"""

from .online import (EXTENSION_MODES, LOCAL_MODES, STAT_KEYS, ExtensionFn, extension_stats, finalize_extension_stats,
                     merge_extension_stats, online_extension)
from .squares import click_squares, extend_at_pixels, extension_stats_at_pixels, square_pixels

__all__ = ["EXTENSION_MODES", "LOCAL_MODES", "STAT_KEYS", "ExtensionFn", "click_squares", "extend_at_pixels",
           "extension_stats", "extension_stats_at_pixels", "finalize_extension_stats", "merge_extension_stats",
           "online_extension", "square_pixels"]
