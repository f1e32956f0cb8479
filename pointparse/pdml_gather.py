"""PDML across processes: every rank gathers all ranks' points (with gradient) and computes the
same global-mean loss (scaling argument in :mod:`pointparse.pdml`'s docstring).

No device synchronisation: the ranks' point counts are the embeddings' row counts, which the
host knows; they are exchanged on the CPU (through a gloo group when the default group is NCCL)
and everything else stays on the device. A single process returns its inputs untouched.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


#: (default process group, the gloo group of its ranks that host integers go through)
_host: tuple = (None, None)


def _host_group():
    """A process group for CPU tensors: the default one when it is gloo, else a gloo group of the
    same ranks made once per default group (an integer sent through NCCL would be copied to the
    device and back)."""
    global _host
    if "gloo" in dist.get_backend():  # "gloo", or a per-device list such as "cpu:gloo,cuda:nccl"
        return None
    if _host[0] is not dist.group.WORLD:
        _host = (dist.group.WORLD, dist.new_group(backend="gloo"))
    return _host[1]


def gather_points(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    image_ids: torch.Tensor,
    groups: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """All-gather every rank's points (rank order), with gradient for ``embeddings``.

    Ranks may hold different numbers of points: the counts (``embeddings.shape[0]``, known to the
    host) are exchanged on the CPU, rows padded to the largest, gathered, then cut back, so the
    device is never read. ``image_ids`` (any integers) are made distinct across ranks as
    ``id * W + rank`` (``W`` ranks: one integer per (id, rank) pair, no bound needed); PDML uses
    them only for equality, and :func:`subgroups` orders images by first appearance, so the
    values' order does not matter. ``groups`` are gathered unchanged (compute :func:`subgroups`
    on the gathered ids instead). Without an initialised process group of size > 1 the inputs are
    returned unchanged.

    Scaling: use the global-mean :func:`pdml_loss` of the gathered set unscaled on every rank.
    The all_gather backward sums the ``W`` ranks' gradients for each rank's rows (``W`` times
    the single-process gradient) and DDP's averaging divides by ``W`` again.
    """
    if not _distributed():
        return embeddings, labels, image_ids, groups
    import torch.distributed.nn.functional as dist_fn  # loads the RPC machinery: DDP runs only

    world = dist.get_world_size()
    device = embeddings.device
    count = torch.tensor([embeddings.shape[0]], dtype=torch.long)  # on the CPU: its value is the host's
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count, group=_host_group())
    counts = torch.cat(counts).tolist()  # a CPU tensor: no device read
    rows = max(max(counts), 1)

    def pad(t: torch.Tensor) -> torch.Tensor:
        extra = rows - t.shape[0]
        return torch.cat([t, t.new_zeros((extra,) + tuple(t.shape[1:]))]) if extra else t

    def plain_gather(t: torch.Tensor) -> list[torch.Tensor]:
        out = [torch.empty_like(pad(t)) for _ in range(world)]
        dist.all_gather(out, pad(t).contiguous())
        return out

    with warnings.catch_warnings():
        # deprecated in favour of a private API, but it is the public autograd-aware all_gather
        warnings.simplefilter("ignore", FutureWarning)
        emb_all = dist_fn.all_gather(pad(embeddings))
    emb = torch.cat([e[:c] for e, c in zip(emb_all, counts)])
    lab = torch.cat([t[:c] for t, c in zip(plain_gather(labels.to(device)), counts)])
    ids_all = plain_gather(image_ids.to(device))
    ids = torch.cat([t[:c].long() * world + r for r, (t, c) in enumerate(zip(ids_all, counts))])
    grp = None
    if groups is not None:
        grp = torch.cat([t[:c] for t, c in zip(plain_gather(groups.to(device)), counts)])
    return emb, lab, ids, grp
