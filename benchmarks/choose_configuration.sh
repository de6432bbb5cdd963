#!/bin/bash
# The configuration choice on one synthetic dataset (docs/results.md, "Choosing the method"):
# 25 labelled cases of 16 x 96 x 64 + 8 test cases, candidates fpn (scratch, FAF pretraining) and
# lachinov, five folds of 6 x 8 steps, then fpn_find_best_configuration and every candidate's and
# the choice's test Dice, as a table. From the repository with the venv active:
#   OUT=/tmp/choice_m bash benchmarks/choose_configuration.sh 952 ChoiceGA        # en-face images show GA
#   OUT=/tmp/choice_f bash benchmarks/choose_configuration.sh 953 FaintGA 0.1    # they barely do
set -e
D=${1:?dataset id, e.g. 952}
NAME=Dataset${D}_${2:?dataset name, e.g. ChoiceGA}
CONTRAST=${3:-1}  # fpn_make_synthetic --enface-lesion-contrast
OUT=${OUT:-/tmp/choice_$D}
export FPN_RAW=$OUT/raw FPN_PREPROCESSED=$OUT/pre FPN_RESULTS=$OUT/res OMP_NUM_THREADS=1
start=$(date +%s)
[ -d "$FPN_RAW/$NAME" ] || fpn_make_synthetic -o "$FPN_RAW/$NAME" -n 25 --seed 0 --shape 16 96 64 --num-test 8 \
  --no-progress --enface-lesion-contrast "$CONTRAST"
[ -f "$FPN_PREPROCESSED/$NAME/plans.json" ] || fpn_plan_and_preprocess -d "$D" -np 1 --no-progress -c fpn lachinov \
  --drop-candidate fpn-ssl-SLO
fpn_train_folds -d "$D" -c all --devices cpu cpu --epochs 6 --iterations-per-epoch 8 --val-every 6 --num-workers 0 \
  --pretrain-epochs 6 --pretrain-iterations 8
fpn_find_best_configuration -d "$D"
test_dice() {  # $1: prediction folder
  fpn_evaluate -d "$D" -r "$FPN_RAW/$NAME/labelsTs" -p "$1" >/dev/null 2>&1
  python -c "import json, sys; print(round(100 * json.load(open(sys.argv[1]))['foreground_mean']['Dice'], 1))" "$1/summary.json"
}
echo "| pipeline | test Dice % |"
echo "|---|---|"
for m in fpn__lf1__scratch fpn__lf1__ssl-FAF lachinov__lf1__scratch; do
  fpn_predict -d "$D" --model $m -i "$FPN_RAW/$NAME/imagesTs" -o "$OUT/test/$m" --device cpu 2>/dev/null
  echo "| $m | $(test_dice "$OUT/test/$m") |"
done
fpn_predict -d "$D" --best -i "$FPN_RAW/$NAME/imagesTs" -o "$OUT/test/best" --device cpu 2>/dev/null
echo "| chosen (fpn_predict --best) | $(test_dice "$OUT/test/best") |"
echo "wall $(( $(date +%s) - start )) s"
