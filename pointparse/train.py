"""The training loop around :func:`pointparse.objective.compute_losses` (point CE, Eq. 2 + cross-image
PDML, Eq. 3–5 + online extension, Eq. 6–7 + Gated CRF + a label set's CE).

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

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .checkpoint import load_checkpoint, model_checkpoint, save_checkpoint, unwrap
from .curves import JsonlWriter, TensorBoardCurves, nan_to_none, rewrite_event_log, truncate_log
from .datasets import DatasetInfo, SegmentationDataset
from .errors import ConfigError, DataError
from .extension import STAT_KEYS, finalize_extension_stats
from .io import atomic_file
from .labelset import LabelSet, check_label_set_names
from .losses import CLASS_BALANCE, click_class_weights
from .model import IMAGENET_MEAN, IMAGENET_STD, build_model
from .objective import compute_losses
from .pool import loader_workers, start_loader
from .runtime import Runtime, all_reduce_sum, autocast_dtype, setup_runtime
from .step_stats import STEP_KEYS, EpochSums
from .train_config import TrainConfig
from .transforms import AugmentConfig, TrainSamples, collate

#: TensorBoard event files of a run (when the tensorboard extra is installed): <run>/tensorboard/
TENSORBOARD_DIR = "tensorboard"


class TrainingDiverged(ConfigError):
    """The loss became NaN or infinite: nothing is marked finished (the checkpoint of the last good
    epoch stays in the partial folder)."""


def poly_lr(base: float, epoch: int, max_epoch: int, power: float) -> float:
    """The paper's schedule ``base · (1 − epoch/max_epoch)^power``."""
    return base * (1.0 - epoch / max_epoch) ** power


# ------------------------------------------------------------------------------------------------
# one step, one epoch
# ------------------------------------------------------------------------------------------------


def _to_device(batch: dict, device: torch.device) -> dict:
    nb = device.type == "cuda"
    return {k: (v.to(device, non_blocking=nb) if torch.is_tensor(v) else v) for k, v in batch.items()}


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
                    amp_dtype, iter_log: JsonlWriter, progress: bool = True,
                    class_weights: torch.Tensor | None = None, curves: TensorBoardCurves | None = None) -> dict:
    """One pass over the loader; returns the epoch's averaged statistics (summed over ranks).

    The statistics stay on the device (:class:`EpochSums`) and are read once per
    ``log_every`` steps and at the end. A non-finite loss raises :class:`TrainingDiverged` at
    the first read after it (so within ``log_every`` steps, and always before the epoch's
    checkpoint is written: the last good epoch's checkpoint stays)."""
    model.train()
    if cfg.freeze_bn:
        freeze_batchnorm(unwrap(model).backbone)
    acc = EpochSums(rt.device, cfg.extension != "none")
    channels_last = cfg.channels_last and rt.device.type == "cuda"
    gen = torch.Generator(device="cpu")
    log_every = max(cfg.log_every, 1)
    t0 = time.perf_counter()
    bar = tqdm(start_loader(loader), total=len(loader), desc=f"epoch {epoch + 1}/{cfg.epochs}",
               disable=not (progress and rt.is_main), leave=False, dynamic_ncols=True)

    def check(values: list[float], bad: int, it: int) -> None:
        if bad >= 0:
            raise TrainingDiverged(f"training diverged: the loss became non-finite at epoch {epoch + 1}, step "
                                   f"{bad + 1} (read at step {it + 1}: loss {values[0]:.4g}, ce {values[1]:.4g}, "
                                   f"pdml {values[2]:.4g}, crf {values[3]:.4g}); lower the learning rate "
                                   f"({cfg.lr:g}) or the loss weights")

    it = -1
    vec = torch.zeros(len(STEP_KEYS), dtype=torch.float64, device=rt.device)
    for it, batch in enumerate(bar):
        # PDML pairing order seeded per (run seed, epoch, step): identical on all ranks and on resume
        gen.manual_seed(hash((cfg.seed, epoch, it)) & 0x7FFF_FFFF)
        batch = _to_device(batch, rt.device)
        res = compute_losses(model, batch, cfg, epoch, gen, amp_dtype, channels_last, class_weights)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(res.loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            res.loss.backward()
            optimizer.step()
        vec = acc.add(it, res, batch)
        if it % log_every:
            continue
        values, bad = acc.read(vec)  # the one host read of this logging interval
        check(values, bad, it)
        step = dict(zip(STEP_KEYS, values))
        triples = int(step["triples"])
        elapsed = time.perf_counter() - t0
        if rt.is_main:
            row_i = nan_to_none({"epoch": epoch, "iter": it, "loss": step["loss"], "ce": step["ce"],
                                 "pdml": step["pdml"], "crf": step["crf"], "triples": triples,
                                 "dis_pos": step["pos_sum"] / triples if triples else float("nan"),
                                 "dis_neg": step["neg_sum"] / triples if triples else float("nan"),
                                 "lr": optimizer.param_groups[0]["lr"]})
            if "labels" in batch:
                row_i["label_ce"] = step["label_ce"]
            iter_log.write(row_i)
            if curves is not None:
                curves.log_iteration(epoch * len(loader) + it, row_i)
        bar.set_postfix(loss=f"{step['loss']:.3f}", ce=f"{step['ce']:.3f}", pdml=f"{step['pdml']:.3f}",
                        img_s=f"{acc.images * rt.world_size / max(elapsed, 1e-9):.1f}")
    bar.close()
    values, bad = acc.read(vec)  # the last steps' samples and any late non-finite loss
    check(values, bad, it)
    elapsed = time.perf_counter() - t0
    sums = acc.sums.cpu().tolist() + [float(acc.steps), float(acc.images)]
    keys = list(STEP_KEYS) + ["steps", "images"]
    totals = dict(zip(keys, all_reduce_sum(sums, rt)))
    steps = max(totals["steps"], 1.0)
    triples = totals["triples"]
    row = {
        "epoch": epoch,
        "loss": totals["loss"] / steps, "ce": totals["ce"] / steps, "pdml": totals["pdml"] / steps,
        "crf": totals["crf"] / steps,
        "triples_per_step": triples / steps,
        "dis_pos": totals["pos_sum"] / triples if triples else None,
        "dis_neg": totals["neg_sum"] / triples if triples else None,
        "active_triples": totals["active_sum"] / triples if triples else None,
        "lr": optimizer.param_groups[0]["lr"], "lr_head": optimizer.param_groups[-1]["lr"],
        "time_s": elapsed, "images_per_s": totals["images"] / max(elapsed, 1e-9),
    }
    if acc.label_counts is not None:  # every rank of a run with a label set has one
        correct, new, covered, known = all_reduce_sum([float(v) for v in acc.label_counts.cpu()], rt)
        row["label_ce"] = totals["label_ce"] / steps
        row["labels_accuracy"] = correct / new if new else None
        row["labels_coverage"] = covered / known if known else None
    if acc.ext is not None:
        counts = dict(zip(STAT_KEYS, [int(v) for v in all_reduce_sum([float(v) for v in acc.ext.cpu()], rt)]))
        fin = finalize_extension_stats(counts)
        row["extension_active"] = epoch >= cfg.extension_start_epoch
        row["ext_pixels_per_image"] = fin["new_pixels_per_image"]
        row["ext_accuracy"] = fin["accuracy"]
        row["ext_coverage"] = fin["coverage"]
    samples = (np.concatenate(acc.pos).astype(np.float32) if acc.pos else np.zeros(0, np.float32),
               np.concatenate(acc.neg).astype(np.float32) if acc.neg else np.zeros(0, np.float32))
    return row, samples


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------


def train(cfg: TrainConfig, dataset: SegmentationDataset, points: dict | None, out_dir: str | Path,
          info: DatasetInfo | None = None, resume: bool = True, progress: bool = True,
          stop_after_epochs: int | None = None, labels: LabelSet | None = None) -> dict:
    """Train into ``out_dir`` (resuming from its ``checkpoint.pt`` when present and ``resume``).

    ``points`` maps image name → (xy [N, 2], classes [N]) for point supervision (``None`` for
    full supervision). ``labels``: a label set of the split trained on beside the clicks
    (``label_weight``; point supervision only). ``stop_after_epochs`` ends the process early after that many epochs (used
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
    if labels is not None and cfg.supervision != "points":
        raise ConfigError("a label set (--labels) trains beside the clicks; with --supervision full the dense "
                          "masks are the labels: drop one of them")
    if labels is not None:
        check_label_set_names(labels, dataset)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model_config(info.num_classes)).to(rt.device)
    if cfg.channels_last and rt.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if cfg.freeze_bn:
        freeze_batchnorm(model.backbone, parameters=True)
    optimizer = make_optimizer(model, cfg)
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
        if not 0 <= start_epoch <= cfg.epochs:  # the train stage restarts such a run (pointparse.resume)
            raise DataError(ckpt_path, f"next_epoch {start_epoch} lies outside this run's {cfg.epochs} epochs")
    if rt.distributed:
        ddp_kwargs = {"device_ids": [rt.device.index]} if rt.device.type == "cuda" else {}
        # the projection head is unused without PDML; the classifier always trains
        unused = cfg.projection_dim > 0 and not cfg.pdml
        model = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=unused, **ddp_kwargs)

    samples = TrainSamples(dataset, points if cfg.supervision == "points" else None,
                           AugmentConfig(cfg.crop_size, cfg.scale_min, cfg.scale_max, cfg.flip),
                           IMAGENET_MEAN, IMAGENET_STD, seed=cfg.seed,
                           labels=labels.label if labels is not None else None)
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
    if rt.is_main:  # drop log rows of an epoch that a killed run did not finish, and its events
        for name in ("iterations.jsonl", "epochs.jsonl"):
            truncate_log(out_dir / name, start_epoch)
        rewrite_event_log(out_dir / TENSORBOARD_DIR, out_dir / "iterations.jsonl", out_dir / "epochs.jsonl",
                          len(loader))
    iter_log = JsonlWriter(out_dir / "iterations.jsonl" if rt.is_main else None)
    epoch_log = JsonlWriter(out_dir / "epochs.jsonl" if rt.is_main else None)
    curves = TensorBoardCurves(out_dir / TENSORBOARD_DIR if rt.is_main else None)
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
                state = model_checkpoint(model, cfg, info, epoch + 1)
                state.update(optimizer=optimizer.state_dict(), next_epoch=epoch + 1,
                             scaler=scaler.state_dict() if scaler is not None else {})
                save_checkpoint(ckpt_path, state)
                if progress:
                    tqdm.write(_epoch_line(row, cfg))
            if stop_after_epochs is not None and epoch + 1 - start_epoch >= stop_after_epochs and epoch + 1 < cfg.epochs:
                return row
        if rt.is_main:
            save_checkpoint(out_dir / "model.pt", model_checkpoint(model, cfg, info, cfg.epochs))
    finally:
        iter_log.close()
        epoch_log.close()
        curves.close()
    return row


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (or AdamW) over the model's groups: ``f`` at the base rate, ``g`` at ``head_lr_mult``×."""
    groups = unwrap(model).param_groups(cfg.lr, cfg.weight_decay, cfg.head_lr_mult)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def _epoch_line(row: dict, cfg: TrainConfig) -> str:
    parts = [f"epoch {row['epoch'] + 1}/{cfg.epochs}", f"loss {row['loss']:.4f}", f"ce {row['ce']:.4f}"]
    if cfg.crf_weight > 0:
        parts.append(f"crf {row['crf']:.4f}")
    if cfg.pdml:
        parts.append(f"pdml {row['pdml']:.4f}")
        if row.get("dis_pos") is not None:
            parts.append(f"dis(+) {row['dis_pos']:.2f} dis(-) {row['dis_neg']:.2f}")
    if row.get("label_ce") is not None:
        parts.append(f"labels ce {row['label_ce']:.4f}")
        if row.get("labels_accuracy") is not None:
            parts.append(f"acc {100 * row['labels_accuracy']:.1f}% cov {100 * row['labels_coverage']:.1f}%")
    if row.get("ext_accuracy") is not None:
        parts.append(f"ext {row['ext_pixels_per_image']:.0f} px/img acc {100 * row['ext_accuracy']:.1f}%")
    parts.append(f"{row['images_per_s']:.1f} img/s")
    return "  ".join(parts)
