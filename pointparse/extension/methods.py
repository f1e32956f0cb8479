"""Table 5's extension methods: the registry, a table row, the grid and the ablation's settings.

The paper ("Analysis of Extension Method") compares five ways of turning the clicks of an image
into more labelled pixels, measured on a split with dense ground truth:

* ``superpixel`` — SLIC superpixels, every click labels its whole superpixel
  (:mod:`pointparse.extension.superpixel`);
* ``kmeans`` — K-means on per-pixel features seeded at the clicks, every pixel takes its
  cluster's click class (:mod:`pointparse.extension.kmeans`; features :data:`KMEANS_FEATURES`);
* ``sam`` (not the paper's; only when asked for) — Segment Anything prompted with each click, its
  masks painted by a rule (:mod:`pointparse.sam`; the ``sam`` extra, rule ``sam_rule``, weights
  ``sam_checkpoint`` or the shipped MobileSAM);
* ``score`` (threshold t) — Eq. 6 alone; ``region`` (size r, default 5) — r x r squares around
  the clicks; ``score+region`` (t, r) — Eq. 7 read as sets, labelled with the arg-max;
  ``agree`` (t, r) — Eq. 7 read as labelled candidates. These four call
  :func:`pointparse.extension.online_extension` on the checkpoint's softmax at full image
  resolution (whole-image inference, no flip, full precision).

Conventions shared by every method (and with :func:`pointparse.extension.extension_stats`, which
counts them): labels are uint8 [H, W] class ids, 255 = unlabelled; a clicked pixel always keeps
its click's class; *new* pixels are the labelled pixels that are not clicks. Extension accuracy =
new pixels whose label equals the dense ground truth / new pixels whose ground truth is not 255;
coverage = ground-truth pixels (not 255) carrying any label, clicks included / ground-truth pixels.
Per-class accuracy is counted by the *extended* class (of the new pixels labelled c, the share
that are c), per-class coverage by the ground-truth class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .. import IGNORE_INDEX
from ..errors import ConfigError, unknown_choice
from ..sam.rules import DEFAULT_RULE, get_rule

#: Table 5's thresholds for score+region, and the one its score-only row uses.
TABLE5_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
SCORE_THRESHOLD = 0.7
DEFAULT_REGION = 5


@dataclass(frozen=True)
class ExtensionMethod:
    """One way of extending clicks (a row kind of Table 5).

    ``threshold`` / ``region``: whether the method takes a score threshold / square size.
    ``online``: trained through :class:`pointparse.train_config.TrainConfig`'s online extension; the
    others (superpixel, kmeans) are computed once and train as offline dense labels.
    ``default_thresholds``: the thresholds Table 5 shows for it. ``in_table``: part of the
    default grid (Table 5's rows); ``sam`` is shown only when asked for.
    """

    name: str
    threshold: bool
    region: bool
    online: bool
    default_thresholds: tuple[float, ...] = ()
    in_table: bool = True

    def needs_network(self, kmeans_features: str) -> bool:
        """Whether computing the labels needs the checkpoint."""
        if self.name == "kmeans":
            return kmeans_features == "embeddings"
        return self.threshold


#: name -> method; the default grid is Table 5's rows in this order.
METHODS: dict[str, ExtensionMethod] = {
    "superpixel": ExtensionMethod("superpixel", threshold=False, region=False, online=False),
    "kmeans": ExtensionMethod("kmeans", threshold=False, region=False, online=False),
    "score": ExtensionMethod("score", threshold=True, region=False, online=True, default_thresholds=(SCORE_THRESHOLD,)),
    "region": ExtensionMethod("region", threshold=False, region=True, online=True),
    "score+region": ExtensionMethod("score+region", threshold=True, region=True, online=True,
                                    default_thresholds=TABLE5_THRESHOLDS),
    # Eq. 7's other reading (pointparse.extension): kept where the arg-max agrees with the click
    "agree": ExtensionMethod("agree", threshold=True, region=True, online=True, default_thresholds=TABLE5_THRESHOLDS),
    # Segment Anything from the clicks (pointparse.sam; the optional extra): offline, not the paper's
    "sam": ExtensionMethod("sam", threshold=False, region=False, online=False, in_table=False),
}
#: the methods computed before training (their labels train as dense masks)
OFFLINE_METHODS = tuple(n for n, m in METHODS.items() if not m.online)

#: K-means feature kinds.
KMEANS_FEATURES = {
    "embeddings": "the checkpoint's embeddings, bilinearly upsampled to the image",
    "rgbxy": "colour / 255 and position / max(H, W), equal weights",
}


def get_method(name: str) -> ExtensionMethod:
    if name not in METHODS:
        raise unknown_choice("extension method", name, METHODS)
    return METHODS[name]


def click_coordinates(click_map: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, classes) int64 [K] of the clicked pixels of a uint8 [H, W] map, raster order."""
    ys, xs = np.nonzero(click_map != IGNORE_INDEX)
    return ys.astype(np.int64), xs.astype(np.int64), click_map[ys, xs].astype(np.int64)


@dataclass(frozen=True)
class AblationRow:
    """One row of the table: a method with its threshold and region size (``None`` = n/a)."""

    method: str
    threshold: float | None = None
    region: int | None = None

    def __post_init__(self) -> None:
        m = get_method(self.method)
        if m.threshold != (self.threshold is not None):
            raise ConfigError(f"extension method {self.method!r} " + ("needs a threshold" if m.threshold
                                                                       else "takes no threshold"))
        if m.region != (self.region is not None):
            raise ConfigError(f"extension method {self.method!r} " + ("needs a region size" if m.region
                                                                       else "takes no region size"))
        if self.threshold is not None and not 0.0 <= float(self.threshold) < 1.0:
            raise ConfigError(f"extension threshold must be in [0, 1), got {self.threshold!r}")
        if self.region is not None and (int(self.region) != self.region or self.region < 1 or self.region % 2 == 0):
            raise ConfigError(f"extension region must be an odd integer >= 1 (square side in pixels), got {self.region!r}")

    @property
    def label(self) -> str:
        """Human name, e.g. ``score+region t=0.7 r=5``."""
        parts = [self.method]
        if self.threshold is not None:
            parts.append(f"t={self.threshold:g}")
        if self.region is not None:
            parts.append(f"r={self.region}")
        return " ".join(parts)

    @property
    def slug(self) -> str:
        """File-name form, e.g. ``score+region-t0.7-r5``."""
        return self.label.replace(" ", "-").replace("=", "")


def build_grid(methods: Sequence[str] | None = None, thresholds: Sequence[float] | None = None,
               region: int = DEFAULT_REGION) -> list[AblationRow]:
    """The rows to compute: Table 5's by default.

    ``methods`` picks the methods (default: Table 5's and ``agree``, in that order; ``sam`` only
    when named); a thresholded method gets
    one row per threshold in ``thresholds``, or its Table 5 thresholds when none are given
    (score: 0.7; score+region: 0.5..0.9). Duplicates are dropped, order kept.
    """
    names = list(methods) if methods else [n for n, m in METHODS.items() if m.in_table]
    if not names:
        raise ConfigError("no extension method chosen")
    rows: list[AblationRow] = []
    for name in names:
        m = get_method(name)
        ts = [float(t) for t in thresholds] if (thresholds and m.threshold) else list(m.default_thresholds) or [None]
        for t in ts if m.threshold else [None]:
            row = AblationRow(name, t, int(region) if m.region else None)
            if row not in rows:
                rows.append(row)
    return rows


@dataclass
class AblationConfig:
    """What ``ablate-extension`` computes.

    ``methods`` / ``thresholds``: see :func:`build_grid` (None = Table 5). ``limit``: use only
    that many images of the split, evenly spaced in its order (None = all). ``examples``: how
    many images (the first of the used ones) get overlay PNGs. ``workers``: processes for
    superpixel / kmeans (0 or 1 = serial; the result does not depend on it). ``device``: where
    the network runs (auto = CUDA when available). ``sam_rule`` / ``sam_checkpoint``: the ``sam``
    row's rule (:data:`pointparse.sam.rules.RULES`) and weights (None = the shipped MobileSAM).
    """

    methods: tuple[str, ...] | None = None
    thresholds: tuple[float, ...] | None = None
    region: int = DEFAULT_REGION
    kmeans_features: str = "embeddings"
    limit: int | None = None
    examples: int = 3
    workers: int = 2
    device: str = "auto"
    sam_rule: str = DEFAULT_RULE
    sam_checkpoint: str | None = None

    def __post_init__(self) -> None:
        get_rule(self.sam_rule)
        if self.kmeans_features not in KMEANS_FEATURES:
            raise unknown_choice("K-means feature kind", self.kmeans_features, KMEANS_FEATURES)
        if self.limit is not None and (int(self.limit) != self.limit or self.limit < 1):
            raise ConfigError(f"limit must be a positive number of images, got {self.limit!r}")
        if int(self.examples) < 0 or int(self.workers) < 0:
            raise ConfigError("examples and workers must be >= 0")

    def rows(self) -> list[AblationRow]:
        return build_grid(self.methods, self.thresholds, self.region)


@dataclass
class AblationTrainConfig:
    """``--train``: each row's labels also train a model, evaluated on the ablation split.

    Online rows (score, region, score+region) train from ``points`` (a make-points artefact of
    ``split``) with that extension mode; superpixel / kmeans rows train with full-mask CE on their
    offline labels of ``split`` (no PDML: the trainer's full supervision has none). Everything
    else (backbone, PDML, lr, ...) is the checkpoint's training configuration; ``init=checkpoint``
    starts from the checkpoint's weights ("on the basis of the weight obtained by PDML"),
    ``imagenet`` from the backbone's ImageNet weights. ``lr`` None keeps the checkpoint's.
    """

    split: str = "train"
    points: str | None = None
    epochs: int = 10
    batch_size: int = 8
    crop_size: int = 321
    lr: float | None = None
    init: str = "checkpoint"
    workers: int | None = None  # DataLoader processes; None = auto (pointparse.pool.loader_workers)

    def __post_init__(self) -> None:
        if self.init not in ("checkpoint", "imagenet"):
            raise unknown_choice("training initialisation", self.init, ("checkpoint", "imagenet"))
        if not self.points:
            raise ConfigError(f"--train needs --train-points: a make-points artefact of split {self.split!r}")
