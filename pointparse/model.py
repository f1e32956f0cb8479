"""The segmentation net ``g(f(I))`` of the paper (Figure 1): feature extractor + classification module.

* ``f`` — an ImageNet backbone with atrous convolutions (``pointparse.backbones``), output
  stride 8 or 16.
* ``g`` — a head from the registry :data:`pointparse.heads.HEADS` (``ModelConfig.head``):
  ``aspp-v2`` (the paper's) or ``deeplabv3+``; their shapes are in :mod:`pointparse.heads`.

* PDML embeddings (``ModelConfig.embed``). The paper's Figure 1 sends the *same* features to
  PDML and to the classification module, so the metric shapes what the classifier reads:
  ``classifier`` (default) = the input of the last classifying layer — the backbone features
  for ``aspp-v2`` (whose branches classify directly), the fused decoder features
  (``decoder_channels``-d, stride ``low_level_stride``) for ``deeplabv3+``; ``backbone`` = the
  deepest backbone features for either head (for ``deeplabv3+`` the metric then acts one ASPP
  + decoder away from the classifier). Optional projection head (``projection_dim > 0``): a
  1x1 conv on those features whose output replaces them as embeddings; the classifier still
  reads the features.

Shapes: for an input ``[B, 3, H, W]`` (ImageNet-normalised, see ``IMAGENET_MEAN/STD``) logits
and embeddings have ``h = ceil(H / s)``, ``w = ceil(W / s)`` exactly, ``s`` the stride given
above (``PointParseNet.logit_stride`` / ``embed_stride``). ``upsample_logits`` brings logits to
label size. Labels use ignore index 255.

Training follows the paper: ``param_groups(lr, head_lr_mult=10)`` gives ``f`` the base rate and
the head (with the projection) ``head_lr_mult`` times it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import (
    BACKBONES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    backbone_spec,
    build_backbone,
    strip_classifier,
)
from .errors import ConfigError, DataError, unknown_choice
from .heads import HEADS, ASPPClassifier, DeepLabV3PlusHead, aspp_dilations

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OUTPUT_STRIDES",
    "CLASSIFIER_LR_MULT",
    "ModelConfig",
    "PointParseNet",
    "build_model",
    "load_weights",
    "upsample_logits",
]

OUTPUT_STRIDES = (8, 16)
#: The classification module learns ten times faster than the pretrained extractor (paper).
CLASSIFIER_LR_MULT = 10.0
#: What PDML embeds (see the module docstring).
EMBED_CHOICES = ("classifier", "backbone")
LOW_LEVEL_STRIDES = (4, 8)


@dataclass(kw_only=True)
class ModelConfig:
    """Everything needed to rebuild a ``PointParseNet``.

    ``weights``: ``"imagenet"`` (backbone from ImageNet, head random), ``"none"`` (all
    random) or the path of a state dict (see ``load_weights``). ``head``: a :data:`HEADS` name.
    ``aspp_rates`` are given at output stride 8 and scaled to the actual stride
    (``aspp_dilations``); ``None`` = the head's own (v2: 6, 12, 18, 24; v3+: 12, 24, 36).
    ``embed``: which features PDML compares (module docstring). ``projection_dim`` 0 means PDML
    works on those features themselves. ``decoder_channels`` / ``low_level_stride`` apply to
    ``deeplabv3+`` only.
    """

    backbone: str = "efficientnet_lite0"
    num_classes: int
    output_stride: int = 16
    weights: str = "imagenet"
    projection_dim: int = 0
    aspp_rates: tuple[int, ...] | None = None
    head: str = "aspp-v2"
    embed: str = "classifier"
    decoder_channels: int = 128
    low_level_stride: int = 4

    def __post_init__(self) -> None:
        backbone_spec(self.backbone)  # unknown name -> ConfigError listing the valid ones
        if not _is_int(self.num_classes) or self.num_classes < 1:
            raise ConfigError(f"num_classes must be a positive integer, got {self.num_classes!r}")
        if not _is_int(self.output_stride) or self.output_stride not in OUTPUT_STRIDES:
            raise ConfigError(f"output_stride must be one of {OUTPUT_STRIDES}, got {self.output_stride!r}")
        if isinstance(self.weights, Path):
            self.weights = str(self.weights)
        if not isinstance(self.weights, str) or not self.weights:
            raise ConfigError(f"weights must be 'imagenet', 'none' or a file path, got {self.weights!r}")
        if not _is_int(self.projection_dim) or self.projection_dim < 0:
            raise ConfigError(f"projection_dim must be an integer >= 0 (0 = off), got {self.projection_dim!r}")
        if self.head not in HEADS:
            raise unknown_choice("head", self.head, HEADS)
        if self.embed not in EMBED_CHOICES:
            raise unknown_choice("embed", self.embed, EMBED_CHOICES)
        if not _is_int(self.decoder_channels) or self.decoder_channels < 1:
            raise ConfigError(f"decoder_channels must be a positive integer, got {self.decoder_channels!r}")
        if not _is_int(self.low_level_stride) or self.low_level_stride not in LOW_LEVEL_STRIDES:
            raise ConfigError(f"low_level_stride must be one of {LOW_LEVEL_STRIDES}, got {self.low_level_stride!r}")
        rates = HEADS[self.head].rates if self.aspp_rates is None else self.aspp_rates
        if isinstance(rates, (str, bytes)) or not isinstance(rates, Sequence) or not rates \
                or not all(_is_int(r) and r >= 1 for r in rates):
            raise ConfigError(f"aspp_rates must be a non-empty list of positive integers, got {rates!r}")
        self.aspp_rates = tuple(int(r) for r in rates)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        """Config from a plain dict (YAML/JSON); unknown keys raise a ConfigError listing valid keys."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"model config must be a mapping, got {type(d).__name__}")
        valid = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in valid:
                raise unknown_choice("model config key", key, valid)
        if "num_classes" not in d:
            raise ConfigError("model config needs num_classes")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-ready dict; ``ModelConfig.from_dict(c.to_dict()) == c``."""
        d = dataclasses.asdict(self)
        d["aspp_rates"] = list(self.aspp_rates)
        return d


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class PointParseNet(nn.Module):
    """``g(f(I))`` with the embeddings that PDML compares.

    ``forward(x)`` with ``x`` ``[B, 3, H, W]`` float (ImageNet-normalised) returns
    ``{"logits": [B, C, ceil(H / logit_stride), ceil(W / logit_stride)], "embeddings": [B,
    feature_dim, ceil(H / embed_stride), ceil(W / embed_stride)]}``. ``embeddings`` are the
    features ``config.embed`` names (module docstring), or their 1x1 projection when
    ``config.projection_dim > 0``.

    Attributes: ``config``, ``num_classes``, ``output_stride``, ``logit_stride``,
    ``embed_stride``, ``backbone_dim`` (channels of ``f(I)``), ``feature_dim`` (channels of
    ``embeddings``). Submodules: ``backbone`` (f), ``classifier`` (g: the whole head),
    ``projection`` (or None). Built with random weights; ``build_model`` loads the weights the
    config asks for.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.num_classes = config.num_classes
        self.output_stride = config.output_stride
        self.backbone = build_backbone(config.backbone, config.output_stride)
        self.backbone_dim = self.backbone.out_channels
        dilations = aspp_dilations(config.aspp_rates, config.output_stride)
        self.decoder = HEADS[config.head].decoder
        if self.decoder:
            self.classifier = DeepLabV3PlusHead(
                self.backbone_dim, self.backbone.low_level_channels[config.low_level_stride], config.num_classes,
                dilations, channels=config.decoder_channels)
            self.logit_stride = config.low_level_stride
            from_classifier = config.embed == "classifier"
            embed_dim = config.decoder_channels if from_classifier else self.backbone_dim
            self.embed_stride = config.low_level_stride if from_classifier else config.output_stride
        else:
            self.classifier = ASPPClassifier(self.backbone_dim, config.num_classes, dilations)
            self.logit_stride = self.embed_stride = config.output_stride
            embed_dim = self.backbone_dim
        self.projection = nn.Conv2d(embed_dim, config.projection_dim, 1) if config.projection_dim > 0 else None
        self.feature_dim = config.projection_dim or embed_dim

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an image batch [B, 3, H, W], got shape {tuple(x.shape)}")
        if self.decoder:
            deep, low = self.backbone.forward_features(x)
            logits, decoded = self.classifier(deep, low[self.config.low_level_stride])
            features = decoded if self.config.embed == "classifier" else deep
        else:
            features = self.backbone(x)
            logits = self.classifier(features)
        embeddings = self.projection(features) if self.projection is not None else features
        return {"logits": logits, "embeddings": embeddings}

    def param_groups(self, lr: float, weight_decay: float = 0.0,
                     head_lr_mult: float = CLASSIFIER_LR_MULT) -> list[dict[str, Any]]:
        """Optimizer parameter groups: ``features`` (f) at ``lr``, ``classifier`` (the head + projection)
        at ``head_lr_mult`` x ``lr`` (the paper: 10).

        Each group carries ``name`` and ``lr_mult`` so a scheduler can rescale groups by name;
        frozen parameters (``requires_grad=False``) are left out.
        """
        head = list(self.classifier.parameters())
        if self.projection is not None:
            head += list(self.projection.parameters())
        return [
            {"name": "features", "params": [p for p in self.backbone.parameters() if p.requires_grad],
             "lr": lr, "lr_mult": 1.0, "weight_decay": weight_decay},
            {"name": "classifier", "params": [p for p in head if p.requires_grad],
             "lr": lr * head_lr_mult, "lr_mult": float(head_lr_mult), "weight_decay": weight_decay},
        ]


def upsample_logits(logits: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear (``align_corners=False``) resize of ``[B, C, h, w]`` logits to ``size = (H, W)``."""
    return F.interpolate(logits, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)


def build_model(cfg: ModelConfig | Mapping[str, Any]) -> PointParseNet:
    """``PointParseNet`` from a ``ModelConfig`` or plain dict, with the weights the config names."""
    if isinstance(cfg, ModelConfig):
        config = cfg
    elif isinstance(cfg, Mapping):
        config = ModelConfig.from_dict(cfg)
    else:
        raise ConfigError(f"model config must be a ModelConfig or a dict, got {type(cfg).__name__}")
    model = PointParseNet(config)
    if config.weights == "imagenet":
        spec = BACKBONES[config.backbone]
        model.backbone.load_state_dict(strip_classifier(config.backbone, spec.imagenet()), strict=True)
    elif config.weights != "none":
        load_weights(model, config.weights)
    return model


def _first(keys, n: int = 5) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_weights(model: PointParseNet, path: str | Path) -> str:
    """Load a weights file into ``model``; returns ``"model"`` or ``"backbone"`` (what was loaded).

    Accepted (read with ``torch.load(..., weights_only=True)``, so no code is ever unpickled):

    * a full ``PointParseNet`` state dict (keys ``backbone.*``, ``classifier.*``[, ``projection.*``]);
    * a checkpoint dict whose ``"model"`` entry is such a state dict (other entries ignored);
    * a backbone state dict in the backbone's own key format, e.g. torchvision's ResNet or the
      EfficientNet-Lite0 package file; its ImageNet classifier keys are ignored.

    A ``module.`` prefix (DistributedDataParallel) is removed. Any missing, unexpected or
    mis-shaped key raises a ``DataError`` naming the file and the first offending keys.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "weights file not found (weights must be 'imagenet', 'none' or a state dict file)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt archive, truncated file or a pickle refused by weights_only
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if refused:
            problem = (f"cannot read weights: the file pickles {refused.group(1)}, not just tensors and plain "
                       "containers, and pointparse never unpickles code (torch.load weights_only=True)")
        else:
            problem = "cannot read weights: not a PyTorch state dict file (torch.load failed: " \
                      f"{type(exc).__name__})"
        raise DataError(path, problem) from exc
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise DataError(path, "expected a state dict (name -> tensor) or a checkpoint dict with a 'model' state dict")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}

    if any(k.startswith("backbone.") for k in state):
        target, what = model, "model"
    else:
        target, what = model.backbone, "backbone"
        state = strip_classifier(model.config.backbone, state)
    expected = target.state_dict()
    problems = []
    missing = expected.keys() - state.keys()
    unexpected = state.keys() - expected.keys()
    if missing:
        problems.append(f"missing keys: {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_first(unexpected)}")
    mis_shaped = sorted(f"{k} (file {list(state[k].shape)} vs model {list(v.shape)})"
                        for k, v in expected.items() if k in state and state[k].shape != v.shape)
    if mis_shaped:
        more = f" (+{len(mis_shaped) - 3} more)" if len(mis_shaped) > 3 else ""
        problems.append("shape mismatch: " + "; ".join(mis_shaped[:3]) + more)
    if problems:
        cfg = model.config
        desc = f"{cfg.backbone} {what} (num_classes={cfg.num_classes}, projection_dim={cfg.projection_dim})"
        raise DataError(path, f"weights do not fit the {desc}: " + "; ".join(problems))
    target.load_state_dict(state, strict=True)
    return what
