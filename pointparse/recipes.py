"""Named training recipes: one key (``--recipe NAME``, ``recipe: NAME`` in a pipeline's train
params) for a set of :class:`pointparse.train_config.TrainConfig` values. Values given explicitly next
to the recipe win over it; every value a recipe does not name keeps its dataclass default.

Registry :data:`RECIPES`:

* ``paper`` — the paper at its scale (Implementation Details): ResNet-101 at output stride 8,
  DeepLab v2's ASPP, SGD lr 2.5e-4 with the head at 10x, batch 16, 321 px crops. For GPUs;
  ``pipelines/pascal-context.yaml`` and ``ade20k.yaml`` use it.
* ``cpu`` — the same network family at the budget of two CPU cores: ImageNet EfficientNet-Lite0
  at output stride 16, ASPP-v2, SGD lr 2.5e-3 (head 10x), batch 8, 256 px crops, scale 0.5–1,
  12 epochs (2.5–3 minutes per LabelMeFacade run on 2 cores, evaluation on 845 images
  included). Chosen in
  ``benchmarks/recipe_study.py`` round 1 over a DeepLabv3+ head with the same SGD, with one SGD
  rate of 1e-2, and with AdamW, by its rule written before the runs (best mean of FullSup and
  PointSup mIoU over 3 seeds): with 144 optimiser steps the randomly initialised decoder does
  not catch up (README Results).
* ``cpu-clicks`` — ``cpu`` for training from clicks, with the study's winner: point CE weighted
  by the square root of the inverse click frequency of each class plus the Gated CRF loss at
  weight 0.3, without PDML or online extension. On LabelMeFacade (3 seeds) 21.5 ± 1.3 mIoU
  against 16.9 ± 0.9 for plain point CE (paired +4.5 ± 0.7), 0.74 of full supervision; adding
  PDML (normalized) and the ``agree`` extension to it gave 20.5 ± 1.8. The class weight and the
  CRF weight were chosen on the validation split among two values each (sqrt/inverse, 0.1/0.3).
* ``decoder`` — DeepLabv3+ head with AdamW (lr 2e-4, head 10x, weight decay 1e-2) for longer
  schedules: at 48 epochs it reached 38.7 mIoU with full masks on LabelMeFacade against 33.0
  for ``cpu`` (one seed each); at ``cpu``'s 12 epochs it ties with full masks and loses from
  clicks.

The numbers are on LabelMeFacade's validation split (README Results; every run is a line of
``results/labelmefacade-study-round*.jsonl``).
"""

from __future__ import annotations

from typing import Any, Mapping

from .errors import ConfigError, unknown_choice

_CPU = dict(backbone="efficientnet_lite0", weights="imagenet", output_stride=16, head="aspp-v2", optimizer="sgd",
            lr=2.5e-3, head_lr_mult=10.0, batch_size=8, crop_size=256, scale_min=0.5, scale_max=1.0, epochs=12)

#: recipe name -> TrainConfig values.
RECIPES: dict[str, dict[str, Any]] = {
    "paper": dict(backbone="resnet101", weights="imagenet", output_stride=8, head="aspp-v2", optimizer="sgd",
                  lr=2.5e-4, head_lr_mult=10.0, momentum=0.9, weight_decay=5e-4, batch_size=16, crop_size=321,
                  scale_min=0.5, scale_max=1.5, alpha=0.8, beta=1.0),
    "cpu": _CPU,
    "cpu-clicks": {**_CPU, "class_balance": "sqrt", "crf_weight": 0.3, "pdml": False, "extension": "none"},
    "decoder": dict(head="deeplabv3+", optimizer="adamw", lr=2e-4, head_lr_mult=10.0, weight_decay=1e-2),
}


def expand_recipe(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with its ``recipe`` (if any) expanded underneath: explicit values win.

    Full supervision drops the recipe's point-only losses (class balance, CRF, PDML, extension)
    so one recipe serves a whole Table 3.
    """
    d = dict(values)
    name = d.get("recipe") or ""
    if not name:
        return d
    if not isinstance(name, str) or name not in RECIPES:
        raise unknown_choice("recipe", str(name), RECIPES)
    base = dict(RECIPES[name])
    if d.get("supervision", "points") == "full":
        for key in ("class_balance", "crf_weight", "pdml", "extension"):
            base.pop(key, None)
    return {**base, **d}


def check_recipe(name: str) -> None:
    if name and name not in RECIPES:
        raise unknown_choice("recipe", name, RECIPES)
    if not isinstance(name, str):
        raise ConfigError(f"recipe must be a name, got {name!r}")
