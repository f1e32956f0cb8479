"""A split's images labelled by SAM from their clicks (the ``sam`` extension method).

:class:`SamLabeller` = a :class:`~pointparse.sam.masks.SamMasker` and a rule: images come in,
``batch_size`` at a time through the image encoder (several per call on CUDA, one at a time
with torch's threads on CPU, where batching buys nothing), each image's clicks are decoded in
one call and painted by the rule (:func:`pointparse.sam.rules.paint`). The next batch's images
are decoded and resized by a reader thread while the encoder runs.

:func:`sam_key_parts` is what a cache key needs from it: the rule (by name and definition) and
the checkpoint's sha256 (its bytes, never its path).
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from .paint import paint
from .rules import get_rule

#: bumped when the labels made for the same clicks, rule and weights would change
SAM_LABELS_VERSION = 1
#: images per encoder call by device type (CPU: one; the intra-op threads already fill the cores)
BATCH = {"cpu": 1, "cuda": 8}


def sam_key_parts(rule: str, sam_checkpoint: str | None) -> tuple[dict, dict]:
    """(params, inputs) for a cache key: the rule and the SAM weights' sha256."""
    from .weights import resolve_checkpoint, weights_digest

    params = {"rule": rule, "rule_def": dataclasses.asdict(get_rule(rule)), "code": SAM_LABELS_VERSION,
              "prompts": "each click one positive point, multimask"}
    return params, {"sam_weights": weights_digest(resolve_checkpoint(sam_checkpoint))}


class SamLabeller:
    """Labels images from their clicks with SAM and a rule (module docstring).

    ``masker``: an existing :class:`SamMasker` (tests pass one around a tiny random model);
    otherwise one is built from ``sam_checkpoint`` (None = the shipped MobileSAM) on ``device``.
    """

    def __init__(self, rule: str, sam_checkpoint: str | None = None, device: str = "auto",
                 batch_size: int | None = None, masker=None):
        from .masks import SamMasker

        self.rule = get_rule(rule)
        self.masker = masker or SamMasker(sam_checkpoint, device)
        self.batch_size = int(batch_size or BATCH.get(self.masker.device.type, 1))

    def label(self, image: np.ndarray, ys: np.ndarray, xs: np.ndarray, cls: np.ndarray) -> np.ndarray:
        """uint8 [H, W] labels of one image from its clicks (int64 [K] rows, columns, classes)."""
        m = self.masker
        emb = m.embed(m.prepare(image)[None])[0]
        return paint(m.decode(emb, image.shape[:2], ys, xs, cls), self.rule)

    def label_many(self, loads: Iterable[Callable[[], tuple]], timer: dict | None = None) -> Iterator[tuple[Any, np.ndarray]]:
        """``(obj, labels)`` for each ``load`` of ``loads``, in order; ``load()`` returns ``(obj,
        image, ys, xs, cls)``: anything the caller wants back, the uint8 RGB [H, W, 3] image and
        its clicks (int64 [K] rows, columns, classes).

        Images are loaded and prepared by one reader thread, a batch ahead; images without clicks
        skip SAM (all 255). ``timer`` (optional) accumulates seconds under ``encoder``,
        ``decoder`` and ``paint``.
        """
        import time

        import torch

        m = self.masker
        t = timer if timer is not None else {}

        def prepared(load):
            obj, image, ys, xs, cls = load()
            x = m.prepare(image) if len(cls) else None
            return obj, image.shape[:2], (ys, xs, cls), x

        def batches(it):
            buf = []
            for item in it:
                buf.append(item)
                if len(buf) == self.batch_size:
                    yield buf
                    buf = []
            if buf:
                yield buf

        with ThreadPoolExecutor(1) as pool:
            pending = None
            for batch in batches(iter(loads)):
                futs = [pool.submit(prepared, it) for it in batch]
                if pending is not None:
                    yield from self._finish(pending, t)
                pending = [f.result() for f in futs]
                # the encoder runs here while the pool already reads the next batch's images
                xs = [p[3] for p in pending if p[3] is not None]
                t0 = time.perf_counter()
                emb = m.embed(torch.stack(xs)) if xs else None
                t["encoder"] = t.get("encoder", 0.0) + time.perf_counter() - t0
                pending = (pending, emb)
            if pending is not None:
                yield from self._finish(pending, t)

    def _finish(self, pending, t: dict):
        import time

        batch, emb = pending
        j = 0
        for tag, size, (ys, xs, cls), x in batch:
            if x is None:
                yield tag, np.full(size, 255, np.uint8)
                continue
            t0 = time.perf_counter()
            cm = self.masker.decode(emb[j], size, ys, xs, cls)
            t1 = time.perf_counter()
            labels = paint(cm, self.rule)
            t["decoder"] = t.get("decoder", 0.0) + t1 - t0
            t["paint"] = t.get("paint", 0.0) + time.perf_counter() - t1
            j += 1
            yield tag, labels
