#!/usr/bin/env bash
# The lab's GPU check (issue 23), sized for one 10-minute device call on a lent GPU machine:
#   1. neighbourhood attention through FlexAttention vs the naive reference at 56x56, k=7 (na_flex.py);
#   2. predicted vs measured training memory for 10 points (memory_check.py, max_memory_allocated);
#   3. a 4-trial study at 0.25 GPU per trial (four trials share the GPU), and one at --gpus-per-trial auto;
#   4. `lab arch bench --vs timm` with bf16 and torch.compile for resnet50, convnext_t, vit_s16, swin_t.
# Each step has its own time limit and the whole stays inside DEADLINE seconds; a step that fails or
# runs out of time is reported as such and the next one runs. Every figure lands in OUT_DIR:
# gpu_check.txt (the log: commands and their output), na_flex.json, memory.json, bench.jsonl, study.txt.
#
#     bash benchmarks/gpu_check.sh [OUT_DIR]        # OUT_DIR: default $OUT (the device tool's), else ./gpu-check
#     GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh /tmp/smoke   # every step on CPU at tiny sizes
#
# On the device machine, with the wheels of benchmarks/gpu_wheels.sh carried in .whl/a and .whl/b (see
# there), the script first installs them into /tmp/site and the lab itself (--no-deps) on the path.
# Without a CUDA device (and GPU_CHECK_DEVICE unset) it stops at once with one line and exit code 2.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-check}}
mkdir -p "$out"
log="$out/gpu_check.txt"
device=${GPU_CHECK_DEVICE:-cuda}
deadline=$(( $(date +%s) + ${DEADLINE:-540} ))
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 LAB_HOME="${LAB_HOME:-/tmp/lab-gpu-check}"

say() { echo "$*" | tee -a "$log"; }

# a step: its name, its own limit in seconds, the command; cut to what the deadline leaves
step() {
  local name=$1 limit=$2; shift 2
  local left=$(( deadline - $(date +%s) - 5 ))
  (( left < limit )) && limit=$left
  if (( limit < 20 )); then say "== $name: skipped (the deadline leaves ${left} s)"; return; fi
  say "== $name (limit ${limit} s): $*"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  say "== $name: exit $rc in $(( SECONDS - t0 )) s$( (( rc == 124 )) && echo ' (out of time)')"
}

# first (before any set-up): is there a GPU at all
if [[ $device == cuda ]] && ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: torch sees no CUDA device here; run it where a GPU is lent (GPU_CHECK_DEVICE=cpu for the CPU smoke run)" >&2
  exit 2
fi
: >"$log"
# set-up on the device machine: the carried wheels (Ray's in two parts) when the study stack is missing,
# then the lab on the path
if [[ -d .whl/a ]] && ! "$py" -c "import ray.tune, optuna, mlxtend, plotly" 2>/dev/null; then
  wheels=/tmp/gpu-check-wheels
  rm -rf "$wheels" && mkdir -p "$wheels" && cp .whl/a/*.whl "$wheels"/
  for first in .whl/a/*.part00; do
    [[ -e "$first" ]] && cat "$first" ".whl/b/$(basename "$first" .part00).part01" >"$wheels/$(basename "$first" .part00)"
  done
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$wheels"/*.whl \
    >>"$log" 2>&1 || say "gpu_check: installing the carried wheels failed (see above); going on with what is installed"
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PATH="/tmp/site/bin:$PATH"
fi
# the lab from this tree, uninstalled: its search spaces from the source folder (an install ships them as lab.search_spaces)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" LAB_SPACES="${LAB_SPACES:-$PWD/search_spaces}"
lab=("$py" -m lab)   # the lab's CLI without its console script (not installed on the device)

if [[ $device == cuda ]]; then
  "$py" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'{p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}')" | tee -a "$log"
  na=(--size 56 --kernel 7 --batch 8 --rounds 20)
  mem=(--points 10)
  bench=(--res 224 --batch 64 --steps 10 --rounds 3)
  names=(resnet50 convnext_t vit_s16 swin_t)
  study=(--trials 4 --epochs 2)
  gpus=0.25 auto=auto auto_memory=()
else   # the smoke run: every command at tiny sizes, on CPU; the study holds no GPU
  na=(--size 14 --kernel 7 --batch 1 --rounds 2 --dtypes float32)
  mem=(--points 2)
  bench=(--res 32 --batch 2 --steps 1 --rounds 1)
  names=(resnet18)
  study=(--trials 2 --epochs 1 --fraction 0.05)
  gpus=0 auto=0 auto_memory=()
fi
"$py" -c "import lab, sys; print('lab', lab.__version__, 'python', sys.version.split()[0])" | tee -a "$log"

step "neighbourhood attention: flex vs naive" 120 "$py" benchmarks/na_flex.py --device "$device" "${na[@]}" --json "$out/na_flex.json"
step "memory: predicted vs measured, fp32" 90 "$py" benchmarks/memory_check.py --device "$device" "${mem[@]}" --out "$out/memory.json"
step "memory: predicted vs measured, bf16-mixed" 90 "$py" benchmarks/memory_check.py --device "$device" "${mem[@]}" --precision bf16 \
  --out "$out/memory_bf16.json"
step "study: 4 trials at $gpus GPU each" 150 "${lab[@]}" study create --space hybrid --name gpu-check --gpus-per-trial "$gpus" \
  --concurrency 4 --cpus-per-trial 2 --device "$device" "${study[@]}" --no-dashboard
step "study: 4 trials at --gpus-per-trial auto" 120 "${lab[@]}" study create --space hybrid --name gpu-auto --gpus-per-trial "$auto" \
  --concurrency 8 --cpus-per-trial 1 --device "$device" "${study[@]}" "${auto_memory[@]}" --no-dashboard
step "the studies' tables" 30 bash -c "'$py' -m lab study show gpu-check > '$out/study.txt' && '$py' -m lab study show gpu-auto \
  >> '$out/study.txt'; rc=\$?; cat '$out/study.txt'; exit \$rc"
: >"$out/bench.jsonl"
for name in "${names[@]}"; do
  step "bench $name bf16 + compile vs timm" 150 bash -c \
    "set -o pipefail; '$py' -m lab arch bench $name --vs timm --device $device --precision bf16 --compile ${bench[*]} --json \
     | '$py' -c 'import json, sys; print(json.dumps(json.load(sys.stdin)))' | tee -a '$out/bench.jsonl'"
done
say "gpu_check: done; figures in $out"
