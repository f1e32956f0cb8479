"""Algorithm 1 of the PDML paper as literal Python loops: the slow reference that the vectorised
:func:`pointparse.pdml.pdml_loss` is tested and benchmarked against (same key matrix, so the
same triples). Labels: class ids ``0..C-1``, 255 or negative = ignored point.
"""

from __future__ import annotations

import torch

from . import IGNORE_INDEX
from .pdml import _check_points, pairing_keys


def pdml_loss_reference(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    image_ids: torch.Tensor,
    alpha: float = 0.8,
    beta: float = 1.0,
    margin: float = 20.0,
    generator: torch.Generator | None = None,
    groups: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
    """Algorithm 1 as literal Python loops: the slow reference for tests and benchmarks only.

    Same arguments and pairing order as :func:`pdml_loss` (it draws the same key matrix from
    ``generator``); distances are plain ``torch.linalg.vector_norm(a - b)``. Returns the loss
    and the list of ``(anchor, positive, negative)`` index triples in loop order.
    """
    _check_points(labels, image_ids, groups, embeddings.shape[0])
    n = labels.shape[0]
    keys = pairing_keys(n, generator, embeddings.device).cpu().tolist()
    lab = [int(v) for v in labels.tolist()]
    img = [int(v) for v in image_ids.tolist()]
    grp = [0] * n if groups is None else [int(v) for v in groups.tolist()]
    x = embeddings if embeddings.dtype == torch.float64 else embeddings.float()
    losses, triples = [], []
    for s in dict.fromkeys(grp):  # line 2: each subgroup s
        images = list(dict.fromkeys(img[k] for k in range(n) if grp[k] == s))
        for im_n in images:  # line 3
            for im_m in images:  # line 4
                if im_m == im_n:
                    continue
                e_n = [k for k in range(n) if img[k] == im_n and grp[k] == s and lab[k] >= 0 and lab[k] != IGNORE_INDEX]
                e_m = [k for k in range(n) if img[k] == im_m and grp[k] == s and lab[k] >= 0 and lab[k] != IGNORE_INDEX]
                for i in e_n:  # line 6
                    e_pos = [j for j in e_m if lab[j] == lab[i]]
                    e_neg = [j for j in e_m if lab[j] != lab[i]]
                    e_pos.sort(key=lambda j: (keys[i][j], j))  # line 16: random selection order
                    e_neg.sort(key=lambda j: (keys[i][j], j))
                    for p, q in zip(e_pos, e_neg):  # lines 15-19
                        d_ap = torch.linalg.vector_norm(x[i] - x[p])
                        d_an = torch.linalg.vector_norm(x[i] - x[q])
                        losses.append(alpha * d_ap + beta * torch.clamp(d_ap - d_an + margin, min=0))
                        triples.append((i, p, q))
    if not losses:
        return x.sum() * 0.0, triples
    return torch.stack(losses).mean(), triples
