"""The online extension evaluated only where it can label anything: the training fast path.

``none``, ``region``, ``score+region`` and ``agree`` label pixels inside the clicks' ``region``²
squares only, so training samples the logits there (bilinear, exactly the upsampled values)
instead of upsampling whole images. Labels follow the package convention: class ids
``0..C-1``, 255 (``IGNORE_INDEX``) = no label.

Two forms of the square pixels, the same labels:

* :func:`click_squares` (training): fixed shape ``[N · region²]`` slots built from the batch's
  click list, with a ``valid`` mask (in the image, a labelled click, the one slot that owns its
  pixel). No ``nonzero``/``unique``, so no host sync: a GPU step never waits for the CPU.
* :func:`square_pixels`: the compact ``[M]`` list found from the click map (``nonzero`` and
  ``unique``: a host sync), for tests and one-off use.
"""

from __future__ import annotations

import torch

from .. import IGNORE_INDEX
from ..errors import ConfigError
from .online import LOCAL_MODES, _clicked_classes


def _offset_keys(r: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Offsets (oy, ox) of a ``(2r+1)²`` square and their priority: nearest click first, then
    the click above, then the one to the left (offset from the click to the pixel)."""
    side = 2 * r + 1
    off = torch.arange(-r, r + 1, device=device)
    oy, ox = torch.meshgrid(off, off, indexing="ij")
    oy, ox = oy.reshape(-1), ox.reshape(-1)
    key = (oy * oy + ox * ox) * side * side + (r - oy) * side + (r - ox)
    return oy, ox, key


@torch.no_grad()
def click_squares(point_labels: torch.Tensor, region: int, click_xy: torch.Tensor,
                  click_b: torch.Tensor) -> dict[str, torch.Tensor]:
    """The pixels of the clicks' ``region``² squares as ``N · region²`` fixed slots (no host sync).

    Args:
        point_labels: [B, H, W] int64 click map (255 off the clicks), as ``collate`` draws it.
        region: odd square side.
        click_xy: [N, 2] float click positions (x, y) in the crop, the batch's ``points_xy``;
            rounded and clamped as ``collate`` rounds them into the map.
        click_b: [N] long image of each click (``batch_index``).

    Returns a dict of [N · region²] tensors: ``b``, ``y``, ``x`` (clamped into the image),
    ``click`` (the click map there, 255 if none), ``nearest`` (the class of the nearest click
    whose square covers the pixel, :func:`square_pixels`'s tie-break) and ``valid`` (bool: the
    slot is a pixel inside the image, of a labelled click's square, and the one slot kept for
    that pixel). Invalid slots carry ``click`` = ``nearest`` = 255, so every label made from
    them is 255. A click's class is read back from the map, so two clicks rounded onto one
    pixel act as the one click the map holds.
    """
    lab = point_labels.long()
    B, H, W = lab.shape
    dev = lab.device
    cx = click_xy[:, 0].to(dev).round().long().clamp(0, W - 1)
    cy = click_xy[:, 1].to(dev).round().long().clamp(0, H - 1)
    cb = click_b.to(dev).long()
    ccls = lab[cb, cy, cx]  # [N]
    r = int(region) // 2
    oy, ox, key = _offset_keys(r, dev)
    py, px = cy[:, None] + oy[None], cx[:, None] + ox[None]  # [N, S]
    inside = (py >= 0) & (py < H) & (px >= 0) & (px < W) & (ccls != IGNORE_INDEX)[:, None]
    py, px = py.clamp(0, H - 1), px.clamp(0, W - 1)
    b = cb[:, None].expand_as(py)
    lin = torch.where(inside, (b * H + py) * W + px, B * H * W).reshape(-1)  # off-image slots: a dummy cell
    slots = lin.numel()
    # one winner per pixel: smallest (offset priority, slot index); the index breaks ties between
    # duplicate clicks so exactly one slot owns each pixel
    prio = (key[None].expand_as(py).reshape(-1) * max(slots, 1) + torch.arange(slots, device=dev))
    best = torch.full((B * H * W + 1,), torch.iinfo(torch.long).max, dtype=torch.long, device=dev)
    best.scatter_reduce_(0, lin, prio, reduce="amin")
    valid = inside.reshape(-1) & (best[lin] == prio)
    b, y, x = b.reshape(-1), py.reshape(-1), px.reshape(-1)
    none = torch.full_like(b, IGNORE_INDEX)
    return {"b": b, "y": y, "x": x, "valid": valid,
            "click": torch.where(valid, lab[b, y, x], none),
            "nearest": torch.where(valid, ccls[:, None].expand_as(py).reshape(-1), none)}




@torch.no_grad()
def square_pixels(point_labels: torch.Tensor, region: int) -> dict[str, torch.Tensor]:
    """The pixels inside any click's ``region``² square, each once, with what ``region`` mode gives them.

    ``none``, ``region`` and ``score+region`` can only label pixels inside these squares, so
    training evaluates the network there instead of on the whole upsampled image. Returns a dict
    of [M] tensors: ``b``, ``y``, ``x`` (pixel position), ``click`` (the click label at that
    pixel, 255 if none) and ``nearest`` (the class of the nearest click whose square covers it,
    with the same tie-break as :func:`online_extension`'s ``region`` mode).
    """
    lab = point_labels.long()
    B, H, W = lab.shape
    cb, cy, cx = (lab != IGNORE_INDEX).nonzero(as_tuple=True)
    ccls = lab[cb, cy, cx]
    r = int(region) // 2
    side = 2 * r + 1
    off = torch.arange(-r, r + 1, device=lab.device)
    oy, ox = torch.meshgrid(off, off, indexing="ij")
    oy, ox = oy.reshape(-1), ox.reshape(-1)
    py, px = cy[:, None] + oy[None], cx[:, None] + ox[None]
    valid = (py >= 0) & (py < H) & (px >= 0) & (px < W)
    lin = ((cb[:, None] * H + py) * W + px)[valid]
    # nearest click first; then the click above, then the one to the left (offset pixel -> click)
    key = ((oy * oy + ox * ox) * side * side + (r - oy) * side + (r - ox))[None].expand_as(py)[valid]
    cls = ccls[:, None].expand_as(py)[valid]
    uniq, inv = torch.unique(lin, return_inverse=True)
    best = torch.full((uniq.numel(),), torch.iinfo(torch.long).max, dtype=torch.long, device=lab.device)
    best.scatter_reduce_(0, inv, key, reduce="amin")
    nearest = torch.full_like(best, IGNORE_INDEX)
    win = key == best[inv]
    nearest[inv[win]] = cls[win]
    b = uniq // (H * W)
    y = (uniq % (H * W)) // W
    x = uniq % W
    return {"b": b, "y": y, "x": x, "click": lab[b, y, x], "nearest": nearest}


@torch.no_grad()
def extend_at_pixels(pix: dict[str, torch.Tensor], probs: torch.Tensor | None, point_labels: torch.Tensor,
                     threshold: float = 0.7, mode: str = "score+region") -> torch.Tensor:
    """Labels [M] that :func:`online_extension` gives the pixels of :func:`square_pixels`.

    ``probs`` [M, C] are the softmax probabilities at those pixels (needed for ``score+region``
    and ``agree``). Only :data:`LOCAL_MODES` are local to the squares; ``score`` needs the whole
    image and is refused here.
    """
    if mode == "none":
        return pix["click"].clone()
    if mode == "region":
        return torch.where(pix["click"] != IGNORE_INDEX, pix["click"], pix["nearest"])  # 255 off the slots
    if mode not in LOCAL_MODES:
        raise ConfigError(f"extension mode {mode!r} is not local to the click squares")
    conf, cls = probs.max(dim=1)
    present = _clicked_classes(point_labels, probs.shape[1])
    ok = (conf > threshold) & present[pix["b"], cls]
    if mode == "agree":
        ok &= cls == pix["nearest"]
    if "valid" in pix:  # a fixed-shape slot list: only the slots that are pixels of a square
        ok &= pix["valid"]
    lab = torch.where(ok, cls, IGNORE_INDEX)
    return torch.where(pix["click"] != IGNORE_INDEX, pix["click"], lab)


@torch.no_grad()
def extension_stats_at_pixels(pix: dict[str, torch.Tensor], labels: torch.Tensor, batch_size: int,
                              ground_truth: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """:func:`extension_stats` for labels known only at :func:`square_pixels` (same counts)."""
    dev = labels.device
    clicked = pix["click"] != IGNORE_INDEX
    labelled = labels != IGNORE_INDEX
    new = labelled & ~clicked
    zero = torch.zeros((), dtype=torch.long, device=dev)
    out = {"images": torch.full((), batch_size, dtype=torch.long, device=dev), "clicks": clicked.sum(),
           "new_pixels": new.sum()}
    if ground_truth is None:
        out.update(evaluated=zero, correct=zero.clone(), gt_pixels=zero.clone(), covered=zero.clone())
        return out
    gt = ground_truth.long()
    g = gt[pix["b"], pix["y"], pix["x"]]
    ok = g != IGNORE_INDEX
    evaluated = new & ok
    out.update(evaluated=evaluated.sum(), correct=(evaluated & (labels == g)).sum(),
               gt_pixels=(gt != IGNORE_INDEX).sum(), covered=(labelled & ok).sum())
    return out
