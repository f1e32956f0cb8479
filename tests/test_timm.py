"""timm encoders as backbones (``timm:<model>``): small models with random weights, no network."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from pointparse.backbones import BACKBONES, backbone_spec, build_backbone, strip_classifier
from pointparse.errors import ConfigError
from pointparse.heads import HEADS
from pointparse.model import ModelConfig, build_model

timm = pytest.importorskip("timm")

H, W = 65, 49  # odd sizes: every map must be ceil(side / stride)


def _ceil(side: int, s: int) -> int:
    return math.ceil(side / s)


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("name", ["timm:resnet18", "timm:mobilenetv3_small_050", "timm:convnext_atto"])
def test_deepest_and_low_level_maps_at_both_strides(name, output_stride):
    net = build_backbone(name, output_stride).eval()
    assert net.output_stride == output_stride
    assert set(net.low_level_channels) == {4, 8}
    x = torch.randn(2, 3, H, W)
    with torch.no_grad():
        deep, low = net.forward_features(x)
        plain = net(x)
    assert deep.shape == (2, net.out_channels, _ceil(H, output_stride), _ceil(W, output_stride))
    assert backbone_spec(name).out_channels == net.out_channels
    for s in (4, 8):
        assert low[s].shape == (2, net.low_level_channels[s], _ceil(H, s), _ceil(W, s))
    torch.testing.assert_close(plain, deep)


def test_resnet18_taps_are_layer1_and_layer2_and_strides_come_from_timm():
    net = build_backbone("timm:resnet18", 8)
    assert (net.out_channels, net.low_level_channels) == (512, {4: 64, 8: 128})
    # with output_stride set, timm reports the dilated reductions (capped at the output stride)
    assert net.body.feature_info.reduction() == [4, 8, 8]
    assert build_backbone("timm:resnet18", 16).body.feature_info.reduction() == [4, 8, 16]
    # ConvNeXt's patch stem floors; the adapter pads to the stride and crops to ceil
    assert build_backbone("timm:convnext_atto", 16).pad_multiple == 16 and net.pad_multiple == 0


@pytest.mark.parametrize("head", sorted(HEADS))
def test_every_head_and_pdml_embeddings_work_on_a_timm_backbone(head):
    cfg = ModelConfig(backbone="timm:mobilenetv3_small_050", num_classes=3, weights="none", head=head,
                      output_stride=16, projection_dim=8)
    model = build_model(cfg)
    out = model(torch.randn(2, 3, H, W))
    assert out["logits"].shape == (2, 3, _ceil(H, model.logit_stride), _ceil(W, model.logit_stride))
    assert out["embeddings"].shape == (2, 8, _ceil(H, model.embed_stride), _ceil(W, model.embed_stride))
    (out["logits"].mean() + out["embeddings"].pow(2).mean()).backward()
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)


def test_training_with_pdml_on_a_timm_backbone(tmp_path):
    """Two steps of point supervision + PDML, decoder head, through the training loop."""
    import json

    from pointparse.cache import StageCache
    from pointparse.points import load_points
    from pointparse.simulate import MakePointsConfig
    from pointparse.dataspec import DatasetSpec, open_spec
    from pointparse.stages.make_points import run_make_points
    from pointparse.checkpoint import load_checkpoint
    from pointparse.train import train
    from pointparse.train_config import TrainConfig

    spec = DatasetSpec(kind="synthetic", split="train", options={"seed": 5, "size": 48, "splits": {"train": 4}})
    cache = StageCache(tmp_path / "cache")
    ps = load_points(run_make_points(spec, MakePointsConfig(workers=0), cache, progress=False).path)
    cfg = TrainConfig(backbone="timm:mobilenetv3_small_050", weights="none", head="deeplabv3+", pdml=True,
                      epochs=1, batch_size=2, crop_size=40, workers=0, lr=1e-3, log_every=1)
    train(cfg, open_spec(spec, cache), {n: ps.points(n) for n in ps.names}, tmp_path / "run",
          progress=False)
    rows = [json.loads(l) for l in (tmp_path / "run" / "iterations.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["triples"] > 0 and math.isfinite(r["pdml"]) for r in rows)
    assert load_checkpoint(tmp_path / "run" / "model.pt")["model_config"]["backbone"] == "timm:mobilenetv3_small_050"


def test_weights_path_takes_a_whole_timm_checkpoint_and_a_pointparse_checkpoint(tmp_path):
    # ConvNeXt: features_only renames modules (stages_0 vs stages.0); the file has timm's own names
    full = timm.create_model("convnext_atto", pretrained=False)
    path = tmp_path / "convnext_atto.pt"
    torch.save(full.state_dict(), path)
    model = build_model(ModelConfig(backbone="timm:convnext_atto", num_classes=4, weights=str(path)))
    own = model.backbone.state_dict()
    assert "stages.0.blocks.0.conv_dw.weight" in own and "head.fc.weight" not in own
    for k, v in own.items():
        assert torch.equal(v, full.state_dict()[k]), k
    assert set(backbone_spec("timm:convnext_atto").classifier_keys) == set(full.state_dict()) - set(own)
    # a pointparse checkpoint round-trips
    again = build_model(ModelConfig(backbone="timm:convnext_atto", num_classes=4, weights="none"))
    again.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(1, 3, 40, 40)
    torch.testing.assert_close(again.eval()(x)["logits"], model.eval()(x)["logits"])


def test_imagenet_weights_go_through_timm_and_offline_names_what_to_download(monkeypatch):
    real = timm.create_model

    def offline(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(ConfigError, match=r"timm/resnet18\.a1_in1k.*--weights PATH"):
        build_backbone("timm:resnet18", 16, pretrained=True)

    # online (simulated): timm's pretrained state dict loads strictly, its classifier dropped
    source = real("resnet18", pretrained=False)
    monkeypatch.setattr(timm, "create_model", lambda name, pretrained=False, **kw:
                        source if pretrained else real(name, pretrained=False, **kw))
    net = build_backbone("timm:resnet18", 8, pretrained=True)
    assert torch.equal(net.state_dict()["layer4.1.conv2.weight"], source.state_dict()["layer4.1.conv2.weight"])
    assert set(strip_classifier("timm:resnet18", source.state_dict())) == set(net.state_dict())


def test_names_and_errors(monkeypatch):
    ModelConfig(backbone="timm:resnet18", num_classes=2)  # validation accepts timm names
    assert BACKBONES["timm:resnet18"] is backbone_spec("timm:resnet18")
    assert "timm:resnet18" not in BACKBONES  # listed registry: the hand-written backbones only
    with pytest.raises(ConfigError, match="timm has no model 'resnet18x'"):
        backbone_spec("timm:resnet18x")
    with pytest.raises(ConfigError, match="needs a timm model name"):
        backbone_spec("timm:")
    with pytest.raises(ConfigError, match=r"timm:<model>"):
        backbone_spec("resnet19")
    monkeypatch.setitem(sys.modules, "timm", None)  # timm not installed
    with pytest.raises(ConfigError, match=r'pip install "pointparse\[timm\]"'):
        backbone_spec("timm:mobilenetv3_large_100")
