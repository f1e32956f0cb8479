"""What a training step logs, kept on the device: :class:`StepOutput` (one step) and
:class:`EpochSums` (an epoch's running sums, read by the host once per ``log_every`` steps).

A GPU step must not wait for the host, so nothing here converts a tensor to a Python number
inside a step: every statistic is a 0-d (or small fixed-size) tensor on the step's device,
summed there, and read in one transfer per logging interval. Labels follow the package
convention (class ids ``0..C-1``, 255 = none).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from . import IGNORE_INDEX
from .extension import STAT_KEYS
from .pdml import PDMLStats


#: the per-step numbers the loop sums on the device, in the order of :meth:`StepOutput.vector`
STEP_KEYS = ("loss", "ce", "pdml", "crf", "label_ce", "triples", "pos_sum", "neg_sum", "active_sum")


@dataclass
class StepOutput:
    """One step's loss and what it logs, all on the device (nothing read by the host).

    ``terms``: 0-d detached tensors ``ce``, ``pdml``, ``crf``, ``label_ce`` (those the step has);
    ``pdml_stats``: :class:`pointparse.pdml.PDMLStats` when PDML runs; ``extension``: the
    extension's counts (:data:`pointparse.extension.STAT_KEYS`, 0-d int64 tensors). The float
    properties read the device (tests, one-off use); the loop sums :meth:`vector` instead and
    reads it once per ``log_every`` steps.
    """

    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    pdml_stats: PDMLStats | None = None
    extension: dict | None = None

    def _term(self, name: str) -> float:
        return float(self.terms[name]) if name in self.terms else 0.0

    ce = property(lambda self: self._term("ce"))
    pdml = property(lambda self: self._term("pdml"))
    crf = property(lambda self: self._term("crf"))
    label_ce = property(lambda self: self._term("label_ce"))
    triples = property(lambda self: self.pdml_stats.num_triples if self.pdml_stats is not None else 0)
    mean_pos = property(lambda self: self.pdml_stats.mean_pos if self.pdml_stats is not None else float("nan"))
    mean_neg = property(lambda self: self.pdml_stats.mean_neg if self.pdml_stats is not None else float("nan"))
    active = property(lambda self: self.pdml_stats.active if self.pdml_stats is not None else float("nan"))

    def vector(self) -> torch.Tensor:
        """float64 [len(STEP_KEYS)] on the loss's device: this step's loss, terms and PDML sums."""
        zero = torch.zeros((), dtype=torch.float64, device=self.loss.device)
        st = self.pdml_stats
        vals = [self.loss.detach()] + [self.terms.get(k, zero) for k in ("ce", "pdml", "crf", "label_ce")]
        vals += [zero] * 4 if st is None else [st.count, st.pos_sum, st.neg_sum, st.active_count]
        return torch.stack([v.to(torch.float64) for v in vals])


def label_set_counts(batch: dict) -> torch.Tensor:
    """int64 [4] on the batch's device: of the crops' label-set pixels that are not clicks, those
    equal to the ground truth and those where it is known; ground-truth pixels carrying a label;
    ground-truth pixels (``dense``, 255 = unknown). Summed per epoch into ``labels_accuracy`` and
    ``labels_coverage`` (0 / 0 without dense masks)."""
    lab, gt = batch["labels"], batch["dense"]
    known, has = gt != IGNORE_INDEX, lab != IGNORE_INDEX
    new = has & known & (batch["points"] == IGNORE_INDEX)
    return torch.stack([(new & (lab == gt)).sum(), new.sum(), (has & known).sum(), known.sum()])


class EpochSums:
    """What an epoch logs, summed on the device step by step and read by the host once per
    ``log_every`` steps (:meth:`read`) and at the end: a GPU step never waits for a log."""

    def __init__(self, device: torch.device, extension: bool):
        self.device = device
        self.steps = self.images = 0
        self.sums = torch.zeros(len(STEP_KEYS), dtype=torch.float64, device=device)
        self.ext = torch.zeros(len(STAT_KEYS), dtype=torch.long, device=device) if extension else None
        self.label_counts: torch.Tensor | None = None  # [4] (a run with a label set): see label_set_counts
        # the first step (of the epoch) whose loss was not finite, -1 while none
        self.bad_step = torch.full((), -1, dtype=torch.long, device=device)
        self._samples: list[tuple[torch.Tensor, torch.Tensor]] = []  # device, since the last read
        self.pos: list[np.ndarray] = []
        self.neg: list[np.ndarray] = []

    def add(self, it: int, res: StepOutput, batch: dict) -> torch.Tensor:
        """Sum one step in (no host sync); returns its [len(STEP_KEYS)] vector."""
        vec = res.vector()
        self.bad_step = torch.where((self.bad_step < 0) & ~torch.isfinite(vec[0]), it, self.bad_step)
        self.sums += vec
        self.steps += 1
        self.images += batch["image"].shape[0]
        if "labels" in batch:
            counts = label_set_counts(batch)
            self.label_counts = counts if self.label_counts is None else self.label_counts + counts
        if self.ext is not None and res.extension is not None:
            self.ext += torch.stack([res.extension[k] for k in STAT_KEYS])
        if res.pdml_stats is not None:
            self._samples.append((res.pdml_stats.samples, res.pdml_stats.sample_mask))
        return vec

    def read(self, vec: torch.Tensor) -> tuple[list[float], int]:
        """The host's one read: ``vec`` (a step's vector) as floats and the first bad step;
        moves the distance samples gathered since the last read to the host."""
        host = torch.cat([vec, self.bad_step.to(torch.float64)[None]]).cpu().tolist()
        if self._samples:
            samples = torch.cat([s for s, _ in self._samples], 1).cpu().numpy()
            mask = torch.cat([m for _, m in self._samples]).cpu().numpy()
            self.pos.append(samples[0][mask])
            self.neg.append(samples[1][mask])
            self._samples = []
        return host[:-1], int(host[-1])
