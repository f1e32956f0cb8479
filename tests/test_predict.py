"""Inference and model export from a tiny trained checkpoint; tampered checkpoints are refused."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import pointparse.cli.main  # noqa: F401  (the group first: the command modules import from it)
from pointparse.cache import StageCache
from pointparse.cli.predict import export_model_cmd, predict_cmd
from pointparse.errors import ConfigError, DataError
from pointparse.export import export_model, export_program, load_exported_metadata
from pointparse.images import read_label
from pointparse.model import upsample_logits
from pointparse.simulate import MakePointsConfig
from pointparse.predict import collect_inputs, load_for_inference, parse_scales, predict, predict_probs
from pointparse.dataspec import DatasetSpec
from pointparse.stages.make_points import run_make_points
from pointparse.stages.train import run_train
from pointparse.checkpoint import CHECKPOINT_FORMAT, load_checkpoint
from pointparse.train_config import TrainConfig

SPEC = DatasetSpec(kind="synthetic", split="train", options={"seed": 3, "size": 64, "splits": {"train": 4}})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    cache = StageCache(tmp_path_factory.mktemp("cache"))
    points = run_make_points(SPEC, MakePointsConfig(workers=0), cache, progress=False).path
    cfg = TrainConfig(weights="none", epochs=1, batch_size=4, crop_size=48, workers=0)
    trained = run_train(SPEC, cfg, cache, points=points, progress=False).path / "model.pt"
    # One epoch leaves the classifier near its N(0, 0.01) start (almost uniform probabilities, so
    # argmax ties everywhere); scaling it up gives decisive, spatially varying predictions.
    ckpt = torch.load(trained, weights_only=True)
    for k in ckpt["model"]:
        if k.startswith("classifier."):
            ckpt["model"][k] = ckpt["model"][k] * 300.0
    out = tmp_path_factory.mktemp("run") / "model.pt"
    torch.save(ckpt, out)
    return out


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return load_for_inference(checkpoint)


def _image(path: Path, h: int, w: int, seed: int = 0) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture()
def inputs(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    _image(folder / "a.png", 37, 53, 1)    # not a multiple of the output stride
    _image(folder / "b.jpg", 64, 64, 2)
    _image(folder / "c.png", 64, 64, 3)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return folder


def test_checkpoint_carries_what_predict_needs(loaded):
    assert loaded.info.classes[:2] == ("sky", "wall") and len(loaded.info.palette) == loaded.info.num_classes
    assert loaded.mean == pytest.approx((0.485, 0.456, 0.406)) and loaded.std == pytest.approx((0.229, 0.224, 0.225))
    assert loaded.model_config["backbone"] == "efficientnet_lite0"
    assert not loaded.net.training


def test_padding_matches_the_model_and_keeps_any_size(loaded):
    net = loaded.net
    x = torch.randn(1, 3, 64, 48)  # multiples of 16: no padding, so exactly the model's upsampled logits
    with torch.no_grad():
        assert torch.equal(net(x), upsample_logits(net.model(x)["logits"], (64, 48)))
        out = net(torch.randn(2, 3, 37, 53))
    assert out.shape == (2, loaded.info.num_classes, 37, 53)


def test_flip_and_scales_average_probabilities(loaded):
    x = torch.randn(1, 3, 64, 64)
    p = predict_probs(loaded.net, x, (0.75, 1.0, 1.25), flip=True)
    assert p.shape == (1, loaded.info.num_classes, 64, 64)
    assert torch.allclose(p.sum(1), torch.ones(1, 64, 64), atol=1e-5)
    # flipping the input mirrors the flip-averaged prediction (64, 48, 80 need no padding)
    q = predict_probs(loaded.net, x.flip(-1), (0.75, 1.0, 1.25), flip=True)
    assert torch.allclose(p, q.flip(-1), atol=1e-5)
    single = predict_probs(loaded.net, x)
    with torch.no_grad():
        assert torch.allclose(single, loaded.net(x).softmax(1), atol=1e-6)
    assert not torch.allclose(single, p, atol=1e-3)
    assert parse_scales("0.75, 1,1.25") == (0.75, 1.0, 1.25)
    for bad in ("0,1", "a", "", "-1"):
        with pytest.raises(ConfigError):
            parse_scales(bad)


def test_predict_writes_maps_and_overlays_and_reports_bad_inputs(checkpoint, loaded, inputs, tmp_path):
    out = tmp_path / "out"
    res = predict(checkpoint, [inputs, tmp_path / "missing.png"], out, batch_size=2, device="cpu", progress=False)
    assert sorted(p.name for p in res.written) == ["a.png", "b.png", "c.png"]
    assert sorted(p.name for p, _ in res.failures) == ["broken.png", "missing.png"]
    assert not res.ok
    for name, (h, w) in {"a": (37, 53), "b": (64, 64), "c": (64, 64)}.items():
        img = Image.open(out / f"{name}.png")
        assert img.mode == "P" and img.size == (w, h)
        assert img.getpalette()[:3] == list(loaded.info.palette[0])
        ids = read_label(out / f"{name}.png")
        assert ids.max() < loaded.info.num_classes
        assert Image.open(out / f"{name}_overlay.jpg").size == (w, h)
    assert not (out / "broken.png").exists()


def test_prediction_does_not_depend_on_the_batch(checkpoint, inputs, tmp_path):
    one = predict(checkpoint, [inputs / "c.png", inputs / "a.png"], tmp_path / "one", batch_size=1, device="cpu",
                  progress=False)
    many = predict(checkpoint, [inputs], tmp_path / "many", batch_size=8, device="cpu", progress=False)
    assert one.ok and len(many.written) == 3
    for name in ("a", "c"):
        a, b = read_label(tmp_path / "one" / f"{name}.png"), read_label(tmp_path / "many" / f"{name}.png")
        assert (a == b).mean() > 0.999


def test_inputs_with_the_same_name_are_refused(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    paths = [_image(tmp_path / d / "same.png", 20, 20) for d in ("x", "y")]
    with pytest.raises(ConfigError, match="same"):
        collect_inputs(paths)
    files, failures = collect_inputs([paths[0], paths[0], tmp_path / "x"])
    assert files == [paths[0]] and failures == []


def test_cli_predict_exit_codes(checkpoint, inputs, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(predict_cmd, [str(checkpoint), str(inputs / "a.png"), "--out", str(tmp_path / "o1"),
                                     "--device", "cpu", "--flip", "--scales", "1,1.5", "-q"],
                       catch_exceptions=False)
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "o1" / "a.png").is_file()
    bad = runner.invoke(predict_cmd, [str(checkpoint.parent), str(inputs), "--out", str(tmp_path / "o2"),
                                      "--device", "cpu", "-q"], catch_exceptions=False)
    assert bad.exit_code == 1 and "broken.png" in bad.output and "Traceback" not in bad.output
    assert (tmp_path / "o2" / "b.png").is_file()  # the good inputs were still predicted


def test_predict_out_never_overwrites_files_it_did_not_write(checkpoint, inputs, tmp_path):
    """`predict IMAGES --out IMAGES` would overwrite a.png with its label map: refused in one line
    (issue 15, item 2); an earlier predict --out is reused."""
    before = (inputs / "a.png").read_bytes()
    res = CliRunner().invoke(predict_cmd, [str(checkpoint), str(inputs / "a.png"), "--out", str(inputs),
                                           "--device", "cpu", "-q"])
    assert res.exit_code != 0 and "not an earlier output of predict" in res.output
    assert (inputs / "a.png").read_bytes() == before
    for _ in range(2):
        ok = CliRunner().invoke(predict_cmd, [str(checkpoint), str(inputs / "a.png"), "--out", str(tmp_path / "o"),
                                              "--device", "cpu", "-q"])
        assert ok.exit_code == 0, ok.output


class _RunsCode:
    """A pickled object whose unpickling would run a shell command (the classic pickle exploit)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"echo pwned > {self.marker}",)


def test_tampered_checkpoint_is_refused_and_runs_nothing(checkpoint, tmp_path):
    ckpt = torch.load(checkpoint, weights_only=True)
    marker = tmp_path / "pwned"
    ckpt["extra"] = _RunsCode(marker)
    evil = tmp_path / "model.pt"
    torch.save(ckpt, evil)
    with pytest.raises(DataError, match="not a loadable pointparse checkpoint") as err:
        load_checkpoint(evil)
    assert str(evil) in str(err.value)
    res = CliRunner().invoke(predict_cmd, [str(evil), str(tmp_path), "--out", str(tmp_path / "o"), "-q"],
                             catch_exceptions=False)
    assert res.exit_code == 1 and "not a loadable pointparse checkpoint" in res.output
    assert not marker.exists()
    # the file really is an exploit: the unsafe loader would have run it
    torch.load(evil, weights_only=False)
    assert marker.read_text().strip() == "pwned"


def test_not_a_checkpoint(tmp_path):
    plain = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, plain)
    with pytest.raises(DataError, match=f"expected format '{CHECKPOINT_FORMAT}'"):
        load_for_inference(plain)
    with pytest.raises(DataError, match="no model.pt"):
        load_for_inference(tmp_path)


def test_export_pt2_gives_the_model_logits(checkpoint, loaded, tmp_path):
    out = tmp_path / "model.pt2"
    res = CliRunner().invoke(export_model_cmd, [str(checkpoint), "--format", "pt2", "--out", str(out),
                                                "--height", "48", "--width", "64"], catch_exceptions=False)
    assert res.exit_code == 0 and "dynamic batch/height/width" in res.output, res.output
    program = torch.export.load(str(out))
    x = torch.randn(1, 3, 37, 53)  # another batch size and shape than the example: dynamic shapes
    with torch.no_grad():
        expected = loaded.net(x)
        got = program.module()(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    meta = load_exported_metadata(out)
    assert meta["classes"] == list(loaded.info.classes) and meta["normalization"]["mean"] == list(loaded.mean)
    assert meta["model_config"]["backbone"] == "efficientnet_lite0" and meta["dynamic_shapes"] is True


def test_static_export_is_fixed_to_the_example_shape(loaded):
    program, dynamic = export_program(loaded, height=32, width=48, dynamic=False)
    assert not dynamic
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), loaded.net(x), atol=1e-4, rtol=1e-4)
    with pytest.raises(Exception):
        program.module()(torch.randn(2, 3, 32, 64))
    with pytest.raises(ConfigError, match="exceed the output stride"):
        export_program(loaded, height=16, width=48)


def test_export_onnx_without_the_extra_says_how_to_install(checkpoint, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    with pytest.raises(ConfigError, match=r'pip install "pointparse\[onnx\]"'):
        export_model(checkpoint, "onnx", tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match="valid choices: onnx, pt2"):
        export_model(checkpoint, "tflite", tmp_path / "m.tflite")


def test_export_onnx_gives_the_model_logits(checkpoint, loaded, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "model.onnx"
    export_model(checkpoint, "onnx", out, height=48, width=64)
    x = torch.randn(1, 3, 37, 53)
    got = ort.InferenceSession(str(out)).run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        expected = loaded.net(x).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_predict_on_cuda_matches_cpu(checkpoint, inputs, tmp_path):
    cpu = predict(checkpoint, [inputs], tmp_path / "cpu", device="cpu", progress=False)
    gpu = predict(checkpoint, [inputs], tmp_path / "gpu", device="cuda", amp="off", progress=False)
    assert len(gpu.written) == len(cpu.written) == 3
    for p in cpu.written:
        assert (read_label(p) == read_label(tmp_path / "gpu" / p.name)).mean() > 0.99


def test_a_class_list_that_does_not_match_the_head_is_refused(checkpoint, tmp_path):
    """A checkpoint whose class list (3) is not its head's (9) would write ids 3-8 that name no class:
    one error naming the file, before any image is read (issue 15, item 8)."""
    ckpt = torch.load(checkpoint, weights_only=True)
    info = dict(ckpt["info"])
    info["classes"], info["palette"] = list(info["classes"])[:3], list(info["palette"])[:3]
    ckpt["info"] = info
    bad = tmp_path / "model.pt"
    torch.save(ckpt, bad)
    with pytest.raises(DataError, match="class list has 3 classes .* but its classifier predicts 9") as err:
        load_for_inference(bad)
    assert str(err.value).startswith(str(bad))
    res = CliRunner().invoke(predict_cmd, [str(bad), str(tmp_path), "--out", str(tmp_path / "o"), "-q"])
    assert res.exit_code == 1 and "classifier predicts 9" in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    # missing or misshapen weights: the same one line as evaluate and the ablation give
    ckpt = torch.load(checkpoint, weights_only=True)
    k = next(k for k in ckpt["model"] if k.startswith("classifier."))
    ckpt["model"][k] = ckpt["model"][k][:3]
    torch.save(ckpt, bad)
    with pytest.raises(DataError, match=f"not a usable pointparse checkpoint .*size mismatch for {k}"):
        load_for_inference(bad)
