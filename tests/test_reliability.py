"""Issue 15: nothing lost, nothing stale, no traceback — concurrency, kills and stale state, each
in real processes with a timeout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pointparse.errors import DataError

TIMEOUT = 60

# One process asking the cache for a slow, resumable "train" artefact. It logs when its build starts
# and ends, writes its pid into every file it makes, and prints whether it reused the artefact.
SLOW_STAGE = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from pointparse.cache import StageCache

    root, log, seconds = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])

    def build(d):
        with open(log, "a") as fh:
            fh.write(f"start {os.getpid()} {sorted(p.name for p in d.iterdir())}\\n")
        for i in range(3):
            (d / f"epoch{i}").write_text(str(os.getpid()))
            time.sleep(seconds / 3)
        with open(log, "a") as fh:
            fh.write(f"end {os.getpid()}\\n")
        return {"pid": os.getpid()}

    r = StageCache(root).run("train", 1, {"lr": 0.1}, {}, build, resume=True)
    print("cached" if r.cached else "built", r.path)
""")


def _start(tmp_path: Path, seconds: float, tag: str) -> subprocess.Popen:
    err = open(tmp_path / f"{tag}.err", "w")
    return subprocess.Popen([sys.executable, "-c", SLOW_STAGE, str(tmp_path / "cache"), str(tmp_path / "log"),
                             str(seconds)], stdout=subprocess.PIPE, stderr=err, text=True)


@pytest.fixture()
def procs():
    """Processes a test starts; whatever is still running at the end is killed (a failing test
    must not leave a 300 s stage behind)."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=TIMEOUT)


def _wait_for(cond, timeout: float = TIMEOUT) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            pytest.fail("timed out")
        time.sleep(0.05)


def test_two_runs_of_one_stage_never_share_a_folder(tmp_path, procs):
    """Two processes 0.3 s apart: one builds, the other waits and reuses it (item 4)."""
    a = _start(tmp_path, 1.5, "a")
    procs.append(a)
    _wait_for(lambda: (tmp_path / "log").exists())
    time.sleep(0.3)
    b = _start(tmp_path, 1.5, "b")
    procs.append(b)
    outs = [p.communicate(timeout=TIMEOUT)[0].split() for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, (tmp_path / "b.err").read_text()
    log = (tmp_path / "log").read_text().splitlines()
    assert [line.split()[0] for line in log] == ["start", "end"], log  # one build, never two at once
    assert outs[0] == ["built", outs[1][1]] and outs[1][0] == "cached"
    art = Path(outs[0][1])
    assert {(art / f"epoch{i}").read_text() for i in range(3)} == {str(a.pid)}
    assert "waiting" in (tmp_path / "b.err").read_text()


def test_a_killed_holder_releases_the_lock(tmp_path, procs):
    """kill -9 the process building: the waiting one takes over and resumes its partial folder."""
    a = _start(tmp_path, 300, "a")
    procs.append(a)
    _wait_for(lambda: (tmp_path / "cache" / "train").exists() and any((tmp_path / "cache").rglob("epoch0")))
    b = _start(tmp_path, 0.3, "b")
    procs.append(b)
    _wait_for(lambda: "waiting" in (tmp_path / "b.err").read_text())
    assert b.poll() is None  # b waits while a holds the lock
    os.kill(a.pid, signal.SIGKILL)
    a.wait(timeout=TIMEOUT)
    out = b.communicate(timeout=TIMEOUT)[0].split()
    assert b.returncode == 0 and out[0] == "built"
    log = (tmp_path / "log").read_text().splitlines()
    assert log[0].startswith(f"start {a.pid} []") and log[1].startswith(f"start {b.pid} ['epoch0'")
    assert {(Path(out[1]) / f"epoch{i}").read_text() for i in range(3)} == {str(b.pid)}


# ------------------------------------------------------------------------------------------------
# item 5: nothing stale is reused
# ------------------------------------------------------------------------------------------------


def test_weights_file_is_fingerprinted_by_content(tmp_path):
    """Overwriting --weights W.pt changes the train key; the same bytes elsewhere do not."""
    from pointparse.cache import StageCache
    from pointparse.evaluate import EvalConfig
    from pointparse.dataspec import DatasetSpec
    from pointparse.stages.base import Upstream
    from pointparse.stages.train import Train
    from pointparse.train_config import TrainConfig

    spec = DatasetSpec(kind="synthetic", options={"seed": 1, "size": 32})

    def key(path: Path) -> str:
        return Train(spec, TrainConfig(weights=str(path)), StageCache(tmp_path / "cache"),
                     Upstream("make-points", "p" * 64, None)).key()

    w = tmp_path / "W.pt"
    w.write_bytes(b"first weights")
    k1 = key(w)
    (tmp_path / "moved").mkdir()
    (tmp_path / "moved" / "W.pt").write_bytes(b"first weights")
    assert key(tmp_path / "moved" / "W.pt") == k1
    w.write_bytes(b"other weights")
    assert key(w) != k1


from cli_cases import folder_dataset as _folder_dataset  # noqa: E402


def test_a_finished_artefact_missing_a_file_is_recomputed_and_says_why(tmp_path):
    from click.testing import CliRunner

    from pointparse.cli.main import main

    root = _folder_dataset(tmp_path / "data")
    args = ["make-points", "--dataset", "folder", "--root", str(root), "--cache-dir", str(tmp_path / "c"), "-q",
            "--workers", "0"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    art = next((tmp_path / "c").glob("make-points/*/*/manifest.json")).parent
    good = (art / "points.json").read_bytes()
    (art / "points.json").unlink()
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "wrote artefact" in again.output, again.output
    assert "points.json is missing since the artefact was written; recomputing" in again.output
    assert (art / "points.json").read_bytes() == good
    # an edited file: the artefact is no longer used as an input either (one line, no traceback)
    (art / "points.json").write_bytes(good.replace(b'"annotations"', b'"annotations" ', 1))
    train = CliRunner().invoke(main, ["train", "--dataset", "folder", "--root", str(root), "--points", str(art),
                                      "--cache-dir", str(tmp_path / "c"), "--weights", "none", "--epochs", "1"])
    assert train.exit_code != 0 and "points.json has changed" in train.output and "Traceback" not in train.output


# holds the lock of a key as a live build does (StageCache.locked: lockf on .<key>.lock in its shard)
HOLD_LOCK = textwrap.dedent("""
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    print("locked", flush=True)
    time.sleep(60)
""")


def test_stale_temporary_folders_are_cleaned_at_the_next_run(tmp_path, procs):
    from pointparse.cache import StageCache

    cache = StageCache(tmp_path / "c")
    shard = tmp_path / "c" / "make-points" / "ab"
    shard.mkdir(parents=True)
    dead = shard / f".{'ab' * 32}.999999.tmp"  # a killed run's folder: nobody holds its lock
    old = shard / f".{'ab' + 'cd' * 31}.old-999999"
    live_key = "ab" + "ef" * 31
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(shard / f".{live_key}.lock")],
                              stdout=subprocess.PIPE, text=True)
    procs.append(holder)
    assert holder.stdout.readline().strip() == "locked"
    live = shard / f".{live_key}.{holder.pid}.tmp"  # a live build's folder
    for d in (dead, old, live):
        d.mkdir()
        (d / "big.bin").write_bytes(b"x" * 1000)
    cache.run("make-points", 1, {"any": 1}, {}, lambda d: None)
    assert not dead.exists() and not old.exists() and live.exists()


# ------------------------------------------------------------------------------------------------
# item 6: a corrupt checkpoint in a partial run
# ------------------------------------------------------------------------------------------------


def test_a_corrupt_partial_checkpoint_is_discarded_and_force_starts_over(tmp_path):
    import shutil

    from click.testing import CliRunner

    from pointparse.cli.main import main

    root = _folder_dataset(tmp_path / "data", n=2, size=32)
    args = ["train", "--dataset", "folder", "--root", str(root), "--supervision", "full", "--weights", "none",
            "--backbone", "resnet18", "--epochs", "1", "--batch-size", "2", "--crop-size", "32", "--device", "cpu",
            "--cache-dir", str(tmp_path / "c"), "-q"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    art = next((tmp_path / "c").glob("train/*/*/manifest.json")).parent
    partial = art.with_name(art.name + ".partial")

    def corrupt() -> None:
        partial.mkdir(exist_ok=True)
        (partial / "checkpoint.pt").write_bytes(b"PK\x03\x04 not a checkpoint")

    corrupt()  # --force with a corrupt partial run: starts over
    forced = CliRunner().invoke(main, [*args, "--force"])
    assert forced.exit_code == 0 and "wrote artefact" in forced.output, forced.output
    shutil.rmtree(art)
    corrupt()  # a plain rerun: one line says the checkpoint was discarded, then it trains
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "wrote artefact" in again.output, again.output
    assert "checkpoint.pt: not a loadable pointparse checkpoint" in again.output
    assert "starting this run afresh" in again.output
    assert (art / "model.pt").is_file() and not partial.exists()
    import json  # the manifest says on how many intra-op threads the bits were made (item 11)

    import torch

    assert json.loads((art / "manifest.json").read_text())["intra_op_threads"] == torch.get_num_threads()


# ------------------------------------------------------------------------------------------------
# item 12: a checkpoint is known by its bytes, not its path
# ------------------------------------------------------------------------------------------------


def test_evaluate_and_ablation_keys_do_not_depend_on_the_checkpoint_path(tmp_path):
    import shutil

    from pointparse.extension.methods import AblationConfig
    from pointparse.stages.ablate_extension import plan_ablation
    from pointparse.cache import StageCache
    from pointparse.evaluate import EvalConfig
    from pointparse.dataspec import DatasetSpec
    from pointparse.stages.evaluate import Evaluate

    spec = DatasetSpec(kind="synthetic", split="val", options={"seed": 1, "size": 32})
    a = tmp_path / "cache-a" / "train" / "model.pt"
    a.parent.mkdir(parents=True)
    a.write_bytes(b"model bytes")
    b = tmp_path / "copied-cache" / "train" / "model.pt"
    shutil.copytree(a.parent, b.parent)

    def keys(ckpt: Path) -> tuple[str, str]:
        return (Evaluate(ckpt, spec, EvalConfig(), StageCache(tmp_path / "cache")).key(),
                plan_ablation(spec, None, "p" * 64, ckpt, AblationConfig()))

    assert keys(a) == keys(b)
    b.write_bytes(b"other model")
    assert keys(b)[0] != keys(a)[0] and keys(b)[1] != keys(a)[1]


# ------------------------------------------------------------------------------------------------
# items 7 and 8: one line, not a traceback; nothing accepted silently
# ------------------------------------------------------------------------------------------------


def test_a_decompression_bomb_is_one_error_naming_the_file(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    from pointparse.errors import DataError
    from pointparse.images import image_size, read_image, read_label

    path = tmp_path / "bomb.png"
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1600 pixels > 2 x 100: PIL's bomb error
    for read in (read_image, read_label, image_size):
        with pytest.raises(DataError, match="bomb.png: image is too large to decode safely"):
            read(path)


def test_reordered_classes_and_bad_gpus_are_one_clear_line(tmp_path):
    """Reordered classes say so (not "9 classes but the dataset has 9"); --gpus -1 and a batch that
    does not split over --gpus are refused before anything starts (issue 15, items 7, 8 and 9)."""
    from click.testing import CliRunner

    from pointparse.cli.main import main

    root = _folder_dataset(tmp_path / "data")
    cache = str(tmp_path / "c")
    made = CliRunner().invoke(main, ["make-points", "--dataset", "folder", "--root", str(root), "--cache-dir", cache,
                                     "-q", "--workers", "0"])
    assert made.exit_code == 0, made.output
    art = next((tmp_path / "c").glob("make-points/*/*/manifest.json")).parent
    train = ["train", "--dataset", "folder", "--root", str(root), "--weights", "none", "--backbone", "resnet18",
             "--epochs", "1", "--batch-size", "4", "--crop-size", "24", "--device", "cpu", "--cache-dir", cache, "-q"]
    for gpus, expected in (("-1", "--gpus must be 0 or more"), ("3", "--batch-size 4 is not divisible by --gpus 3")):
        res = CliRunner().invoke(main, [*train, "--points", str(art), "--gpus", gpus])
        assert res.exit_code != 0 and expected in res.output, res.output
        assert "Traceback" not in res.output and not list((tmp_path / "c").glob("train/*/*"))
    (root / "classes.txt").write_text("0 thing 128:0:0\n1 ground 0:128:0\n")
    res = CliRunner().invoke(main, [*train, "--points", str(art)])
    assert res.exit_code != 0 and "the same 2 classes in another order" in res.output, res.output
    assert "id 0 is 'ground' there, 'thing' here" in res.output


def _tiny_checkpoint(path: Path, classes=("ground", "thing"), **changes) -> Path:
    """A pointparse checkpoint of an untrained 2-class ResNet-18 net; ``changes`` replace or (None)
    drop its top-level keys."""
    import torch

    from pointparse.datasets import DatasetInfo
    from pointparse.model import ModelConfig, build_model
    from pointparse.checkpoint import CHECKPOINT_FORMAT

    model = build_model(ModelConfig(num_classes=2, backbone="resnet18", weights="none"))
    info = DatasetInfo(name="data", protocol=f"folder-{len(classes)}", classes=tuple(classes),
                       palette=tuple((k, k, k) for k in range(len(classes))))
    ckpt = {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "model_config": model.config.to_dict(),
            "info": info.to_dict(), "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}, "epochs": 1}
    for k, v in changes.items():
        if v is None:
            ckpt.pop(k)
        else:
            ckpt[k] = v
    torch.save(ckpt, path)
    return path


def test_evaluate_refuses_a_checkpoint_with_missing_keys_or_wrong_shapes(tmp_path):
    """The right format tag is not enough: missing keys, missing or misshapen weights and a class
    list that does not fit the head are one DataError naming the file (issue 15, items 7 and 8)."""
    import torch

    from pointparse.cache import StageCache
    from pointparse.evaluate import EvalConfig
    from pointparse.model import ModelConfig, build_model
    from pointparse.dataspec import DatasetSpec
    from pointparse.stages.evaluate import evaluate_checkpoint_into

    root = _folder_dataset(tmp_path / "data")
    spec = DatasetSpec(kind="folder", root=str(root), split="train")
    state = build_model(ModelConfig(num_classes=2, backbone="resnet18", weights="none")).state_dict()
    first = next(iter(state))
    misshapen = {**state, first: torch.zeros(3, 3)}
    missing = {k: v for k, v in state.items() if k != first}
    cases = [  # (checkpoint changes, what the one line says)
        ({"model": None}, "KeyError: 'model'"),
        ({"model_config": None}, "KeyError: 'model_config'"),
        ({"info": None}, "KeyError: 'info'"),
        ({"model": misshapen}, "size mismatch"),
        ({"model": missing}, "Missing key"),
        ({"normalization": None}, "no usable 'normalization'"),
        ({"classes": ("a", "b", "c")}, "class list has 3 classes (folder-3) but its classifier predicts 2"),
    ]
    for k, (changes, expected) in enumerate(cases):
        path = _tiny_checkpoint(tmp_path / f"case{k}.pt", **changes)
        with pytest.raises(DataError) as err:
            evaluate_checkpoint_into(path, spec, EvalConfig(workers=0, device="cpu"), StageCache(tmp_path / "c"),
                                     tmp_path / "out", progress=False)
        msg = str(err.value)
        assert msg.startswith(f"{path}: ") and "\n" not in msg and expected in msg, (changes.keys(), msg)


def test_points_json_with_wrong_types_is_one_error_naming_it(tmp_path):
    """'annotations' not a list, point_labels ["a"], a coordinate 1e400 (issue 15, item 7)."""
    import json

    from pointparse.datasets import DatasetInfo
    from pointparse.points import load_points

    info = DatasetInfo(name="d", protocol="folder-2", classes=("ground", "thing"), palette=((0, 0, 0), (1, 1, 1)))
    good = {"info": info.to_dict(), "images": [{"id": 1, "name": "im0", "height": 24, "width": 24}],
            "categories": [{"id": 0, "name": "ground"}, {"id": 1, "name": "thing"}],
            "annotations": [{"image_id": 1, "category_id": 1, "point_coords": [[3, 4]], "point_labels": [1]}]}
    path = tmp_path / "points.json"
    path.write_text(json.dumps(good))
    assert load_points(path).num_points == 1

    def doc(**changes):
        d = json.loads(json.dumps(good))
        d.update(changes.pop("top", {}))
        d["annotations"][0].update(changes) if isinstance(d["annotations"], list) and d["annotations"] else None
        return json.dumps(d)

    cases = [
        (doc(top={"annotations": 5}), "'annotations' is not a list"),
        (doc(top={"annotations": {"id": 1}}), "'annotations' is not a list"),
        (doc(top={"images": 3}), "'images' is not a list"),
        (doc(point_labels=["a"]), "annotations[0] point_labels must be a list of integers"),
        (doc(point_labels=[None]), "annotations[0] point_labels must be a list of integers"),
        (doc(point_labels=1), "annotations[0] point_labels must be a list of integers"),
        (doc().replace("[[3, 4]]", "[[1e400, 4]]"), "annotations[0] needs"),
        (doc().replace('"height": 24', '"height": 1e400'), "images[0] needs integer"),
    ]
    for text, expected in cases:
        path.write_text(text)
        with pytest.raises(DataError) as err:
            load_points(path)
        assert str(err.value).startswith(f"{path}: malformed point annotations") and expected in str(err.value), text


def test_masks_without_an_image_are_refused_naming_the_mask(tmp_path):
    import numpy as np
    from PIL import Image

    from pointparse.datasets import open_dataset

    root = _folder_dataset(tmp_path / "data", n=2)
    assert len(open_dataset("folder", root, split="train")) == 2
    Image.fromarray(np.zeros((24, 24), np.uint8)).save(root / "masks" / "lost.png")
    with pytest.raises(DataError, match="mask has no image") as err:
        open_dataset("folder", root, split="train")
    assert str(err.value).startswith(str(root / "masks" / "lost.png"))


def test_train_refuses_points_without_clicks_or_outside_the_real_image(tmp_path):
    """A points artefact with 0 clicks, and clicks outside the image the dataset really has (the
    size points.json claims is larger), are refused before training (issue 15, item 8)."""
    import numpy as np
    from PIL import Image

    from pointparse.cache import StageCache
    from pointparse.simulate import MakePointsConfig
    from pointparse.dataspec import DatasetSpec
    from pointparse.stages.make_points import run_make_points
    from pointparse.stages.train import run_train
    from pointparse.train_config import TrainConfig

    cfg = TrainConfig(backbone="resnet18", weights="none", epochs=1, batch_size=2, crop_size=24, device="cpu",
                      workers=0, pdml=False)
    # every pixel ignore: make-points finds no instance, so no clicks
    empty = _folder_dataset(tmp_path / "empty", n=2)
    for p in (empty / "masks").iterdir():
        Image.fromarray(np.full((24, 24), 255, np.uint8)).save(p)
    cache = StageCache(tmp_path / "c")
    spec = DatasetSpec(kind="folder", root=str(empty), split="train")
    pts = run_make_points(spec, MakePointsConfig(workers=0), cache, progress=False)
    with pytest.raises(DataError, match="holds no clicks for its 2 images"):
        run_train(spec, cfg, cache, points=pts.path, progress=False)
    assert not list((tmp_path / "c").glob("train/*/*/model.pt"))

    root = _folder_dataset(tmp_path / "data", n=2)
    spec = DatasetSpec(kind="folder", root=str(root), split="train")
    pts = run_make_points(spec, MakePointsConfig(workers=0), cache, progress=False)
    # the images (and masks) replaced by 6x6 ones after the clicks were made at 24x24
    for sub in ("images", "masks"):
        for p in (root / sub).iterdir():
            small = np.zeros((6, 6, 3) if sub == "images" else (6, 6), np.uint8)
            Image.fromarray(small).save(p)
    with pytest.raises(DataError, match=r"of image 'im\d' lies outside the image \(.*im\d.png is 6x6; points.json "
                                        r"says 24x24\)") as err:
        run_train(spec, cfg, cache, points=pts.path, progress=False)
    assert str(err.value).startswith(str(pts.path / "points.json"))
    assert not list((tmp_path / "c").glob("train/*/*/model.pt"))
