#!/usr/bin/env bash
# GPU checks in one go, for a machine with CUDA and a PyTorch of its own (no network access):
#   1. the test suite with CUDA visible (the CUDA-only tests run, device "auto" picks the GPU);
#   2. benchmarks/memory_planner.py: the planner's estimate against torch.cuda.max_memory_allocated,
#      and training-step times in bf16 and fp32;
#   3. fpn_plan_and_preprocess --calibrate on a synthetic dataset of Spectralis size (the whole plan
#      with the measured peak per configuration);
# Writes logs under ${OUT:-gpu_check_out}. Missing pure-Python/binary dependencies can be given as
# wheels in .whl/ (installed into /tmp/site, see /work/.library/device/README.md).
# Usage: bash scripts/gpu_check.sh [tests|memory|plan ...]   (default: all three)
set -u
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
python3 -c "import fpnunet.plans" 2>/dev/null || python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . \
    > "$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

export FPN_RAW=/tmp/fpn/raw FPN_PREPROCESSED=/tmp/fpn/preprocessed FPN_RESULTS=/tmp/fpn/results
steps=${*:-tests memory plan}
for step in $steps; do
    start=$(date +%s)
    case $step in
    tests)
        timeout 300 python3 -m pytest -q -n 8 -p no:cacheprovider tests > "$OUT/tests.log" 2>&1
        echo "tests: rc=$? in $(( $(date +%s) - start )) s"; tail -n 25 "$OUT/tests.log" ;;
    memory)
        timeout 240 python3 benchmarks/memory_planner.py --csv "$OUT/memory.csv" > "$OUT/memory.log" 2>&1
        echo "memory: rc=$? in $(( $(date +%s) - start )) s"; grep -v "^  " "$OUT/memory.log" | tail -n 45 ;;
    plan)
        fpn_make_synthetic -o "$FPN_RAW/Dataset990_SynthGA" -n 6 --shape 49 496 512 --no-progress > "$OUT/plan.log" 2>&1
        timeout 240 fpn_plan_and_preprocess -d Dataset990_SynthGA --network fpn ipn lachinov resensnet \
            --calibrate --no-preprocess --no-progress >> "$OUT/plan.log" 2>&1
        echo "plan: rc=$? in $(( $(date +%s) - start )) s"; tail -n 30 "$OUT/plan.log"
        python3 - <<'EOF'
import json, os
plan = json.load(open(os.path.join(os.environ["FPN_PREPROCESSED"], "Dataset990_SynthGA", "plans.json")))
for name, cfg in plan["configurations"].items():
    m = cfg["memory"]
    est, peak = m.get("total_bytes"), m.get("calibrated_peak_bytes")
    ratio = f"{est / peak:.2f}" if est and peak else "-"
    print(f"{name:10s} patch {cfg['patch_size']} depth {cfg['depth']} batch {cfg['batch_size']} "
          f"{cfg['precision']}: estimate {est / 2**30:.2f} GiB, measured {peak / 2**30 if peak else float('nan'):.2f} GiB,"
          f" est/measured {ratio}")
EOF
        ;;
    *) echo "unknown step $step (tests, memory, plan)"; exit 2 ;;
    esac
done
