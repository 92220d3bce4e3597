#!/usr/bin/env bash
# Install carotid into the active environment (or a new .venv), make synthetic carotid B-mode data and
# train + evaluate a small CNN on it on the CPU (see README for the time it takes), then print the next
# commands, ready to copy. A frame model: 15 epochs of the demo's 36 training persons are 270 optimizer steps for
# a person model, too few for the default (attention) to learn reliably; a frame model takes 27 steps an epoch and
# shows the numbers per image and per person. `bash scripts/demo.sh --person-model attention --epochs 60` trains
# the default instead.
# Usage: bash scripts/demo.sh [extra carotid-train options]
set -euo pipefail
START_DIR="$PWD"
DEMO_STARTED=$SECONDS
cd "$(dirname "$0")/.."
. scripts/env.sh
install_extras export
OUT="${DEMO_OUTPUT:-output/demo}"
STARTED=$SECONDS
accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
    -m carotid.train --demo --output-dir "$OUT" --model small_cnn --image-size 64 --epochs 15 --lr 1e-3 \
    --batch-size 16 --num-workers 2 --train-ratio 0.6 --val-ratio 0.2 --test-ratio 0.2 --person-model frames "$@"
RUN="$(ls -d "$OUT"/train_* | sort | tail -n 1)"
echo
echo "data, training and evaluation took $((SECONDS - STARTED)) s"
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
PY_CMD="$CAROTID_PYTHON"
MODEL="$RUN/models/best_model.pth"
NEW="$OUT/new_persons"
echo
echo "report: $RUN/report.html (open it in a browser: curves, metrics with CIs, ROC, failure gallery)"
echo
echo "next, from this folder (copy as printed):"
if [ "$START_DIR" != "$PWD" ]; then echo "  cd $PWD"; fi
echo "  $PY_CMD -m carotid.evaluate --run-dir $RUN --heatmaps 4 --num-workers 2"
echo "  # predict on persons the model never saw: make 10 new synthetic persons (IDs from 2001), then predict"
echo "  $PY_CMD -m carotid.demo --out $NEW --persons 10 --seed 1 --first-id 2001"
echo "  $PY_CMD -m carotid.predict --model $MODEL --input $NEW --out $NEW/predictions.csv --num-workers 2"
echo "  $PY_CMD -m carotid.export --model $MODEL --format onnx"
if [ "$PY_CMD" != python ]; then
    echo "or first run 'source .venv/bin/activate'; then 'python -m carotid.…' and 'carotid-train …' work as in README.md"
fi
echo "demo done in $((SECONDS - DEMO_STARTED)) s"
