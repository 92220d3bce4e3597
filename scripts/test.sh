#!/usr/bin/env bash
# Install carotid with the extras the tests need into the active environment (or a new .venv), check lint, format
# and layers, then run the test suite (tests/test_strategies.py runs DeepSpeed ZeRO-2/3 and FSDP2 on the CPU).
# Usage: bash scripts/test.sh [--fast] [pytest arguments]
#   --fast: skip the tests marked slow (multi-process launches, the browser, the benchmark): the quick loop of a
#   developer (pytest -m "not slow"); CI runs everything. README.md gives the time each takes.
# The tests run on two workers (CAROTID_TEST_WORKERS, below).
# A second run with pyproject.toml unchanged skips the install (a stamp in the environment, see scripts/env.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
STARTED=$SECONDS
trap 'echo "scripts/test.sh took $((SECONDS - STARTED)) s (load average $(cut -d" " -f1-3 /proc/loadavg 2>/dev/null))"' EXIT
. scripts/env.sh

# --- the extras the test suite needs, one install line each ---
install_extras dev
# DeepSpeed is a source package whose setup.py imports torch: build it against the torch installed above (an
# isolated build would fetch a second torch) and without its compiled ops (DS_BUILD_OPS=0: CUDA kernels; the
# CPU runs need none). About 2 minutes on a fresh runner, seconds once pip's cache holds the wheel.
if [ -z "${CAROTID_NO_INSTALL:-}" ] && ! is_installed dev,deepspeed,flare,federated --no-build-isolation; then
    python -m pip install -q "setuptools>=77" wheel
fi
DS_BUILD_OPS=0 install_extras dev,deepspeed,flare,federated --no-build-isolation
# --- end of the extras ---

echo "checking lint, formatting and the import layers"
python -m ruff check .          # lint (config in pyproject.toml)
python -m ruff format --check . # formatting, line length 120
lint-imports --no-cache          # the layers (contract in pyproject.toml): nothing imports a layer above it
if [ "${1:-}" = "--fast" ]; then
    shift
    set -- -m "not slow" "$@"
fi
# Byte-compile the checkout first, as installing a package does: the tests start carotid in hundreds of processes,
# and where PYTHONDONTWRITEBYTECODE is set (some shells and CI images) each would compile its modules again (~0.2 s).
python -m compileall -q -j 0 carotid benchmarks >/dev/null
# Two pytest workers (pytest-xdist, the dev extra): most tests wait on one process at a time, so two workers take
# about half the time on two cores. A test file runs on one worker (--dist loadfile), which builds its module
# fixtures (trained runs) once; the files go out in the order tests/conftest.py gives them (the long ones first),
# and each worker takes its share of the cores.
# CAROTID_TEST_WORKERS=1 runs the tests in one process (a debugger, -x with a single traceback), as does -n 0.
WORKERS="${CAROTID_TEST_WORKERS:-2}"
if [ "$WORKERS" -gt 1 ]; then
    if python -c "import xdist" 2>/dev/null; then
        set -- -n "$WORKERS" --dist loadfile --no-loadscope-reorder "$@"
    else
        echo "pytest-xdist is not installed: the tests run in one process (pip install pytest-xdist for two workers)"
    fi
fi
python -m pytest "$@"
