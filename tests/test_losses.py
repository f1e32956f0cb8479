"""Point cross-entropy (Eq. 2), PDML (Eq. 3-5, Algorithm 1) and point sampling (the gather across
ranks: test_pdml_gather.py)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from pointparse.errors import ConfigError
from pointparse.losses import point_cross_entropy, sample_embeddings
from pointparse.pdml import MAX_DISTANCE_SAMPLES, pdml_loss, pdml_loss_reference, pdml_triples, subgroups


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------ point CE


def test_point_ce_matches_hand_computation():
    logits = torch.zeros(2, 3, 2, 2)
    logits[0, :, 0, 0] = torch.tensor([2.0, 0.0, 0.0])
    logits[0, :, 1, 1] = torch.tensor([0.0, 1.0, 0.0])
    logits[1, :, 0, 1] = torch.tensor([0.0, 0.0, 3.0])
    labels = torch.full((2, 2, 2), 255, dtype=torch.long)
    labels[0, 0, 0] = 0
    labels[0, 1, 1] = 2
    labels[1, 0, 1] = 2
    ce00 = -math.log(math.exp(2) / (math.exp(2) + 2))
    ce011 = -math.log(1 / (2 + math.e))
    ce1 = -math.log(math.exp(3) / (math.exp(3) + 2))
    expected = ((ce00 + ce011) / 2 + ce1) / 2  # per-image mean, then mean over images
    assert point_cross_entropy(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_point_ce_excludes_images_without_labels():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 5, 5)
    labels = torch.full((3, 5, 5), 255, dtype=torch.long)
    labels[0, 1, 2] = 3
    labels[2, 4, 4] = 1
    labels[2, 0, 0] = 0
    expected = (F.cross_entropy(logits[:1], labels[:1], ignore_index=255) + F.cross_entropy(logits[2:], labels[2:], ignore_index=255)) / 2
    torch.testing.assert_close(point_cross_entropy(logits, labels), expected)


def test_point_ce_equals_cross_entropy_for_one_image():
    torch.manual_seed(1)
    logits = torch.randn(1, 5, 8, 8, requires_grad=True)
    labels = torch.randint(0, 5, (1, 8, 8))
    labels[torch.rand(1, 8, 8) < 0.7] = 255
    ours = point_cross_entropy(logits, labels)
    ref = F.cross_entropy(logits, labels, ignore_index=255)
    torch.testing.assert_close(ours, ref)
    g1 = torch.autograd.grad(ours, logits)[0]
    g2 = torch.autograd.grad(ref, logits)[0]
    torch.testing.assert_close(g1, g2)


def test_point_ce_all_ignored_is_zero_with_grad():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    labels = torch.full((2, 4, 4), 255, dtype=torch.long)
    loss = point_cross_entropy(logits, labels)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_point_ce_under_autocast():
    torch.manual_seed(2)
    x = torch.randn(2, 6, 4, 4)
    conv = torch.nn.Conv2d(6, 3, 1)
    labels = torch.full((2, 4, 4), 255, dtype=torch.long)
    labels[0, 0, 0], labels[1, 3, 2] = 1, 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(x)
        assert logits.dtype == torch.bfloat16
        loss = point_cross_entropy(logits, labels)
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(conv.weight.grad).all()
    ref = point_cross_entropy(logits.float(), labels)
    torch.testing.assert_close(loss, ref)


# ------------------------------------------------------------------------------ PDML


def test_pdml_three_points_by_hand():
    # image 0: anchor a (class 0); image 1: p (class 0) 3 away, n (class 1) 4 away.
    # Only a has both a positive and a negative in the other image: one triple.
    x = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1])
    ids = torch.tensor([0, 1, 1])
    loss, stats = pdml_loss(x, labels, ids, alpha=0.8, beta=1.0, margin=20.0, generator=gen(0))
    assert loss.item() == pytest.approx(0.8 * 3 + (3 - 4 + 20), rel=1e-6)
    assert stats.num_triples == 1
    assert stats.mean_pos == pytest.approx(3.0) and stats.mean_neg == pytest.approx(4.0)
    assert stats.active == 1.0
    loss.backward()
    a, p, n = x.detach()
    ga = 0.8 * (a - p) / 3 + (a - p) / 3 - (a - n) / 4
    torch.testing.assert_close(x.grad[0], ga)
    torch.testing.assert_close(x.grad[1], -(0.8 + 1) * (a - p) / 3)
    torch.testing.assert_close(x.grad[2], (a - n) / 4)
    # a margin too small to be active leaves only alpha * dis(+)
    small, st = pdml_loss(x, labels, ids, margin=0.5, generator=gen(0))
    assert small.item() == pytest.approx(2.4, rel=1e-6) and st.active == 0.0


def test_pdml_four_points_by_hand():
    # image 0: a=(0,0) class 0, b=(0,1) class 1; image 1: p=(3,0) class 0, n=(0,4) class 1.
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 4.0]])
    labels = torch.tensor([0, 1, 0, 1])
    ids = torch.tensor([7, 7, 9, 9])
    r10 = math.sqrt(10)
    per_triple = [0.8 * 3 + (3 - 4 + 20), 0.8 * 3 + (3 - r10 + 20), 0.8 * 3 + (3 - r10 + 20), 0.8 * 3 + (3 - 4 + 20)]
    loss, stats = pdml_loss(x, labels, ids, generator=gen(3))
    assert loss.item() == pytest.approx(sum(per_triple) / 4, rel=1e-6)
    assert stats.num_triples == 4
    assert stats.mean_pos == pytest.approx(3.0, rel=1e-6)
    assert stats.mean_neg == pytest.approx((8 + 2 * r10) / 4, rel=1e-6)
    assert sorted(stats.pos_distances.tolist()) == pytest.approx([3.0] * 4, rel=1e-6)
    assert sorted(stats.neg_distances.tolist()) == pytest.approx(sorted([4, r10, r10, 4]), rel=1e-6)


def _random_batch(seed: int, num_images: int = 5, max_points: int = 7, num_classes: int = 3, dim: int = 6):
    g = gen(seed)
    per = torch.randint(1, max_points + 1, (num_images,), generator=g)
    ids = torch.repeat_interleave(torch.arange(num_images) * 10 + 3, per)  # sparse, non-dense ids
    n = int(ids.numel())
    labels = torch.randint(0, num_classes, (n,), generator=g)
    labels[torch.rand(n, generator=g) < 0.1] = 255
    x = torch.randn(n, dim, generator=g, dtype=torch.float64) * 4
    return x, labels, ids


@pytest.mark.parametrize("seed", range(8))
def test_pdml_equals_loop_reference_with_same_seed(seed):
    x, labels, ids = _random_batch(seed)
    groups = subgroups(ids, 2) if seed % 2 else None
    loss, stats = pdml_loss(x, labels, ids, margin=6.0, generator=gen(seed), groups=groups)
    ref, triples = pdml_loss_reference(x, labels, ids, margin=6.0, generator=gen(seed), groups=groups)
    a, p, n = pdml_triples(labels, ids, generator=gen(seed), groups=groups)
    assert sorted(zip(a.tolist(), p.tolist(), n.tolist())) == sorted(triples)
    assert stats.num_triples == len(triples)
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-10)


def test_pdml_equals_reference_whatever_the_order_with_one_pos_one_neg():
    # at most one positive and one negative per (anchor, image): the pairing is forced, so any
    # seed of either implementation gives the same loss
    x = torch.randn(6, 4, dtype=torch.float64, generator=gen(5)) * 3
    labels = torch.tensor([0, 1, 0, 1, 1, 2])
    ids = torch.tensor([0, 0, 1, 1, 2, 2])
    loss, _ = pdml_loss(x, labels, ids, generator=gen(1))
    ref, _ = pdml_loss_reference(x, labels, ids, generator=gen(2))
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-10)


def test_pdml_float32_large_norms_matches_float64_reference():
    # Gram-matrix distances lose precision on large, close vectors; centering keeps them exact enough
    x, labels, ids = _random_batch(11, num_images=6, dim=64)
    x = x + 100.0
    loss32, _ = pdml_loss(x.float(), labels, ids, generator=gen(0))
    ref64, _ = pdml_loss_reference(x, labels, ids, generator=gen(0))
    assert loss32.dtype == torch.float32
    assert loss32.item() == pytest.approx(ref64.item(), rel=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_pdml_triples_are_valid_and_min_pos_neg_per_anchor_image(seed):
    x, labels, ids = _random_batch(100 + seed, num_images=6, max_points=9)
    groups = subgroups(ids, 3) if seed % 2 else None
    a, p, n = pdml_triples(labels, ids, generator=gen(seed), groups=groups)
    lab, img = labels.tolist(), ids.tolist()
    grp = [0] * len(lab) if groups is None else groups.tolist()
    counts = Counter()
    used = set()
    for i, j, k in zip(a.tolist(), p.tolist(), n.tolist()):
        assert img[j] == img[k] != img[i]
        assert lab[j] == lab[i] != 255 and lab[k] != lab[i] and lab[k] != 255
        assert grp[i] == grp[j] == grp[k]
        assert (i, j) not in used and (i, k) not in used  # one-to-one: each point used once per anchor
        used |= {(i, j), (i, k)}
        counts[(i, img[j])] += 1
    for i in range(len(lab)):
        if lab[i] == 255:
            continue
        for m in set(img):
            if m == img[i]:
                continue
            pts = [j for j in range(len(lab)) if img[j] == m and lab[j] != 255 and grp[j] == grp[i]]
            npos = sum(lab[j] == lab[i] for j in pts)
            assert counts[(i, m)] == min(npos, len(pts) - npos)


def test_pdml_pairing_is_uniform_and_independent_per_anchor():
    # anchors a, b (class 0, image 0); image 1 holds p1, p2 (class 0) and n1, n2 (class 1).
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    ids = torch.tensor([0, 0, 1, 1, 1, 1])
    together, same_as_b, runs = 0, 0, 400
    for seed in range(runs):
        a, p, n = pdml_triples(labels, ids, generator=gen(seed))
        pairs = {}
        for i, j, k in zip(a.tolist(), p.tolist(), n.tolist()):
            if i in (0, 1):
                pairs.setdefault(i, set()).add((j, k))
        assert len(pairs[0]) == len(pairs[1]) == 2
        together += (2, 4) in pairs[0]
        same_as_b += pairs[0] == pairs[1]
    assert 0.4 < together / runs < 0.6  # both one-to-one pairings equally likely
    assert 0.4 < same_as_b / runs < 0.6  # each anchor draws its own order


def test_pdml_generator_makes_it_reproducible():
    x, labels, ids = _random_batch(7)
    l1, _ = pdml_loss(x, labels, ids, generator=gen(42))
    l2, _ = pdml_loss(x, labels, ids, generator=gen(42))
    assert l1.item() == l2.item()


def test_pdml_same_image_never_pairs():
    x = torch.randn(5, 3, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2])
    loss, stats = pdml_loss(x, labels, torch.zeros(5, dtype=torch.long), generator=gen(0))
    assert stats.num_triples == 0
    assert math.isnan(stats.mean_pos) and stats.pos_distances.numel() == 0


def test_pdml_no_triples_is_zero_with_grad():
    x = torch.randn(4, 3, requires_grad=True)
    labels = torch.tensor([0, 0, 0, 0])  # no negatives anywhere
    loss, stats = pdml_loss(x, labels, torch.tensor([0, 0, 1, 1]), generator=gen(0))
    assert loss.item() == 0.0 and stats.num_triples == 0
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    empty = torch.zeros(0, 3, requires_grad=True)
    loss, stats = pdml_loss(empty, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and stats.num_triples == 0


def test_pdml_finite_gradient_when_embeddings_coincide():
    x = torch.ones(6, 5, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    ids = torch.tensor([0, 0, 1, 1, 2, 2])
    loss, stats = pdml_loss(x, labels, ids, generator=gen(0))
    assert stats.num_triples > 0
    assert loss.item() == pytest.approx(20.0, abs=1e-3)  # all distances ~0: only the margin is left
    loss.backward()
    assert torch.isfinite(x.grad).all()
    # one coinciding positive pair among distinct points
    y = torch.tensor([[0.0, 0.0], [0.0, 0.0], [5.0, 1.0]], requires_grad=True)
    loss, _ = pdml_loss(y, torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1]), generator=gen(0))
    loss.backward()
    assert torch.isfinite(y.grad).all()


def test_pdml_groups_restrict_pairs():
    x, labels, ids = _random_batch(3, num_images=6)
    groups = subgroups(ids, 2)
    a, p, n = pdml_triples(labels, ids, generator=gen(0), groups=groups)
    assert a.numel() > 0
    assert torch.equal(groups[a], groups[p]) and torch.equal(groups[a], groups[n])
    a_all, _, _ = pdml_triples(labels, ids, generator=gen(0))
    assert a_all.numel() > a.numel()
    # one group covering everything is the same as no groups
    same = pdml_triples(labels, ids, generator=gen(0), groups=subgroups(ids, 6))
    assert all(torch.equal(u, v) for u, v in zip(same, pdml_triples(labels, ids, generator=gen(0))))


def test_pdml_stats_distances_are_capped_and_consistent():
    g = gen(0)
    ids = torch.arange(8).repeat_interleave(24)
    labels = torch.randint(0, 2, (ids.numel(),), generator=g)
    x = torch.randn(ids.numel(), 4, generator=g)
    loss, stats = pdml_loss(x, labels, ids, generator=gen(1))
    assert stats.num_triples > MAX_DISTANCE_SAMPLES
    assert stats.pos_distances.numel() == stats.neg_distances.numel() == MAX_DISTANCE_SAMPLES
    a, p, n = pdml_triples(labels, ids, generator=gen(1))
    d_ap = (x[a] - x[p]).norm(dim=1)
    d_an = (x[a] - x[n]).norm(dim=1)
    assert stats.mean_pos == pytest.approx(d_ap.mean().item(), rel=1e-4)
    assert stats.mean_neg == pytest.approx(d_an.mean().item(), rel=1e-4)
    assert stats.pos_distances.min() >= d_ap.min() - 1e-4 and stats.pos_distances.max() <= d_ap.max() + 1e-4
    assert not stats.pos_distances.requires_grad and stats.pos_distances.device.type == "cpu"
    # the subsample is seeded: the same call gives the same histogram samples
    _, again = pdml_loss(x, labels, ids, generator=gen(1))
    assert torch.equal(again.pos_distances, stats.pos_distances)


def test_pdml_autocast_runs_in_float32():
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 16)
    inp = torch.randn(12, 8)
    labels = torch.tensor([0, 1, 2] * 4)
    ids = torch.arange(4).repeat_interleave(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = lin(inp)
        assert emb.dtype == torch.bfloat16
        loss, _ = pdml_loss(emb, labels, ids, generator=gen(0))
    assert loss.dtype == torch.float32
    ref, _ = pdml_loss(emb.float(), labels, ids, generator=gen(0))
    assert loss.item() == ref.item()
    loss.backward()
    assert torch.isfinite(lin.weight.grad).all()


def test_pdml_rejects_bad_parameters_and_shapes():
    x = torch.randn(3, 2)
    with pytest.raises(ConfigError, match="alpha"):
        pdml_loss(x, torch.zeros(3, dtype=torch.long), torch.arange(3), alpha=-1)
    with pytest.raises(ValueError, match="N = 2"):
        pdml_loss(torch.randn(2, 2), torch.zeros(3, dtype=torch.long), torch.arange(3))


def test_subgroups_by_first_appearance():
    ids = torch.tensor([9, 9, 4, 7, 4, 1, 1, 3])
    assert subgroups(ids, 2).tolist() == [0, 0, 0, 1, 0, 1, 1, 2]
    assert subgroups(ids, 0).tolist() == [0] * 8
    assert subgroups(ids, None).tolist() == [0] * 8
    with pytest.raises(ConfigError, match="group size"):
        subgroups(ids, -1)


# ------------------------------------------------------------------------------ sampling


def test_sample_embeddings_stride1_is_exact():
    torch.manual_seed(0)
    feats = torch.randn(2, 5, 6, 7)
    xy = torch.tensor([[0.0, 0.0], [6.0, 5.0], [3.0, 2.0]])
    b = torch.tensor([0, 1, 1])
    out = sample_embeddings(feats, xy, b, (6, 7))
    expected = torch.stack([feats[0, :, 0, 0], feats[1, :, 5, 6], feats[1, :, 2, 3]])
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("hw,fhw", [((8, 8), (4, 4)), ((9, 7), (5, 4))])
def test_sample_embeddings_matches_bilinear_upsampling(hw, fhw):
    torch.manual_seed(1)
    feats = torch.randn(2, 3, *fhw, requires_grad=True)
    up = F.interpolate(feats, size=hw, mode="bilinear", align_corners=False)
    ys, xs = torch.meshgrid(torch.arange(hw[0]), torch.arange(hw[1]), indexing="ij")
    xy = torch.stack([xs.flatten(), ys.flatten()], 1).float().repeat(2, 1)
    b = torch.arange(2).repeat_interleave(hw[0] * hw[1])
    out = sample_embeddings(feats, xy, b, hw)
    expected = up.permute(0, 2, 3, 1).reshape(-1, 3)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    out.sum().backward()
    assert feats.grad is not None and torch.isfinite(feats.grad).all()
