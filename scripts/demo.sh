#!/usr/bin/env bash
# Install carotid into the active environment (or a new .venv), make synthetic carotid B-mode data and
# train + evaluate a small CNN on it on the CPU (about a minute on two cores).
# Usage: bash scripts/demo.sh [extra carotid-train options]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
python -m pip install -q -e .
OUT="${DEMO_OUTPUT:-output/demo}"
accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
    -m carotid.train --demo --output-dir "$OUT" --model small_cnn --image-size 64 --epochs 15 --lr 1e-3 \
    --batch-size 16 --num-workers 2 --train-ratio 0.6 --val-ratio 0.2 --test-ratio 0.2 "$@"
RUN="$(ls -d "$OUT"/train_* | sort | tail -n 1)"
echo
echo "run:    $RUN"
echo "models: $RUN/models/best_model.pth, $RUN/models/final_model.pth"
echo "test metrics of best_model.pth ($RUN/eval_test_best/metrics.json):"
python -c 'import json, sys; from carotid.evaluate import format_table; print(format_table(json.load(open(sys.argv[1]))))' \
    "$RUN/eval_test_best/metrics.json"
