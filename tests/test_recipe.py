"""The recipe additions: decoder head, PDML variants, the ``agree`` reading of Eq. 7, the Gated CRF
loss and class-balanced point CE."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pointparse import IGNORE_INDEX
from pointparse.crf import CRFConfig, gated_crf_loss
from pointparse.errors import ConfigError
from pointparse.extension import extend_at_pixels, online_extension, square_pixels
from pointparse.losses import click_class_weights, pixel_cross_entropy, point_cross_entropy
from pointparse.pdml import PDML_VARIANTS, pdml_loss
from pointparse.heads import HEADS
from pointparse.model import ModelConfig, build_model
from pointparse.train_config import TrainConfig

BACKBONES = ["efficientnet_lite0", "resnet18", "resnet34", "resnet50", "resnet101"]


# ---------------------------------------------------------------------------------------- heads


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("head", sorted(HEADS))
def test_every_head_shapes_at_both_strides(backbone, head):
    for os_ in (8, 16):
        for low in ((4, 8) if HEADS[head].decoder else (4,)):
            model = build_model(ModelConfig(backbone=backbone, num_classes=5, output_stride=os_, weights="none",
                                            head=head, low_level_stride=low)).eval()
            with torch.no_grad():
                out = model(torch.randn(2, 3, 61, 70))
            s = low if HEADS[head].decoder else os_
            assert model.logit_stride == s
            assert out["logits"].shape == (2, 5, math.ceil(61 / s), math.ceil(70 / s))
            assert out["embeddings"].shape == (2, model.feature_dim, math.ceil(61 / s), math.ceil(70 / s))


@pytest.mark.parametrize("low", [4, 8])
def test_decoder_low_level_tap_comes_from_the_claimed_stride(low):
    model = build_model(ModelConfig(backbone="resnet18", num_classes=3, output_stride=16, weights="none",
                                    head="deeplabv3+", low_level_stride=low)).eval()
    seen = {}
    layer = {4: model.backbone.layer1, 8: model.backbone.layer2}[low]
    layer.register_forward_hook(lambda m, i, o: seen.update(tap=o))  # hooks must return None
    model.classifier.low.register_forward_hook(lambda m, i, o: seen.update(input=i[0]))
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    assert seen["input"] is seen["tap"]
    assert seen["tap"].shape[-1] == 64 // low


def test_decoder_embeds_what_its_classifier_reads_or_the_backbone():
    x = torch.randn(2, 3, 64, 64)
    cls = build_model(ModelConfig(backbone="resnet18", num_classes=3, weights="none", head="deeplabv3+")).eval()
    seen = {}
    cls.classifier.classifier.register_forward_hook(lambda m, i, o: seen.update({"in": i[0]}))
    with torch.no_grad():
        out = cls(x)
    assert torch.equal(out["embeddings"], seen["in"]) and cls.feature_dim == 128
    bb = build_model(ModelConfig(backbone="resnet18", num_classes=3, weights="none", head="deeplabv3+",
                                 embed="backbone")).eval()
    with torch.no_grad():
        assert bb(x)["embeddings"].shape == (2, 512, 4, 4)
    with pytest.raises(ConfigError, match="valid choices: aspp-v2, deeplabv3\\+"):
        ModelConfig(num_classes=3, head="unet")


def test_decoder_head_overfits_one_image():
    torch.manual_seed(0)
    img = torch.zeros(1, 3, 64, 64)
    lab = torch.zeros(1, 64, 64, dtype=torch.long)
    img[..., :, 32:] = 1.0
    lab[..., :, 32:] = 1
    img[..., 40:, :20] = -1.0
    lab[..., 40:, :20] = 2
    x = torch.cat([img, img.flip(-1)])
    y = torch.cat([lab, lab.flip(-1)])
    model = build_model(ModelConfig(backbone="resnet18", num_classes=3, weights="none", head="deeplabv3+"))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(40):
        logits = F.interpolate(model(x)["logits"], size=(64, 64), mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        pred = F.interpolate(model(x)["logits"], size=(64, 64), mode="bilinear", align_corners=False).argmax(1)
    assert (pred == y).float().mean() > 0.95


def test_head_lr_mult_sets_the_head_group():
    model = build_model(ModelConfig(backbone="resnet18", num_classes=3, weights="none", head="deeplabv3+"))
    groups = model.param_groups(0.01, 0.0, head_lr_mult=1.0)
    assert groups[1]["lr"] == pytest.approx(0.01) and groups[1]["lr_mult"] == 1.0
    head = {id(p) for p in groups[1]["params"]}
    assert {id(p) for p in model.classifier.parameters()} <= head


# ------------------------------------------------------------------------------------- extension


def test_agree_keeps_only_pixels_where_the_network_agrees_with_the_covering_click():
    # two clicks, class 0 at (x=1, y=2) and class 1 at (x=3, y=2): 3x3 squares overlap on column 2
    lab = torch.full((1, 5, 5), IGNORE_INDEX, dtype=torch.long)
    lab[0, 2, 1], lab[0, 2, 3] = 0, 1
    probs = torch.zeros(1, 2, 5, 5)
    probs[:, 0] = 0.9  # the network says class 0 with confidence 0.9 everywhere
    probs[:, 1] = 0.1
    agree = online_extension(probs, lab, threshold=0.7, region=3, mode="agree")
    argmax = online_extension(probs, lab, threshold=0.7, region=3, mode="score+region")
    region = online_extension(probs, lab, threshold=0.7, region=3, mode="region")
    # the arg-max reading labels both squares 0 (overwrites the class-1 click's square)
    assert (argmax[0, 1:4, 0:5][lab[0, 1:4, 0:5] == IGNORE_INDEX] == 0).all()
    assert argmax[0, 2, 3] == 1  # clicks keep their label
    # agree: the class-0 square (columns 0-1, and column 2 where the class-0 click is nearer by the
    # tie-break: equal distance, the click to the left wins) keeps class 0; the class-1 square's
    # own pixels (columns 3-4) are dropped except the click itself
    expected = torch.full((5, 5), IGNORE_INDEX, dtype=torch.long)
    expected[1:4, 0:3] = torch.where(region[0, 1:4, 0:3] == 0, 0, IGNORE_INDEX)
    expected[2, 3] = 1
    assert torch.equal(agree[0], expected)
    assert (agree[0][agree[0] != IGNORE_INDEX] == region[0][agree[0] != IGNORE_INDEX]).all()
    # the square-local fast path gives the same labels
    pix = square_pixels(lab, 3)
    p = probs[pix["b"], :, pix["y"], pix["x"]]
    fast = extend_at_pixels(pix, p, lab, 0.7, "agree")
    assert torch.equal(fast, agree[pix["b"], pix["y"], pix["x"]])


# ------------------------------------------------------------------------------------------ PDML


def _points(seed=0, n=24, d=6):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (n,), generator=g)
    ids = torch.arange(n) % 4
    return emb, labels, ids


def _mean_pair(emb):
    d = torch.cdist(emb, emb)
    n = emb.shape[0]
    return d.sum() / (n * (n - 1))


def test_relative_variants_equal_the_paper_at_unit_mean_distance():
    emb, labels, ids = _points()
    emb = emb / _mean_pair(emb)
    paper, _ = pdml_loss(emb, labels, ids, margin=0.5, generator=torch.Generator().manual_seed(1))
    for variant in ("relative", "relative-detached"):
        rel, _ = pdml_loss(emb, labels, ids, margin=0.5, generator=torch.Generator().manual_seed(1), variant=variant)
        assert rel.item() == pytest.approx(paper.item(), rel=1e-9)


def test_normalized_equals_the_paper_on_unit_norm_embeddings():
    emb, labels, ids = _points(1)
    emb = F.normalize(emb, dim=1)
    paper, _ = pdml_loss(emb, labels, ids, margin=0.5, generator=torch.Generator().manual_seed(2))
    norm, _ = pdml_loss(emb, labels, ids, margin=0.5, generator=torch.Generator().manual_seed(2), variant="normalized")
    assert norm.item() == pytest.approx(paper.item(), rel=1e-9)


def test_relative_loss_has_no_gradient_along_the_scale_and_the_paper_loss_does():
    emb, labels, ids = _points(2)
    emb = emb * 0.05  # pretrained-like: d- close to d+, so the paper's loss wants to shrink

    def scale_derivative(variant, margin):
        x = emb.clone().requires_grad_(True)
        loss, _ = pdml_loss(x, labels, ids, margin=margin, generator=torch.Generator().manual_seed(3), variant=variant)
        loss.backward()
        return float((x.detach() * x.grad).sum())  # d/ds L(s x) at s = 1

    assert scale_derivative("paper", 20.0) > 1e-3
    assert abs(scale_derivative("relative", 0.5)) < 1e-9
    assert abs(scale_derivative("normalized", 0.5)) < 1e-9
    assert scale_derivative("relative-detached", 0.5) > 1e-3  # the detached reading keeps the incentive


@pytest.mark.parametrize("variant", sorted(PDML_VARIANTS))
def test_every_variant_has_finite_gradients_at_coincident_embeddings(variant):
    emb = torch.zeros(8, 4, dtype=torch.float32, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    ids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    loss, stats = pdml_loss(emb, labels, ids, margin=PDML_VARIANTS[variant], variant=variant)
    loss.backward()
    assert stats.num_triples > 0 and torch.isfinite(loss) and torch.isfinite(emb.grad).all()


def test_unknown_variant_lists_the_valid_ones():
    emb, labels, ids = _points()
    with pytest.raises(ConfigError, match="normalized, paper, relative, relative-detached"):
        pdml_loss(emb, labels, ids, variant="cosine")
    assert TrainConfig(pdml_variant="normalized").pdml_margin == PDML_VARIANTS["normalized"]
    assert TrainConfig().pdml_margin == 20.0 and TrainConfig(margin=3.0).pdml_margin == 3.0


# ------------------------------------------------------------------------------------------- CRF


def _crf_reference(probs, rgb, valid, cfg):
    """The Gated CRF loss as a literal double loop over pixels and their windows."""
    b, c, h, w = probs.shape
    r, total = cfg.radius, 0.0
    for n in range(b):
        for y in range(h):
            for x in range(w):
                if not valid[n, y, x]:
                    continue
                for dy in range(-r, r + 1):
                    for dx in range(-r, r + 1):
                        yy, xx = y + dy, x + dx
                        if (dy, dx) == (0, 0) or not (0 <= yy < h and 0 <= xx < w) or not valid[n, yy, xx]:
                            continue
                        dxy2 = (dy * cfg.stride) ** 2 + (dx * cfg.stride) ** 2
                        drgb2 = float(((rgb[n, :, y, x] - rgb[n, :, yy, xx]) ** 2).sum())
                        k = cfg.weight_rgbxy * math.exp(-dxy2 / (2 * cfg.sigma_xy ** 2) - drgb2 / (2 * cfg.sigma_rgb ** 2)) \
                            + cfg.weight_xy * math.exp(-dxy2 / (2 * cfg.sigma_xy ** 2))
                        total += k * (1.0 - float((probs[n, :, y, x] * probs[n, :, yy, xx]).sum()))
    return total / max(int(valid.sum()), 1)


def test_gated_crf_equals_the_double_loop():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(2, 3, 6, 7, generator=g), dim=1)
    rgb = torch.rand(2, 3, 6, 7, generator=g)
    valid = torch.ones(2, 6, 7, dtype=torch.bool)
    valid[1, 4:, :] = False  # crop padding
    cfg = CRFConfig(radius=2, sigma_xy=6.0, sigma_rgb=0.3, stride=4)
    got = gated_crf_loss(probs, rgb, valid, cfg)
    assert got.item() == pytest.approx(_crf_reference(probs, rgb, valid, cfg), rel=1e-5)


def test_gated_crf_is_zero_for_a_constant_prediction_and_pulls_neighbours_together():
    rgb = torch.rand(1, 3, 8, 8)
    valid = torch.ones(1, 8, 8, dtype=torch.bool)
    const = torch.zeros(1, 4, 8, 8)
    const[:, 2] = 1.0
    assert gated_crf_loss(const, rgb, valid).item() == 0.0
    logits = torch.randn(1, 4, 8, 8, requires_grad=True)
    loss = gated_crf_loss(torch.softmax(logits, 1), rgb, valid)
    loss.backward()
    assert loss.item() > 0 and torch.isfinite(logits.grad).all()


# ------------------------------------------------------------------------------- class balance


def test_click_class_weights_keep_the_mean_weight_over_clicks_at_one():
    counts = [30, 10, 0, 60]
    w = click_class_weights(counts, 1.0)
    n = torch.tensor(counts, dtype=torch.float32)
    assert float((n * w).sum()) == pytest.approx(float(n.sum()), rel=1e-6)
    assert w[1] / w[0] == pytest.approx(3.0) and w[2] == w.max()  # unclicked: the largest weight
    assert torch.equal(click_class_weights(counts, 0.0), torch.ones(4))
    sq = click_class_weights(counts, 0.5)
    assert sq[1] / sq[0] == pytest.approx(math.sqrt(3.0))


def test_weighted_point_ce_matches_its_scattered_form():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 5, generator=g)
    lab = torch.full((2, 5, 5), IGNORE_INDEX, dtype=torch.long)
    lab[0, 1, 1], lab[0, 3, 2], lab[1, 0, 4] = 0, 2, 1
    w = torch.tensor([0.5, 2.0, 1.0])
    dense = point_cross_entropy(logits, lab, class_weights=w)
    b, y, x = (lab != IGNORE_INDEX).nonzero(as_tuple=True)
    scattered = pixel_cross_entropy(logits[b, :, y, x], lab[b, y, x], b, 2, w)
    assert dense.item() == pytest.approx(scattered.item(), rel=1e-6)
    ce0 = (0.5 * F.cross_entropy(logits[0:1, :, 1, 1], torch.tensor([0]))
           + 1.0 * F.cross_entropy(logits[0:1, :, 3, 2], torch.tensor([2]))) / 2
    ce1 = 2.0 * F.cross_entropy(logits[1:2, :, 0, 4], torch.tensor([1]))
    assert dense.item() == pytest.approx(((ce0 + ce1) / 2).item(), rel=1e-6)


def test_train_config_rejects_bad_numbers_in_one_line():
    for kwargs, match in (({"lr": -1}, "lr must be"), ({"lr": float("nan")}, "lr must be"),
                          ({"device": "banana"}, "unknown device"), ({"momentum": 1.5}, "momentum"),
                          ({"class_balance": "log"}, "valid choices: inverse, none, sqrt"),
                          ({"optimizer": "adam"}, "valid choices: adamw, sgd")):
        with pytest.raises(ConfigError, match=match):
            TrainConfig(**kwargs)


# ---------------------------------------------------------------------------------------- recipes


def test_a_recipe_fills_what_is_not_given_and_explicit_values_win():
    from pointparse.recipes import RECIPES

    cfg = TrainConfig.from_dict({"recipe": "cpu-clicks", "epochs": 3})
    assert cfg.epochs == 3 and cfg.recipe == "cpu-clicks"
    assert cfg.class_balance == "sqrt" and cfg.crf_weight == RECIPES["cpu-clicks"]["crf_weight"] and not cfg.pdml
    full = TrainConfig.from_dict({"recipe": "cpu-clicks", "supervision": "full", "pdml": False})
    assert full.crf_weight == 0.0 and full.class_balance == "none" and full.lr == RECIPES["cpu-clicks"]["lr"]
    assert TrainConfig.from_dict({"recipe": "paper"}).backbone == "resnet101"
    with pytest.raises(ConfigError, match="valid choices: cpu, cpu-aspp, cpu-aspp-clicks, cpu-clicks, cpu-sam, decoder, paper"):
        TrainConfig.from_dict({"recipe": "fast"})


def test_train_cli_options_come_from_the_dataclass(tmp_path):
    from click.testing import CliRunner

    from pointparse.cli.main import main

    out = CliRunner().invoke(main, ["train", "--help"])
    assert out.exit_code == 0
    for option in ("--recipe", "--head", "--pdml-variant", "--crf-weight", "--class-balance", "--momentum",
                   "--weight-decay", "--set"):
        assert option in out.output
    bad = CliRunner().invoke(main, ["train", "--lr", "-1", "--cache-dir", str(tmp_path)])
    assert bad.exit_code == 1 and "lr must be a finite number > 0" in bad.output and "Traceback" not in bad.output
    bad = CliRunner().invoke(main, ["train", "--set", "momentun=0.5", "--cache-dir", str(tmp_path)])
    assert bad.exit_code == 1 and "unknown train parameter 'momentun'" in bad.output


def test_the_command_line_starts_without_torch():
    """make-points, import-clicks and friends never pay for importing torch: the train command
    builds its TrainConfig options only when it is used."""
    import subprocess
    import sys

    code = ("import sys, pointparse.cli.main, pointparse.points, pointparse.simulate, pointparse.clicks, "
            "pointparse.dataspec, pointparse.stages.make_points, pointparse.stages.import_clicks; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
