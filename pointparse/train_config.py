"""The configuration of a training run: :class:`TrainConfig` (every knob, the paper's defaults),
its validation, named recipes applied through :meth:`TrainConfig.from_dict`, and one line of help
per field for the command line (:data:`FIELD_HELP`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .errors import ConfigError, unknown_choice
from .extension import EXTENSION_MODES
from .fields import bounded, check_fields
from .losses import CLASS_BALANCE
from .model import CLASSIFIER_LR_MULT, ModelConfig
from .pdml import PDML_VARIANTS
from .recipes import check_recipe, expand_recipe

SUPERVISIONS = ("points", "full")
AMP_MODES = ("auto", "off", "bf16", "fp16")
OPTIMIZERS = ("sgd", "adamw")
#: the largest training crop side: a 4096² batch already needs gigabytes; beyond it allocation fails
MAX_CROP = 4096


@dataclass
class TrainConfig:
    """Every knob of a training run; the defaults are the paper's (Implementation Details).

    ``head``/``embed``/``low_level_stride``/``decoder_channels``: see :mod:`pointparse.model`.
    ``pdml_weight`` multiplies the PDML term against the CE (the paper adds them with weight 1);
    ``pdml_variant`` picks the loss of :data:`pointparse.pdml.PDML_VARIANTS` and ``margin``
    ``None`` its default margin (20 for the paper's). ``extension_start_epoch``: online extension
    needs a classifier that already means something, so it can start later than epoch 0; its
    accuracy and coverage against the dense masks are logged from epoch 0 either way.
    ``class_balance``: point CE weighted by inverse click frequency (``inverse``), its square
    root (``sqrt``) or not (``none``). ``crf_weight`` > 0 adds the Gated CRF loss
    (:mod:`pointparse.crf`). ``label_weight`` multiplies the CE on a label set (pseudo-labels,
    extension labels) given beside the clicks (the train stage's ``labels``); without one it does
    nothing and stays out of the stage's key. ``optimizer``: the paper's SGD or AdamW; ``head_lr_mult``: the
    head's learning rate over the backbone's (paper 10). ``freeze_bn``: the backbone's
    BatchNorm layers keep their ImageNet statistics and affine parameters (small batches).
    ``amp='auto'`` = bf16 on CUDA, off on CPU.
    """

    supervision: str = bounded("points", choices=SUPERVISIONS)
    recipe: str = ""  # the pointparse.recipes name these values came from ("" = none), for tables
    # model
    backbone: str = "efficientnet_lite0"
    output_stride: int = 16
    weights: str = "imagenet"
    projection_dim: int = bounded(0, ge=0)
    head: str = "aspp-v2"
    embed: str = "classifier"
    low_level_stride: int = bounded(4, ge=1)
    decoder_channels: int = bounded(128, ge=1)
    # PDML (Eq. 3-5)
    pdml: bool = True
    pdml_variant: str = bounded("paper", choices=PDML_VARIANTS)
    alpha: float = bounded(0.8, ge=0)
    beta: float = bounded(1.0, ge=0)
    margin: float | None = bounded(None, ge=0)  # None: the variant's default
    pdml_weight: float = bounded(1.0, ge=0)
    pdml_group_size: int = bounded(0, ge=0)
    # beyond the paper: class-balanced point CE, Gated CRF loss
    class_balance: str = bounded("none", choices=CLASS_BALANCE)
    crf_weight: float = bounded(0.0, ge=0)
    # a label set beside the clicks (the train stage's labels reference): its CE's weight
    label_weight: float = bounded(1.0, ge=0)
    # online extension (Eq. 6-7)
    extension: str = bounded("none", choices=EXTENSION_MODES)
    threshold: float = bounded(0.7, ge=0, lt=1)
    region: int = bounded(5, ge=1, odd=True)
    extension_start_epoch: int = bounded(0, ge=0)
    # optimisation
    epochs: int = bounded(20, ge=1)
    batch_size: int = bounded(16, ge=1)
    optimizer: str = bounded("sgd", choices=OPTIMIZERS)
    lr: float = bounded(2.5e-4, gt=0)
    head_lr_mult: float = bounded(CLASSIFIER_LR_MULT, gt=0)
    freeze_bn: bool = False
    momentum: float = bounded(0.9, ge=0, lt=1)
    weight_decay: float = bounded(5e-4, ge=0)
    poly_power: float = bounded(0.8, ge=0)
    # data
    crop_size: int = bounded(321, ge=1, le=MAX_CROP)  # larger: an allocator error, not a run
    scale_min: float = bounded(0.5, gt=0)
    scale_max: float = bounded(1.5, gt=0)
    flip: bool = True
    workers: int | None = bounded(None, ge=0)  # DataLoader processes; None = auto (pointparse.pool.loader_workers)
    # system
    seed: int = bounded(0, ge=0)  # numpy's generators take no negative seed
    amp: str = bounded("auto", choices=AMP_MODES)
    channels_last: bool = True
    device: str = "auto"
    log_every: int = bounded(10, ge=0)  # 0: every step (the stage key's neutral value)

    def __post_init__(self) -> None:
        # types, registries and bounds of every field: one place for options, --set and YAML
        check_fields(self)
        check_recipe(self.recipe)
        if self.scale_min > self.scale_max:
            raise ConfigError(f"scale_min {self.scale_min} is larger than scale_max {self.scale_max}")
        if self.device != "auto" and self.device:
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError):
                raise ConfigError(f"unknown device {self.device!r}; use auto, cpu, cuda or cuda:N") from None
        if self.supervision == "full" and (self.pdml or self.extension != "none"):
            raise ConfigError("full supervision trains on dense masks: use it with --no-pdml and --extension none")

    @property
    def pdml_margin(self) -> float:
        """``margin``, or the variant's default when it is None."""
        return float(PDML_VARIANTS[self.pdml_variant] if self.margin is None else self.margin)

    def model_config(self, num_classes: int) -> ModelConfig:
        return ModelConfig(backbone=self.backbone, num_classes=num_classes, output_stride=self.output_stride,
                           weights=self.weights, projection_dim=self.projection_dim, head=self.head,
                           embed=self.embed, low_level_stride=self.low_level_stride,
                           decoder_channels=self.decoder_channels)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Config from plain values; a ``recipe`` name is expanded underneath them
        (:func:`pointparse.recipes.expand_recipe`); unknown keys list the valid ones."""
        valid = {f.name for f in dataclasses.fields(cls)}
        for k in d:
            if k not in valid:
                raise unknown_choice("train parameter", k, valid)
        return cls(**expand_recipe(d))


#: One line of help per TrainConfig field, for the command line (``pointparse train --help``).
FIELD_HELP = {
    "supervision": "Train from the clicks (points) or from the dense masks (full).",
    "recipe": "A named set of values (pointparse.recipes); options given beside it win.",
    "backbone": "efficientnet_lite0 | resnet18 | resnet34 | resnet50 | resnet101 | timm:<model>.",
    "output_stride": "Backbone output stride: 8 or 16.",
    "weights": "imagenet | none | PATH of a state dict.",
    "projection_dim": "PDML on a 1x1 projection of this many channels (0 = on the features).",
    "head": "Classification module: the paper's aspp-v2 or deeplabv3+.",
    "embed": "What PDML embeds: the features the classifier reads, or the backbone's.",
    "low_level_stride": "deeplabv3+: stride of the low-level tap (4 or 8).",
    "decoder_channels": "deeplabv3+: channels of ASPP and decoder.",
    "pdml": "Point-based distance metric learning (Eq. 3-5).",
    "pdml_variant": "paper | relative | relative-detached | normalized (pointparse.pdml).",
    "alpha": "PDML weight of dis(+) (Eq. 5).",
    "beta": "PDML weight of the hinge (Eq. 5).",
    "margin": "PDML margin m (default: the variant's; 20 for the paper's).",
    "pdml_weight": "Weight of the PDML term against the point CE.",
    "pdml_group_size": "Images per PDML subgroup (0 = the whole batch).",
    "class_balance": "Point CE weighted by click frequency: none | sqrt | inverse.",
    "crf_weight": "Weight of the Gated CRF loss on unlabelled pixels (0 = off).",
    "label_weight": "Weight of the CE on the label set given by --labels (pseudo-labels, extension labels) "
                    "beside the point CE.",
    "extension": "Online label extension (Eq. 6-7): none | region | score | score+region | agree.",
    "threshold": "Extension score threshold.",
    "region": "Extension square side around each click (odd).",
    "extension_start_epoch": "First epoch that trains on extended labels.",
    "epochs": "Epochs.",
    "batch_size": "Images per step (all processes together).",
    "optimizer": "sgd (the paper's) or adamw.",
    "lr": "Backbone learning rate.",
    "head_lr_mult": "Head learning rate over the backbone's.",
    "freeze_bn": "Keep the backbone's BatchNorm statistics and affine parameters fixed.",
    "momentum": "SGD momentum.",
    "weight_decay": "Weight decay.",
    "poly_power": "Poly schedule power.",
    "crop_size": "Square training crop side.",
    "scale_min": "Smallest random scale.",
    "scale_max": "Largest random scale.",
    "flip": "Random horizontal flips.",
    "workers": "DataLoader processes (default: 0 on CPU, up to 4 per GPU).",
    "seed": "Random seed.",
    "amp": "auto (bf16 on CUDA, off on CPU) | off | bf16 | fp16.",
    "channels_last": "NHWC convolutions on CUDA.",
    "device": "auto | cpu | cuda | cuda:N.",
    "log_every": "Write iterations.jsonl every N steps.",
}
