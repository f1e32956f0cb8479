"""PDML's points gathered across ranks (:func:`pointparse.pdml.gather_points`): a no-op on one
process; on 2 gloo ranks the gathered loss and gradients equal the single process's, and the
gather reads no value back from the device."""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pointparse.evaluate import ConfusionMatrix
from pointparse.pdml import gather_points, pdml_loss, subgroups


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_gather_points_is_noop_without_distributed():
    x = torch.randn(3, 2)
    lab, ids = torch.tensor([0, 1, 2]), torch.tensor([0, 0, 1])
    out = gather_points(x, lab, ids)
    assert out[0] is x and out[1] is lab and out[2] is ids and out[3] is None


# ------------------------------------------------------------------------------ DDP (2 gloo ranks)

# global batch: 6 images; rank 0 holds images 0-2 (9 points), rank 1 images 3-5 (13 points)
_DDP_SPLIT = 9


def _ddp_data():
    g = gen(2024)
    per_image = torch.tensor([3, 2, 4, 5, 4, 4])
    ids = torch.repeat_interleave(torch.arange(6), per_image)
    labels = torch.randint(0, 3, (ids.numel(),), generator=g)
    inputs = torch.randn(ids.numel(), 5, generator=g, dtype=torch.float64)
    weight = torch.randn(5, 8, generator=g, dtype=torch.float64)
    return inputs, labels, ids, weight


class _ScalarReads(TorchDispatchMode):
    """Records the ops that read a tensor's value back to Python (``item``, ``int``, ``bool``):
    on a GPU each one waits for the stream."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default):
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _same_image(ids: torch.Tensor) -> torch.Tensor:
    return ids[:, None] == ids[None, :]


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=30))
    try:
        inputs, labels, ids, weight0 = _ddp_data()
        sl = slice(0, _DDP_SPLIT) if rank == 0 else slice(_DDP_SPLIT, None)
        weight = weight0.clone().requires_grad_(True)
        emb = inputs[sl] @ weight
        emb.retain_grad()
        local_ids = ids[sl] - ids[sl].min()  # each rank numbers its images from 0
        with _ScalarReads() as reads:  # what would make a CUDA stream wait for the host
            e, lab, gid, _ = gather_points(emb, labels[sl], local_ids)
        loss, stats = pdml_loss(e, lab, gid, margin=6.0, generator=gen(77), groups=subgroups(gid, 4))
        loss.backward()
        grad = weight.grad.clone()
        dist.all_reduce(grad)
        grad /= world  # what DDP does to parameter gradients
        # a rank without points still takes part
        n_empty = 0 if rank == 1 else _DDP_SPLIT
        e2, lab2, gid2, _ = gather_points(emb.detach()[:n_empty], labels[sl][:n_empty], local_ids[:n_empty])
        cm = ConfusionMatrix(3)
        cm.update(torch.tensor([0, 1, 2, 2]) if rank == 0 else torch.tensor([1, 1]), torch.tensor([0, 1, 1, 255]) if rank == 0 else torch.tensor([1, 2]))
        cm.all_reduce()
        torch.save(
            {
                "loss": loss.detach(),
                "triples": stats.num_triples,
                "grad": grad,
                "emb_grad": emb.grad,
                "ids": gid,
                "n_empty_gather": e2.shape[0],
                "scalar_reads": reads.ops,
                "empty_ids": gid2,
                "cm": cm.mat,
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
        # gloo aborts (SIGABRT) when one rank tears its pairs down while the other still uses them
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_gathered_pdml_equals_single_process(tmp_path):
    import torch.multiprocessing as mp

    ctx = mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 60
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail("DDP workers did not finish within 60 s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
    r = [torch.load(tmp_path / f"rank{k}.pt") for k in range(2)]

    inputs, labels, ids, weight0 = _ddp_data()
    weight = weight0.clone().requires_grad_(True)
    emb = inputs @ weight
    emb.retain_grad()
    loss, stats = pdml_loss(emb, labels, ids, margin=6.0, generator=gen(77), groups=subgroups(ids, 4))
    loss.backward()
    assert stats.num_triples > 0
    for k in range(2):
        # local ids made distinct across ranks: the same images as the single process's ids
        assert torch.equal(_same_image(r[k]["ids"]), _same_image(ids))
        assert r[k]["scalar_reads"] == []  # the gather never reads the device
        assert r[k]["triples"] == stats.num_triples
        torch.testing.assert_close(r[k]["loss"], loss.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(r[k]["grad"], weight.grad, rtol=1e-10, atol=1e-12)
        assert r[k]["n_empty_gather"] == _DDP_SPLIT
        assert torch.equal(_same_image(r[k]["empty_ids"]), _same_image(ids[:_DDP_SPLIT]))
    # all_gather's backward sums the two ranks' identical gradients: 2x per rank, DDP halves it
    torch.testing.assert_close(r[0]["emb_grad"], 2 * emb.grad[:_DDP_SPLIT])
    torch.testing.assert_close(r[1]["emb_grad"], 2 * emb.grad[_DDP_SPLIT:])
    expected_cm = torch.tensor([[1, 0, 0], [0, 2, 1], [0, 1, 0]])  # rank 0's 255 is ignored
    assert torch.equal(r[0]["cm"], expected_cm) and torch.equal(r[1]["cm"], expected_cm)
