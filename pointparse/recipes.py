"""Named training recipes: one key (``--recipe NAME``, ``recipe: NAME`` in a pipeline's train
params) for a set of :class:`pointparse.train_config.TrainConfig` values. Values given explicitly next
to the recipe win over it; every value a recipe does not name keeps its dataclass default.

Registry :data:`RECIPES`:

* ``paper`` — the paper at its scale (Implementation Details): ResNet-101 at output stride 8,
  DeepLab v2's ASPP, SGD lr 2.5e-4 with the head at 10x, batch 16, 321 px crops. For GPUs;
  ``pipelines/pascal-context.yaml`` and ``ade20k.yaml`` use it.
* ``cpu`` — the default network for two CPU cores, chosen on LabelMeFacade and CamVid
  (``benchmarks/recipe_study.py`` rounds 4 and 5): ImageNet EfficientNet-Lite0 at output stride
  16, DeepLabv3+ head with the stride-4 tap, AdamW lr 4e-4 (head 10x, weight decay 1e-2), batch
  8, 256 px crops, scale 0.5–1, 12 epochs. With full masks it beats the previous default by
  +7.6 mIoU on LabelMeFacade and +21.3 on CamVid (seed 0; 39.0 / 59.8), and keeps the thin
  street classes (CamVid pole / sign / fence / pedestrian / bicyclist 5 / 18 / 57 / 32 / 38 IoU
  against 0 / 0 / 10 / 3 / 3); a step costs 1.3x the ASPP-v2 one.
* ``cpu-clicks`` — ``cpu`` for training from clicks: point CE weighted by the square root of the
  inverse click frequency of each class plus the Gated CRF loss at weight 0.3, without PDML or
  online extension (the losses round 2 found on LabelMeFacade), at twice ``cpu``'s rate (AdamW
  8e-4, head 10x). Sparse clicks give the randomly initialised decoder a weak gradient; its
  learning rate was the lever (round 4-5, LabelMeFacade, seed 0: head rate 6e-4 -> 5.2 mIoU,
  2e-3 -> 10.5, 4e-3 -> 19.6, 8e-3 -> 24.0, against 22.3 for ``cpu-aspp-clicks``). Full
  supervision with this recipe drops the click losses but keeps the rate.
* ``cpu-sam`` — ``cpu-clicks`` trained on the clicks plus SAM's labels of the training split
  (the train stage's ``labels``: an ``extension-labels`` stage with ``method: sam``), their CE at
  ``label_weight`` 1 beside the clicks' class-balanced CE and the Gated CRF; the clicks are always
  kept by the labels. Same steps as ``cpu-clicks``. Without ``labels`` it is refused (it would be
  ``cpu-clicks`` under another name). ``benchmarks/sam_study.py`` (3 seeds, paired, val): 35.4 mIoU
  on LabelMeFacade and 51.6 on CamVid, +9.8 and +6.8 over ``cpu-clicks``, 0.92 and 0.87 of
  ``cpu``'s FullSup — the recipe for clicks when the ``sam`` extra is installed.
* ``cpu-aspp``, ``cpu-aspp-clicks`` — the previous defaults (before round 4), kept to reproduce
  earlier results: ASPP-v2 with SGD lr 2.5e-3 (head 10x), same budget. On LabelMeFacade
  ``cpu-aspp-clicks`` gave 21.5 ± 1.3 mIoU against 16.9 ± 0.9 for plain point CE (3 seeds).
* ``decoder`` — DeepLabv3+ head with AdamW (lr 2e-4, head 10x, weight decay 1e-2): the first
  decoder recipe (round 1), on any budget given beside it; ``cpu`` supersedes it at the CPU
  budget (twice its rate: +5.4 / +7.8 mIoU with full masks on LabelMeFacade / CamVid, seed 0).

The numbers are on the validation splits (README Results; every run is a line of
``results/labelmefacade-study-round*.jsonl`` and ``results/street-study-round*.jsonl``).
"""

from __future__ import annotations

from typing import Any, Mapping

from .errors import ConfigError, unknown_choice

_BUDGET = dict(backbone="efficientnet_lite0", weights="imagenet", output_stride=16, batch_size=8, crop_size=256,
               scale_min=0.5, scale_max=1.0, epochs=12)
_CPU = dict(_BUDGET, head="deeplabv3+", optimizer="adamw", lr=4e-4, head_lr_mult=10.0, weight_decay=1e-2)
_CPU_ASPP = dict(_BUDGET, head="aspp-v2", optimizer="sgd", lr=2.5e-3, head_lr_mult=10.0)
_CLICKS = dict(class_balance="sqrt", crf_weight=0.3, pdml=False, extension="none")
_CPU_CLICKS = {**_CPU, "lr": 8e-4, **_CLICKS}

#: recipe name -> TrainConfig values.
RECIPES: dict[str, dict[str, Any]] = {
    "paper": dict(backbone="resnet101", weights="imagenet", output_stride=8, head="aspp-v2", optimizer="sgd",
                  lr=2.5e-4, head_lr_mult=10.0, momentum=0.9, weight_decay=5e-4, batch_size=16, crop_size=321,
                  scale_min=0.5, scale_max=1.5, alpha=0.8, beta=1.0),
    "cpu": _CPU,
    "cpu-clicks": _CPU_CLICKS,
    "cpu-sam": {**_CPU_CLICKS, "label_weight": 1.0},
    "cpu-aspp": _CPU_ASPP,
    "cpu-aspp-clicks": {**_CPU_ASPP, **_CLICKS},
    "decoder": dict(head="deeplabv3+", optimizer="adamw", lr=2e-4, head_lr_mult=10.0, weight_decay=1e-2),
}

#: recipes that train on a label set beside the clicks -> what that label set is (for the error)
NEEDS_LABELS: dict[str, str] = {
    "cpu-sam": "SAM's labels of the training split (labels: an extension-labels stage with method: sam; "
               "train --labels KEY)",
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
