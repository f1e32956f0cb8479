"""evaluate: the decoding thread and the numpy confusion counts give the metrics of the plain path.

Tiny hand-made folder datasets and a two-layer model built here; nothing is downloaded or read
from outside ``tmp_path``.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from pointparse.datasets import FolderDataset
from pointparse.errors import DataError
from pointparse.evaluate import ConfusionMatrix, EvalConfig, _confusion_counts, evaluate_model, predict_logits
from pointparse.images import write_image, write_label_png
from pointparse.model import IMAGENET_MEAN, IMAGENET_STD
from pointparse.transforms import normalise

C = 4
CPU = torch.device("cpu")


class TinyNet(torch.nn.Module):
    """Logits at half resolution (so upsampling runs) from a pooled 1x1 convolution."""

    def __init__(self, fail_on_call: int | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, C, 1)
        self.calls, self.fail_on_call = 0, fail_on_call

    def forward(self, x):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("model failed")
        return {"logits": self.conv(torch.nn.functional.avg_pool2d(x, 2))}


def _dataset(tmp_path: Path, n: int = 7) -> FolderDataset:
    root = tmp_path / "data"
    rng = np.random.default_rng(1)
    (root).mkdir()
    (root / "classes.txt").write_text("".join(f"{i} c{i}\n" for i in range(C)))
    for i in range(n):
        h, w = int(rng.integers(20, 40)), int(rng.integers(20, 40))
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        mask = rng.integers(0, C, (h, w)).astype(np.uint8)
        mask[rng.random((h, w)) < 0.2] = 255  # ignored pixels
        write_image(root / "images" / "val" / f"im{i}.png", image)
        write_label_png(root / "masks" / "val" / f"im{i}.png", mask)
    return FolderDataset(root, "val")


def _reference(model, ds, indices) -> torch.Tensor:
    """The confusion matrix of the plain loop: load, normalise, infer, ``ConfusionMatrix.update``."""
    cfg = EvalConfig(workers=0, device="cpu")
    cm = ConfusionMatrix(C)
    with torch.no_grad():
        for i in indices:
            s = ds.load(i, with_instances=False)
            x = normalise(s.image, IMAGENET_MEAN, IMAGENET_STD)[None].contiguous(memory_format=torch.channels_last)
            cm.update(predict_logits(model, x, cfg, C).argmax(1), torch.from_numpy(s.mask.astype(np.int64))[None])
    return cm.mat


def _decoder_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "pointparse-evaluate-decoder"]


@pytest.mark.parametrize("rank, world", [(0, 1), (1, 3)])
def test_decoding_thread_gives_the_plain_loops_confusion_matrix(tmp_path, rank, world):
    ds = _dataset(tmp_path)
    model = TinyNet().eval()
    metrics, cm = evaluate_model(model, ds, C, EvalConfig(workers=0, device="cpu"), CPU, IMAGENET_MEAN,
                                 IMAGENET_STD, rank=rank, world_size=world, progress=False)
    ref = _reference(model, ds, range(rank, len(ds), world))
    assert torch.equal(cm.mat, ref) and int(ref.sum()) > 0
    assert not _decoder_threads()


def test_loader_process_path_gives_the_same_matrix(tmp_path):
    ds = _dataset(tmp_path, n=4)
    model = TinyNet().eval()
    _, threaded = evaluate_model(model, ds, C, EvalConfig(workers=0, device="cpu"), CPU, IMAGENET_MEAN,
                                 IMAGENET_STD, progress=False)
    _, loader = evaluate_model(model, ds, C, EvalConfig(workers=1, device="cpu"), CPU, IMAGENET_MEAN,
                               IMAGENET_STD, progress=False)
    assert torch.equal(threaded.mat, loader.mat)


def test_a_decoding_error_is_raised_and_the_thread_stops(tmp_path):
    ds = _dataset(tmp_path)
    (ds.mask_path(3)).write_bytes(b"not a png")
    with pytest.raises(DataError) as err:
        evaluate_model(TinyNet().eval(), ds, C, EvalConfig(workers=0, device="cpu"), CPU, IMAGENET_MEAN,
                       IMAGENET_STD, progress=False)
    assert err.value.path == ds.mask_path(3)
    assert not _decoder_threads()


def test_a_model_error_stops_the_thread(tmp_path):
    ds = _dataset(tmp_path, n=12)
    with pytest.raises(RuntimeError, match="model failed"):
        evaluate_model(TinyNet(fail_on_call=2).eval(), ds, C, EvalConfig(workers=0, device="cpu"), CPU,
                       IMAGENET_MEAN, IMAGENET_STD, progress=False)
    assert not _decoder_threads()


@pytest.mark.parametrize("n", [1, 9, 255])
def test_confusion_counts_equal_the_tensor_update(n):
    rng = np.random.default_rng(n)
    target = rng.integers(0, 256, (31, 17)).astype(np.uint8)  # ids >= n and 255 are ignored
    target[:5] = rng.integers(0, n, (5, 17))
    pred = rng.integers(0, n, (31, 17))
    cm = ConfusionMatrix(n)
    cm.update(torch.from_numpy(pred), torch.from_numpy(target.astype(np.int64)))
    np.testing.assert_array_equal(_confusion_counts(target, pred, n), cm.mat.numpy().ravel())


@pytest.mark.parametrize("mean,std", [(IMAGENET_MEAN, IMAGENET_STD), ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
                                      ((0.123, 0.987, 0.31), (0.0713, 0.9, 0.4567))])
def test_numpy_normalise_is_bit_identical_to_torch(mean, std):
    """normalise_array (numpy, in the decoding thread) gives exactly the torch formula's floats,
    for every byte value on every channel, a flipped (non-contiguous) image included."""
    every = np.stack([np.roll(np.arange(256, dtype=np.uint8), 85 * c) for c in range(3)], -1).reshape(16, 16, 3)
    for image in (every, every[:, ::-1], np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)):
        t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
        want = (t - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
        got = normalise(image, mean, std)
        assert got.dtype == torch.float32 and torch.equal(got, want)
        assert got.stride() == want.stride()  # channels-last strides, as before
