"""``Predictor.from_checkpoint``: the one inference entry (issue 13, item 2)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pointparse.cache import StageCache
from pointparse.datasets import DatasetInfo
from pointparse.errors import DataError
from pointparse.model import ModelConfig, build_model
from pointparse.predictor import Predictor
from pointparse.predictor import resolve_checkpoint
from pointparse.checkpoint import CHECKPOINT_FORMAT, model_from_checkpoint
from pointparse.transforms import normalise

MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]


def _checkpoint(path: Path, **changes) -> Path:
    """An untrained 2-class ResNet-18 checkpoint; ``changes`` replace or (None) drop top-level keys."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_classes=2, backbone="resnet18", weights="none"))
    info = DatasetInfo(name="data", protocol="folder-2", classes=("ground", "thing"), palette=((0, 0, 0), (1, 1, 1)))
    ckpt = {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "model_config": model.config.to_dict(),
            "train_config": {"epochs": 3}, "info": info.to_dict(), "normalization": {"mean": MEAN, "std": STD}}
    for k, v in changes.items():
        if v is None:
            ckpt.pop(k)
        else:
            ckpt[k] = v
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A train artefact in a cache holding model.pt: (cache, its key, its folder)."""
    tmp = tmp_path_factory.mktemp("predictor")
    src = _checkpoint(tmp / "src" / "model.pt")
    cache = StageCache(tmp / "cache")
    res = cache.run("train", 1, {"test": "predictor"}, {}, lambda d: shutil.copy(src, d / "model.pt") and None)
    return cache, res.key, res.path


def test_key_prefix_folder_and_file_resolve_to_the_same_file(trained):
    cache, key, folder = trained
    file = folder / "model.pt"
    assert resolve_checkpoint(key[:8], cache) == resolve_checkpoint(folder, cache) == resolve_checkpoint(file, cache)
    assert resolve_checkpoint(folder) == resolve_checkpoint(file) == file
    for ref in (key[:8], folder, file):
        p = Predictor.from_checkpoint(ref, "cpu", cache=cache)
        assert p.path == file and p.info.classes == ("ground", "thing")
        assert p.train_config == {"epochs": 3} and p.model_config["backbone"] == "resnet18"
    # without a cache a key is not a path: one line naming it
    with pytest.raises(DataError, match="checkpoint file does not exist") as err:
        Predictor.from_checkpoint(key[:8], "cpu")
    assert str(err.value).startswith(key[:8])
    with pytest.raises(DataError, match="folder has no model.pt"):
        resolve_checkpoint(folder.parent)


@pytest.mark.parametrize("normalization", [None, {"mean": MEAN}, {"mean": [0.5, 0.5], "std": STD},
                                           {"mean": ["a", 1, 2], "std": STD}, "imagenet"])
def test_a_checkpoint_without_usable_normalization_is_one_error_naming_it(tmp_path, normalization):
    path = _checkpoint(tmp_path / "model.pt", normalization=normalization)
    with pytest.raises(DataError) as err:
        Predictor.from_checkpoint(path, "cpu")
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and "no usable 'normalization'" in msg and "\n" not in msg, msg


def test_from_checkpoint_gives_the_logits_of_the_model_built_by_hand(tmp_path):
    path = _checkpoint(tmp_path / "model.pt")
    pred = Predictor.from_checkpoint(tmp_path, "cpu")  # the folder
    assert pred.path == path and pred.device == torch.device("cpu") and not pred.model.training
    assert pred.mean == tuple(MEAN) and pred.std == tuple(STD)

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model, info = model_from_checkpoint(ckpt, path)
    model.eval()
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    x = normalise(image, ckpt["normalization"]["mean"], ckpt["normalization"]["std"])[None]
    got = pred.normalise(image)
    assert got.shape == (1, 3, 40, 56) and got.device == pred.device
    torch.testing.assert_close(got, x, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(pred.model(got)["logits"], model(x)["logits"], rtol=0, atol=0)
    assert info == pred.info


def test_the_same_checkpoint_saved_twice_has_the_same_bytes(tmp_path):
    """Evaluate and the ablation key a checkpoint by its bytes: a repeated run that trains the same
    weights must write the same file (torch.save into a path would embed the temporary name)."""
    import torch

    from pointparse.checkpoint import CHECKPOINT_FORMAT, save_checkpoint

    obj = {"format": CHECKPOINT_FORMAT, "model": {"w": torch.arange(6.0).reshape(2, 3)}}
    save_checkpoint(tmp_path / "a" / "model.pt", obj)
    save_checkpoint(tmp_path / "b" / "model.pt", obj)
    assert (tmp_path / "a" / "model.pt").read_bytes() == (tmp_path / "b" / "model.pt").read_bytes()
