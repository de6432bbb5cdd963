#!/usr/bin/env bash
# The whole fpnunet pipeline on a small synthetic GA dataset, on CPU.
# Make it longer for a real result, e.g.:
#   DEMO_N=60 DEMO_EPOCHS=30 DEMO_ITERS=50 DEMO_PRETRAIN_EPOCHS=20 make demo
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_BIN="${VENV_BIN:-.venv/bin}"
export PATH="$PWD/$VENV_BIN:$PATH"
export FPN_RAW="${FPN_RAW:-$PWD/fpn_data/raw}"
export FPN_PREPROCESSED="${FPN_PREPROCESSED:-$PWD/fpn_data/preprocessed}"
export FPN_RESULTS="${FPN_RESULTS:-$PWD/fpn_data/results}"

ID="${DEMO_ID:-901}"
NAME="Dataset${ID}_DemoGA"
N="${DEMO_N:-30}"
SHAPE="${DEMO_SHAPE:-16 128 64}"
EPOCHS="${DEMO_EPOCHS:-8}"
ITERS="${DEMO_ITERS:-12}"
PRE_EPOCHS="${DEMO_PRETRAIN_EPOCHS:-6}"
FOLDS="${DEMO_FOLDS:-0 1 2 3 4}"
DEVICE="${DEMO_DEVICE:-auto}"
# fp32 by default so that every CPU prints the same Dice: --precision auto would take bf16 on a CPU
# with native bf16 (faster there, but a different result). DEMO_PRECISION=auto lets the tool choose.
PRECISION="${DEMO_PRECISION:-fp32}"
start=$(date +%s)
step() { printf '\n=== [%4ds] %s\n' "$(( $(date +%s) - start ))" "$*"; }

step "1/7 synthetic dataset: $N cases of shape $SHAPE -> $FPN_RAW/$NAME"
# the demo owns its dataset id: start from a clean slate every time
rm -rf "$FPN_RAW/$NAME" "$FPN_PREPROCESSED/$NAME" "$FPN_RESULTS/$NAME"
# shellcheck disable=SC2086
fpn_make_synthetic -o "$FPN_RAW/$NAME" -n "$N" --labelled-fraction 0.5 --seed 0 --shape $SHAPE --no-progress

step "2/7 fingerprint, plan, preprocess"
fpn_plan_and_preprocess -d "$ID" -np 2

step "3/7 self-supervised pretraining (FAF reconstruction)"
fpn_pretrain "$ID" --target FAF --epochs "$PRE_EPOCHS" --iterations-per-epoch "$ITERS" --device "$DEVICE" --precision "$PRECISION" --no-progress

step "4/7 fine-tuning, folds: $FOLDS"
for f in $FOLDS; do
  fpn_train "$ID" "$f" --pretrained auto --epochs "$EPOCHS" --iterations-per-epoch "$ITERS" \
    --device "$DEVICE" --precision "$PRECISION" --no-progress
done

step "5/7 ensemble prediction of the test volumes"
# shellcheck disable=SC2086
fpn_predict -i "$FPN_RAW/$NAME/imagesTs" -o "$FPN_RESULTS/$NAME/demo_test_predictions" -d "$ID" \
  -f $FOLDS --device "$DEVICE" --precision "$PRECISION" --overlays

step "6/7 evaluation against the test labels"
fpn_evaluate -r "$FPN_RAW/$NAME/labelsTs" -p "$FPN_RESULTS/$NAME/demo_test_predictions" -d "$ID"

step "7/7 report: every test case's outline, areas and Dice in one HTML file"
REPORT="$FPN_RESULTS/$NAME/demo_report.html"
fpn_report -p "$FPN_RESULTS/$NAME/demo_test_predictions" -r "$FPN_RAW/$NAME/labelsTs" -d "$ID" -o "$REPORT"
step "done"
echo
PRED="$FPN_RESULTS/$NAME/demo_test_predictions"
"$VENV_BIN/python" - "$PRED/summary.json" "$PRECISION" <<'PY'
import json, sys
summary = json.load(open(sys.argv[1]))
dice, precision = summary["foreground_mean"]["Dice"], sys.argv[2]
if precision == "auto":  # say what auto chose on this machine
    import torch
    from fpnunet.precision import resolve_cpu_precision
    precision = "bf16 (auto, CUDA)" if torch.cuda.is_available() else resolve_cpu_precision("bf16")[0] + " (auto)"
print(f"Demo test Dice {dice:.3f} (precision {precision}, {len(summary['metric_per_case'])} test cases)")
PY
echo "Open the report in a browser: $REPORT"
echo "(the commands used above are in .venv/bin: run 'source .venv/bin/activate' to use them in your shell)"
