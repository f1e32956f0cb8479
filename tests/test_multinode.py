"""Multi-node training proven on one machine: two torchrun "nodes" (separate processes, c10d
rendezvous on 127.0.0.1, gloo on CPU) run the same pipeline into one cache, as the README tells
users to do on a shared filesystem, and train exactly what one node with two processes trains."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pointparse.cache import StageCache
from pointparse.pipeline import RunContext, load_pipeline, run_pipeline

PIPELINE = """\
name: multinode
datasets:
  scenes: {kind: synthetic, options: {seed: 3, size: 64, splits: {train: 8}}}
defaults:
  train: {backbone: efficientnet_lite0, weights: none, epochs: 1, batch_size: 4, crop_size: 48, workers: 0,
          lr: 0.001, seed: 0, log_every: 1}
stages:
  points: {kind: make-points, dataset: scenes, split: train, params: {workers: 0}}
  train: {kind: train, dataset: scenes, points: points, gpus: 1}
"""
# 8 images, global batch 4 over 2 ranks: two optimiser steps
TIMEOUT_S = 240
CLI = "from pointparse.cli.main import main; main()"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pointparse_run(pipeline: Path, cache: Path, *overrides: str) -> subprocess.Popen:
    """``pointparse run PIPELINE --only train`` in its own process, as a user starts it on one node."""
    # one intra-op thread per rank in both layouts (torchrun sets it only for nproc > 1), so the
    # float reductions, and hence the weights, are bit-identical
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", CLI, "run", str(pipeline), "--cache-dir", str(cache), "--only", "train", "-q"]
    for o in overrides:
        cmd += ["--set", o]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(procs: list[subprocess.Popen]) -> list[str]:
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=TIMEOUT_S)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"a node did not finish within {TIMEOUT_S} s")
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return outs


def _trained(cache: Path) -> Path:
    runs = [p for p in (cache / "train").glob("*/*") if (p / "manifest.json").is_file()]
    assert len(runs) == 1, runs
    assert not list((cache / "train").glob("*/*.partial"))
    return runs[0]


@pytest.mark.slow
def test_two_nodes_train_what_one_node_with_two_processes_trains(tmp_path: Path):
    pipeline = tmp_path / "multinode.yaml"
    pipeline.write_text(PIPELINE)
    one, two = tmp_path / "one-node", tmp_path / "two-nodes"
    pipe = load_pipeline(pipeline)
    for cache in (one, two):  # scenes and clicks first, in-process (they are not what is tested)
        run_pipeline(pipe, RunContext(cache=StageCache(cache), datasets=pipe.datasets, progress=False,
                                      echo=lambda _: None), ["points"])

    _finish([_pointparse_run(pipeline, one, "stages.train.gpus=2")])

    rdzv = (f"stages.train.torchrun_args=[--nnodes=2, --rdzv-backend=c10d, "
            f"--rdzv-endpoint=127.0.0.1:{_free_port()}, --rdzv-id=pointparse-test]")
    outs = _finish([_pointparse_run(pipeline, two, rdzv), _pointparse_run(pipeline, two, rdzv)])

    a, b = _trained(one), _trained(two)
    assert a.name == b.name  # same key: the process layout is not part of it
    for out in outs:  # both nodes end with the artefact, one put it in place, the other waited for it
        assert str(b.relative_to(two)) in out
    ma = torch.load(a / "model.pt", weights_only=True)["model"]
    mb = torch.load(b / "model.pt", weights_only=True)["model"]
    assert ma.keys() == mb.keys()
    for k in ma:
        assert torch.equal(ma[k], mb[k]), k
    assert (a / "epochs.jsonl").read_text().count("\n") == (b / "epochs.jsonl").read_text().count("\n") == 1
    assert (b / "iterations.jsonl").read_text().count("\n") == 2  # two steps
