"""COCO compressed RLE decoded straight into each mask's box (:func:`rle_crops`), vectorised over
all masks of an image; the COCO reader's fast path, pycocotools' decoder for anything else."""

from __future__ import annotations

import numpy as np

#: longest run value (characters) pycocotools decodes without overflowing its 32-bit shifts
_RLE_MAX_CHARS = 6


def rle_crops(strings: list[bytes], h: int, w: int) -> list:
    """Decode the COCO compressed RLE ``strings`` of one ``h`` x ``w`` image, each into its box only.

    One entry per string: ``(area, y0, x0, crop_t)`` with ``crop_t`` bool [bw, bh] the *transposed*
    box tight around the mask's pixels (a view into one buffer shared by the image's masks;
    ``crop_t.T`` is the mask in the box), ``(0, 0, 0, None)`` for an
    empty mask, or ``None`` when the string is not a well-formed RLE of ``h * w`` pixels (the
    caller decodes it with pycocotools then).

    The format (pycocotools' ``rleToString``): run lengths alternate 0s and 1s down the columns
    (column-major), the first run counts 0s; each is written in 5-bit groups, low bits first, as
    characters ``48 + group`` with bit 0x20 = "more groups follow" and, in the last group, bit
    0x10 = negative; from the third run on a run is stored as the difference to the run two
    before. All strings are decoded together in a few vectorised passes, and every mask's runs
    are cut at column ends and placed into its own box, so the work is proportional to the runs
    and box areas, never to the image size per mask.
    """
    S = len(strings)
    out = [None] * S
    if S == 0:
        return out
    lens = np.fromiter((len(s) for s in strings), np.int64, S)
    keep = np.flatnonzero(lens > 0)
    if len(keep) == 0:
        return out
    if len(keep) < S:
        strings = [strings[j] for j in keep.tolist()]
        lens = lens[keep]
    c = np.frombuffer(b"".join(strings), np.uint8).astype(np.int64) - 48
    n = len(c)
    s_end = np.cumsum(lens) - 1                    # last char of each string
    s_start = s_end - lens + 1
    bad_char = (c < 0) | (c > 63)
    endv = (c & 0x20) == 0
    trunc = ~endv[s_end]                           # a string ending inside a value
    endv[s_end] = True                             # values never run across strings
    vend = np.flatnonzero(endv)
    vstart = np.empty_like(vend)
    vstart[0] = 0
    vstart[1:] = vend[:-1] + 1
    vlen = vend - vstart + 1
    k = np.arange(n, dtype=np.int64) - np.repeat(vstart, vlen)
    x = np.add.reduceat((c & 0x1F) << (5 * np.minimum(k, 11)), vstart)
    neg = (c[vend] & 0x10) != 0
    x[neg] |= -(np.int64(1) << (5 * np.minimum(vlen[neg], 12)))
    # values per string, and each value's index m within its string
    nv = np.add.reduceat(endv.astype(np.int64), s_start)
    first = np.cumsum(nv) - nv
    sid = np.repeat(np.arange(len(strings)), nv)
    m = np.arange(len(x), dtype=np.int64) - first[sid]
    odd = (m & 1) == 1
    zo = np.where(odd, x, 0)
    ze = np.where(~odd & (m > 0), x, 0)
    co, ce = np.cumsum(zo), np.cumsum(ze)
    co -= np.repeat(co[first] - zo[first], nv)
    ce -= np.repeat(ce[first] - ze[first], nv)
    cnts = np.where(m == 0, x, np.where(odd, co, ce))   # pycocotools: x += cnts[m-2] for m > 2
    # per-string checks
    bad = (np.add.reduceat(bad_char.astype(np.int64), s_start) > 0) | trunc
    bad |= np.add.reduceat((vlen > _RLE_MAX_CHARS).astype(np.int64), first) > 0
    bad |= np.add.reduceat(((cnts < 0) | (cnts >= 1 << 32)).astype(np.int64), first) > 0
    total = np.add.reduceat(cnts, first)
    area = np.add.reduceat(np.where(odd, cnts, 0), first)
    bad |= total != h * w
    # one-runs of good strings, as [S, E) flat column-major positions
    cnts[bad[sid]] = 0
    pos = np.cumsum(cnts) - cnts
    pos -= np.repeat(pos[first], nv)
    one = odd & (cnts > 0) & ~bad[sid]
    rs, rlen, rsid = pos[one], cnts[one], sid[one]
    re_ = rs + rlen
    cs, ce_ = rs // h, (re_ - 1) // h
    wrap = ce_ > cs
    ys = np.where(wrap, 0, rs % h)
    ye = np.where(wrap, h - 1, (re_ - 1) % h)
    for j in np.flatnonzero(~bad & (area == 0)).tolist():
        out[keep[j]] = (0, 0, 0, None)
    for j in np.flatnonzero(bad).tolist():
        out[keep[j]] = None
    if len(rs) == 0:
        return out
    # runs of each layer are contiguous, in layer order
    lstart = np.flatnonzero(np.r_[True, rsid[1:] != rsid[:-1]])
    lid = rsid[lstart]                               # the strings with pixels
    x0 = cs[lstart]
    lend = np.r_[lstart[1:], len(rs)] - 1
    x1 = ce_[lend] + 1
    y0 = np.minimum.reduceat(ys, lstart)
    y1 = np.maximum.reduceat(ye, lstart) + 1
    bw, bh = x1 - x0, y1 - y0
    size = bw * bh
    base = np.cumsum(size) - size
    # split runs into column pieces
    ncol = ce_ - cs + 1
    rid = np.repeat(np.arange(len(rs)), ncol)
    col = cs[rid] + (np.arange(len(rid)) - np.repeat(np.cumsum(ncol) - ncol, ncol))
    py0 = np.where(col == cs[rid], rs[rid] % h, 0)
    py1 = np.where(col == ce_[rid], (re_[rid] - 1) % h + 1, h)
    li = np.repeat(np.arange(len(lstart)), np.diff(np.r_[lstart, len(rs)]))[rid]
    st = base[li] + (col - x0[li]) * bh[li] + (py0 - y0[li])
    en = st + (py1 - py0)
    seg = np.empty(2 * len(st) + 1, np.int64)
    seg[0] = st[0]
    seg[2:-1:2] = st[1:] - en[:-1]
    seg[1:-1:2] = py1 - py0
    seg[-1] = int(size.sum()) - en[-1]
    pat = np.zeros(len(seg), np.uint8)
    pat[1::2] = 1
    flat = np.repeat(pat, seg).view(np.bool_)
    keep, area = keep.tolist(), area.tolist()
    for j, b, n, cw, ch, y, x in zip(lid.tolist(), base.tolist(), size.tolist(), bw.tolist(), bh.tolist(),
                                     y0.tolist(), x0.tolist()):
        out[keep[j]] = (area[j], y, x, flat[b:b + n].reshape(cw, ch))
    return out
