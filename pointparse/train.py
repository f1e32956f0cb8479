"""The training loop: point CE (Eq. 2) + cross-image PDML (Eq. 3–5) + online extension (Eq. 6–7).

One readable ``train_one_epoch`` in the style of torchvision's segmentation reference, with the
paper's optimiser (SGD, momentum 0.9, wd 5e-4, lr 2.5e-4 for ``f`` and 10× for ``g``, poly decay
``(1 − epoch/max_epoch)^0.8``), DDP (NCCL on GPU, gloo on CPU) when launched by torchrun, AMP on
CUDA, channels_last on CUDA, and atomic per-epoch checkpoints that a killed run resumes from.

Files written into the run folder:

* ``checkpoint.pt`` — resumable state (model, optimiser, scaler, next epoch), replaced each epoch;
* ``model.pt`` — the final model with everything ``evaluate``/``predict`` need (config, class
  names, palette, normalisation); both load with ``torch.load(..., weights_only=True)``;
* ``iterations.jsonl`` / ``epochs.jsonl`` — losses, dis(+)/dis(−), triples, extension stats;
* ``distances.npz`` — raw positive/negative pair distances per epoch (the paper's Figure 4).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from . import IGNORE_INDEX
from .datasets import DatasetInfo, SegmentationDataset
from .errors import ConfigError, DataError, unknown_choice
from .crf import CRFConfig, crf_inputs, gated_crf_loss
from .curves import TensorBoardCurves
from .extension import (EXTENSION_MODES, extend_at_pixels, extension_stats, extension_stats_at_pixels,
                        finalize_extension_stats, merge_extension_stats, online_extension, square_pixels)
from .io import atomic_file
from .losses import (CLASS_BALANCE, PDML_VARIANTS, click_class_weights, gather_points, pdml_loss,
                     pixel_cross_entropy, point_cross_entropy, sample_embeddings, subgroups)
from .model import (CLASSIFIER_LR_MULT, IMAGENET_MEAN, IMAGENET_STD, ModelConfig, PointParseNet, build_model,
                    upsample_logits)
from .pool import loader_workers, start_loader
from .recipes import check_recipe, expand_recipe
from .transforms import AugmentConfig, TrainSamples, collate

CHECKPOINT_FORMAT = "pointparse-checkpoint-v1"
#: TensorBoard event files of a run (when the tensorboard extra is installed): <run>/tensorboard/
TENSORBOARD_DIR = "tensorboard"
SUPERVISIONS = ("points", "full")
AMP_MODES = ("auto", "off", "bf16", "fp16")
OPTIMIZERS = ("sgd", "adamw")


class TrainingDiverged(ConfigError):
    """The loss became NaN or infinite: nothing is marked finished (the checkpoint of the last good
    epoch stays in the partial folder)."""


@dataclass
class TrainConfig:
    """Every knob of a training run; the defaults are the paper's (Implementation Details).

    ``head``/``embed``/``low_level_stride``/``decoder_channels``: see :mod:`pointparse.model`.
    ``pdml_weight`` multiplies the PDML term against the CE (the paper adds them with weight 1);
    ``pdml_variant`` picks the loss of :data:`pointparse.losses.PDML_VARIANTS` and ``margin``
    ``None`` its default margin (20 for the paper's). ``extension_start_epoch``: online extension
    needs a classifier that already means something, so it can start later than epoch 0; its
    accuracy and coverage against the dense masks are logged from epoch 0 either way.
    ``class_balance``: point CE weighted by inverse click frequency (``inverse``), its square
    root (``sqrt``) or not (``none``). ``crf_weight`` > 0 adds the Gated CRF loss
    (:mod:`pointparse.crf`). ``optimizer``: the paper's SGD or AdamW; ``head_lr_mult``: the
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
        if self.supervision not in SUPERVISIONS:
            raise unknown_choice("supervision", self.supervision, SUPERVISIONS)
        if self.extension not in EXTENSION_MODES:
            raise unknown_choice("extension", self.extension, EXTENSION_MODES)
        if self.amp not in AMP_MODES:
            raise unknown_choice("amp mode", self.amp, AMP_MODES)
        if self.pdml_variant not in PDML_VARIANTS:
            raise unknown_choice("pdml_variant", self.pdml_variant, PDML_VARIANTS)
        if self.class_balance not in CLASS_BALANCE:
            raise unknown_choice("class_balance", self.class_balance, CLASS_BALANCE)
        if self.optimizer not in OPTIMIZERS:
            raise unknown_choice("optimizer", self.optimizer, OPTIMIZERS)
        for name, low, strict in (("lr", 0.0, True), ("head_lr_mult", 0.0, True), ("momentum", 0.0, False),
                                  ("weight_decay", 0.0, False), ("poly_power", 0.0, False), ("alpha", 0.0, False),
                                  ("beta", 0.0, False), ("pdml_weight", 0.0, False), ("crf_weight", 0.0, False),
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
    "pdml_variant": "paper | relative | relative-detached | normalized (pointparse.losses).",
    "alpha": "PDML weight of dis(+) (Eq. 5).",
    "beta": "PDML weight of the hinge (Eq. 5).",
    "margin": "PDML margin m (default: the variant's; 20 for the paper's).",
    "pdml_weight": "Weight of the PDML term against the point CE.",
    "pdml_group_size": "Images per PDML subgroup (0 = the whole batch).",
    "class_balance": "Point CE weighted by click frequency: none | sqrt | inverse.",
    "crf_weight": "Weight of the Gated CRF loss on unlabelled pixels (0 = off).",
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


# ------------------------------------------------------------------------------------------------
# distributed helpers
# ------------------------------------------------------------------------------------------------


@dataclass
class Runtime:
    """Where this process runs: device, rank and world size (1 without torchrun)."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_runtime(device: str = "auto") -> Runtime:
    """Initialise the process group when launched by torchrun (NCCL on CUDA, gloo on CPU)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' asked for, but torch sees no CUDA device")
        dev = torch.device("cuda", local if world > 1 else (torch.device(device).index or 0))
        torch.cuda.set_device(dev)
    else:
        dev = torch.device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Runtime(dev, rank, world, local)


def _all_reduce_sum(values: list[float], rt: Runtime) -> list[float]:
    if not rt.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=rt.device)
    dist.all_reduce(t)
    return t.tolist()


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for an AMP mode, or None for full precision."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def poly_lr(base: float, epoch: int, max_epoch: int, power: float) -> float:
    """The paper's schedule ``base · (1 − epoch/max_epoch)^power``."""
    return base * (1.0 - epoch / max_epoch) ** power


# ------------------------------------------------------------------------------------------------
# one step, one epoch
# ------------------------------------------------------------------------------------------------


@dataclass
class StepOutput:
    loss: torch.Tensor
    ce: float
    pdml: float
    crf: float = 0.0
    triples: int = 0
    mean_pos: float = float("nan")
    mean_neg: float = float("nan")
    active: float = float("nan")
    pos_distances: torch.Tensor | None = None
    neg_distances: torch.Tensor | None = None
    extension: dict | None = None


def compute_losses(model: torch.nn.Module, batch: dict, cfg: TrainConfig, epoch: int,
                   generator: torch.Generator | None, amp_dtype: torch.dtype | None,
                   channels_last: bool = False, class_weights: torch.Tensor | None = None) -> StepOutput:
    """Forward pass and the training losses for one batch (already on the device).

    Point supervision: CE on the clicks (or on the online-extended labels, computed under
    ``no_grad`` from this same forward pass; before ``extension_start_epoch`` they are computed
    for the log only) weighted by ``class_weights`` [C], plus ``pdml_weight`` × PDML on the
    embeddings sampled at the clicks, all-gathered across ranks, plus ``crf_weight`` × the Gated
    CRF loss. Full supervision: pixel-mean CE on dense masks.
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
        ce = F.cross_entropy(logits, dense, ignore_index=IGNORE_INDEX) if (dense != IGNORE_INDEX).any() \
            else logits.sum() * 0.0
        return StepOutput(ce, float(ce.detach()), 0.0)

    mode = cfg.extension  # computed (and logged) from epoch 0, trained on from extension_start_epoch
    active = mode != "none" and epoch >= cfg.extension_start_epoch
    gt = batch["dense"] if (mode != "none" and (batch["dense"] != IGNORE_INDEX).any()) else None
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
        pix = square_pixels(batch["points"], cfg.region if mode != "none" else 1)
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
    loss = ce
    res = StepOutput(loss, float(ce.detach()), 0.0, extension=ext)
    if cfg.crf_weight > 0:
        probs, rgb, gate = crf_inputs(out["logits"], batch["image"], batch["valid"], IMAGENET_MEAN, IMAGENET_STD)
        crf = gated_crf_loss(probs, rgb, gate, CRFConfig())
        res.loss = res.loss + cfg.crf_weight * crf
        res.crf = float(crf.detach())
    if cfg.pdml:
        emb = sample_embeddings(out["embeddings"].float(), batch["points_xy"], batch["batch_index"], (H, W))
        emb, lab, ids, _ = gather_points(emb, batch["points_cls"], batch["image_ids"])
        groups = subgroups(ids, cfg.pdml_group_size) if cfg.pdml_group_size else None
        lp, st = pdml_loss(emb, lab, ids, alpha=cfg.alpha, beta=cfg.beta, margin=cfg.pdml_margin,
                           generator=generator, groups=groups, variant=cfg.pdml_variant)
        res.loss = res.loss + cfg.pdml_weight * lp
        res.pdml = float(lp.detach())
        res.triples, res.mean_pos, res.mean_neg, res.active = st.num_triples, st.mean_pos, st.mean_neg, st.active
        res.pos_distances, res.neg_distances = st.pos_distances, st.neg_distances
    return res


def _to_device(batch: dict, device: torch.device) -> dict:
    nb = device.type == "cuda"
    return {k: (v.to(device, non_blocking=nb) if torch.is_tensor(v) else v) for k, v in batch.items()}


class _JsonlWriter:
    """Append-only JSONL log (rank 0 only); flushed per line so a killed run keeps its log."""

    def __init__(self, path: Path | None):
        self.fh = open(path, "a", encoding="utf-8") if path is not None else None

    def write(self, row: dict) -> None:
        if self.fh is not None:
            self.fh.write(json.dumps(row, sort_keys=True, default=_json_default) + "\n")
            self.fh.flush()

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()


def _truncate_log(path: Path, start_epoch: int) -> None:
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("epoch", 0) < start_epoch:
                keep.append(line)
        except json.JSONDecodeError:  # a line cut by the kill
            continue
    with atomic_file(path) as tmp:
        tmp.write_text("".join(l + "\n" for l in keep), encoding="utf-8")


def _json_default(v):
    if isinstance(v, float) and math.isnan(v):
        return None
    if torch.is_tensor(v):
        return v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    raise TypeError(type(v).__name__)


def _nan_to_none(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def freeze_batchnorm(module: torch.nn.Module, parameters: bool = False) -> None:
    """Put every BatchNorm of ``module`` in eval mode (running statistics frozen); call after
    ``model.train()``. ``parameters=True`` also freezes their affine parameters (once, before the
    optimiser is built)."""
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
            if parameters:
                m.requires_grad_(False)


def train_one_epoch(model, optimizer, scaler, loader, cfg: TrainConfig, epoch: int, rt: Runtime,
                    amp_dtype, iter_log: _JsonlWriter, progress: bool = True,
                    class_weights: torch.Tensor | None = None, curves: TensorBoardCurves | None = None) -> dict:
    """One pass over the loader; returns the epoch's averaged statistics (summed over ranks).

    A non-finite loss raises :class:`TrainingDiverged` before the optimiser steps on it."""
    model.train()
    if cfg.freeze_bn:
        freeze_batchnorm(_unwrap(model).backbone)
    sums = {"loss": 0.0, "ce": 0.0, "pdml": 0.0, "crf": 0.0, "steps": 0.0, "images": 0.0,
            "triples": 0.0, "pos_sum": 0.0, "neg_sum": 0.0, "active_sum": 0.0}
    ext_counts = []
    pos_samples, neg_samples = [], []
    channels_last = cfg.channels_last and rt.device.type == "cuda"
    gen = torch.Generator(device="cpu")
    t0 = time.perf_counter()
    bar = tqdm(start_loader(loader), total=len(loader), desc=f"epoch {epoch + 1}/{cfg.epochs}",
               disable=not (progress and rt.is_main), leave=False, dynamic_ncols=True)
    for it, batch in enumerate(bar):
        # PDML pairing order seeded per (run seed, epoch, step): identical on all ranks and on resume
        gen.manual_seed(hash((cfg.seed, epoch, it)) & 0x7FFF_FFFF)
        batch = _to_device(batch, rt.device)
        res = compute_losses(model, batch, cfg, epoch, gen, amp_dtype, channels_last, class_weights)
        loss_value = float(res.loss.detach())
        if not math.isfinite(loss_value):
            raise TrainingDiverged(f"training diverged: the loss became {loss_value} at epoch {epoch + 1}, "
                                   f"step {it + 1} (ce {res.ce:.4g}, pdml {res.pdml:.4g}, crf {res.crf:.4g}); "
                                   f"lower the learning rate ({cfg.lr:g}) or the loss weights")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(res.loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            res.loss.backward()
            optimizer.step()
        n = batch["image"].shape[0]
        sums["loss"] += loss_value; sums["ce"] += res.ce; sums["pdml"] += res.pdml; sums["crf"] += res.crf
        sums["steps"] += 1; sums["images"] += n
        if res.triples:
            sums["triples"] += res.triples
            sums["pos_sum"] += res.mean_pos * res.triples
            sums["neg_sum"] += res.mean_neg * res.triples
            sums["active_sum"] += res.active * res.triples
            pos_samples.append(res.pos_distances); neg_samples.append(res.neg_distances)
        if res.extension is not None:
            ext_counts.append(res.extension)
        elapsed = time.perf_counter() - t0
        if rt.is_main and (it % max(cfg.log_every, 1) == 0):
            row_i = _nan_to_none({"epoch": epoch, "iter": it, "loss": loss_value, "ce": res.ce, "pdml": res.pdml,
                                  "crf": res.crf, "triples": res.triples, "dis_pos": res.mean_pos,
                                  "dis_neg": res.mean_neg, "lr": optimizer.param_groups[0]["lr"]})
            iter_log.write(row_i)
            if curves is not None:
                curves.log_iteration(epoch * len(loader) + it, row_i)
        bar.set_postfix(loss=f"{loss_value:.3f}", ce=f"{res.ce:.3f}", pdml=f"{res.pdml:.3f}",
                        img_s=f"{sums['images'] * rt.world_size / max(elapsed, 1e-9):.1f}")
    bar.close()
    elapsed = time.perf_counter() - t0
    keys = list(sums)
    totals = dict(zip(keys, _all_reduce_sum([sums[k] for k in keys], rt)))
    steps = max(totals["steps"], 1.0)
    row = {
        "epoch": epoch,
        "loss": totals["loss"] / steps, "ce": totals["ce"] / steps, "pdml": totals["pdml"] / steps,
        "crf": totals["crf"] / steps,
        "triples_per_step": totals["triples"] / steps,
        "dis_pos": totals["pos_sum"] / totals["triples"] if totals["triples"] else None,
        "dis_neg": totals["neg_sum"] / totals["triples"] if totals["triples"] else None,
        "active_triples": totals["active_sum"] / totals["triples"] if totals["triples"] else None,
        "lr": optimizer.param_groups[0]["lr"], "lr_head": optimizer.param_groups[-1]["lr"],
        "time_s": elapsed, "images_per_s": totals["images"] / max(elapsed, 1e-9),
    }
    if cfg.extension != "none":
        counts = merge_extension_stats(*ext_counts) if ext_counts else merge_extension_stats()
        keys = sorted(counts)
        counts = dict(zip(keys, [int(v) for v in _all_reduce_sum([float(counts[k]) for k in keys], rt)]))
        fin = finalize_extension_stats(counts)
        row["extension_active"] = epoch >= cfg.extension_start_epoch
        row["ext_pixels_per_image"] = fin["new_pixels_per_image"]
        row["ext_accuracy"] = fin["accuracy"]
        row["ext_coverage"] = fin["coverage"]
    samples = (torch.cat(pos_samples).numpy() if pos_samples else np.zeros(0, np.float32),
               torch.cat(neg_samples).numpy() if neg_samples else np.zeros(0, np.float32))
    return row, samples


# ------------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------------


def _unwrap(model: torch.nn.Module) -> PointParseNet:
    return model.module if hasattr(model, "module") else model


def save_checkpoint(path: Path, obj: dict) -> None:
    """Atomic ``torch.save``: a killed run never leaves a truncated checkpoint."""
    with atomic_file(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: str | Path) -> dict:
    """Load a pointparse checkpoint with ``weights_only=True`` (a file that tries to run code is refused)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint file does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, refused globals, truncated files
        raise DataError(path, f"not a loadable pointparse checkpoint ({exc.__class__.__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise DataError(path, f"not a pointparse checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    return obj


def model_from_checkpoint(ckpt: dict, path: str | Path | None = None) -> tuple[PointParseNet, DatasetInfo]:
    """Rebuild the network (no ImageNet download) and its dataset info from a loaded checkpoint.

    A checkpoint with missing keys, weights of the wrong shapes or a class list that does not
    match its head is one :class:`DataError` naming ``path`` (the file it was loaded from)."""
    try:
        mcfg = dict(ckpt["model_config"])
        mcfg["weights"] = "none"
        model = build_model(ModelConfig.from_dict(mcfg))
        model.load_state_dict(ckpt["model"])
        info = DatasetInfo.from_dict(ckpt["info"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, ConfigError) as exc:
        said = " ".join(str(exc).split())  # load_state_dict lists every key over several lines
        said = said if len(said) <= 400 else said[:400] + " ..."
        raise DataError(path or "checkpoint", f"not a usable pointparse checkpoint ({exc.__class__.__name__}: "
                                              f"{said})") from None
    if info.num_classes != model.num_classes:
        raise DataError(path or "checkpoint", f"its class list has {info.num_classes} classes ({info.protocol}) "
                                              f"but its classifier predicts {model.num_classes}")
    return model, info


def _final_checkpoint(model, cfg: TrainConfig, info: DatasetInfo, epochs_done: int) -> dict:
    m = _unwrap(model)
    return {
        "format": CHECKPOINT_FORMAT,
        "model": {k: v.detach().cpu() for k, v in m.state_dict().items()},
        "model_config": m.config.to_dict(),
        "train_config": dataclasses.asdict(cfg),
        "info": info.to_dict(),
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "epochs": epochs_done,
    }


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------


def train(cfg: TrainConfig, dataset: SegmentationDataset, points: dict | None, out_dir: str | Path,
          info: DatasetInfo | None = None, resume: bool = True, progress: bool = True,
          stop_after_epochs: int | None = None) -> dict:
    """Train into ``out_dir`` (resuming from its ``checkpoint.pt`` when present and ``resume``).

    ``points`` maps image name → (xy [N, 2], classes [N]) for point supervision (``None`` for
    full supervision). ``stop_after_epochs`` ends the process early after that many epochs (used
    to test resumption). Returns the last epoch's log row. Under torchrun every rank calls this;
    only rank 0 writes files.
    """
    out_dir = Path(out_dir)
    info = info or dataset.info
    rt = setup_runtime(cfg.device)
    if rt.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.supervision == "points" and points is None:
        raise ConfigError("point supervision needs a points artefact")
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model_config(info.num_classes)).to(rt.device)
    if cfg.channels_last and rt.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if cfg.freeze_bn:
        freeze_batchnorm(model.backbone, parameters=True)
    groups = model.param_groups(cfg.lr, cfg.weight_decay, cfg.head_lr_mult)
    if cfg.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    else:
        optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    class_weights = None
    if cfg.supervision == "points" and cfg.class_balance != "none":
        counts = np.zeros(info.num_classes, np.int64)
        for _, cls in points.values():
            counts += np.bincount(np.asarray(cls, np.int64).reshape(-1), minlength=info.num_classes)[:info.num_classes]
        class_weights = click_class_weights(counts, CLASS_BALANCE[cfg.class_balance]).to(rt.device)
    amp_dtype = autocast_dtype(cfg.amp, rt.device)
    scaler = torch.amp.GradScaler(rt.device.type) if amp_dtype == torch.float16 else None

    start_epoch = 0
    ckpt_path = out_dir / "checkpoint.pt"
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch = int(state["next_epoch"])
    if rt.distributed:
        ddp_kwargs = {"device_ids": [rt.device.index]} if rt.device.type == "cuda" else {}
        # the projection head is unused without PDML; the classifier always trains
        unused = cfg.projection_dim > 0 and not cfg.pdml
        model = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=unused, **ddp_kwargs)

    samples = TrainSamples(dataset, points if cfg.supervision == "points" else None,
                           AugmentConfig(cfg.crop_size, cfg.scale_min, cfg.scale_max, cfg.flip),
                           IMAGENET_MEAN, IMAGENET_STD, seed=cfg.seed)
    per_rank = max(1, cfg.batch_size // rt.world_size)
    if cfg.batch_size % rt.world_size:
        raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by the {rt.world_size} processes")
    sampler = torch.utils.data.DistributedSampler(samples, num_replicas=rt.world_size, rank=rt.rank,
                                                  shuffle=True, seed=cfg.seed, drop_last=True)
    drop_last = len(samples) >= cfg.batch_size
    loader = torch.utils.data.DataLoader(
        samples, batch_size=per_rank, sampler=sampler, num_workers=loader_workers(cfg.workers, rt.device), collate_fn=collate,
        pin_memory=rt.device.type == "cuda", drop_last=drop_last, persistent_workers=False,
    )
    if rt.is_main:  # drop log rows of an epoch that a killed run did not finish
        for name in ("iterations.jsonl", "epochs.jsonl"):
            _truncate_log(out_dir / name, start_epoch)
    iter_log = _JsonlWriter(out_dir / "iterations.jsonl" if rt.is_main else None)
    epoch_log = _JsonlWriter(out_dir / "epochs.jsonl" if rt.is_main else None)
    curves = TensorBoardCurves(out_dir / TENSORBOARD_DIR if rt.is_main else None, start_epoch=start_epoch,
                               start_step=start_epoch * len(loader))
    distances: dict[str, np.ndarray] = {}
    if rt.is_main and (out_dir / "distances.npz").exists() and start_epoch > 0:
        with np.load(out_dir / "distances.npz") as z:
            distances = {k: z[k] for k in z.files}
    row: dict[str, Any] = {}
    try:
        for epoch in range(start_epoch, cfg.epochs):
            for g in optimizer.param_groups:
                g["lr"] = poly_lr(cfg.lr * g.get("lr_mult", 1.0), epoch, cfg.epochs, cfg.poly_power)
            sampler.set_epoch(epoch)
            samples.set_epoch(epoch)
            torch.manual_seed(hash((cfg.seed, epoch)) & 0x7FFF_FFFF)  # any stochastic layer is resumable too
            row, (pos, neg) = train_one_epoch(model, optimizer, scaler, loader, cfg, epoch, rt, amp_dtype,
                                              iter_log, progress, class_weights, curves)
            if rt.is_main:
                epoch_log.write(row)
                curves.log_epoch(epoch, row)
                if len(pos):
                    distances[f"pos_{epoch}"], distances[f"neg_{epoch}"] = pos, neg
                    with atomic_file(out_dir / "distances.npz") as tmp:
                        with open(tmp, "wb") as fh:
                            np.savez_compressed(fh, **distances)
                state = _final_checkpoint(model, cfg, info, epoch + 1)
                state.update(optimizer=optimizer.state_dict(), next_epoch=epoch + 1,
                             scaler=scaler.state_dict() if scaler is not None else {})
                save_checkpoint(ckpt_path, state)
                if progress:
                    tqdm.write(_epoch_line(row, cfg))
            if stop_after_epochs is not None and epoch + 1 - start_epoch >= stop_after_epochs and epoch + 1 < cfg.epochs:
                return row
        if rt.is_main:
            save_checkpoint(out_dir / "model.pt", _final_checkpoint(model, cfg, info, cfg.epochs))
    finally:
        iter_log.close()
        epoch_log.close()
        curves.close()
    return row


def _epoch_line(row: dict, cfg: TrainConfig) -> str:
    parts = [f"epoch {row['epoch'] + 1}/{cfg.epochs}", f"loss {row['loss']:.4f}", f"ce {row['ce']:.4f}"]
    if cfg.crf_weight > 0:
        parts.append(f"crf {row['crf']:.4f}")
    if cfg.pdml:
        parts.append(f"pdml {row['pdml']:.4f}")
        if row.get("dis_pos") is not None:
            parts.append(f"dis(+) {row['dis_pos']:.2f} dis(-) {row['dis_neg']:.2f}")
    if row.get("ext_accuracy") is not None:
        parts.append(f"ext {row['ext_pixels_per_image']:.0f} px/img acc {100 * row['ext_accuracy']:.1f}%")
    parts.append(f"{row['images_per_s']:.1f} img/s")
    return "  ".join(parts)
