"""Online label extension (Eq. 6-7): each mode on hand-made cases, and the Table 5 counts."""

from __future__ import annotations

import pytest
import torch

from pointparse.errors import ConfigError
from pointparse.extension import (
    EXTENSION_MODES,
    extension_stats,
    finalize_extension_stats,
    merge_extension_stats,
    online_extension,
)

U = 255


def make_probs(cls: torch.Tensor, conf: torch.Tensor, num_classes: int = 3) -> torch.Tensor:
    """[B,C,H,W] probabilities whose arg-max is ``cls`` [B,H,W] with value ``conf`` (> 1/C)."""
    rest = ((1 - conf) / (num_classes - 1)).unsqueeze(1).expand(-1, num_classes, -1, -1).clone()
    return rest.scatter(1, cls.unsqueeze(1), conf.unsqueeze(1))


def clicks(h: int, w: int, *pts: tuple[int, int, int], batch: int = 1) -> torch.Tensor:
    lab = torch.full((batch, h, w), U, dtype=torch.long)
    for y, x, c in pts:
        lab[0, y, x] = c
    return lab


def uniform_probs(b: int, h: int, w: int, c: int = 3) -> torch.Tensor:
    return torch.full((b, c, h, w), 1.0 / c)


def brute_force_region(lab: torch.Tensor, region: int) -> torch.Tensor:
    """Per-pixel loop: the click within the square that is nearest (Euclidean; ties: upper, then left)."""
    r = region // 2
    out = torch.full_like(lab, U)
    b, h, w = lab.shape
    pts = [(bi, y, x) for bi in range(b) for y in range(h) for x in range(w) if lab[bi, y, x] != U]
    for bi in range(b):
        for y in range(h):
            for x in range(w):
                best = None
                for pb, py, px in pts:
                    dy, dx = py - y, px - x
                    if pb == bi and abs(dy) <= r and abs(dx) <= r:
                        key = (dy * dy + dx * dx, dy, dx)
                        if best is None or key < best[0]:
                            best = (key, int(lab[pb, py, px]))
                if best is not None:
                    out[bi, y, x] = best[1]
    return out


def test_registry_lists_modes_and_rejects_unknown():
    assert set(EXTENSION_MODES) == {"none", "score", "region", "score+region", "agree"}
    lab = clicks(4, 4, (1, 1, 0))
    with pytest.raises(ConfigError, match="valid choices: agree, none, region, score, score\\+region"):
        online_extension(uniform_probs(1, 4, 4), lab, mode="superpixel")
    with pytest.raises(ConfigError, match="odd"):
        online_extension(uniform_probs(1, 4, 4), lab, region=4)
    with pytest.raises(ConfigError, match="threshold"):
        online_extension(uniform_probs(1, 4, 4), lab, threshold=1.5)


def test_none_returns_the_clicks():
    lab = clicks(5, 5, (0, 0, 1), (4, 2, 0))
    out = online_extension(make_probs(torch.zeros(1, 5, 5, dtype=torch.long), torch.full((1, 5, 5), 0.99)), lab, mode="none")
    assert torch.equal(out, lab) and out.dtype == torch.int64


def test_region_square_centred_on_click():
    out = online_extension(uniform_probs(1, 8, 8), clicks(8, 8, (3, 3, 2)), mode="region")
    expected = torch.full((1, 8, 8), U, dtype=torch.long)
    expected[0, 1:6, 1:6] = 2
    assert torch.equal(out, expected)


def test_region_is_clipped_at_borders():
    out = online_extension(uniform_probs(1, 6, 6), clicks(6, 6, (0, 0, 1), (5, 4, 0)), mode="region", region=5)
    expected = torch.full((1, 6, 6), U, dtype=torch.long)
    expected[0, 0:3, 0:3] = 1
    expected[0, 3:6, 2:6] = 0
    assert torch.equal(out, expected)


def test_region_overlap_nearer_click_wins_with_deterministic_ties():
    # row 2: clicks at x=2 (class 0) and x=5 (class 1): x=3 is nearer to 0, x=4 nearer to 1
    out = online_extension(uniform_probs(1, 5, 8), clicks(5, 8, (2, 2, 0), (2, 5, 1)), mode="region")
    assert out[0, 2].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    # equidistant (x=4 between x=2 and x=6): the left click wins; vertically, the upper one
    out = online_extension(uniform_probs(1, 5, 9), clicks(5, 9, (2, 2, 0), (2, 6, 1)), mode="region")
    assert out[0, 2, 4].item() == 0
    out = online_extension(uniform_probs(1, 9, 5), clicks(9, 5, (2, 2, 0), (6, 2, 1)), mode="region")
    assert out[0, 4, 2].item() == 0
    # adjacent clicks keep their own labels
    out = online_extension(uniform_probs(1, 5, 5), clicks(5, 5, (2, 2, 0), (2, 3, 1)), mode="region")
    assert out[0, 2, 2].item() == 0 and out[0, 2, 3].item() == 1


@pytest.mark.parametrize("region", [1, 3, 5, 7])
def test_region_matches_brute_force(region):
    g = torch.Generator().manual_seed(region)
    lab = torch.full((2, 12, 11), U, dtype=torch.long)
    for b in range(2):
        idx = torch.randperm(12 * 11, generator=g)[:6]
        lab[b].view(-1)[idx] = torch.randint(0, 4, (6,), generator=g)
    out = online_extension(uniform_probs(2, 12, 11, 4), lab, mode="region", region=region)
    assert torch.equal(out, brute_force_region(lab, region))


def test_score_threshold_is_strict_and_classes_restricted():
    cls = torch.tensor([[[0, 1, 2, 0], [1, 1, 0, 2]]])
    # 0.75 is exact in float32, so "conf == threshold" really is equal
    conf = torch.tensor([[[0.9, 0.75, 0.95, 0.76], [0.5, 0.8, 0.75, 0.99]]])
    lab = clicks(2, 4, (1, 0, 0), (0, 1, 1))  # classes 0 and 1 clicked, 2 never
    out = online_extension(make_probs(cls, conf), lab, threshold=0.75, mode="score")
    expected = torch.tensor([[[0, 1, U, 0], [0, 1, U, U]]])
    # (1,2) has conf == threshold: not taken; (0,1) is a click (label 1) despite conf == 0.75;
    # (1,0) is a click (0) despite predicting 1 with low confidence
    assert torch.equal(out, expected)


def test_score_and_region_intersection():
    h = w = 9
    cls = torch.ones(1, h, w, dtype=torch.long)  # predicts class 1 everywhere ...
    cls[0, :, 5:] = 2  # ... and class 2 (never clicked) from x = 5 on
    conf = torch.full((1, h, w), 0.9)
    conf[0, 2, 2] = 0.6  # too unsure inside the square
    lab = clicks(h, w, (3, 3, 0), (8, 8, 1))  # click 0 predicts 1: the click keeps 0
    out = online_extension(make_probs(cls, conf), lab, threshold=0.7, region=5, mode="score+region")
    expected = torch.full((1, h, w), U, dtype=torch.long)
    expected[0, 1:6, 1:5] = 1  # arg-max class inside click 0's square; x = 5 predicts unclicked 2
    expected[0, 2, 2] = U
    expected[0, 3, 3] = 0
    expected[0, 8, 8] = 1  # its square is all class 2 except the click itself
    assert torch.equal(out, expected)
    labelled = out != U
    region = online_extension(make_probs(cls, conf), lab, region=5, mode="region") != U
    assert not (labelled & ~region).any()


def test_score_region_never_outside_squares_nor_absent_class_random():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(3, 5, 16, 16, generator=g) * 4, dim=1)
    lab = torch.full((3, 16, 16), U, dtype=torch.long)
    for b in range(3):
        idx = torch.randperm(256, generator=g)[:4]
        lab[b].view(-1)[idx] = torch.randint(0, 5, (4,), generator=g)
    out = online_extension(probs, lab, threshold=0.6, region=5)
    region = online_extension(probs, lab, region=5, mode="region") != U
    score = online_extension(probs, lab, threshold=0.6, mode="score")
    labelled = out != U
    assert not (labelled & ~region).any()
    assert torch.equal(out[labelled & (lab == U)], score[labelled & (lab == U)])
    for b in range(3):
        clicked_classes = set(lab[b][lab[b] != U].tolist())
        assert set(out[b][out[b] != U].tolist()) <= clicked_classes
    assert torch.equal(out[lab != U], lab[lab != U])
    assert (labelled & (lab == U)).any()  # the case is not vacuous


def test_extension_runs_without_grad():
    probs = uniform_probs(1, 4, 4).requires_grad_(True)
    out = online_extension(probs, clicks(4, 4, (1, 1, 0)), threshold=0.2)
    assert not out.requires_grad


def test_stats_counts_on_hand_made_ground_truth():
    lab = clicks(3, 4, (0, 0, 0), (2, 3, 1), batch=2)
    ext = lab.clone()
    ext[0, 0, 1] = 0  # new, GT 0: correct
    ext[0, 1, 0] = 0  # new, GT 1: wrong
    ext[0, 1, 1] = 1  # new, GT 255: not evaluated
    ext[1, 2, 2] = 1  # new in image 1, GT 1: correct
    gt = torch.tensor([[[0, 0, 0, 1], [1, 255, 1, 1], [1, 1, 1, 1]], [[255] * 4, [255] * 4, [255, 255, 1, 255]]])
    s = extension_stats(ext, lab, gt)
    counts = {k: int(v) for k, v in s.items()}
    assert counts == {"images": 2, "clicks": 2, "new_pixels": 4, "evaluated": 3, "correct": 2, "gt_pixels": 12, "covered": 5}
    fin = finalize_extension_stats(merge_extension_stats(s, s))
    assert fin["accuracy"] == pytest.approx(2 / 3)
    assert fin["coverage"] == pytest.approx(5 / 12)
    assert fin["new_pixels_per_image"] == 2.0 and fin["images"] == 4
    no_gt = finalize_extension_stats(merge_extension_stats(extension_stats(ext, lab)))
    assert no_gt["accuracy"] is None and no_gt["coverage"] is None and no_gt["new_pixels"] == 4


# ---- the sparse training path equals the dense definition -----------------------------------

@pytest.mark.parametrize("mode", ["none", "region", "score+region"])
def test_square_pixel_path_matches_dense(mode):
    from pointparse.extension import extend_at_pixels, extension_stats_at_pixels, square_pixels
    from pointparse.losses import pixel_cross_entropy, point_cross_entropy, sample_embeddings
    from pointparse.model import upsample_logits

    g = torch.Generator().manual_seed(0)
    B, C, H, W = 3, 6, 37, 41
    low = (torch.randn(B, C, 10, 11, generator=g) * 3).requires_grad_(True)
    points = torch.full((B, H, W), 255, dtype=torch.long)
    for b in range(B - 1):  # the last image has no clicks
        for _ in range(6):
            y, x = torch.randint(0, H, (1,), generator=g).item(), torch.randint(0, W, (1,), generator=g).item()
            points[b, y, x] = torch.randint(0, C, (1,), generator=g).item()
    points[0, 0, 0], points[0, 1, 2] = 1, 2  # overlapping squares at a corner
    gt = torch.randint(0, C, (B, H, W), generator=g)
    gt[:, :5] = 255

    up = upsample_logits(low, (H, W))
    dense = online_extension(torch.softmax(up.detach(), 1), points, threshold=0.4, region=5, mode=mode)
    ce_dense = point_cross_entropy(up, dense)
    (grad_dense,) = torch.autograd.grad(ce_dense, low)

    pix = square_pixels(points, 5 if mode != "none" else 1)
    xy = torch.stack([pix["x"], pix["y"]], 1).float()
    pl = sample_embeddings(low, xy, pix["b"], (H, W))
    lab = extend_at_pixels(pix, torch.softmax(pl.detach(), 1), points, 0.4, mode)
    ce_sparse = pixel_cross_entropy(pl, lab, pix["b"], B)
    (grad_sparse,) = torch.autograd.grad(ce_sparse, low)

    rebuilt = torch.full_like(dense, 255)
    rebuilt[pix["b"], pix["y"], pix["x"]] = lab
    assert torch.equal(rebuilt, dense)
    assert torch.allclose(ce_sparse, ce_dense, atol=1e-5)
    assert torch.allclose(grad_sparse, grad_dense, atol=1e-6)
    s1 = extension_stats(dense, points, gt)
    s2 = extension_stats_at_pixels(pix, lab, B, gt)
    assert {k: int(v) for k, v in s1.items()} == {k: int(v) for k, v in s2.items()}
