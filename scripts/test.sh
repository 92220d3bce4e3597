#!/usr/bin/env bash
# Install carotid with its dev extra into the active environment (or a new .venv), then run the test suite.
# Usage: bash scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
python -m pip install -q -e ".[dev]"
python -m ruff check .          # lint (config in pyproject.toml)
python -m ruff format --check . # formatting, line length 120
python -m pytest "$@"
