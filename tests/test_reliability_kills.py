"""Issue 24 (reliability, round two), items 8, 9, 10, 3 and 4: kills mid-write, damaged partial
runs, same-size edits, ``--out .`` and OS errors, replayed on tiny data. A kill is simulated by
leaving the files a kill leaves; a full disk by making the write raise ``ENOSPC``. Every case ends
in one line naming the file or option, a non-zero exit, no traceback and nothing that looks
finished (or, for a damaged partial run, one line and a run started afresh)."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli_cases import cli as _cli, folder_dataset, one_line_error as _one_line_error
from pointparse.cli.main import main


def _folder_dataset(root: Path, n: int = 2, size: int = 32) -> Path:
    return folder_dataset(root, n, size)


def _train_args(root: Path, cache: Path, epochs: int = 1) -> list:
    return ["train", "--dataset", "folder", "--root", root, "--supervision", "full", "--weights", "none",
            "--backbone", "efficientnet_lite0", "--epochs", epochs, "--batch-size", "2", "--crop-size", "32",
            "--device", "cpu", "--val-split", "train", "--cache-dir", cache, "-q"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished 1-epoch train artefact (with its evaluation) on a 2-image folder dataset."""
    base = tmp_path_factory.mktemp("trained")
    root = _folder_dataset(base / "data")
    res = _cli(*_train_args(root, base / "c"))
    assert res.exit_code == 0, res.output
    art = next((base / "c").glob("train/*/*/manifest.json")).parent
    return root, base / "c", art


def _copy_cache(trained, tmp_path: Path) -> tuple[Path, Path, Path]:
    """A private copy of the trained cache: (dataset root, cache, artefact folder)."""
    root, cache, art = trained
    mine = tmp_path / "c"
    shutil.copytree(cache, mine)
    return root, mine, mine / art.relative_to(cache)


def _as_killed_partial(art: Path) -> Path:
    """Turn a finished artefact into the ``.partial`` a kill after its last checkpoint leaves."""
    partial = art.with_name(art.name + ".partial")
    art.rename(partial)
    (partial / "manifest.json").unlink()
    return partial


def _scalar_steps(folder: Path, tag: str) -> list[int]:
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


# ------------------------------------------------------------------------------------------------
# item 8: kills mid-write leave temporaries that became part of results
# ------------------------------------------------------------------------------------------------


def test_item8_temporaries_of_a_killed_train_are_never_adopted_and_no_epoch_shows_twice(trained, tmp_path):
    """A kill while writing checkpoint.pt, model.pt or per_class_iou.csv leaves `.NAME.*.tmp` in
    the `.partial`; the resumed run moved them into the artefact and listed them in its manifest.
    The killed attempt's TensorBoard file stayed beside the resumed run's (epoch 0 twice)."""
    root, cache, art = _copy_cache(trained, tmp_path)
    partial = _as_killed_partial(art)
    for name, size in (("checkpoint.pt", 3000), ("model.pt", 0), ("per_class_iou.csv", 29)):
        (partial / f".{name}.k3j4h5g6.tmp").write_bytes(os.urandom(size))
    events = partial / "tensorboard" / "epochs"
    killed = next(events.iterdir())
    shutil.copy(killed, events / "events.out.tfevents.1700000000.vm.999.1")  # the killed attempt's file
    res = _cli(*_train_args(root, cache))
    assert res.exit_code == 0 and "wrote artefact" in res.output, res.output
    assert not partial.exists()
    left = [p.name for p in art.rglob("*") if p.name.endswith(".tmp")]
    assert left == []
    outputs = json.loads((art / "manifest.json").read_text())["outputs"]
    assert not [rel for rel in outputs if ".tmp" in rel], outputs
    assert _scalar_steps(art / "tensorboard" / "epochs", "epoch/loss") == [0]
    assert _scalar_steps(art / "tensorboard" / "epochs", "epoch/val_miou") == [0]


def test_item8_a_killed_out_copy_leaves_nothing_behind_after_the_next_one(tmp_path):
    """A kill during `report --out R` left `.R.*.tmp` beside R forever: the next write of R removes
    what a dead writer left, and leaves a live writer's folder alone."""
    import subprocess
    import sys

    from pointparse.io import atomic_out_dir

    out = tmp_path / "R"
    stale_old = tmp_path / ".R.ab12cd34.tmp"  # what today's code leaves (no pid in the name)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale_new = tmp_path / f".R.{dead.stdout.strip()}-ef56gh78.tmp"
    live = tmp_path / f".R.{os.getppid()}-ij90kl12.tmp"
    for d in (stale_old, stale_new, live):
        d.mkdir()
        (d / "index.md").write_text("half a report\n")
    with atomic_out_dir(out, "report") as tmp:
        (tmp / "index.md").write_text("a report\n")
    assert (out / "index.md").read_text() == "a report\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["R", live.name])


def test_a_killed_single_file_write_leaves_nothing_behind_after_the_next_one(tmp_path):
    """`export-model --out m.onnx` and the other single-file outputs (io.atomic_file): the next
    write of the same file removes a dead writer's temporary, keeps a live one's and anything else."""
    import subprocess
    import sys

    from pointparse.io import atomic_file

    out = tmp_path / "m.onnx"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale_old = tmp_path / ".m.onnx.ab12cd34.tmp"  # written before temporaries carried a pid
    stale_new = tmp_path / f".m.onnx.{dead.stdout.strip()}-ef56gh78.tmp"
    live = tmp_path / f".m.onnx.{os.getppid()}-ij90kl12.tmp"
    other = tmp_path / ".other.onnx.ab12cd34.tmp"
    for f in (stale_old, stale_new, live, other):
        f.write_bytes(b"half a model")
    with atomic_file(out, sweep=True) as tmp:
        assert tmp.name.startswith(f".m.onnx.{os.getpid()}-")
        tmp.write_bytes(b"a model")
    assert out.read_bytes() == b"a model"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.onnx", live.name, other.name])


# ------------------------------------------------------------------------------------------------
# item 9: a damaged .partial failed on every rerun until --force
# ------------------------------------------------------------------------------------------------


def _checkpoint_of_another_model(partial: Path) -> Path:
    """A real pointparse checkpoint, of a ResNet-18 run on the same classes."""
    from pointparse.checkpoint import load_checkpoint, model_checkpoint, save_checkpoint
    from pointparse.datasets import DatasetInfo
    from pointparse.model import build_model
    from pointparse.train import make_optimizer
    from pointparse.train_config import TrainConfig

    mine = load_checkpoint(partial / "checkpoint.pt")
    cfg = TrainConfig(**{**mine["train_config"], "backbone": "resnet18"})
    model = build_model(dataclasses.replace(cfg.model_config(2), weights="none"))
    state = model_checkpoint(model, cfg, DatasetInfo.from_dict(mine["info"]), 1)
    state.update(optimizer=make_optimizer(model, cfg).state_dict(), next_epoch=1, scaler={})
    save_checkpoint(partial / "checkpoint.pt", state)
    return partial / "checkpoint.pt"


def _next_epoch(partial: Path, value) -> Path:
    from pointparse.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(partial / "checkpoint.pt")
    state["next_epoch"] = value
    save_checkpoint(partial / "checkpoint.pt", state)
    return partial / "checkpoint.pt"


def _garbage_distances(partial: Path) -> Path:
    (partial / "distances.npz").write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    return partial / "distances.npz"


def _pickled_distances(partial: Path) -> Path:
    import pickle

    (partial / "distances.npz").write_bytes(pickle.dumps({"pos_0": np.zeros(3)}))
    return partial / "distances.npz"


def _npz_of_objects(partial: Path) -> Path:
    np.savez(partial / "distances.npz", pos_0=np.array([{"a": 1}], dtype=object))
    return partial / "distances.npz"


def _log_line_5(partial: Path) -> Path:
    with open(partial / "epochs.jsonl", "a") as fh:
        fh.write("5\n")
    return partial / "epochs.jsonl"


DAMAGES = {
    "checkpoint of another model": (_checkpoint_of_another_model, "a checkpoint of another run (backbone"),
    "next_epoch 999": (lambda p: _next_epoch(p, 999), "next_epoch 999 lies outside this run's 1 epochs"),
    "next_epoch -1": (lambda p: _next_epoch(p, -1), "next_epoch -1 lies outside"),
    "garbage distances.npz": (_garbage_distances, "not a readable .npz archive"),
    "pickled distances.npz": (_pickled_distances, "not a readable .npz archive"),
    "distances.npz of objects": (_npz_of_objects, "not a readable .npz archive"),
    "epochs.jsonl line 5": (_log_line_5, "line 2 ('5') is not a log row"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_item9_a_damaged_partial_run_is_named_in_one_line_and_emptied(trained, tmp_path, damage):
    """Each damage of the issue is found before resuming: one line `<path>: <what is wrong>;
    starting this run afresh`, and the partial folder is emptied so the run trains from scratch."""
    from pointparse.resume import restart_if_damaged
    from pointparse.train_config import TrainConfig

    _, _, art = _copy_cache(trained, tmp_path)
    partial = _as_killed_partial(art)
    cfg = TrainConfig(**json.loads((partial / "job.json").read_text())["train"])
    lines: list[str] = []
    assert restart_if_damaged(partial, cfg, 2, lines.append) is False and lines == []  # a kill's partial resumes
    make, said = DAMAGES[damage]
    path = make(partial)
    assert restart_if_damaged(partial, cfg, 2, lines.append) is True
    assert len(lines) == 1 and lines[0].startswith(f"{path}: ") and said in lines[0], lines
    assert lines[0].endswith("; starting this run afresh")
    assert list(partial.iterdir()) == []


@pytest.mark.parametrize("damage", ["next_epoch 999", "epochs.jsonl line 5"])
def test_item9_a_rerun_over_a_damaged_partial_run_trains_afresh(trained, tmp_path, damage):
    """Today `next_epoch: 999` silently "finished" a 1-epoch run without training, and an
    epochs.jsonl line `5` failed every rerun with a traceback: now one line, then a real run."""
    root, cache, art = _copy_cache(trained, tmp_path)
    partial = _as_killed_partial(art)
    make, said = DAMAGES[damage]
    path = make(partial)
    res = _cli(*_train_args(root, cache))
    assert res.exit_code == 0 and "wrote artefact" in res.output, res.output
    assert "Traceback" not in res.output
    assert f"{path}: " in res.output and said in res.output and "starting this run afresh" in res.output
    rows = [json.loads(line) for line in (art / "epochs.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0]
    assert not partial.exists() and (art / "model.pt").is_file()


def test_item9_the_library_refuses_next_epoch_beyond_the_run(trained, tmp_path):
    """`train()` called directly on such a folder is one DataError, not a run that "finished"."""
    from pointparse.datasets import open_dataset
    from pointparse.errors import DataError
    from pointparse.train import train
    from pointparse.train_config import TrainConfig

    root, _, art = _copy_cache(trained, tmp_path)
    partial = _as_killed_partial(art)
    _next_epoch(partial, 999)
    cfg = TrainConfig(**json.loads((partial / "job.json").read_text())["train"])
    with pytest.raises(DataError, match="next_epoch 999 lies outside"):
        train(cfg, open_dataset("folder", root, "train"), None, partial, progress=False)


# ------------------------------------------------------------------------------------------------
# item 10: same-size edits to files over 64 KiB were trusted
# ------------------------------------------------------------------------------------------------


def _flip_4k(path: Path) -> None:
    """Flip 4 KiB in the middle of ``path``, keeping its size."""
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.seek(size // 2)
        block = fh.read(4096)
        fh.seek(size // 2)
        fh.write(bytes(b ^ 0xFF for b in block))
    assert path.stat().st_size == size


def test_item10_a_same_size_edit_inside_model_pt_is_a_miss_and_refused_as_an_input(trained, tmp_path):
    """4 KiB flipped inside model.pt: `train` reused the artefact and evaluate/predict used the
    corrupted weights. Now the cache recomputes it (one line says why) and a command given it as an
    input (key, folder or the model.pt inside it) refuses it in one line."""
    from pointparse.cache import StageCache

    root, cache, art = _copy_cache(trained, tmp_path)
    _flip_4k(art / "model.pt")
    lines: list[str] = []
    store = StageCache(cache, echo=lines.append)
    assert store.lookup("train", art.name) is None
    assert store._hit("train", art.name) is None  # what `train` asks before it reuses an artefact
    assert len(lines) == 1 and "model.pt has changed since the artefact was written; recomputing it" in lines[0]
    for ref in (art.name[:12], art, art / "model.pt"):
        _one_line_error(_cli("evaluate", ref, "--dataset", "folder", "--root", root, "--split", "train",
                             "--device", "cpu", "--cache-dir", cache), "model.pt has changed")
        _one_line_error(_cli("predict", ref, root / "images", "--out", tmp_path / "p", "--device", "cpu",
                             "--cache-dir", cache), "model.pt has changed")
    assert not (tmp_path / "p").exists()


def test_item10_an_artefact_is_hashed_once_per_process_unless_a_file_changes(trained, tmp_path, monkeypatch):
    """Every recorded file is hashed before reuse, but once per process: a second look at an
    unchanged artefact hashes nothing; a file touched since is hashed again."""
    import pointparse.outputs as outputs

    _, _, art = _copy_cache(trained, tmp_path)
    listed = json.loads((art / "manifest.json").read_text())["outputs"]
    assert all("sha256" in rec for rec in listed.values()) and listed["model.pt"]["size"] > 64 * 1024
    hashed: list[str] = []
    real = outputs.sha256_file
    monkeypatch.setattr(outputs, "sha256_file", lambda p: hashed.append(Path(p).name) or real(p))
    assert outputs.stale_reason(art) is None
    assert sorted(hashed) == sorted(Path(rel).name for rel in listed)
    hashed.clear()
    assert outputs.stale_reason(art) is None and hashed == []
    _flip_4k(art / "model.pt")
    assert outputs.stale_reason(art) == "model.pt has changed" and "model.pt" in hashed


# ------------------------------------------------------------------------------------------------
# item 3: --out . (an empty current folder) did all the work, then raised in io.atomic_dir
# ------------------------------------------------------------------------------------------------


def test_item3_out_dot_is_refused_before_any_work(tmp_path, monkeypatch):
    root = _folder_dataset(tmp_path / "data")
    cache = tmp_path / "c"
    made = _cli("make-points", "--dataset", "folder", "--root", root, "--cache-dir", cache, "-q", "--workers", "0")
    assert made.exit_code == 0, made.output
    points = next(cache.glob("make-points/*/*/manifest.json")).parent
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"not read: the --out check comes first")
    here = tmp_path / "empty"
    here.mkdir()
    monkeypatch.chdir(here)
    cases = [
        (["report", "--run", f"B={points}"], "report"),
        (["ablate-extension", ckpt, "--points", points], "ablate-extension"),
        (["export-points", points, "--format", "sparse-png"], "export-points"),
    ]
    for args, command in cases:
        for out in (".", "./", str(here)):
            res = _cli(*args, "--out", out, "--cache-dir", cache)
            _one_line_error(res, f"--out of {command} is the current folder")
        res = _cli(*args, "--out", "..", "--cache-dir", cache)
        _one_line_error(res, f"--out of {command} holds the current folder")
    assert list(here.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["c", "data", "empty",
                                                                                       "model.pt"]



# ------------------------------------------------------------------------------------------------
# item 4: OS errors were tracebacks
# ------------------------------------------------------------------------------------------------


def _make_points_args(root: Path, cache: Path | None = None) -> list:
    return ["make-points", "--dataset", "folder", "--root", root, "-q", "--workers", "0",
            *(["--cache-dir", cache] if cache is not None else [])]


@pytest.mark.parametrize("code", [errno.EROFS, errno.EPERM, errno.EACCES])
def test_item4_a_read_only_or_immutable_cache_is_one_line(tmp_path, monkeypatch, code):
    """A read-only (EROFS, EACCES) or immutable (EPERM) cache root: the first folder the cache makes
    fails. (The tests run as root, which writes through chmod, so the refusal is simulated.)"""
    root = _folder_dataset(tmp_path / "data")
    cache = tmp_path / "c"
    cache.mkdir()
    real = os.mkdir

    def refuse(path, *args, **kwargs):
        if str(path).startswith(str(cache)):
            raise OSError(code, os.strerror(code), str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", refuse)
    res = _cli(*_make_points_args(root, cache))
    _one_line_error(res, f"cannot write into the cache {cache} (--cache-dir)", "choose a writable --cache-dir")
    assert list(cache.iterdir()) == []


def test_item4_pointparse_cache_naming_a_file_is_one_line(tmp_path):
    root = _folder_dataset(tmp_path / "data")
    afile = tmp_path / "not-a-folder"
    afile.write_text("x")
    res = CliRunner().invoke(main, [str(a) for a in _make_points_args(root)], env={"POINTPARSE_CACHE": str(afile)})
    _one_line_error(res, f"{afile}: the cache root ($POINTPARSE_CACHE) is a file, not a folder")
    assert afile.read_text() == "x"


def _disk_full_after(monkeypatch, budget: int = 0) -> None:
    """Every checked write fails with ENOSPC once ``budget`` bytes were written."""
    import pointparse.io as pio

    left = [budget]
    real = pio._os_write

    def write(fd, data):
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real(fd, bytes(data)[:left[0]])
        left[0] -= n
        return n

    monkeypatch.setattr(pio, "_os_write", write)


def test_item4_a_full_disk_while_writing_a_checkpoint_says_how_much_it_needed(trained, tmp_path, monkeypatch):
    """The resumed run writes model.pt onto a full disk: one line with the size model.pt needed;
    no artefact, no temporary beside it, and the partial run stays for the next attempt."""
    from pointparse.oserrors import human_size

    root, cache, art = _copy_cache(trained, tmp_path)
    size = (art / "model.pt").stat().st_size
    partial = _as_killed_partial(art)
    (partial / "model.pt").unlink()
    _disk_full_after(monkeypatch, 4096)
    res = _cli(*_train_args(root, cache))
    _one_line_error(res, f"{partial / 'model.pt'}: no space left on its device: writing it needs {human_size(size)}")
    assert not art.exists() and (partial / "checkpoint.pt").is_file() and not (partial / "model.pt").exists()
    assert not [p for p in partial.rglob("*.tmp")]


def test_item4_a_full_disk_while_predict_writes_says_how_much_it_needed(trained, tmp_path, monkeypatch):
    root, _, art = trained
    out = tmp_path / "pred"
    _disk_full_after(monkeypatch, 0)
    res = _cli("predict", art / "model.pt", root / "images", "--out", out, "--device", "cpu", "-q")
    err = _one_line_error(res, "im0.png: no space left on its device: writing it needs ")
    assert "bytes" in err or "KiB" in err
    assert not [p for p in out.iterdir() if p.suffix in (".png", ".jpg", ".tmp")]


def test_item4_checked_writes_keep_their_bytes(tmp_path):
    """The checked write (checkpoints, label PNGs, images) writes what the plain one wrote."""
    import torch

    from pointparse.checkpoint import save_checkpoint
    from pointparse.images import write_image, write_label_png

    obj = {"format": "x", "w": torch.arange(70000, dtype=torch.float32), "t": (1, 2)}
    with open(tmp_path / "plain.pt", "wb") as fh:
        torch.save(obj, fh)
    save_checkpoint(tmp_path / "checked.pt", obj)
    assert (tmp_path / "checked.pt").read_bytes() == (tmp_path / "plain.pt").read_bytes()
    lab = (np.arange(60 * 50).reshape(60, 50) % 7).astype(np.uint8)
    write_label_png(tmp_path / "l.png", lab)
    Image.fromarray(lab, mode="L").save(tmp_path / "plain.png", format="PNG")
    assert (tmp_path / "l.png").read_bytes() == (tmp_path / "plain.png").read_bytes()
    img = np.stack([lab * 30] * 3, axis=-1)
    write_image(tmp_path / "i.jpg", img, quality=90)
    Image.fromarray(img).save(tmp_path / "plain.jpg", format="JPEG", quality=90)
    assert (tmp_path / "i.jpg").read_bytes() == (tmp_path / "plain.jpg").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checked.pt", "i.jpg", "l.png", "plain.jpg",
                                                           "plain.png", "plain.pt"]


def test_item4_a_mask_that_is_a_symlink_loop_is_one_line(tmp_path):
    root = _folder_dataset(tmp_path / "data")
    mask = root / "masks" / "im0.png"
    mask.unlink()
    mask.symlink_to("im0.png")
    res = _cli(*_make_points_args(root, tmp_path / "c"))
    _one_line_error(res, f"{mask}: it is a symbolic link loop")
    assert not list((tmp_path / "c").glob("make-points/*/*/manifest.json"))


def test_item4_a_300_character_image_name_in_a_sparse_png_export_is_one_line(tmp_path):
    from pointparse.cache import record_outputs

    root = _folder_dataset(tmp_path / "data")
    cache = tmp_path / "c"
    assert _cli(*_make_points_args(root, cache)).exit_code == 0
    points = next(cache.glob("make-points/*/*/manifest.json")).parent
    doc = json.loads((points / "points.json").read_text())
    doc["images"][0]["name"] = "a" * 300
    (points / "points.json").write_text(json.dumps(doc))
    manifest = json.loads((points / "manifest.json").read_text())
    manifest["outputs"] = record_outputs(points)
    (points / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "sparse"
    res = _cli("export-points", points, "--format", "sparse-png", "--out", out, "--cache-dir", cache)
    _one_line_error(res, f"{points / 'points.json'}: image 'aaaa", "(300 bytes)", "name is too long")
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
