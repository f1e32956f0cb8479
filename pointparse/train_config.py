"""The configuration of a training run: :class:`TrainConfig` (every knob, the paper's defaults),
its validation, named recipes applied through :meth:`TrainConfig.from_dict`, and one line of help
per field for the command line (:data:`FIELD_HELP`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from .errors import ConfigError, unknown_choice
from .extension import EXTENSION_MODES
from .losses import CLASS_BALANCE
from .model import CLASSIFIER_LR_MULT, ModelConfig
from .pdml import PDML_VARIANTS
from .recipes import check_recipe, expand_recipe

SUPERVISIONS = ("points", "full")
AMP_MODES = ("auto", "off", "bf16", "fp16")
OPTIMIZERS = ("sgd", "adamw")


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

    supervision: str = "points"
    recipe: str = ""  # the pointparse.recipes name these values came from ("" = none), for tables
    # model
    backbone: str = "efficientnet_lite0"
    output_stride: int = 16
    weights: str = "imagenet"
    projection_dim: int = 0
    head: str = "aspp-v2"
    embed: str = "classifier"
    low_level_stride: int = 4
    decoder_channels: int = 128
    # PDML (Eq. 3-5)
    pdml: bool = True
    pdml_variant: str = "paper"
    alpha: float = 0.8
    beta: float = 1.0
    margin: float | None = None
    pdml_weight: float = 1.0
    pdml_group_size: int = 0
    # beyond the paper: class-balanced point CE, Gated CRF loss
    class_balance: str = "none"
    crf_weight: float = 0.0
    # a label set beside the clicks (the train stage's labels reference): its CE's weight
    label_weight: float = 1.0
    # online extension (Eq. 6-7)
    extension: str = "none"
    threshold: float = 0.7
    region: int = 5
    extension_start_epoch: int = 0
    # optimisation
    epochs: int = 20
    batch_size: int = 16
    optimizer: str = "sgd"
    lr: float = 2.5e-4
    head_lr_mult: float = CLASSIFIER_LR_MULT
    freeze_bn: bool = False
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.8
    # data
    crop_size: int = 321
    scale_min: float = 0.5
    scale_max: float = 1.5
    flip: bool = True
    workers: int | None = None  # DataLoader processes; None = auto (pointparse.pool.loader_workers)
    # system
    seed: int = 0
    amp: str = "auto"
    channels_last: bool = True
    device: str = "auto"
    log_every: int = 10

    def __post_init__(self) -> None:
        check_recipe(self.recipe)
        for what, value, choices in (("supervision", self.supervision, SUPERVISIONS),
                                     ("extension", self.extension, EXTENSION_MODES),
                                     ("amp mode", self.amp, AMP_MODES),
                                     ("pdml_variant", self.pdml_variant, PDML_VARIANTS),
                                     ("class_balance", self.class_balance, CLASS_BALANCE),
                                     ("optimizer", self.optimizer, OPTIMIZERS)):
            if value not in choices:
                raise unknown_choice(what, value, choices)
        for name, low, strict in (("lr", 0.0, True), ("head_lr_mult", 0.0, True), ("momentum", 0.0, False),
                                  ("weight_decay", 0.0, False), ("poly_power", 0.0, False), ("alpha", 0.0, False),
                                  ("beta", 0.0, False), ("pdml_weight", 0.0, False), ("crf_weight", 0.0, False),
                                  ("label_weight", 0.0, False),
                                  ("scale_min", 0.0, True), ("scale_max", 0.0, True)):
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) \
                and (v > low if strict else v >= low)
            if not ok:
                raise ConfigError(f"{name} must be a finite number {'>' if strict else '>='} {low:g}, got {v!r}")
        if self.margin is not None and not (isinstance(self.margin, (int, float)) and math.isfinite(self.margin)
                                            and self.margin >= 0):
            raise ConfigError(f"margin must be a finite number >= 0 (or None: the variant's default), got {self.margin!r}")
        if self.momentum >= 1.0:
            raise ConfigError(f"momentum must be < 1, got {self.momentum!r}")
        if self.scale_min > self.scale_max:
            raise ConfigError(f"scale_min {self.scale_min} is larger than scale_max {self.scale_max}")
        if self.device != "auto" and self.device:
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError):
                raise ConfigError(f"unknown device {self.device!r}; use auto, cpu, cuda or cuda:N") from None
        if self.supervision == "full" and (self.pdml or self.extension != "none"):
            raise ConfigError("full supervision trains on dense masks: use it with --no-pdml and --extension none")
        for name in ("epochs", "batch_size", "crop_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.threshold < 1.0:
            raise ConfigError(f"threshold must be in [0, 1), got {self.threshold}")
        if self.region < 1 or self.region % 2 == 0:
            raise ConfigError(f"region must be an odd size >= 1, got {self.region}")
        if self.workers is not None and int(self.workers) < 0:
            raise ConfigError(f"workers must be >= 0 or None (auto), got {self.workers!r}")

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
