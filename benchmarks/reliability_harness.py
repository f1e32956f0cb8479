"""The harness of ``reliability_probe.py``: a workspace whose ``cli`` runs this checkout's
``pointparse`` in a fresh process, the verdict on one outcome, and the tiny data every case shares
(a 3-image folder dataset, its clicks, clicks of nothing, one 1-epoch model and damaged copies).
The cases themselves, and what each issue item expects, are in ``reliability_probe.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
# run this checkout's commands even where an editable install maps pointparse.cli elsewhere
BOOT = f"""
import importlib.util, sys
sys.path.insert(0, {str(REPO)!r})
import pointparse
if 'pointparse.cli' not in sys.modules:
    spec = importlib.util.spec_from_file_location('pointparse.cli', {str(REPO / 'cli' / '__init__.py')!r},
                                                  submodule_search_locations=[{str(REPO / 'cli')!r}])
    sys.modules['pointparse.cli'] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules['pointparse.cli'])
from pointparse.cli.main import main
main(sys.argv[1:], prog_name='pointparse')
"""
FINISHED = ("wrote", "mIoU", "reused cached")


@dataclass
class Run:
    rc: int
    out: str
    err: str


@dataclass
class Case:
    item: int
    what: str
    args: Callable[["Workspace"], list]   # the command line (after `pointparse`)
    good: bool = False                    # a valid input: it must succeed
    check: Callable[["Workspace", Run], str | None] | None = None  # extra: a problem or None
    expect: str = ""                      # text the error line must hold (the option or file)


@dataclass
class Workspace:
    root: Path
    cache: Path = field(init=False)
    state: dict = field(default_factory=dict)  # what a case's command leaves for its check

    def __post_init__(self):
        self.cache = self.root / "cache"

    def cli(self, *args, timeout: float = 600) -> Run:
        env = {**os.environ, "POINTPARSE_CACHE": str(self.cache), "PYTHONPATH": str(REPO),
               **self.state.pop("env", {})}  # a case may set the environment of its own command
        p = subprocess.run([sys.executable, "-c", BOOT, *map(str, args)], cwd=self.root, env=env,
                           capture_output=True, text=True, timeout=timeout)
        return Run(p.returncode, p.stdout, p.stderr)

    def need(self, *args) -> Run:
        r = self.cli(*args)
        if r.rc != 0:
            raise SystemExit(f"probe setup failed: pointparse {' '.join(map(str, args))}\n{r.out}{r.err}")
        return r


def verdict(case: Case, ws: Workspace, r: Run) -> str | None:
    """What is wrong with this outcome, or None."""
    text = r.out + r.err
    if "Traceback" in text:
        return "traceback: " + text.strip().splitlines()[-1][:160]
    if case.good:
        if r.rc != 0:
            return f"exit {r.rc}: " + (text.strip().splitlines() or ["?"])[-1][:160]
        return case.check(ws, r) if case.check else None
    if r.rc == 0:
        return "exit 0 (silent accept): " + " | ".join(text.strip().splitlines()[-2:])[:160]
    lines = r.err.strip().splitlines()
    at = [i for i, line in enumerate(lines) if line.startswith("Error:")]
    if not at:
        return f"exit {r.rc} without an error line: {(lines or [''])[-1][:160]!r}"
    last = " ".join(lines[at[-1]:])  # a pipeline lists each of its problems on a line under Error:
    if case.expect and case.expect not in last:
        return f"the error does not name {case.expect!r}: {last[:160]}"
    if any(w in r.out for w in FINISHED):
        return "looks finished: " + r.out.strip().splitlines()[-1][:160]
    return case.check(ws, r) if case.check else None


# -- the tiny data every case shares ----------------------------------------------------------------


def folder_dataset(root: Path, names=("im0", "im1", "im2"), size: int = 24) -> Path:
    """Images of ``size``² with one 8×8 square of class 1 each (classes ground, thing)."""
    import numpy as np
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("0 ground 0:128:0\n1 thing 128:0:0\n")
    for i, name in enumerate(names):
        img = np.full((size, size, 3), 40 * i, np.uint8)
        img[4:12, 4:12] = 200
        mask = np.zeros((size, size), np.uint8)
        mask[4:12, 4:12] = 1
        Image.fromarray(img).save(root / "images" / f"{name}.png")
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    return root


def artefact(ws: Workspace, stage: str, before: set) -> Path:
    new = [p.parent for p in ws.cache.glob(f"{stage}/*/*/manifest.json") if p.parent not in before]
    assert len(new) == 1, new
    return new[0]


def setup(ws: Workspace) -> dict:
    """The dataset, its clicks, clicks of nothing, one trained model and damaged copies of them."""
    d: dict = {"data": folder_dataset(ws.root / "data")}
    ds = ["--dataset", "folder", "--root", d["data"]]
    d["ds"] = ds
    ws.need("make-points", *ds, "-q", "--workers", "0")
    d["points"] = artefact(ws, "make-points", set())
    ws.need("make-points", *ds, "-q", "--workers", "0", "--min-area", "100000")
    d["no_clicks"] = artefact(ws, "make-points", {d["points"]})
    d["tiny"] = ["--epochs", "1", "--batch-size", "2", "--crop-size", "24", "--weights", "none", "--workers", "0",
                 "--backbone", "resnet18", "--device", "cpu", "-q"]
    ws.need("train", *ds, "--points", d["points"], *d["tiny"])
    d["model"] = artefact(ws, "train", set()) / "model.pt"
    d["poison"] = poisoned_checkpoints(d["model"], ws.root / "poison")
    for name, manifest in (("manifest_empty", {}), ("manifest_key5", None), ("manifest_outputs5", None)):
        copy = ws.root / name
        shutil.copytree(d["points"], copy)
        m = json.loads((copy / "manifest.json").read_text())
        if name == "manifest_key5":
            m["key"] = 5
        elif name == "manifest_outputs5":
            m["outputs"] = {"points.json": 5}
        (copy / "manifest.json").write_text(json.dumps(manifest if manifest is not None else m))
        d[name] = copy
    doc = json.loads((d["points"] / "points.json").read_text())
    for name, edit in (("bool_coords", lambda doc: doc["annotations"][0].update(point_coords=[[True, False]])),
                       ("short_palette", lambda doc: doc["info"].update(palette=doc["info"]["palette"][:1]))):
        bad = json.loads(json.dumps(doc))
        edit(bad)
        (ws.root / name).mkdir()
        (ws.root / name / "points.json").write_text(json.dumps(bad))
        d[name] = ws.root / name / "points.json"
    for name, coords in (("coco.json", [{"a": 1}]), ("coco_xy.json", [{"x": 3, "y": 4}])):
        (ws.root / name).write_text(json.dumps({
            "images": [{"id": 1, "file_name": "im0.png", "height": 24, "width": 24}],
            "annotations": [{"image_id": 1, "category_id": 1, "point_coords": coords}],
            "categories": [{"id": 1, "name": "thing"}]}))
    (ws.root / "notes").mkdir()
    (ws.root / "notes" / "thesis.tex").write_text("\\chapter{mine}\n")
    d["odd"] = folder_dataset(ws.root / "odd", names=("a b", "#c", "d"))
    return d


def poisoned_checkpoints(model: Path, folder: Path) -> dict[str, Path]:
    import torch

    folder.mkdir()
    out = {}
    for name in ("nan_weight", "std_0", "std_nan"):
        ckpt = torch.load(model, map_location="cpu", weights_only=True)
        if name == "nan_weight":
            k = next(k for k, v in ckpt["model"].items() if v.is_floating_point() and v.numel() > 1)
            ckpt["model"][k][0] = float("nan")
        else:
            ckpt["normalization"]["std"] = [0.0 if name == "std_0" else float("nan")] * 3
        with open(folder / f"{name}.pt", "wb") as fh:
            torch.save(ckpt, fh)
        out[name] = folder / f"{name}.pt"
    return out


def pipeline(ws: Workspace, name: str, stages: str) -> Path:
    path = ws.root / f"{name}.yaml"
    path.write_text(f"name: {name}\ndatasets:\n  s: {{kind: synthetic, options: {{size: 32, splits: {{train: 2, "
                    f"val: 2}}}}}}\nstages:\n{stages}")
    return path
