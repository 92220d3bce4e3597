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
python - "$RUN/eval_test_best/metrics.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
person, ci = report["person"], (report.get("ci") or {}).get("person") or {}
def show(key):
    low_high = f" [{ci[key]['low']:.3f}, {ci[key]['high']:.3f}]" if ci.get(key) else ""
    return f"{key} {person[key]:.3f}{low_high}" if person.get(key) is not None else f"{key} n/a"
print(f"test split, per person ({report['n_persons']} persons, {report['n_images']} frames): "
      + ", ".join(show(k) for k in ("auc", "sensitivity", "specificity", "accuracy")))
print(f"all metrics: {sys.argv[1]}")
PY
