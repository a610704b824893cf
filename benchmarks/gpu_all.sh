#!/usr/bin/env bash
# Every GPU check and benchmark in ONE device call: GPU tests, router and dispatch benchmarks, end-to-end benchmark.
# Each step has its own time cap and a failure does not stop the rest. One log ($OUT/gpu_all.log); each benchmark
# writes its JSON to benchmarks/results/ and $OUT/. Run from the repo root with pithtrain importable, e.g.
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD; bash benchmarks/gpu_all.sh
# Env: GPU_ALL_BUDGET (seconds for everything, default 540), PYTEST_CAP (default 120), PYTEST_PATHS (default tests),
# E2E_ARGS (default "--profile --compile --graph --levers"), E2E_KERNELS (a preset: also the kernel table of its compiled step,
# benchmarks/e2e_kernels.py, before the e2e benchmark). pytest runs -v so a cut-off log still names the tests that finished.
cd "$(dirname "$0")/.." || exit 1
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_all_out}; mkdir -p "$OUT"; export OUT
LOG="$OUT/gpu_all.log"; START=$(date +%s); BUDGET=${GPU_ALL_BUDGET:-540}
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
step() {  # step NAME CAP_SECONDS CMD...: run with min(CAP, time left), log it, never abort the script
  local name=$1 cap=$2; shift 2
  local t=$(left); (( t < cap )) && cap=$t
  if (( cap < 20 )); then echo "=== $name: skipped (${cap}s left)" | tee -a "$LOG"; return; fi
  echo "=== $name (cap ${cap}s, t+$(( $(date +%s) - START ))s): $*" | tee -a "$LOG"
  timeout -k 10 "$cap" "$@" 2>&1 | tee -a "$LOG"
  echo "=== $name: exit ${PIPESTATUS[0]} after t+$(( $(date +%s) - START ))s" | tee -a "$LOG"
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'; } 2>&1 | tee -a "$LOG"
step "pytest -m gpu" ${PYTEST_CAP:-120} python3 -m pytest -v --no-header -p no:cacheprovider ${PYTEST_PATHS:-tests} -m gpu
[ -f benchmarks/router.py ] && step "router benchmark" 45 python3 benchmarks/router.py
[ -f benchmarks/dispatch.py ] && step "dispatch benchmark" 45 python3 benchmarks/dispatch.py
[ -f benchmarks/cross_entropy.py ] && step "cross-entropy benchmark" 60 python3 benchmarks/cross_entropy.py --out "$OUT"
[ -n "$E2E_KERNELS" ] && step "e2e kernel table" 150 python3 benchmarks/e2e_kernels.py --preset "$E2E_KERNELS" --compile
T=$(left); step "e2e benchmark" "$T" python3 benchmarks/e2e.py ${E2E_ARGS:---profile --compile --graph --levers} --budget-s $(( T - 150 ))
ls -la benchmarks/results "$OUT" 2>&1 | tee -a "$LOG"
