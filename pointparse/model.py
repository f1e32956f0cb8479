"""The segmentation net ``g(f(I))`` of the paper (Figure 1): feature extractor + classification module.

* ``f`` — an ImageNet backbone with atrous convolutions (``pointparse.backbones``), output
  stride 8 or 16. Its features ``[B, D, h, w]`` are the *embeddings* PDML compares across images.
* ``g`` — DeepLab v2's ASPP classifier (Chen et al., TPAMI 2018): parallel 3x3 atrous convs,
  each producing class logits, summed. The rates (6, 12, 18, 24) are DeepLab v2's at output
  stride 8; at output stride ``os`` they are scaled by ``8 / os`` ((3, 6, 9, 12) at 16) so every
  branch sees the same field of view in input pixels.
* optional projection head (``projection_dim > 0``): a 1x1 conv on the features whose output
  replaces them as embeddings for PDML; the classifier still reads the features, as in Figure 1.

Shapes: for an input ``[B, 3, H, W]`` (ImageNet-normalised, see ``IMAGENET_MEAN/STD``) the
outputs have ``h = ceil(H / os)``, ``w = ceil(W / os)`` exactly, for every backbone. Logits are
at that resolution; ``upsample_logits`` brings them to label size. Labels use ignore index 255.

Training follows the paper: ``param_groups(lr)`` gives ``f`` the base rate and ``g`` (with the
projection head) ten times it.
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

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OUTPUT_STRIDES",
    "CLASSIFIER_LR_MULT",
    "ModelConfig",
    "ASPPClassifier",
    "PointParseNet",
    "aspp_dilations",
    "build_model",
    "load_weights",
    "resolve_device",
    "upsample_logits",
]

OUTPUT_STRIDES = (8, 16)
#: The classification module learns ten times faster than the pretrained extractor (paper).
CLASSIFIER_LR_MULT = 10.0
#: DeepLab v2 ASPP rates, expressed at output stride 8.
DEEPLAB_V2_RATES = (6, 12, 18, 24)


@dataclass(kw_only=True)
class ModelConfig:
    """Everything needed to rebuild a ``PointParseNet``.

    ``weights``: ``"imagenet"`` (backbone from ImageNet, classifier random), ``"none"`` (all
    random) or the path of a state dict (see ``load_weights``). ``aspp_rates`` are given at
    output stride 8 and scaled to the actual stride (``aspp_dilations``). ``projection_dim`` 0
    means PDML works on the backbone features themselves.
    """

    backbone: str = "efficientnet_lite0"
    num_classes: int
    output_stride: int = 16
    weights: str = "imagenet"
    projection_dim: int = 0
    aspp_rates: tuple[int, ...] = DEEPLAB_V2_RATES

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
        rates = self.aspp_rates
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


def aspp_dilations(rates: Sequence[int], output_stride: int) -> tuple[int, ...]:
    """ASPP rates given at output stride 8 -> dilations at ``output_stride`` (same field of view)."""
    return tuple(max(1, round(r * 8 / output_stride)) for r in rates)


class ASPPClassifier(nn.Module):
    """DeepLab v2 ASPP classification module ``g``: ``[B, D, h, w] -> [B, C, h, w]`` logits.

    One 3x3 conv (with bias) per dilation, each mapping features straight to class logits; the
    branch outputs are summed. Weights ~ N(0, 0.01) and zero bias, DeepLab's initialisation, so
    the untrained sum starts near zero logits.
    """

    def __init__(self, in_channels: int, num_classes: int, dilations: Sequence[int]):
        super().__init__()
        self.dilations = tuple(dilations)
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=d, dilation=d, bias=True) for d in self.dilations
        )
        for conv in self.branches:
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class PointParseNet(nn.Module):
    """``g(f(I))`` with the embeddings that PDML compares.

    ``forward(x)`` with ``x`` ``[B, 3, H, W]`` float (ImageNet-normalised) returns
    ``{"logits": [B, C, h, w], "embeddings": [B, feature_dim, h, w]}``, ``h = ceil(H / os)``,
    ``w = ceil(W / os)``. ``embeddings`` are the backbone features ``f(I)`` fed to ``g``, or
    their 1x1 projection when ``config.projection_dim > 0``.

    Attributes: ``config``, ``num_classes``, ``output_stride``, ``backbone_dim`` (channels of
    ``f(I)``), ``feature_dim`` (channels of ``embeddings``). Submodules: ``backbone`` (f),
    ``classifier`` (g), ``projection`` (or None). Built with random weights; ``build_model``
    loads the weights the config asks for.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.num_classes = config.num_classes
        self.output_stride = config.output_stride
        self.backbone = build_backbone(config.backbone, config.output_stride)
        self.backbone_dim = self.backbone.out_channels
        self.classifier = ASPPClassifier(
            self.backbone_dim, config.num_classes, aspp_dilations(config.aspp_rates, config.output_stride)
        )
        if config.projection_dim > 0:
            self.projection = nn.Conv2d(self.backbone_dim, config.projection_dim, 1)
        else:
            self.projection = None
        self.feature_dim = config.projection_dim or self.backbone_dim

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an image batch [B, 3, H, W], got shape {tuple(x.shape)}")
        features = self.backbone(x)
        logits = self.classifier(features)
        embeddings = self.projection(features) if self.projection is not None else features
        return {"logits": logits, "embeddings": embeddings}

    def param_groups(self, lr: float, weight_decay: float = 0.0) -> list[dict[str, Any]]:
        """Optimizer parameter groups: ``features`` (f) at ``lr``, ``classifier`` (g + projection) at 10x.

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
             "lr": lr * CLASSIFIER_LR_MULT, "lr_mult": CLASSIFIER_LR_MULT, "weight_decay": weight_decay},
        ]


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` (CUDA when torch sees one, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; a bad name or
    CUDA without a device is a ConfigError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA device")
    return dev


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
