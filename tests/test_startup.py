"""`--help` and argument errors of every CLI answer without loading the heavy libraries.

Each CLI runs as a real process under `python -X importtime`, which lists on stderr every module the
process imported; none of torch, torchvision, scikit-learn or matplotlib may be among them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FAST, make_data, subprocess_env

CLIS = ("carotid.train", "carotid.evaluate", "carotid.predict", "carotid.demo", "carotid.compare", "carotid.export")
# numpy, Pillow and openpyxl too: the data layer's imports took evaluate/predict/demo --help to 0.3-0.5 CPU s
HEAVY = ("torch", "torchvision", "sklearn", "matplotlib", "numpy", "PIL", "openpyxl")


def imported_modules(stderr: str) -> set[str]:
    """Top-level package names from `-X importtime` lines: 'import time: self | cumulative | name'."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":  # the header row
                names.add(name.split(".")[0])
    return names


def run_with_importtime(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=subprocess_env(),
    )


@pytest.mark.parametrize("module", CLIS)
def test_help_answers_without_heavy_imports(module):
    result = run_with_importtime(module, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout and "--help" in result.stdout
    modules = imported_modules(result.stderr)
    assert "carotid" in modules, "importtime output not understood"
    assert not modules & set(HEAVY), f"{module} --help imported {sorted(modules & set(HEAVY))}"


@pytest.mark.parametrize("module", CLIS)
def test_bad_flag_is_one_error_line_without_heavy_imports(module):
    result = run_with_importtime(module, "--no-such-flag", "1")
    assert result.returncode == 2, result.stderr[-2000:]
    messages = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert len(messages) == 1 and messages[0].startswith("error: "), messages
    assert "--no-such-flag" in messages[0] or "required" in messages[0]
    assert "Traceback" not in result.stderr
    modules = imported_modules(result.stderr)
    assert not modules & set(HEAVY), f"{module} with a bad flag imported {sorted(modules & set(HEAVY))}"


def test_a_bad_value_is_refused_before_torch_loads():
    """A check in TrainConfig.__post_init__ (not argparse) answers as quickly."""
    result = run_with_importtime("carotid.train", "--epochs", "0")
    assert result.returncode == 2
    messages = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert messages == [messages[0]] and messages[0].startswith("error: --epochs must be ≥ 1"), messages
    assert not imported_modules(result.stderr) & set(HEAVY)


# Run carotid.train with its first optimizer step reporting which libraries were loaded by then.
FIRST_STEP_PROBE = """
import sys
import carotid.training.engine as engine
from carotid.train import main

def probe(*args, **kwargs):
    loaded = sorted(name for name in ("sklearn", "scipy", "matplotlib") if name in sys.modules)
    print("loaded before the first batch:", ",".join(loaded) or "none", file=sys.stderr, flush=True)
    engine.train_one_epoch = original  # the later epochs as usual
    return original(*args, **kwargs)

original, engine.train_one_epoch = engine.train_one_epoch, probe
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def probed_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """One 1-epoch carotid.train process under `-X importtime` whose first optimizer step says which libraries
    were loaded by then: both tests below read it (one process instead of two)."""
    folder = tmp_path_factory.mktemp("probed")
    root, label = make_data(folder / "data", persons=6, frames=2, size=32)
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", FIRST_STEP_PROBE, "--root-dir", str(root), "--label-excel"]
        + [str(label), *FAST, "--epochs", "1", "--no-test", "--output-dir", str(folder / "out")],
        capture_output=True,
        text=True,
        timeout=300,
        env=subprocess_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result, folder / "out"


def test_the_first_batch_comes_before_scipy_sklearn_and_matplotlib_load(probed_run):
    """They are needed after the first epoch (validation metrics, calibration, curves): a plain run's
    first batch does not wait for their ~2-3 s of imports (docs/PERFORMANCE.md, figure g)."""
    result, _ = probed_run
    assert "loaded before the first batch: none" in result.stderr, result.stderr[-3000:]


def test_a_plain_run_never_imports_deepspeed(probed_run):
    """Saving best_model.pth of a one-process run takes the model's weights without Accelerate's unwrap_model,
    which imports DeepSpeed (and through it mlflow) whenever it is installed: 2-3 s on a CPU
    (docs/PERFORMANCE.md, the profile of the whole run)."""
    result, out = probed_run
    assert sorted(out.glob("*/models/best_model.pth")), "the run saved no best model"
    loaded = imported_modules(result.stderr)
    assert "torch" in loaded and "deepspeed" not in loaded and "mlflow" not in loaded
