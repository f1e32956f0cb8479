"""Entry point for ``torchrun``: ``python -m torch.distributed.run ... -m pointparse.worker RUN_DIR``.

Every rank reads ``RUN_DIR/job.json`` (written by :func:`pointparse.stages.train.run_train`) and trains;
rank 0 writes the files.
"""

from __future__ import annotations

import sys

import torch.distributed as dist

from .stages.train import run_job


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python -m pointparse.worker RUN_DIR")
    run_job(argv[0])
    if dist.is_initialized():
        # Tear down together: a rank that closes its gloo pairs while another still reads them
        # aborts that one (SIGABRT), and exiting without destroy_process_group leaks NCCL comms.
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
