#!/usr/bin/env bash
# Install carotid with its dev, deepspeed and flare extras into the active environment (or a new .venv), then run the
# test suite (tests/test_strategies.py runs DeepSpeed ZeRO-2/3 and FSDP2 on the CPU).
# Usage: bash scripts/test.sh [--fast] [pytest arguments]
#   --fast: skip the tests marked slow (multi-process launches, the browser, the benchmark): the quick loop of a
#   developer (pytest -m "not slow"); CI runs everything.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
python -m pip install -q -e ".[dev]"
# DeepSpeed is a source package whose setup.py imports torch: build it against the torch installed above (an
# isolated build would fetch a second torch) and without its compiled ops (DS_BUILD_OPS=0: CUDA kernels; the
# CPU runs need none). About 2 minutes on a fresh runner, seconds once pip's cache holds the wheel.
python -m pip install -q "setuptools>=77" wheel
DS_BUILD_OPS=0 python -m pip install -q --no-build-isolation -e ".[dev,deepspeed,flare]"
python -m ruff check .          # lint (config in pyproject.toml)
python -m ruff format --check . # formatting, line length 120
lint-imports --no-cache          # the layers (contract in pyproject.toml): nothing imports a layer above it
if [ "${1:-}" = "--fast" ]; then
    shift
    set -- -m "not slow" "$@"
fi
python -m pytest "$@"
