"""PDML across processes: every rank gathers all ranks' points (with gradient) and computes the
same global-mean loss (scaling argument in :mod:`pointparse.pdml`'s docstring).

Not sync-free: the ranks' point counts are exchanged and read by the host to unpad (DDP runs
only; a single process returns its inputs untouched).
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_points(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    image_ids: torch.Tensor,
    groups: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """All-gather every rank's points (rank order), with gradient for ``embeddings``.

    Ranks may hold different numbers of points (counts are gathered first, rows padded to the
    maximum, gathered, then unpadded). ``image_ids`` are taken as local to each rank and made
    globally distinct as ``rank * K + id`` (``K`` = 1 + the largest id on any rank; ids must be
    >= 0), so two ranks' "image 0" are never mistaken for one image; ``groups`` are gathered
    unchanged (compute :func:`subgroups` on the gathered ids instead). Without an initialised
    process group of size > 1 the inputs are returned unchanged.

    Scaling: use the global-mean :func:`pdml_loss` of the gathered set unscaled on every rank.
    The all_gather backward sums the ``W`` ranks' gradients for each rank's rows (``W`` times
    the single-process gradient) and DDP's averaging divides by ``W`` again.
    """
    if not _distributed():
        return embeddings, labels, image_ids, groups
    import torch.distributed.nn.functional as dist_fn  # loads the RPC machinery: DDP runs only

    world = dist.get_world_size()
    device = embeddings.device
    count = torch.tensor([embeddings.shape[0]], dtype=torch.long, device=device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    counts = [int(c) for c in counts]
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
    ids_parts = [t[:c].long() for t, c in zip(plain_gather(image_ids.to(device)), counts)]
    ids_all = torch.cat(ids_parts)
    if ids_all.numel() and int(ids_all.min()) < 0:
        raise ValueError("gather_points needs image_ids >= 0 to make them distinct across ranks")
    k = int(ids_all.max()) + 1 if ids_all.numel() else 1
    ids = torch.cat([t + r * k for r, t in enumerate(ids_parts)])
    grp = None
    if groups is not None:
        grp = torch.cat([t[:c] for t, c in zip(plain_gather(groups.to(device)), counts)])
    return emb, lab, ids, grp
