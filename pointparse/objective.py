"""The training objective of one batch: point CE (Eq. 2) on the clicks or their online extension
(Eq. 6–7), cross-image PDML (Eq. 3–5), the Gated CRF loss, CE on a label set beside the clicks;
pixel CE on dense masks for full supervision.

Kept apart from the loop (:mod:`pointparse.train`) so a test, a benchmark or another loop can
take one batch's losses without the optimiser, the checkpoints and the logging. Labels follow
the package convention (class ids ``0..C-1``, 255 = ignore).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import IGNORE_INDEX
from .crf import CRFConfig, crf_inputs, gated_crf_loss
from .extension import (click_squares, extend_at_pixels, extension_stats, extension_stats_at_pixels,
                        online_extension, square_pixels)
from .losses import label_set_cross_entropy, pixel_cross_entropy, point_cross_entropy, sample_embeddings
from .model import IMAGENET_MEAN, IMAGENET_STD, upsample_logits
from .pdml import gather_points, pairing_keys, pdml_loss, subgroups
from .step_stats import StepOutput
from .train_config import TrainConfig


def compute_losses(model: torch.nn.Module, batch: dict, cfg: TrainConfig, epoch: int,
                   generator: torch.Generator | None, amp_dtype: torch.dtype | None,
                   channels_last: bool = False, class_weights: torch.Tensor | None = None,
                   pairing_keys_: torch.Tensor | None = None) -> StepOutput:
    """Forward pass and the training losses for one batch (already on the device).

    Point supervision: CE on the clicks (or on the online-extended labels, computed under
    ``no_grad`` from this same forward pass; before ``extension_start_epoch`` they are computed
    for the log only) weighted by ``class_weights`` [C], plus ``pdml_weight`` × PDML on the
    embeddings sampled at the clicks, all-gathered across ranks, plus ``crf_weight`` × the Gated
    CRF loss, plus ``label_weight`` × the CE on a label set's labels (``batch["labels"]``, when
    the run has one: :func:`pointparse.losses.label_set_cross_entropy`). Full supervision:
    pixel-mean CE on dense masks (255 ignored).

    No host sync on a single process (an accelerator's stream never waits for the CPU): fixed
    shapes with masks throughout; the PDML pairing keys are drawn from ``generator`` on the CPU
    and copied without blocking, or given as ``pairing_keys_`` [N, N]. Under DDP the points'
    gather exchanges the ranks' counts on the host (:func:`pointparse.pdml.gather_points`).
    """
    images = batch["image"]
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    H, W = images.shape[-2:]
    with torch.autocast(images.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        out = model(images)
    if cfg.supervision == "full":
        logits = upsample_logits(out["logits"].float(), (H, W))
        dense = batch["dense"]
        # summed over the labelled pixels and divided by their count: 0 with grad when none, no sync
        ce = F.cross_entropy(logits, dense, ignore_index=IGNORE_INDEX, reduction="sum") \
            / (dense != IGNORE_INDEX).sum().clamp(min=1)
        return StepOutput(ce, {"ce": ce.detach()})

    mode = cfg.extension  # computed (and logged) from epoch 0, trained on from extension_start_epoch
    active = mode != "none" and epoch >= cfg.extension_start_epoch
    # an all-255 ground truth gives the same zero counts as none: no need to ask the device which
    gt = batch["dense"] if mode != "none" else None
    ext = None
    if mode == "score":
        # Eq. 6 alone can label any pixel of the image: the dense path
        logits = upsample_logits(out["logits"].float(), (H, W))
        with torch.no_grad():
            extended = online_extension(torch.softmax(logits.detach(), dim=1), batch["points"],
                                        threshold=cfg.threshold, region=cfg.region, mode=mode)
            ext = extension_stats(extended, batch["points"], gt)
        ce = point_cross_entropy(logits, extended if active else batch["points"], class_weights=class_weights)
    else:
        # the other modes label pixels inside the click squares only, so the logits are sampled
        # there (bilinear, exactly the upsampled values) instead of upsampling whole images
        region = cfg.region if mode != "none" else 1
        if "points_xy" in batch:  # fixed slots from the click list: no host sync
            pix = click_squares(batch["points"], region, batch["points_xy"], batch["batch_index"])
        else:  # a hand-made batch with a click map only
            pix = square_pixels(batch["points"], region)
        xy = torch.stack([pix["x"], pix["y"]], 1).float()
        pix_logits = sample_embeddings(out["logits"].float(), xy, pix["b"], (H, W))
        with torch.no_grad():
            probs = torch.softmax(pix_logits.detach(), dim=1) if mode in ("score+region", "agree") else None
            extended = extend_at_pixels(pix, probs, batch["points"], cfg.threshold, mode)
            if mode != "none":
                ext = extension_stats_at_pixels(pix, extended, images.shape[0], gt)
        target = extended if active else pix["click"]
        ce = pixel_cross_entropy(pix_logits, target, pix["b"], images.shape[0], class_weights) \
            + 0.0 * out["logits"].sum()
    res = StepOutput(ce, {"ce": ce.detach()}, extension=ext)
    if "labels" in batch:  # a label set beside the clicks: its own term, the clicks' CE unchanged
        lce = label_set_cross_entropy(out["logits"], batch["labels"])
        res.loss = res.loss + cfg.label_weight * lce
        res.terms["label_ce"] = lce.detach()
    if cfg.crf_weight > 0:
        probs, rgb, gate = crf_inputs(out["logits"], batch["image"], batch["valid"], IMAGENET_MEAN, IMAGENET_STD)
        crf = gated_crf_loss(probs, rgb, gate, CRFConfig())
        res.loss = res.loss + cfg.crf_weight * crf
        res.terms["crf"] = crf.detach()
    if cfg.pdml:
        emb = sample_embeddings(out["embeddings"].float(), batch["points_xy"], batch["batch_index"], (H, W))
        emb, lab, ids, _ = gather_points(emb, batch["points_cls"], batch["image_ids"])
        groups = subgroups(ids, cfg.pdml_group_size) if cfg.pdml_group_size else None
        keys = pairing_keys_ if pairing_keys_ is not None else pairing_keys(lab.shape[0], generator, emb.device)
        lp, st = pdml_loss(emb, lab, ids, alpha=cfg.alpha, beta=cfg.beta, margin=cfg.pdml_margin,
                           groups=groups, variant=cfg.pdml_variant, keys=keys)
        res.loss = res.loss + cfg.pdml_weight * lp
        res.terms["pdml"] = lp.detach()
        res.pdml_stats = st
    return res
