"""Entry point for ``torchrun``: ``python -m torch.distributed.run ... -m pointparse.worker RUN_DIR``.

Every rank reads ``RUN_DIR/job.json`` (written by :func:`pointparse.stages.run_train`) and trains;
rank 0 writes the files.
"""

from __future__ import annotations

import sys

from .stages import run_job


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python -m pointparse.worker RUN_DIR")
    run_job(argv[0])


if __name__ == "__main__":
    main()
