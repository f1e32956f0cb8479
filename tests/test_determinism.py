"""Issue 15, item 11: the same seed gives the same model on CPU, bit for bit, in fresh processes.

Measured (torch 2.14, 2 cores): repeated runs in fresh processes — sequential or concurrent, any
PYTHONHASHSEED, 0 or 2 DataLoader processes, every optional loss and extension — give identical
weights with no torch settings. What does change the bits is the intra-op thread count (1 vs 2
threads: max |dw| 5e-7 after two tiny epochs), since parallel reductions are split per thread; so
the processes here pin it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

TIMEOUT = 300

TRAIN = textwrap.dedent("""
    import hashlib, sys
    import torch
    torch.set_num_threads(2)  # the intra-op thread count is part of the bits (module docstring)
    from pointparse.cache import StageCache
    from pointparse.points import load_points
    from pointparse.simulate import MakePointsConfig
    from pointparse.dataspec import DatasetSpec, open_spec
    from pointparse.stages.make_points import run_make_points
    from pointparse.train import train
    from pointparse.train_config import TrainConfig

    out, workers = sys.argv[1], int(sys.argv[2])
    spec = DatasetSpec(kind="synthetic", split="train", options={"seed": 3, "size": 40, "splits": {"train": 8}})
    cache = StageCache(out + "/cache")
    ps = load_points(run_make_points(spec, MakePointsConfig(workers=0), cache, progress=False).path)
    cfg = TrainConfig(backbone="resnet18", weights="none", epochs=2, batch_size=4, crop_size=32, device="cpu",
                      workers=workers, extension="score+region", threshold=0.5, crf_weight=0.1,
                      class_balance="sqrt", log_every=1)
    train(cfg, open_spec(spec, cache), {n: ps.points(n) for n in ps.names}, out + "/run",
          progress=False)
    state = torch.load(out + "/run/model.pt", weights_only=True)["model"]
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode() + state[k].contiguous().numpy().tobytes())
    print(h.hexdigest())
""")


def _train(tmp_path, tag: str, workers: int, hash_seed: str) -> str:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    env.pop("OMP_NUM_THREADS", None)
    res = subprocess.run([sys.executable, "-c", TRAIN, str(tmp_path / tag), str(workers)], capture_output=True,
                         text=True, timeout=TIMEOUT, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout.split()[-1]


def test_same_seed_same_weights_in_fresh_processes(tmp_path):
    """Two trainings in two processes (other string-hash salts, in-process loading vs two loader
    processes): the weights are bit-identical."""
    first = _train(tmp_path, "a", 0, "1")
    second = _train(tmp_path, "b", 2, "2")
    assert first == second
