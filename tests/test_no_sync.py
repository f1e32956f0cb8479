"""Issue 23: the training losses trace whole, i.e. no host sync inside a step.

``torch.compile(backend=..., fullgraph=True)`` refuses any graph break: a ``.tolist()``, a
``bool(tensor)`` deciding control flow, a ``torch.Generator`` inside the function. Recent
Dynamo (2.14 here) no longer breaks on ``nonzero``, ``unique``, boolean indexing, ``bincount``
or ``.item()``: it captures them with *unbacked* symbols (sizes and values only the data
knows), and each is still a host sync on a GPU. So the backend here is the eager backend (it
runs the captured graph as is; no compiler needed) plus one check: no node of the graph may
carry an unbacked symbol. Tracing on CPU thus checks the property without a GPU. The compiled
result must equal the eager one. Also here: Algorithm 1's sampling distribution (chi-square), the fixed click squares
against the compact ones, and the deferred non-finite check of the training statistics.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest
import torch

from pointparse.crf import CRFConfig, crf_inputs, gated_crf_loss
from pointparse.extension import (EXTENSION_MODES, click_squares, extend_at_pixels, extension_stats,
                                  extension_stats_at_pixels, online_extension, square_pixels)
from pointparse.losses import click_class_weights, pixel_cross_entropy, point_cross_entropy, sample_embeddings
from pointparse.model import IMAGENET_MEAN, IMAGENET_STD
from pointparse.pdml import PDML_VARIANTS, pairing_keys, pdml_loss, pdml_triples, subgroups
from pointparse.step_stats import STEP_KEYS, EpochSums, StepOutput

compile_ok = hasattr(torch, "compile") and hasattr(torch, "_dynamo")
needs_compile = pytest.mark.skipif(not compile_ok, reason="torch.compile is not available")


class HostSync(AssertionError):
    """A traced graph holds a data-dependent size or value (a host sync on a GPU)."""


def eager_without_syncs(gm, example_inputs):
    """The ``eager`` backend (returns the graph's own forward) after checking that no node's
    value has an unbacked (data-dependent) symbol in its shape or value."""
    from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

    for node in gm.graph.nodes:
        val = node.meta.get("example_value")
        for v in val if isinstance(val, (tuple, list)) else [val]:
            if v is not None and free_unbacked_symbols(v):
                raise HostSync(f"data-dependent result, a host sync on a GPU: {node.format_node()}")
    return gm.forward


def traced(fn):
    """``fn`` compiled whole (any graph break or data-dependent node raises), fresh Dynamo cache."""
    torch._dynamo.reset()
    return torch.compile(fn, backend=eager_without_syncs, fullgraph=True, dynamic=False)


@needs_compile
@pytest.mark.parametrize("op", ["nonzero", "unique", "mask", "item", "bincount"])
def test_the_check_catches_each_kind_of_sync(op):
    fn = {"nonzero": lambda x: x.nonzero(), "unique": lambda x: torch.unique(x), "mask": lambda x: x[x > 0],
          "item": lambda x: x.sum().item() + 1, "bincount": lambda x: torch.bincount((x > 0).long())}[op]
    with pytest.raises(Exception, match="HostSync|Unsupported|data-dependent"):
        traced(fn)(torch.randn(5))


def _clicks(B=3, C=5, H=29, W=33, per=6, seed=0):
    """A click list and its map as ``collate`` makes them (one image without clicks, a duplicate
    click, clicks on the border)."""
    g = torch.Generator().manual_seed(seed)
    xy, cls, b = [], [], []
    for i in range(B - 1):
        for _ in range(per):
            xy.append([float(torch.randint(0, W, (1,), generator=g)), float(torch.randint(0, H, (1,), generator=g))])
            cls.append(int(torch.randint(0, C, (1,), generator=g)))
            b.append(i)
    xy += [[0.0, 0.0], [0.0, 0.0], [W - 1.0, H - 1.0]]  # a duplicate at a corner, the far corner
    cls += [1, 2, 3]
    b += [0, 0, 1]
    xy, cls, b = torch.tensor(xy), torch.tensor(cls), torch.tensor(b)
    points = torch.full((B, H, W), 255, dtype=torch.long)
    points[b, xy[:, 1].round().long(), xy[:, 0].round().long()] = cls
    return points, xy, cls, b


# ---- each loss traces whole and equals eager ---------------------------------------------------

@needs_compile
@pytest.mark.parametrize("balanced", [False, True])
def test_point_cross_entropy_traces(balanced):
    points, *_ = _clicks()
    logits = torch.randn(points.shape[0], 5, *points.shape[1:], generator=torch.Generator().manual_seed(1))
    w = click_class_weights([3, 1, 4, 1, 5], 0.5) if balanced else None
    eager = point_cross_entropy(logits, points, class_weights=w)
    torch.testing.assert_close(traced(lambda l, p: point_cross_entropy(l, p, class_weights=w))(logits, points), eager)


@needs_compile
@pytest.mark.parametrize("variant", sorted(PDML_VARIANTS))
def test_pdml_traces_every_variant(variant):
    g = torch.Generator().manual_seed(3)
    ids = torch.arange(5).repeat_interleave(7) * 10 + 3  # sparse ids
    labels = torch.randint(0, 3, (ids.numel(),), generator=g)
    labels[::9] = 255
    x = torch.randn(ids.numel(), 8, generator=g) * 3
    keys = pairing_keys(ids.numel(), torch.Generator().manual_seed(0), "cpu")

    def fn(x, labels, ids, keys):
        loss, st = pdml_loss(x, labels, ids, variant=variant, groups=subgroups(ids, 2), keys=keys)
        return loss, st.count, st.pos_sum, st.neg_sum, st.active_count, st.samples, st.sample_mask

    eager = fn(x, labels, ids, keys)
    assert int(eager[1]) > 0
    for a, b in zip(traced(fn)(x, labels, ids, keys), eager):
        torch.testing.assert_close(a, b)


@needs_compile
def test_pdml_traces_with_the_global_generator():
    # the call the old code took too: keys drawn inside from the global RNG
    ids = torch.tensor([0, 0, 1, 1, 2, 2])
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    loss = traced(lambda x, l, i: pdml_loss(x, l, i)[0])(x, labels, ids)
    assert torch.isfinite(loss)


@needs_compile
@pytest.mark.parametrize("mode", sorted(EXTENSION_MODES))
def test_online_extension_traces_every_mode(mode):
    points, *_ = _clicks()
    probs = torch.softmax(torch.randn(points.shape[0], 5, *points.shape[1:],
                                      generator=torch.Generator().manual_seed(2)) * 3, 1)
    gt = torch.randint(0, 5, points.shape, generator=torch.Generator().manual_seed(4))

    def fn(probs, points, gt):
        ext = online_extension(probs, points, threshold=0.4, region=5, mode=mode)
        return ext, extension_stats(ext, points, gt)

    eager = fn(probs, points, gt)
    got = traced(fn)(probs, points, gt)
    assert torch.equal(got[0], eager[0]) and {k: int(v) for k, v in got[1].items()} == \
        {k: int(v) for k, v in eager[1].items()}


@needs_compile
@pytest.mark.parametrize("mode", ["none", "region", "score+region", "agree"])
def test_click_square_path_traces(mode):
    points, xy, _, b = _clicks()
    B, H, W = points.shape
    low = torch.randn(B, 5, 8, 9, generator=torch.Generator().manual_seed(5))
    gt = torch.randint(0, 5, points.shape, generator=torch.Generator().manual_seed(6))

    def fn(low, points, xy, b, gt):
        pix = click_squares(points, 5 if mode != "none" else 1, xy, b)
        pl = sample_embeddings(low, torch.stack([pix["x"], pix["y"]], 1).float(), pix["b"], (H, W))
        lab = extend_at_pixels(pix, torch.softmax(pl, 1), points, 0.4, mode)
        ce = pixel_cross_entropy(pl, lab, pix["b"], B)
        return ce, lab, extension_stats_at_pixels(pix, lab, B, gt)

    eager = fn(low, points, xy, b, gt)
    got = traced(fn)(low, points, xy, b, gt)
    torch.testing.assert_close(got[0], eager[0])
    assert torch.equal(got[1], eager[1])


@needs_compile
def test_gated_crf_traces():
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 4, 9, 10, generator=g)
    images = torch.randn(2, 3, 33, 37, generator=g)
    valid = torch.ones(2, 33, 37, dtype=torch.bool)
    valid[:, -5:] = False

    def fn(logits, images, valid):
        probs, rgb, gate = crf_inputs(logits, images, valid, IMAGENET_MEAN, IMAGENET_STD)
        return gated_crf_loss(probs, rgb, gate, CRFConfig())

    torch.testing.assert_close(traced(fn)(logits, images, valid), fn(logits, images, valid))


@needs_compile
@pytest.mark.parametrize("extension", ["agree", "score"])
def test_whole_training_losses_trace(extension):
    # the trainer's compute_losses after the forward pass: CE + extension + CRF + PDML + stats
    from pointparse.objective import compute_losses
    from pointparse.train_config import TrainConfig

    points, xy, cls, b = _clicks()
    B, H, W = points.shape
    g = torch.Generator().manual_seed(8)

    class Fixed(torch.nn.Module):  # the network's outputs as parameters: no forward to trace
        def __init__(self):
            super().__init__()
            self.logits = torch.nn.Parameter(torch.randn(B, 5, 8, 9, generator=g))
            self.embeddings = torch.nn.Parameter(torch.randn(B, 6, 8, 9, generator=g))

        def forward(self, x):
            return {"logits": self.logits * 1.0, "embeddings": self.embeddings * 1.0}

    model = Fixed()

    batch = {"image": torch.randn(B, 3, H, W, generator=g), "points": points, "dense": points.clone(),
             "valid": torch.ones(B, H, W, dtype=torch.bool), "points_xy": xy, "points_cls": cls,
             "batch_index": b, "image_ids": b + 5}
    cfg = TrainConfig(weights="none", extension=extension, crf_weight=0.1, pdml=True, pdml_group_size=2,
                      class_balance="sqrt")
    keys = pairing_keys(cls.numel(), torch.Generator().manual_seed(0), "cpu")
    weights = click_class_weights([2, 2, 2, 2, 2], 0.5)

    def fn(batch, keys):
        res = compute_losses(model, batch, cfg, 0, None, None, class_weights=weights, pairing_keys_=keys)
        return res.loss, res.vector()

    eager = fn(batch, keys)
    assert eager[1][STEP_KEYS.index("triples")] > 0
    for a, e in zip(traced(fn)(batch, keys), eager):
        torch.testing.assert_close(a, e)


@needs_compile
def test_confusion_update_traces():
    from pointparse.evaluate import ConfusionMatrix

    pred = torch.randint(0, 4, (2, 9, 7), generator=torch.Generator().manual_seed(0))
    target = torch.randint(0, 4, (2, 9, 7), generator=torch.Generator().manual_seed(1))
    target[:, :2] = 255
    eager, compiled = ConfusionMatrix(4), ConfusionMatrix(4)
    eager.update(pred, target)
    traced(compiled.update)(pred, target)
    assert torch.equal(compiled.mat, eager.mat) and int(eager.mat.sum()) == 2 * 7 * 7
    traced(compiled.update)(pred + 4, target)  # out of range: counted, raised when read
    with pytest.raises(ValueError, match="0..3"):
        compiled.mat


# ---- Algorithm 1's sampling distribution ---------------------------------------------------------

def test_pairing_distribution_is_uniform_chi_square():
    # anchor 0 (image 0, class 0); image 1 holds three positives (1, 2, 3) and two negatives (4, 5).
    # Algorithm 1 walks both in a uniformly random order and pairs them one-to-one: 2 triples,
    # and each of the 3 * 2 ways (which positive is left out x the bijection) is equally likely.
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    ids = torch.tensor([0, 1, 1, 1, 1, 1])
    outcomes = Counter()
    runs = 1800
    for seed in range(runs):
        a, p, n = pdml_triples(labels, ids, generator=torch.Generator().manual_seed(seed))
        pairs = frozenset((j, k) for i, j, k in zip(a.tolist(), p.tolist(), n.tolist()) if i == 0)
        assert len(pairs) == 2
        outcomes[pairs] += 1
    cells = {frozenset(zip(ps, (4, 5))) for ps in itertools.permutations((1, 2, 3), 2)}
    assert set(outcomes) == cells and len(cells) == 6
    expected = runs / len(cells)
    chi2 = sum((outcomes[c] - expected) ** 2 / expected for c in cells)
    assert chi2 < 20.52, (chi2, outcomes)  # chi-square, 5 degrees of freedom, p = 0.001


def test_pairing_keys_copy_keeps_the_draw():
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(pairing_keys(7, g1, "cpu"), torch.rand(7, 7, generator=g2))


# ---- fixed click squares = the compact ones ------------------------------------------------------

@pytest.mark.parametrize("region", [1, 3, 5])
def test_click_squares_equal_square_pixels(region):
    points, xy, _, b = _clicks(seed=region)
    xy = torch.cat([xy, torch.tensor([[4.0, 4.0]])])  # a click whose class the map does not hold
    b = torch.cat([b, torch.tensor([2])])
    fixed = click_squares(points, region, xy, b)
    compact = square_pixels(points, region)
    v = fixed["valid"]
    assert int(v.sum()) == compact["b"].numel()
    key = lambda d, m: sorted(zip(*(d[k][m].tolist() for k in ("b", "y", "x", "click", "nearest"))))
    assert key(fixed, v) == key(compact, torch.ones_like(compact["b"], dtype=torch.bool))
    assert (fixed["click"][~v] == 255).all() and (fixed["nearest"][~v] == 255).all()


# ---- the trainer's statistics: summed on the device, read once, non-finite deferred ---------------

def test_epoch_sums_defer_the_non_finite_check():
    acc = EpochSums(torch.device("cpu"), extension=False)
    image = {"image": torch.zeros(2, 3, 4, 4)}
    vecs = []
    for it, value in enumerate([1.0, 2.0, math.nan, 3.0]):
        res = StepOutput(torch.tensor(value), {"ce": torch.tensor(value)})
        vecs.append(acc.add(it, res, image))
    values, bad = acc.read(vecs[-1])
    assert bad == 2 and values[0] == 3.0
    assert acc.steps == 4 and acc.images == 8 and math.isnan(float(acc.sums[0]))
