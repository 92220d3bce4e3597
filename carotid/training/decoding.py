"""What the loaders said about each frame of a training run: gathered over the ranks, then written into
data_report.json ("decoding", with each failure's reason) and summed up on the console per split.

The datasets return a decode status per frame (`carotid.data.frames.decode` flags, 0 = not decodable); the
training loop records the statuses of the frames it drew, validation those of every frame it read.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from carotid.core.files import atomic_write_json
from carotid.core.run_dir import RunDir
from carotid.core.text import plural
from carotid.data.folders.readable import dataset_decoding, summary_line
from carotid.data.frames.decode import SEEN
from carotid.data.frames.preprocessing import Preprocessing


def gather_statuses(
    accelerator: Accelerator, train_status: torch.Tensor, val_status: np.ndarray | None
) -> dict[str, np.ndarray]:
    """Collective: each split's per-frame decode status (| SEEN), merged over the ranks (each drew some)."""
    gathered = accelerator.gather(train_status[None]).reshape(-1, len(train_status))
    statuses = {"train": gathered.amax(dim=0).cpu().numpy()}
    if val_status is not None:
        statuses["val"] = val_status.astype(np.uint8) | SEEN  # validation reads every frame
    return statuses


def report_decoding(
    run_dir: Path,
    datasets: dict,
    statuses: dict[str, np.ndarray],
    prep: Preprocessing,
    test_report: dict | None,
    unreadable_at_start: int,
    names: dict[str, str] | None = None,
) -> list[str]:
    """Main process: every frame that could not be decoded in training, validation and test, with its reason,
    into data_report.json ("decoding"); returns the console lines (one per split)."""
    decoding = {split: dataset_decoding(datasets[split], status, prep) for split, status in statuses.items()}
    if test_report is not None:
        decoding["test"] = test_report["decoding"] | {"unreadable": test_report["unreadable_images"]}
    path = RunDir(run_dir).data_report
    atomic_write_json(path, json.loads(path.read_text(encoding="utf-8")) | {"decoding": decoding})
    lines = []
    if unreadable_at_start:
        lines.append(
            f"{plural(unreadable_at_start, 'file or frame', 'files or frames')} found unreadable at start-up "
            "(unreadable_images in data_report.json)"
        )
    for split, summary in decoding.items():
        lines.append(
            summary_line((names or {}).get(split, split), summary)
            + (" (listed in data_report.json)" if summary["unreadable"] else "")
        )
    return lines
