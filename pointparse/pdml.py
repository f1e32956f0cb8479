"""PDML, Point-based Distance Metric Learning (Eq. 3-5, Algorithm 1), and its variants.

Label conventions: class ids ``0..C-1``; ``IGNORE_INDEX`` (255) marks pixels/points without a
label. Points with label 255 (or a negative label) take no part in PDML.

PDML pairing (Algorithm 1). For every anchor point ``i`` of image ``n`` and every *other* image
``m`` of the same subgroup, ``m``'s points split into positives (class of ``i``) and negatives
(any other class). Both lists are walked in a random order and paired one-to-one until either
runs out, so the anchor gets ``min(#pos, #neg)`` triples ``(i, p, n)`` from image ``m``. Each
triple costs::

    L_t = alpha * ||a - p||_2 + beta * max(||a - p||_2 - ||a - n||_2 + margin, 0)

and the loss is the mean of ``L_t`` over all triples of the batch (0 when there are none).

Variants (registry :data:`PDML_VARIANTS`, ``pdml_loss(variant=...)``; ``paper`` is the default).
The paper's loss is positively homogeneous in the embedding scale apart from the margin: with
every embedding multiplied by ``s``, an active triple costs ``s·(α·d+ + β·(d+ − d−)) + β·m``,
whose derivative in ``s`` is ``α·d+ + β·(d+ − d−)`` — positive, so shrinking *every* embedding
lowers the loss, whenever ``d− < (1 + α/β)·d+`` (1.8·d+ at the paper's weights). Pretrained
features start near ``d− ≈ 1.04·d+``, so the steepest way down is a global shrink (README
Results). The variants remove that incentive:

* ``relative``: distances divided by ``s̄``, the mean distance over all pairs of labelled points
  of the batch, *with* its gradient. Every ``d/s̄`` is homogeneous of degree 0, so the loss is
  exactly scale-invariant and (Euler) its gradient is orthogonal to the scale direction:
  ``Σ_k x_k·∂L/∂x_k = 0``. No step of gradient descent changes the scale to first order. The
  margin is in units of the mean pair distance (default 0.5).
* ``relative-detached``: the same with ``s̄`` detached (a relative margin ``m·s̄``, the literal
  reading of "distances relative to the batch's detached mean"). Kept because it is the natural
  first guess and it does *not* remove the incentive: with ``s̄`` held constant the scale
  derivative is ``(α·d+ + β·(d+ − d−))/s̄``, the paper's sign, and as the embeddings shrink
  ``s̄`` follows a step later, so the relative step size grows. Measured beside the others.
* ``normalized``: embeddings L2-normalised before the distances (margin on the unit sphere,
  default 0.5; random high-dimensional directions are ~1.41 apart). The norm is fixed, so there
  is no scale to shrink; the minimum needs ``d− ≥ d+ + m`` between classes.

At ``s̄ = 1`` (and margin ``m``) ``relative`` and ``relative-detached`` equal ``paper`` exactly;
``normalized`` equals ``paper`` on unit-norm embeddings.

The random order is defined by one key matrix ``keys = torch.rand(N, N, generator=generator)``:
for anchor ``i`` the candidates ``j`` are taken in ascending ``keys[i, j]`` (ties by index), so
every (anchor, image) pair gets its own independent uniformly random order. The vectorised
:func:`pdml_loss` and the literal loop :func:`pdml_loss_reference` draw the same matrix, which
is why, given equal generator seeds, they form exactly the same triples.

No host sync (a GPU step never waits for the CPU): the triples are held in fixed-shape [N, N]
tensors, one slot per (anchor, candidate) in the anchor's sorted row, with a mask of the slots
that form a triple (:func:`pdml_triple_slots`), instead of a [T] list whose length T the host
would have to read. The loss is a masked mean and :class:`PDMLStats` keeps its counts on the
device; they are read only when a number is asked for. The keys are drawn outside the traced
loss (:func:`pairing_keys`: a torch.Generator cannot be traced by ``torch.compile``) and copied
to the device without blocking.

Distributed training (:func:`gather_points`): every rank gathers all ranks' points (with
gradient) and computes the *same* global-mean PDML loss on the gathered set. Backward through
``torch.distributed.nn.functional.all_gather`` SUMS the gradients that all ``W`` ranks send to a
rank's own embeddings, giving ``W * dL/dE_r``; DDP then AVERAGES parameter gradients over the
``W`` ranks. The two factors cancel, so the loss must be used as is (no rescaling) to reproduce
one process training on the concatenated batch. The point cross-entropy is computed per rank on
its own images and averaged by DDP, which matches the single-process mean when every rank holds
the same number of labelled images.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from . import IGNORE_INDEX
from .errors import ConfigError, unknown_choice

#: At most this many distance samples per polarity are kept in :class:`PDMLStats` (for the
#: Figure 4 histograms); larger sets are subsampled with a fixed seed so logs are reproducible.
MAX_DISTANCE_SAMPLES = 4096
_SUBSAMPLE_SEED = 0

# sqrt is clamped below at this squared distance: the gradient of ||a-b|| is undefined at 0 and
# would be NaN; a clamp gives a zero (sub)gradient there instead.
_DIST_EPS = 1e-12

# --------------------------------------------------------------------------------------------
# PDML (Eq. 3-5, Algorithm 1)
# --------------------------------------------------------------------------------------------


@dataclass
class PDMLStats:
    """What one PDML evaluation saw (Figures 3 and 4 of the paper), kept on the device.

    Tensors (0-d unless stated, detached, on the embeddings' device; nothing read by the host):
    ``count`` int64 number of triples T, ``pos_sum``/``neg_sum`` the sums of dis(+) = ||a-p|| and
    dis(-) = ||a-n|| over them, ``active_count`` the triples whose hinge (Eq. 5) is > 0, and
    ``samples`` [2, S] (raw dis(+), dis(-) rows) with ``sample_mask`` [S] bool: a fixed-size
    subsample of the triples (all of them when T <= S = :data:`MAX_DISTANCE_SAMPLES`; otherwise
    S chosen by a fixed hash of the slot, so logs are reproducible).

    The float properties (``num_triples``, ``mean_pos``, ``mean_neg``, ``active``) and the CPU
    ``pos_distances``/``neg_distances`` read the device once each: for tests and one-off use,
    not inside a training step (the trainer accumulates the tensors and reads them per log).
    """

    count: torch.Tensor
    pos_sum: torch.Tensor
    neg_sum: torch.Tensor
    active_count: torch.Tensor
    samples: torch.Tensor = field(default_factory=lambda: torch.zeros(2, 0))
    sample_mask: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))

    @property
    def num_triples(self) -> int:
        return int(self.count)

    def _mean(self, total: torch.Tensor) -> float:
        t = int(self.count)
        return float(total) / t if t else float("nan")

    @property
    def mean_pos(self) -> float:
        return self._mean(self.pos_sum)

    @property
    def mean_neg(self) -> float:
        return self._mean(self.neg_sum)

    @property
    def active(self) -> float:
        return self._mean(self.active_count)

    @property
    def pos_distances(self) -> torch.Tensor:
        """1-D float32 CPU tensor: the subsample's dis(+) (same triples as ``neg_distances``)."""
        return self.samples[0][self.sample_mask].float().cpu()

    @property
    def neg_distances(self) -> torch.Tensor:
        return self.samples[1][self.sample_mask].float().cpu()


def _check_points(labels: torch.Tensor, image_ids: torch.Tensor, groups: torch.Tensor | None, n: int | None = None) -> None:
    if labels.dim() != 1 or image_ids.shape != labels.shape or (groups is not None and groups.shape != labels.shape):
        raise ValueError(
            f"PDML expects labels [N], image_ids [N] and groups [N]; got {tuple(labels.shape)}, "
            f"{tuple(image_ids.shape)}, {None if groups is None else tuple(groups.shape)}"
        )
    if n is not None and labels.shape[0] != n:
        raise ValueError(f"PDML expects embeddings [N, D] with N = len(labels) = {labels.shape[0]}; got N = {n}")


def pairing_keys(n: int, generator: torch.Generator | None, device: torch.device | str) -> torch.Tensor:
    """[N, N] float32 uniform keys on ``device``: the random selection order of Algorithm 1
    (line 16), one row per anchor.

    Drawn from ``generator`` on its own device (CPU in training, so a run pairs the same points
    on CPU and GPU); the copy to an accelerator goes through pinned memory without blocking, so
    the host never waits for the GPU here.
    """
    device = torch.device(device)
    gen_device = generator.device if generator is not None else device
    keys = torch.rand((n, n), generator=generator, device=gen_device)
    if keys.device == device:
        return keys
    if keys.device.type == "cpu" and device.type == "cuda":
        keys = keys.pin_memory()
    return keys.to(device, non_blocking=True)


def _first_index(ids: torch.Tensor) -> torch.Tensor:
    """[N] long: index of the first point with the same id, a dense id without ``unique`` (whose
    output size the host would have to read)."""
    if ids.numel() == 0:  # argmax refuses an empty row
        return torch.zeros(0, dtype=torch.long, device=ids.device)
    eq = ids[:, None] == ids[None, :]
    return eq.to(torch.uint8).argmax(dim=1)  # argmax returns the first maximum


def pdml_triple_slots(labels: torch.Tensor, image_ids: torch.Tensor, keys: torch.Tensor,
                      groups: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Algorithm 1's triples in fixed-shape form: ``(positive, negative, valid)``, each [N, N].

    Row ``i`` is anchor ``i``'s candidates sorted by (image, polarity, key); slot ``(i, c)`` is a
    triple ``(i, positive[i, c], negative[i, c])`` where ``valid[i, c]``. Elsewhere the indices
    are in range but meaningless. ``keys`` [N, N] come from :func:`pairing_keys`; labels 255 or
    negative take no part. No host sync, no data-dependent shape.

    How: in anchor ``i``'s sorted row the negatives of image ``m`` sit just before its
    positives, each run in key order. The ``r``-th positive (rank ``r`` in its run, at column
    ``c``) pairs with the ``r``-th negative, at column ``c - n_neg``, when ``r < n_neg``: the
    one-to-one walk of Algorithm 1 (lines 15-19) with both lists in the random order.
    """
    _check_points(labels, image_ids, groups)
    n = labels.shape[0]
    device = labels.device
    labels = labels.long()
    ok = (labels >= 0) & (labels != IGNORE_INDEX)
    img = _first_index(image_ids.to(device))
    cand = ok[:, None] & ok[None, :] & (img[:, None] != img[None, :])
    if groups is not None:
        cand &= groups[:, None] == groups[None, :]
    same = labels[:, None] == labels[None, :]
    pos = cand & same
    # segment of (i, j): j's image, negatives (2m) before positives (2m + 1); others last (2N)
    seg = torch.where(cand, img[None, :] * 2 + pos.long(), 2 * n)
    # one sort by (segment, key, index): keys lie in [0, 1), so segment + key orders by segment
    # first; float64 holds a float32 key plus an integer < 2^29 exactly; stable = ties by index
    perm = torch.argsort(seg.double() + keys.to(device).double(), dim=1, stable=True)
    seg_s = seg.gather(1, perm)
    col = torch.arange(n, device=device).expand(n, n)
    starts = torch.ones_like(seg_s, dtype=torch.bool)
    starts[:, 1:] = seg_s[:, 1:] != seg_s[:, :-1]
    start = torch.cummax(torch.where(starts, col, torch.zeros_like(col)), dim=1).values
    rank = col - start  # rank of the candidate within its run
    # the run before a positive run is its image's negatives iff its segment is one lower
    before = (start - 1).clamp(min=0)
    prev_seg = seg_s.gather(1, before)
    has_neg = (start > 0) & (prev_seg == seg_s - 1)
    n_neg = torch.where(has_neg, rank.gather(1, before) + 1, torch.zeros_like(rank))
    is_pos = (seg_s < 2 * n) & (seg_s % 2 == 1)
    valid = is_pos & (rank < n_neg)
    partner = (col - n_neg).clamp(min=0)
    return perm, perm.gather(1, partner), valid


def pdml_triples(
    labels: torch.Tensor,
    image_ids: torch.Tensor,
    generator: torch.Generator | None = None,
    groups: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Algorithm 1's triples as three [T] long tensors (anchor, positive, negative).

    The compact list of :func:`pdml_triple_slots` (same keys from ``generator``): it reads T, a
    host sync, so it is for tests and inspection; the loss uses the slots.
    """
    _check_points(labels, image_ids, groups)
    keys = pairing_keys(labels.shape[0], generator, labels.device)
    pos, neg, valid = pdml_triple_slots(labels, image_ids, keys, groups)
    anchor, c = valid.nonzero(as_tuple=True)
    return anchor, pos[anchor, c], neg[anchor, c]


def _pairwise_distance(x: torch.Tensor) -> torch.Tensor:
    """[N, D] -> [N, N] Euclidean distances with a finite gradient where points coincide.

    Gram-matrix form (N^2 D flops, no [N, N, D] tensor). Centering first removes most of the
    cancellation error of ||a||^2 + ||b||^2 - 2ab, since distances do not depend on translation.
    """
    c = x - x.mean(dim=0, keepdim=True)
    sq = (c * c).sum(dim=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (c @ c.t())
    return d2.clamp_min(_DIST_EPS).sqrt()


#: variant -> default margin (the paper's m = 20 is in feature units; the others are relative).
PDML_VARIANTS: dict[str, float] = {"paper": 20.0, "relative": 0.5, "relative-detached": 0.5, "normalized": 0.5}


def _mean_pair_distance(dist: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean of ``dist`` over the pairs i < j of labelled points (the scale of the batch)."""
    ok = (labels >= 0) & (labels != IGNORE_INDEX)
    pair = ok[:, None] & ok[None, :]
    pair = torch.triu(pair, diagonal=1)
    return (dist * pair).sum() / pair.sum().clamp(min=1)


def _check_weights(alpha: float, beta: float, margin: float) -> None:
    for name, v in (("alpha", alpha), ("beta", beta), ("margin", margin)):
        if not (float(v) >= 0.0):
            raise ConfigError(f"PDML {name} must be a number >= 0, got {v!r}")


# a fixed pseudo-random priority per slot (Knuth's multiplicative hash, a bijection mod 2^32):
# which triples the distance subsample keeps, without a generator inside the traced loss
_HASH_MULT = 2654435761


def _stats(d_ap: torch.Tensor, d_an: torch.Tensor, hinge: torch.Tensor, valid: torch.Tensor) -> PDMLStats:
    """:class:`PDMLStats` of the slots ``valid`` of [N, N] distance/hinge tables (no host sync)."""
    v = valid.reshape(-1)
    ap, an = d_ap.detach().reshape(-1), d_an.detach().reshape(-1)
    zero = torch.zeros((), dtype=ap.dtype, device=ap.device)
    size = min(MAX_DISTANCE_SAMPLES, v.numel())
    # valid slots first (priority >= 2^32), then by the hash: all of them when T <= size
    prio = (torch.arange(v.numel(), device=v.device) * _HASH_MULT) % (1 << 32) + v.long() * (1 << 32)
    keep = torch.topk(prio, size, sorted=True).indices
    return PDMLStats(
        count=v.sum(),
        pos_sum=torch.where(v, ap, zero).sum(),
        neg_sum=torch.where(v, an, zero).sum(),
        active_count=(v & (hinge.detach().reshape(-1) > 0)).sum(),
        samples=torch.stack([ap[keep], an[keep]]).float(),
        sample_mask=v[keep],
    )


def pdml_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    image_ids: torch.Tensor,
    alpha: float = 0.8,
    beta: float = 1.0,
    margin: float = 20.0,
    generator: torch.Generator | None = None,
    groups: torch.Tensor | None = None,
    variant: str = "paper",
    keys: torch.Tensor | None = None,
) -> tuple[torch.Tensor, PDMLStats]:
    """PDML loss (Eq. 3-5) over Algorithm 1's cross-image triples, vectorised and sync-free.

    Args:
        embeddings: [N, D] point embeddings (computed in float32, or float64 if given float64;
            autocast is disabled inside so distances never run in half precision).
        labels: [N] class ids; 255 or negative = ignored point.
        image_ids: [N] ids of the image each point comes from (only equality matters); points
            of the same image never pair.
        alpha, beta, margin: Eq. 3 and 5 (paper: 0.8, 1, 20).
        generator: seeds the random pairing order (see module docstring); ``None`` uses the
            global RNG of the embeddings' device. Ignored when ``keys`` are given.
        groups: optional [N] subgroup ids (the paper's ``s``): points pair only within a group.
        variant: one of :data:`PDML_VARIANTS` (module docstring); ``margin`` is in its units.
        keys: optional [N, N] pairing keys from :func:`pairing_keys` (drawn outside, so this
            function traces whole under ``torch.compile``).

    Returns:
        ``(loss, stats)``: 0-d mean of ``L_t`` over all triples (a zero connected to
        ``embeddings`` when there are none), and :class:`PDMLStats` (device tensors). The stats'
        distances are the raw feature distances for every variant (what Figure 4 plots).
    """
    _check_weights(alpha, beta, margin)
    if variant not in PDML_VARIANTS:
        raise unknown_choice("PDML variant", variant, PDML_VARIANTS)
    if embeddings.dim() != 2:
        raise ValueError(f"pdml_loss expects embeddings [N, D]; got {tuple(embeddings.shape)}")
    _check_points(labels, image_ids, groups, embeddings.shape[0])
    device = embeddings.device
    labels = labels.to(device)
    image_ids = image_ids.to(device)
    groups = None if groups is None else groups.to(device)
    if keys is None:
        keys = pairing_keys(labels.shape[0], generator, device)
    with torch.autocast(device_type=device.type, enabled=False):
        x = embeddings if embeddings.dtype == torch.float64 else embeddings.float()
        pos, neg, valid = pdml_triple_slots(labels, image_ids, keys, groups)
        raw = _pairwise_distance(x)
        if variant == "normalized":
            dist = _pairwise_distance(F.normalize(x, dim=1))
        elif variant == "relative":
            dist = raw / _mean_pair_distance(raw, labels).clamp_min(_DIST_EPS)
        elif variant == "relative-detached":
            dist = raw / _mean_pair_distance(raw, labels).detach().clamp_min(_DIST_EPS)
        else:
            dist = raw
        d_ap = dist.gather(1, pos)
        d_an = dist.gather(1, neg)
        hinge = torch.relu(d_ap - d_an + margin)
        # masked mean over the slots that are triples: a zero with grad when there are none
        per = torch.where(valid, alpha * d_ap + beta * hinge, torch.zeros_like(d_ap))
        loss = per.sum() / valid.sum().clamp(min=1)
    return loss, _stats(raw.gather(1, pos), raw.gather(1, neg), hinge, valid)


def subgroups(image_ids: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """[N] subgroup ids: the batch's images, in order of first appearance, cut into consecutive
    groups of ``group_size`` images (the paper's subgroups ``s``). 0 or None: one group."""
    if group_size is not None and (int(group_size) != group_size or group_size < 0):
        raise ConfigError(f"PDML group size must be an integer >= 0 (0 = whole batch), got {group_size!r}")
    if not group_size or image_ids.numel() == 0:
        return torch.zeros_like(image_ids, dtype=torch.long)
    # order of first appearance without unique (no host sync): a point's image is the k-th to
    # appear when k first occurrences precede its image's first occurrence
    first = _first_index(image_ids)
    is_first = first == torch.arange(image_ids.numel(), device=image_ids.device)
    order = torch.cumsum(is_first.long(), 0)[first] - 1
    return torch.div(order, int(group_size), rounding_mode="floor")


# the literal loop (tests, benchmarks) and the cross-rank gather live beside this module; their
# names stay importable from here
from .pdml_gather import gather_points  # noqa: E402
from .pdml_reference import pdml_loss_reference  # noqa: E402
