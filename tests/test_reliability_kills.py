"""Issue 24 (reliability, round two), items 8, 9, 10, 3 and 4: kills mid-write, damaged partial
runs, same-size edits, ``--out .`` and OS errors, replayed on tiny data. A kill is simulated by
leaving the files a kill leaves; a full disk by making the write raise ``ENOSPC``. Every case ends
in one line naming the file or option, a non-zero exit, no traceback and nothing that looks
finished (or, for a damaged partial run, one line and a run started afresh)."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pointparse.cli.main import main


def _folder_dataset(root: Path, n: int = 2, size: int = 32) -> Path:
    """``n`` images of ``size``² with one 8×8 square of class 1 each (classes ground, thing)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("0 ground 0:128:0\n1 thing 128:0:0\n")
    for i in range(n):
        img = np.full((size, size, 3), 40 * i, np.uint8)
        mask = np.zeros((size, size), np.uint8)
        mask[4:12, 4:12] = 1
        Image.fromarray(img).save(root / "images" / f"im{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"im{i}.png")
    return root


def _cli(*args) -> "click.testing.Result":  # noqa: F821
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_line_error(res, *expected: str) -> str:
    """The result failed with one line holding every ``expected`` text, and no traceback."""
    assert res.exit_code not in (0, None), res.output
    assert "Traceback" not in res.output and res.exc_info[0] is SystemExit, res.output
    err = res.output.strip().splitlines()[-1]
    for text in expected:
        assert text in err, (text, res.output)
    return err


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
