#!/bin/bash
# docs/results.md "Choosing the method": the en-face images barely show the lesion (--enface-lesion-contrast 0.1), otherwise as measure_952.sh, 3 candidates, short schedules
set -e  # from the repository with the venv active; OUT: a scratch folder
OUT=${OUT:-/tmp/choice_f}
export FPN_RAW=$OUT/raw FPN_PREPROCESSED=$OUT/pre FPN_RESULTS=$OUT/res OMP_NUM_THREADS=1
D=953
start=$(date +%s)
[ -d $FPN_RAW/Dataset953_FaintGA ] || fpn_make_synthetic -o $FPN_RAW/Dataset953_FaintGA -n 25 --seed 0 --shape 16 96 64 --num-test 8 --no-progress --enface-lesion-contrast 0.1
[ -f $FPN_PREPROCESSED/Dataset953_FaintGA/plans.json ] || fpn_plan_and_preprocess -d $D -np 1 --no-progress -c fpn lachinov --drop-candidate fpn-ssl-SLO
fpn_train_folds -d $D -c all --devices cpu cpu --epochs 6 --iterations-per-epoch 8 --val-every 6 --num-workers 0 \
  --pretrain-epochs 6 --pretrain-iterations 8
fpn_find_best_configuration -d $D
for m in fpn__lf1__scratch fpn__lf1__ssl-FAF lachinov__lf1__scratch; do
  fpn_predict -d $D --model $m -i $FPN_RAW/Dataset953_FaintGA/imagesTs -o $OUT/test/$m --device cpu 2>/dev/null
  fpn_evaluate -d $D -r $FPN_RAW/Dataset953_FaintGA/labelsTs -p $OUT/test/$m >/dev/null 2>&1
  python -c "import json; print('$m test Dice', round(100 * json.load(open('$OUT/test/$m/summary.json'))['foreground_mean']['Dice'], 1))"
done
fpn_predict -d $D --best -i $FPN_RAW/Dataset953_FaintGA/imagesTs -o $OUT/test/best --device cpu 2>/dev/null
fpn_evaluate -d $D -r $FPN_RAW/Dataset953_FaintGA/labelsTs -p $OUT/test/best >/dev/null 2>&1
python -c "import json; print('best test Dice', round(100 * json.load(open('$OUT/test/best/summary.json'))['foreground_mean']['Dice'], 1))"
echo "wall $(( $(date +%s) - start )) s"
