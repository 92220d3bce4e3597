"""A process whose loader workers are still alive at exit ends, instead of waiting on them for ever.

carotid's workers ignore SIGTERM (so a Slurm stop lets the main process finish its step and checkpoint),
which is also the signal multiprocessing's exit handler uses to end daemonic children before joining them.
"""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import FAST, make_data, subprocess_env, train_in_process

SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from accelerate import Accelerator
    from carotid.data.loaders import make_loader

    class Frames(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return torch.zeros(1, 4, 4, dtype=torch.uint8), 0, i, True

    loader = make_loader(Frames(), 4, train=True, num_workers=2, seed=0)
    if sys.argv[1] == "prepared":
        from carotid.data.loaders import stop_workers_at_exit

        accelerator = Accelerator(cpu=True)
        loader = stop_workers_at_exit(accelerator.prepare(loader))  # as the Trainer and inference register theirs
    for epoch in range(2):
        for batch in loader:
            pass
    # A module global, like a loader held in a reference cycle, is still alive when the interpreter exits.
    print("trained", flush=True)
    """
)


@pytest.mark.parametrize("kind", ["plain", "prepared"])
def test_process_exits_with_loader_workers_alive(kind):
    try:
        result = subprocess.run(
            [sys.executable, "-c", SCRIPT, kind], capture_output=True, text=True, timeout=90, env=subprocess_env()
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the process hung at exit waiting for its DataLoader workers")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "trained"


def test_training_stops_its_loader_workers(tmp_path):
    root, label = make_data(tmp_path / "data", persons=8, frames=4, size=48)
    before = set(multiprocessing.active_children())
    status = train_in_process(
        "--root-dir", str(root), "--label-excel", str(label), "--output-dir", str(tmp_path / "out"),
        "--epochs", "2", "--no-test", *FAST, "--num-workers", "2",
    )  # fmt: skip
    assert status == 0
    left = [p for p in multiprocessing.active_children() if p not in before]
    assert left == [], f"worker processes still running after training: {left}"
