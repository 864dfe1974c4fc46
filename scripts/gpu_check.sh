#!/usr/bin/env bash
# GPU check of the fused DPP tiers (cuda, triton, compiled) in at most 6 minutes on one H100/H200.
#
#     OUT=/some/dir bash scripts/gpu_check.sh          # on a GPU machine, from the source tree
#     DRY_RUN=1 OUT=/tmp/dry bash scripts/gpu_check.sh # on a CPU machine: same steps, CPU stand-ins
#
# Order (the numbers that matter first, so a slow later step cannot hide them):
#   1. environment; 2. C++ and CUDA libraries built in parallel;
#   3. per-layer benchmark (cuda + triton tiers, fp32 then bf16, VGG-16 shapes, batch 32);
#   4. poolbench check --device cuda, one step per GPU tier (cuda, triton, compiled);
#   5. pytest -m gpu.
# Every step runs under `timeout` (limits below sum to 360 s) and runs even if an earlier one
# failed; per-step wall times go to $OUT/steps.txt and the summary $OUT/gpu_check.md.  Needs no
# network and no fvcore.  Exit status is non-zero if any step failed or timed out.
# DRY_RUN=1: device cpu, batch 1, the last VGG layer only, cpp/vectorized in place of cuda/triton,
# no CUDA build (it needs minutes on a small CPU), every limit × LIMIT_SCALE (default 10 there:
# a small shared CPU imports torch in seconds) — it checks the script, not the GPU.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
: >"$OUT/steps.txt"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"  # ninja jobs of each extension build
PY="${PYTHON:-python}"
if [ "${DRY_RUN:-0}" != "0" ]; then
    DEVICE=cpu BATCH=1 LAYERS="--layers 5" BENCH_TIERS="cpp vectorized" CHECK_TIERS="cpp vectorized"
    BUILD_CUDA=0 LIMIT_SCALE="${LIMIT_SCALE:-10}"
else
    DEVICE=cuda BATCH=32 LAYERS="" BENCH_TIERS="cuda triton" CHECK_TIERS="cuda triton compiled"
    BUILD_CUDA=1 LIMIT_SCALE="${LIMIT_SCALE:-1}"
fi
status=0
declare -a summary
script_started=$SECONDS

step() {  # step NAME LIMIT_SECONDS LOGFILE COMMAND...
    local name="$1" limit=$(($2 * LIMIT_SCALE)) log="$3"; shift 3
    local started=$SECONDS
    echo "== $name (limit ${limit}s)"
    timeout --kill-after=5 "$limit" "$@" >"$log" 2>&1
    local rc=$? took=$((SECONDS - started))
    tail -n 15 "$log"
    case $rc in
        0) summary+=("| $name | ok | ${took}s |") ;;
        124|137) summary+=("| $name | TIMEOUT (${limit}s) | ${took}s |"); status=1 ;;
        *) summary+=("| $name | FAILED (rc $rc) | ${took}s |"); status=1 ;;
    esac
    echo "$name: rc=$rc ${took}s (limit ${limit}s)" | tee -a "$OUT/steps.txt"
}

# 1. environment (what the report is about)
step "environment" 20 "$OUT/env.txt" "$PY" - <<'PYEOF'
import platform, shutil, subprocess, sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA (torch)", torch.version.cuda)
print("cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(0), "| capability", torch.cuda.get_device_capability(0))
try:
    import triton
    print("triton", triton.__version__)
except ImportError:
    print("triton: not installed")
from poolbench.toolchain import cuda_home
print("CUDA toolkit:", cuda_home(), "| nvcc:", shutil.which("nvcc"), "| ninja:", shutil.which("ninja"))
if shutil.which("nvidia-smi"):
    print(subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,clocks.max.memory", "--format=csv"],
                         capture_output=True, text=True).stdout)
PYEOF

# 2. both libraries at once (each build uses MAX_JOBS cores); cached for the later steps
build() {  # build KIND
    "$PY" -c "
import time
from poolbench.impls.dpp_ext import ops
started = time.time()
getattr(ops, 'load_$1')()
print('$1 library built in', round(time.time() - started, 1), 's')"
}
build_both() {
    build cpu >"$OUT/build_cpu.log" 2>&1 & local cpu=$!
    local cuda_rc=0
    if [ "$BUILD_CUDA" = 1 ]; then build cuda >"$OUT/build_cuda.log" 2>&1 || cuda_rc=$?; fi
    wait "$cpu"; local cpu_rc=$?
    cat "$OUT/build_cpu.log" "$OUT"/build_cuda.log 2>/dev/null | tail -n 20
    return $((cpu_rc || cuda_rc))
}
export -f build
export PY BUILD_CUDA OUT
step "build cpu + cuda libraries (parallel)" 120 "$OUT/build.log" bash -c "$(declare -f build_both); build_both"

# 3. per-layer benchmark first: the fused tiers vs avg/max pooling at VGG-16's five pooling shapes
for dtype in float32 bfloat16; do
    limit=$([ "$dtype" = float32 ] && echo 50 || echo 40)
    step "layerbench $DEVICE $dtype" "$limit" "$OUT/layerbench_$dtype.log" \
        "$PY" -m poolbench layerbench --device "$DEVICE" --batch "$BATCH" --dtype "$dtype" $LAYERS \
        --tiers $BENCH_TIERS --repeats 3 --min-run-time 0.1 --out "$OUT/layerbench_${DEVICE}_$dtype.md"
done

# 4. every GPU tier against the float64 reference (values, gradients, gradcheck), one step per tier
for tier in $CHECK_TIERS; do
    limit=$([ "$tier" = compiled ] && echo 40 || echo 25)
    step "check $DEVICE $tier" "$limit" "$OUT/check_$tier.log" "$PY" -m poolbench check --device "$DEVICE" --tiers "$tier"
done

# 5. the GPU-only tests (addopts reset: the GPU machine may lack pytest plugins named there)
step "pytest -m gpu" 40 "$OUT/pytest_gpu.log" \
    "$PY" -m pytest -o addopts="" -q -ra -p no:cacheprovider --device "$DEVICE" -m gpu tests

# 6. summary
{
    echo "# GPU check of the fused DPP tiers"
    echo
    echo '```'
    cat "$OUT/env.txt"
    echo '```'
    echo
    echo "| step | result | wall time |"
    echo "|---|---|---|"
    printf '%s\n' "${summary[@]}"
    echo
    echo "Total: $((SECONDS - script_started))s. pytest: $(grep -E '(passed|failed|error|skipped|deselected)' "$OUT/pytest_gpu.log" | tail -n 1)"
    echo
    for report in "$OUT"/layerbench_*.md; do
        [ -s "$report" ] && { sed 's/^# /## /' "$report"; echo; }
    done
    for log in "$OUT"/check_*.log; do
        echo "## $(basename "$log" .log)"; echo; echo '```'; tail -n 30 "$log"; echo '```'; echo
    done
} >"$OUT/gpu_check.md"
echo "total $((SECONDS - script_started))s; wrote $OUT/gpu_check.md (exit status $status)"
exit $status
