#!/usr/bin/env bash
# GPU check of the fused DPP extension (cuda tier): build, tests, equivalence, per-layer benchmark.
#
# Run from the source tree on a machine with a CUDA GPU, nvcc and a CUDA build of torch:
#
#     OUT=/some/dir bash scripts/gpu_check.sh
#
# Writes under $OUT (default ./gpu_check_out): env.txt, build.log, pytest.log, check.log,
# layerbench_cuda.md (fp32, batch 32) and gpu_check.md (a summary naming the card).
# Needs no network and no fvcore; every step runs even if an earlier one failed, each
# under a time limit, and the exit status is non-zero if any step failed.
# Optional: LAYERBENCH_BF16=1 adds a bfloat16 benchmark (layerbench_cuda_bf16.md);
# LAYERBENCH_TIERS="cuda triton" limits the benchmarked tiers.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python}"
status=0
declare -a summary

step() {  # step NAME LIMIT_SECONDS LOGFILE COMMAND...
    local name="$1" limit="$2" log="$3"; shift 3
    local started=$SECONDS
    echo "== $name (limit ${limit}s)" | tee -a "$OUT/steps.txt"
    timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
    local rc=$?
    local took=$((SECONDS - started))
    tail -n 25 "$log"
    if [ $rc -eq 0 ]; then
        summary+=("| $name | ok | ${took}s |")
    else
        [ $rc -eq 124 ] && summary+=("| $name | TIMEOUT | ${took}s |") || summary+=("| $name | FAILED (rc $rc) | ${took}s |")
        status=1
    fi
    echo "== $name: rc=$rc in ${took}s" | tee -a "$OUT/steps.txt"
}

# 1. environment (what the report is about)
{
    "$PY" - <<'PYEOF'
import platform, shutil, sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA (torch)", torch.version.cuda)
print("cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(0), "| capability", torch.cuda.get_device_capability(0))
for tool in ("nvcc", "ninja", "c++", "g++"):
    print(f"{tool}:", shutil.which(tool))
try:
    import ninja  # noqa: F401
    print("ninja (python package): yes")
except ImportError:
    print("ninja (python package): no")
from impls.dpp_ext import ops
print("cpp tier:", ops.cpu_unavailable_reason("cpu") or "available")
print("cuda tier:", ops.cuda_unavailable_reason("cuda") or "available", "| toolkit:", ops._cuda_home())
PYEOF
    nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv 2>/dev/null || true
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# 2. build both libraries (CPU schema + kernel, then the CUDA kernel with nvcc); cached afterwards
step "build extension" 420 "$OUT/build.log" "$PY" -c "
import time
from impls.dpp_ext import ops
t = time.time(); ops.load_cpu(); print(f'cpu library: {time.time() - t:.1f}s')
t = time.time(); ops.load_cuda(); print(f'cuda library: {time.time() - t:.1f}s')
import torch
assert torch._C._dispatch_has_kernel_for_dispatch_key('poolbench_dpp::dpp_forward', 'CUDA')
print('poolbench_dpp ops registered for CPU and CUDA')
"

# 3. the extension's tests on the GPU (plus the default CPU/emulation tests); addopts reset so
#    missing optional plugins (pytest-benchmark) cannot break the run
step "pytest tests/test_dpp_ext.py --device cuda" 420 "$OUT/pytest.log" \
    "$PY" -m pytest -o addopts="" -ra -q --device cuda -m "gpu or not slow" tests/test_dpp_ext.py

# 4. poolbench check: the cuda tier against the float64 reference, values + gradients + gradcheck
step "poolbench check --device cuda --tiers cuda" 300 "$OUT/check.log" \
    "$PY" -m poolbench check --device cuda --tiers cuda

# 5. per-layer benchmark at VGG-16's shapes, every available DPP tier vs avg/max pooling
# LAYERBENCH_TIERS="cuda triton" limits the tiers (default: every available one but reference);
# the report is rewritten after each layer, so a time-out keeps the finished layers.
step "poolbench layerbench --device cuda --batch 32" 480 "$OUT/layerbench.log" \
    "$PY" -m poolbench layerbench --device cuda --batch 32 ${LAYERBENCH_TIERS:+--tiers $LAYERBENCH_TIERS} \
    --out "$OUT/layerbench_cuda.md"
if [ ! -s "$OUT/layerbench_cuda.md" ]; then  # the CLI failed to start: call the library directly
    step "layerbench (library fallback)" 480 "$OUT/layerbench_fallback.log" "$PY" -c "
import torch
from pathlib import Path
from poolbench.layerbench import run_layerbench, to_markdown
rows, meta = run_layerbench('cuda', batch=32, dtype=torch.float32, progress=print)
Path('$OUT/layerbench_cuda.md').write_text(to_markdown(rows, meta, 'poolbench.layerbench.run_layerbench(cuda, batch=32)'))
"
fi
if [ "${LAYERBENCH_BF16:-0}" != "0" ]; then
    step "poolbench layerbench --dtype bfloat16" 480 "$OUT/layerbench_bf16.log" \
        "$PY" -m poolbench layerbench --device cuda --batch 32 --dtype bfloat16 \
        ${LAYERBENCH_TIERS:+--tiers $LAYERBENCH_TIERS} --out "$OUT/layerbench_cuda_bf16.md"
fi

# 6. summary report
{
    echo "# GPU check of the fused DPP extension"
    echo
    echo '```'
    cat "$OUT/env.txt"
    echo '```'
    echo
    echo "| step | result | time |"
    echo "|---|---|---|"
    printf '%s\n' "${summary[@]}"
    echo
    echo "pytest: $(grep -E '(passed|failed|error)' "$OUT/pytest.log" | tail -n 1)"
    echo
    echo "## poolbench check"
    echo
    echo '```'
    tail -n 40 "$OUT/check.log"
    echo '```'
    echo
    for report in "$OUT"/layerbench_cuda*.md; do
        [ -s "$report" ] && { sed 's/^# /## /' "$report"; echo; }
    done
} >"$OUT/gpu_check.md"
echo "wrote $OUT/gpu_check.md (exit status $status)"
exit $status
