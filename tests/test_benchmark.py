"""scripts/benchmark.py runs end to end in --quick mode and reports every figure and ratio."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import subprocess_env

pytestmark = pytest.mark.slow  # the benchmark runs whole training processes: scripts/test.sh --fast skips it

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "benchmark.py"
FIGURES = [
    "compute_ceiling_images_per_second",
    "uncached_train_images_per_second",
    "uncached_train_data_wait_fraction",
    "cached_train_images_per_second",
    "cached_train_data_wait_fraction",
    "cache_build_seconds",
    "loader_uncached_images_per_second",
    "loader_cached_images_per_second",
    "discovery_seconds",
    "find_seconds",
    "frame_step_images_per_second",
    "bag_step_images_per_second",
]
RATIOS = [
    "uncached_train_vs_ceiling",
    "cached_train_vs_ceiling",
    "cached_vs_uncached_train",
    "loader_cached_vs_uncached",
    "discovery_vs_find",
    "help_vs_handwritten",
    "bad_flag_vs_handwritten_help",
    "first_batch_vs_handwritten",
    "whole_run_vs_handwritten",
    "checkpoint_vs_save_state",
    "bag_vs_frame_step",
]


def test_quick_benchmark_reports_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(out), "--work-dir", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=400,  # ~1 min on an idle 2-core machine; the start-up figures run 5 more Python processes
        env=subprocess_env(threads=2),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text(encoding="utf-8"))
    figures, ratios = report["figures"], report["ratios"]
    for name in FIGURES:
        assert isinstance(figures[name], float) and figures[name] >= 0, name
    assert figures["frames"] == 4 * 6 and figures["discovery_files"] == 4 * 6
    assert 0 <= figures["cached_train_data_wait_fraction"] <= 1
    for name in RATIOS:
        assert isinstance(ratios[name], float) and ratios[name] > 0, name
    assert len(figures["epochs"]["cached"]) == 2 and report["machine"]["device"] == "cpu"
    for line in (
        "(a) compute ceiling",
        "(c) train, cache",
        "loader cached/uncached",
        "discovery/find",
        "bag step/frame step (k)",
        "first batch: carotid.train/hand-written",
        "whole run: carotid.train/hand-written",
    ):
        assert line in result.stdout
    # (f)/(g): whole processes, carotid.train against the hand-written Accelerate loop on the same frames
    startup, whole = figures["startup"], figures["whole_run"]
    assert startup["_failed"] == {}, startup["_failed"]
    for name in ("hand-written --help", "carotid.train --help", "carotid.train --no-such-flag"):
        assert startup[name] > 0, name
    for side in ("carotid", "handwritten"):
        assert 0 < whole[side]["first_step_seconds"] < whole[side]["whole_run_seconds"], side
    assert all(figures["epoch_end"][k] > 0 for k in ("checkpoint_seconds", "save_state_seconds", "best_model_seconds"))
    runs = sorted((tmp_path / "work" / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "models" / "final_model.pth").is_file()  # carotid.train ran to the end
    assert (tmp_path / "work" / "handwritten" / "final.pth").is_file()
    rates = figures["decode_frames_per_core_second"]
    assert set(rates) == {"pillow_jpeg", "dicom_jpeg_baseline", "dicom_jpeg_lossless", "mp4_cine"}
    assert all(rate > 0 for rate in rates.values()) and "(i) decode mp4_cine" in result.stdout
    assert (tmp_path / "work" / "cache").is_dir()  # the cache was built where asked, not in the user's cache folder
