"""Training processes forked from the test process, to be killed or starved of disk.

A fork starts in milliseconds because torch and carotid are already imported; a fresh interpreter
spends 3-9 s importing them, which a test that launches ten processes cannot afford. The child runs
the real `carotid.train.main(argv)`; its stdout and stderr go to a log file.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import signal
import sys
import time
import traceback
from pathlib import Path


def _child(argv: list[str], log: str, slow_fsync: float, file_size_limit: int | None) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = sys.stderr = open(1, "w", buffering=1, closefd=False)
    os.environ.update({"TQDM_DISABLE": "1", "CUDA_VISIBLE_DEVICES": "", "ACCELERATE_MIXED_PRECISION": "no"})
    if file_size_limit is not None:
        # A "full disk": writes past this size fail with EFBIG instead of killing the process with SIGXFSZ.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
    if slow_fsync:
        # A slow disk (a network file system): every fsync takes this long, so saves last long enough to be hit.
        fsync = os.fsync

        def slow(fd: int) -> None:
            fsync(fd)
            time.sleep(slow_fsync)

        os.fsync = slow
    status = 1
    try:
        import torch

        # The parent has most likely run OpenMP regions already, and GNU libgomp does not survive a fork:
        # a child that opens a parallel region hangs or crashes. One thread never opens one.
        torch.set_num_threads(1)
        from tests.conftest import reset_accelerate

        reset_accelerate()
        from carotid.train import main

        status = main(argv)
    except BaseException:  # noqa: BLE001 - what a console would show
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        os._exit(status)


def start_training(
    argv: list[str], log: Path, *, slow_fsync: float = 0.0, file_size_limit: int | None = None
) -> multiprocessing.Process:
    """`carotid.train.main(argv)` in a forked process; `.kill()` sends SIGKILL, `.exitcode` is the exit status."""
    process = multiprocessing.get_context("fork").Process(
        target=_child, args=(list(argv), str(log), slow_fsync, file_size_limit), daemon=True
    )
    process.start()
    return process
