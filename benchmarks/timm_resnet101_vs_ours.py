"""Does timm's ResNet-101 with ``output_stride=8`` compute what pointparse's DeepLab ResNet-101 does?

Loads one random state dict (timm's ResNet-101, torchvision key names) into both
``timm.create_model("resnet101", features_only=True, output_stride=8)`` (through
``pointparse.timm_backbone``) and ``pointparse.backbones.build_backbone("resnet101", 8)``, then
compares the layer1 / layer2 / layer4 maps on one image. Also lists each 3x3 conv's stride and
dilation in both. CPU, no network, a few seconds:

    .venv/bin/python benchmarks/timm_resnet101_vs_ours.py [--output-stride 8|16] [--size 321]
"""

from __future__ import annotations

import argparse

import torch
import timm
from torch import nn

from pointparse.backbones import build_backbone, strip_classifier
from pointparse.timm_backbone import TimmBackbone


def conv_layout(module: nn.Module, prefix: str) -> dict[str, tuple]:
    return {n[len(prefix):]: (m.stride, m.dilation, m.padding) for n, m in module.named_modules()
            if isinstance(m, nn.Conv2d) and n.startswith(prefix)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--output-stride", type=int, default=8)
    ap.add_argument("--size", type=int, default=321)
    args = ap.parse_args()
    torch.manual_seed(0)
    full = timm.create_model("resnet101", pretrained=False)
    with torch.no_grad():  # BN statistics that are not the identity, so the comparison means something
        for m in full.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.2, 0.6)
    state = full.state_dict()

    ours = build_backbone("resnet101", args.output_stride).eval()
    ours.load_state_dict(strip_classifier("resnet101", state), strict=True)
    theirs = TimmBackbone("resnet101", args.output_stride).eval()
    theirs.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")}, strict=True)
    same_keys = set(ours.state_dict()) == set(theirs.state_dict())

    a = conv_layout(ours, "")
    b = conv_layout(theirs, "body.")
    layout_diff = {k: (a[k], b.get(k)) for k in a if a[k] != b.get(k)}

    x = torch.randn(1, 3, args.size, args.size)
    with torch.no_grad():
        da, la = ours.forward_features(x)
        db, lb = theirs.forward_features(x)
    print(f"timm {timm.__version__}, torch {torch.__version__}, output stride {args.output_stride}, "
          f"input {args.size}x{args.size}")
    print(f"state-dict keys identical: {same_keys}; conv stride/dilation/padding differences: "
          f"{len(layout_diff)}")
    for k, (ours_c, timm_c) in list(layout_diff.items())[:10]:
        print(f"  {k}: ours {ours_c} timm {timm_c}")
    for name, p, q in (("layer1 (stride 4)", la[4], lb[4]), ("layer2 (stride 8)", la[8], lb[8]),
                       ("layer4 (deepest)", da, db)):
        diff = (p - q).abs().max().item()
        print(f"{name}: shape {tuple(p.shape)} vs {tuple(q.shape)}, max |diff| {diff:.3g} "
              f"(max |value| {p.abs().max().item():.3g}), bit-identical {torch.equal(p, q)}")


if __name__ == "__main__":
    main()
