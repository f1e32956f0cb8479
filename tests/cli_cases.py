"""Helpers of the reliability tests (not a test module): a tiny folder dataset, the command line
run in-process, and the check every hostile case ends with (one line, non-zero exit, no
traceback)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from pointparse.cli.main import main


def folder_dataset(root: Path, n: int = 3, size: int = 24) -> Path:
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


def cli(*args) -> "click.testing.Result":  # noqa: F821
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(res, *expected: str) -> str:
    """The result failed with one line holding every ``expected`` text, and no traceback."""
    assert res.exit_code not in (0, None), res.output
    assert "Traceback" not in res.output and res.exc_info[0] is SystemExit, res.output
    err = res.output.strip().splitlines()[-1]
    for text in expected:
        assert text in err, (text, res.output)
    return err
