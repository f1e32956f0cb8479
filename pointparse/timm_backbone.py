"""Any timm encoder as a backbone: ``--backbone timm:<model>`` (``backbone: timm:<model>`` in pipelines).

Needs the optional ``timm`` package (``pip install "pointparse[timm]"``). Every timm model that
supports ``features_only=True`` and timm's own ``output_stride`` (dilated ResNets, ResNeSt,
ConvNeXt, EfficientNets, MobileNets, RegNets, ... — ``timm.list_models()``) becomes a backbone with
the interface of :mod:`pointparse.backbones`:

* ``forward(x)`` — the deepest feature level, ``[B, D, ceil(H/os), ceil(W/os)]``;
* ``forward_features(x)`` — ``(deepest, {4: stride-4 map, 8: stride-8 map})`` for decoder heads;
* ``out_channels`` (D), ``output_stride``, ``low_level_channels`` (``{4: c4, 8: c8}``).

Levels come from timm's ``feature_info``: the deepest is the last level; the stride-4 / stride-8
taps are the last levels whose *native* reduction is 4 / 8 (found on the undilated model: with
``output_stride`` set, ``feature_info.reduction()`` reports the dilated strides, capped at the
output stride, e.g. ``[2, 4, 8, 8, 8]`` for a ResNet at 8). A model without such a level has no
tap for it (fine for the ASPP head; the DeepLabv3+ head then refuses it). A model whose feature
maps are ``floor(H/s)`` rather than ``ceil(H/s)`` (e.g. ConvNeXt's 4x4 patch stem) gets its input
zero-padded on the right and bottom to a multiple of the output stride and the maps cropped to
``ceil``; that is detected once per model on a small probe input.

Input: ImageNet-normalised like every backbone here; a model whose pretrained config wants
another mean/std gets a fixed affine map to it (buffers, not in the state dict).

Weights:

* ``weights: imagenet`` — timm's default pretrained weights of the model (``pretrained=True``:
  Hugging Face hub or timm's URL, cached in the Hugging Face / torch hub caches). Offline, the
  ConfigError names the file to download and where to put it.
* ``weights: PATH`` — a local state dict read with ``torch.load(weights_only=True)``; a timm
  checkpoint of the whole model (e.g. ``torch.save(timm.create_model(name, pretrained=True).state_dict(), PATH)``)
  loads as is: the backbone's state dict uses the *full* timm model's key names (hooks translate
  ``features_only``'s renamed modules such as ConvNeXt's ``stages_0``), and the keys of the parts
  ``features_only`` drops (classifier, head convs) are the spec's ``classifier_keys``, dropped on load.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError

TIMM_PREFIX = "timm:"
#: output strides of :mod:`pointparse.backbones` (8 and 16 for segmentation, 32 undilated)
_OUTPUT_STRIDES = (8, 16, 32)
_TAP_STRIDES = (4, 8)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def is_timm_name(name: Any) -> bool:
    return isinstance(name, str) and name.startswith(TIMM_PREFIX)


def timm_model_name(name: str) -> str:
    """``timm:resnet50`` -> ``resnet50`` (a ConfigError for an empty model name)."""
    model = name[len(TIMM_PREFIX):].strip() if is_timm_name(name) else name
    if not model:
        raise ConfigError("backbone timm:<model> needs a timm model name, e.g. timm:resnet50 or timm:convnext_tiny")
    return model


def _timm():
    try:
        import timm
    except ImportError as exc:
        raise ConfigError("timm:<model> backbones need the optional timm package: "
                          "pip install \"pointparse[timm]\" (or pip install timm)") from exc
    return timm


def _create(model: str, **kwargs) -> nn.Module:
    """``timm.create_model(model, pretrained=False, **kwargs)`` with pointparse's errors."""
    timm = _timm()
    try:
        return timm.create_model(model, pretrained=False, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            close = timm.list_models(f"*{model}*")[:8]
            hint = f"; similar names: {', '.join(close)}" if close else "; see timm.list_models()"
            raise ConfigError(f"timm has no model {model!r}{hint}") from None
        raise ConfigError(f"timm cannot build {model!r} with {kwargs}: {exc}") from exc
    except (TypeError, ValueError, AssertionError, NotImplementedError) as exc:
        raise ConfigError(f"timm cannot build {model!r} with {kwargs}: {type(exc).__name__}: {exc}") from exc


def _create_meta(model: str, **kwargs) -> nn.Module:
    """The model without allocating weights (meta device) when timm allows it, else on the CPU."""
    try:
        with torch.device("meta"):
            return _timm().create_model(model, pretrained=False, **kwargs)
    except Exception:  # an unknown name, or a constructor that computes with real tensors
        return _create(model, **kwargs)


def _norm_key(key: str) -> str:
    return key.replace(".", "_")


@dataclass(frozen=True)
class TimmLayout:
    """What pointparse uses of one timm model, independent of the output stride.

    ``out_indices``: the feature levels built (taps and deepest, in order); ``positions``:
    stride (4, 8) or ``"deepest"`` -> position in the built model's output list; ``channels``
    likewise; ``native_reductions`` of the built levels; ``key_map``: features-model state-dict
    key -> full-model key; ``head_keys``: full-model keys the features model does not have.
    """

    model: str
    out_indices: tuple[int, ...]
    positions: dict
    channels: dict
    native_reductions: tuple[int, ...]
    key_map: dict
    head_keys: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]


@functools.lru_cache(maxsize=None)
def timm_layout(model: str) -> TimmLayout:
    """Feature levels, taps and state-dict key names of timm model ``model`` (cached)."""
    probe = _create_meta(model, features_only=True)
    native = list(probe.feature_info.reduction())
    levels = list(range(len(native)))
    all_indices = list(probe.feature_info.out_indices)
    deepest = levels[-1]
    chosen = {"deepest": deepest}
    for s in _TAP_STRIDES:
        at = [i for i in levels if native[i] == s]
        if at:
            chosen[s] = at[-1]
    keep = sorted(set(chosen.values()))
    out_indices = tuple(all_indices[i] for i in keep)
    feats = _create_meta(model, features_only=True, out_indices=out_indices)
    full = _create_meta(model)
    full_keys = list(full.state_dict())
    by_norm = {_norm_key(k): k for k in full_keys}
    key_map = {}
    for k in feats.state_dict():
        for cand in (k, k[len("model."):] if k.startswith("model.") else None):
            if cand is not None and _norm_key(cand) in by_norm:
                key_map[k] = by_norm[_norm_key(cand)]
                break
        else:
            key_map[k] = k  # no counterpart in the full model: keep the features model's own name
    used = set(key_map.values())
    channels = list(feats.feature_info.channels())
    cfg = getattr(full, "pretrained_cfg", None) or {}
    mean = tuple(float(v) for v in cfg.get("mean", _IMAGENET_MEAN))
    std = tuple(float(v) for v in cfg.get("std", _IMAGENET_STD))
    if len(mean) != 3 or len(std) != 3:
        mean, std = _IMAGENET_MEAN, _IMAGENET_STD
    return TimmLayout(
        model=model,
        out_indices=out_indices,
        positions={name: keep.index(i) for name, i in chosen.items()},
        channels={name: int(channels[keep.index(i)]) for name, i in chosen.items()},
        native_reductions=tuple(int(native[i]) for i in keep),
        key_map=key_map,
        head_keys=tuple(k for k in full_keys if k not in used),
        mean=mean,
        std=std,
    )


class TimmBackbone(nn.Module):
    """A timm ``features_only`` model behind pointparse's backbone interface (module docstring).

    ``body`` is the timm features model built with ``output_stride`` (random weights); its
    state dict is exposed under the full timm model's key names.
    """

    def __init__(self, model: str, output_stride: int):
        super().__init__()
        if output_stride not in _OUTPUT_STRIDES:
            raise ConfigError(f"output_stride must be one of {_OUTPUT_STRIDES}, got {output_stride!r}")
        layout = timm_layout(model)
        self.model_name = model
        self.output_stride = output_stride
        self.body = _create(model, features_only=True, out_indices=layout.out_indices, output_stride=output_stride)
        reductions = [int(r) for r in self.body.feature_info.reduction()]
        self._positions = dict(layout.positions)
        self._reductions = reductions
        deepest = reductions[self._positions["deepest"]]
        if deepest != output_stride:
            raise ConfigError(f"timm model {model!r} gives its deepest features at stride {deepest}, not at the "
                              f"output stride {output_stride} (timm's output_stride does not dilate it down to "
                              f"{output_stride}; its native strides are {list(layout.native_reductions)})")
        self.out_channels = layout.channels["deepest"]
        self.low_level_channels = {s: layout.channels[s] for s in _TAP_STRIDES if s in layout.channels}
        mean, std = torch.tensor(_IMAGENET_MEAN), torch.tensor(_IMAGENET_STD)
        want_mean, want_std = torch.tensor(layout.mean), torch.tensor(layout.std)
        self._renormalise = not (torch.allclose(mean, want_mean) and torch.allclose(std, want_std))
        # wanted = (x * std + mean - want_mean) / want_std = x * scale + shift
        self.register_buffer("input_scale", (std / want_std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", ((mean - want_mean) / want_std).view(1, 3, 1, 1), persistent=False)
        self._to_full = dict(layout.key_map)
        self._to_body = {v: k for k, v in self._to_full.items()}
        self._register_state_dict_hook(_state_dict_to_full_names)
        self._register_load_state_dict_pre_hook(self._load_full_names)
        self.pad_multiple = 0 if self._ceil_exact() else max(reductions)

    # -- shapes ------------------------------------------------------------------------------

    def _ceil_exact(self) -> bool:
        """Whether the body's maps are ``ceil(H / s)`` on their own (probe: one odd-sized input)."""
        side = 2 * max(self._reductions) + 1
        was_training = self.body.training
        self.body.eval()
        try:
            with torch.no_grad():
                outs = self.body(torch.zeros(1, 3, side, side))
        except Exception:  # a model with a fixed input size: pad and crop
            return False
        finally:
            self.body.train(was_training)
        return all(tuple(o.shape[-2:]) == (math.ceil(side / r),) * 2 for o, r in zip(outs, self._reductions))

    def forward_features(self, x: Tensor) -> tuple[Tensor, dict[int, Tensor]]:
        """``(deepest [B, D, ceil(H/os), ceil(W/os)], {4: [B, c4, ceil(H/4), ...], 8: [...]})``."""
        h, w = x.shape[-2:]
        if self._renormalise:
            x = x * self.input_scale + self.input_shift
        m = self.pad_multiple
        if m:
            x = F.pad(x, (0, (-w) % m, 0, (-h) % m))
        outs = self.body(x)
        if m:
            outs = [o[..., : -(-h // r), : -(-w // r)] for o, r in zip(outs, self._reductions)]
        low = {s: outs[self._positions[s]] for s in _TAP_STRIDES if s in self._positions}
        return outs[self._positions["deepest"]], low

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[0]

    # -- state dict under the full timm model's names -------------------------------------------

    def _load_full_names(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                         error_msgs) -> None:
        for key in [k for k in state_dict if k.startswith(prefix)]:
            body_key = self._to_body.get(key[len(prefix):])
            if body_key is not None:
                state_dict[f"{prefix}body.{body_key}"] = state_dict.pop(key)


def _state_dict_to_full_names(module: TimmBackbone, state_dict, prefix, local_metadata):
    body = f"{prefix}body."
    items = list(state_dict.items())
    state_dict.clear()
    for key, value in items:
        if key.startswith(body):
            key = prefix + module._to_full.get(key[len(body):], key[len(body):])
        state_dict[key] = value
    return state_dict


def _pretrained_state_dict(model: str) -> dict[str, Tensor]:
    """The full model's state dict with timm's default pretrained weights (download or cache)."""
    timm = _timm()
    try:
        return timm.create_model(model, pretrained=True).state_dict()
    except Exception as exc:  # offline: huggingface_hub / urllib errors of many kinds
        cfg = timm.models.get_pretrained_cfg(model)
        # timm prefers the Hugging Face hub when the model has a repo there, else its URL
        if cfg is not None and getattr(cfg, "hf_hub_id", None):
            source = (f"the Hugging Face repo {cfg.hf_hub_id} (e.g. `hf download {cfg.hf_hub_id}` where you are "
                      "online, then copy the Hugging Face cache, ~/.cache/huggingface, to this machine and set "
                      "HF_HUB_OFFLINE=1)")
        elif cfg is not None and getattr(cfg, "url", None):
            source = f"{cfg.url} into the torch hub cache ({torch.hub.get_dir()}/checkpoints)"
        else:
            source = "timm's pretrained weights"
        raise ConfigError(
            f"cannot get the pretrained weights of timm:{model} ({type(exc).__name__}: {str(exc)[:200]}). "
            f"Download {source}; or, where you are online, torch.save(timm.create_model({model!r}, "
            "pretrained=True).state_dict(), 'weights.pt') and pass that file with --weights PATH "
            "(model weights=PATH)."
        ) from exc


@functools.lru_cache(maxsize=None)
def timm_spec(name: str):
    """The :class:`pointparse.backbones.BackboneSpec` of ``timm:<model>`` (cached per name)."""
    from .backbones import BackboneSpec  # backbones imports this module on a timm: lookup

    model = timm_model_name(name)
    layout = timm_layout(model)
    return BackboneSpec(
        build=functools.partial(TimmBackbone, model),
        out_channels=layout.channels["deepest"],
        imagenet=functools.partial(_pretrained_state_dict, model),
        classifier_keys=layout.head_keys,
    )


__all__ = ["TIMM_PREFIX", "TimmBackbone", "TimmLayout", "is_timm_name", "timm_layout", "timm_model_name", "timm_spec"]
