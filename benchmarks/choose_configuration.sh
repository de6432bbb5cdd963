#!/bin/bash
# The configuration choice on one synthetic dataset (docs/results.md, "Choosing the method"): make
# the dataset, plan it with its candidate configurations, fpn_train_folds -c all (five folds each),
# fpn_find_best_configuration, then every candidate's and the choice's test Dice, as a table.
# From the repository with the venv active:
#   OUT=/tmp/choice_m bash benchmarks/choose_configuration.sh 952 ChoiceGA        # en-face images show GA
#   OUT=/tmp/choice_f bash benchmarks/choose_configuration.sh 953 FaintGA 0.1    # they barely do
#   N=100 LABELLED=0.05 CONFIGS="fpn omnia" OUT=/tmp/c970 bash benchmarks/choose_configuration.sh 970 Clear5 1
#   CLASSES=2 OUT=/tmp/c972 bash benchmarks/choose_configuration.sh 972 TwoClass 1
# Options (environment):
#   N         training cases (default 25); LABELLED: labelled share of them (default 1; 0.05 with
#             N=100 gives 5 labelled cases and 95 unlabelled ones, which the pretraining and CMC use)
#   CLASSES   1 (GA) or 2 (GA + perilesional zone; fpn_make_synthetic --classes)
#   CONFIGS   plan configurations (default "fpn lachinov"); DROP: candidates left out (default fpn-ssl-SLO)
#   EPOCHS, STEPS  the fold and pretraining schedule (default 6 x 8); DEVICES (default "cpu cpu")
#   SHAPE     volume shape B D A (default "16 96 64"); NUM_TEST (default 8); SEED: fpn_make_synthetic --seed (default 0)
set -e
D=${1:?dataset id, e.g. 952}
NAME=Dataset${D}_${2:?dataset name, e.g. ChoiceGA}
CONTRAST=${3:-1}  # fpn_make_synthetic --enface-lesion-contrast
OUT=${OUT:-/tmp/choice_$D}
N=${N:-25} LABELLED=${LABELLED:-1} CLASSES=${CLASSES:-1} CONFIGS=${CONFIGS:-fpn lachinov}
DROP=${DROP-fpn-ssl-SLO} EPOCHS=${EPOCHS:-6} STEPS=${STEPS:-8} DEVICES=${DEVICES:-cpu cpu}
SHAPE=${SHAPE:-16 96 64} NUM_TEST=${NUM_TEST:-8} SEED=${SEED:-0}
export FPN_RAW=$OUT/raw FPN_PREPROCESSED=$OUT/pre FPN_RESULTS=$OUT/res OMP_NUM_THREADS=1
start=$(date +%s)
# shellcheck disable=SC2086  # SHAPE, CONFIGS, DEVICES are word lists
[ -d "$FPN_RAW/$NAME" ] || fpn_make_synthetic -o "$FPN_RAW/$NAME" -n "$N" --labelled-fraction "$LABELLED" --seed "$SEED" \
  --shape $SHAPE --num-test "$NUM_TEST" --classes "$CLASSES" --no-progress --enface-lesion-contrast "$CONTRAST"
drops=()
for c in $DROP; do drops+=(--drop-candidate "$c"); done
# shellcheck disable=SC2086
[ -f "$FPN_PREPROCESSED/$NAME/plans.json" ] || fpn_plan_and_preprocess -d "$D" -np 1 --no-progress -c $CONFIGS "${drops[@]}"
# shellcheck disable=SC2086
fpn_train_folds -d "$D" -c all --devices $DEVICES --epochs "$EPOCHS" --iterations-per-epoch "$STEPS" \
  --val-every "$EPOCHS" --num-workers 0 --pretrain-epochs "$EPOCHS" --pretrain-iterations "$STEPS"
fpn_find_best_configuration -d "$D"
test_dice() {  # $1: prediction folder -> the mean foreground Dice % on the test cases
  fpn_evaluate -d "$D" -r "$FPN_RAW/$NAME/labelsTs" -p "$1" >/dev/null 2>&1
  python -c "import json, sys; print(round(100 * json.load(open(sys.argv[1]))['foreground_mean']['Dice'], 1))" "$1/summary.json"
}
predict() {  # $1: output name, then fpn_predict's model flags
  local out=$OUT/test/$1
  shift
  fpn_predict -d "$D" "$@" -i "$FPN_RAW/$NAME/imagesTs" -o "$out" --device cpu >/dev/null 2>&1
  test_dice "$out"
}
candidates=$(python - "$FPN_PREPROCESSED/$NAME" <<'EOF'
import sys
from pathlib import Path

from fpnunet.plans.plan import Plan
from fpnunet.preprocessed_dataset import plans_file

for c in Plan.load(plans_file(Path(sys.argv[1]))).candidates:
    print(c.name, c.model_folder_name())
EOF
)
chosen=$(python - "$FPN_RESULTS/$NAME" <<'EOF'
import sys
from pathlib import Path

from fpnunet.pipeline_files import read_chosen

c = read_chosen(Path(sys.argv[1]))
print(" + ".join(m["candidate"] for m in c["members"]), "|", c["postprocessing"])
EOF
)
echo "| pipeline | test Dice % |"
echo "|---|---|"
while read -r name folder; do
  echo "| $name ($folder) | $(predict "$name" --model "$folder") |"
done <<< "$candidates"
echo "| chosen: ${chosen%%|*}(fpn_predict --best) | $(predict best --best) |"
echo "chosen post-processing: ${chosen#*|}"
# post-processing kept: the same choice without it on the test cases (then the choice is restored)
files=$(python -c "import sys; from fpnunet.pipeline_files import chosen_file, chosen_text_file as t
print(chosen_file(sys.argv[1]), t(sys.argv[1]))" "$FPN_RESULTS/$NAME")
for f in $files; do cp "$f" "$f.with_post"; done
fpn_find_best_configuration -d "$D" --no-postprocessing >/dev/null
kept=$(python -c "import json, sys; a, b = (json.load(open(p))['postprocessing'] for p in sys.argv[1:]); print(a != b)" \
  "${files%% *}.with_post" "${files%% *}")
[ "$kept" = True ] && echo "| chosen without its post-processing | $(predict best_no_post --best) |"
for f in $files; do mv "$f.with_post" "$f"; done
echo "wall $(( $(date +%s) - start )) s"
