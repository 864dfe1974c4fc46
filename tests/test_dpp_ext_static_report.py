"""The CUDA kernels' static report (impls/dpp_ext/static_report.py): parsing, and the real nvcc compile (slow)."""
from __future__ import annotations

import pytest

from poolbench.impls.dpp_ext import static_report
from poolbench.toolchain import cuda_home

PTXAS_LOG = """\
ptxas info    : Compiling entry function '_Z6kernelPf' for 'sm_90'
ptxas info    : Function properties for _Z6kernelPf
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 2048 bytes smem, 400 bytes cmem[0]
ptxas info    : Compiling entry function '_Z5otherv' for 'sm_90'
ptxas info    : Function properties for _Z5otherv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 12 registers, used 0 barriers, 360 bytes cmem[0]
"""


def test_parse_ptxas_reads_registers_spills_stack_and_shared_memory():
    kernels = static_report.parse_ptxas(PTXAS_LOG)
    assert kernels["_Z6kernelPf"] == {"stack_bytes": 8, "spill_bytes": 16, "registers": 40, "shared_bytes": 2048}
    assert kernels["_Z5otherv"] == {"stack_bytes": 0, "spill_bytes": 0, "registers": 12, "shared_bytes": 0}


def test_sass_loop_counts_the_outermost_backward_branch_without_nops():
    body = [(0x00, "MOV", " R1, c[0x0][0x28]"), (0x10, "S2R", " R0, SR_TID.X"),
            (0x20, "FADD", " R2, R2, R3"), (0x30, "NOP", ""), (0x40, "ISETP.GE.AND", " P0, PT, R0, R4, PT"),
            (0x50, "BRA", " `(.L_x_1) 0x20"), (0x60, "EXIT", ""), (0x70, "BRA", " 0x70"), (0x80, "NOP", "")]
    total, loop = static_report.sass_loop_instructions(body)
    assert total == 7  # NOPs excluded
    assert loop == 3  # FADD, ISETP, BRA (0x20..0x50); the self-branch at 0x70 is not a backward branch


def test_bad_arch_is_rejected_with_the_expected_form():
    with pytest.raises(ValueError, match="sm_90"):
        static_report.cuda_kernel_rows("hopper")


_NO_TOOLKIT = cuda_home() is None or static_report.find_tool("cuobjdump") is None
_FLOAT32_COMPUTED = ("float32", "bfloat16", "float16")


#: The forward's interior path, Lite 2×2 float32 (one output window): at most this many instructions.
INTERIOR_FORWARD_BUDGET = 260


def assert_fast_paths_clean(rows):
    """Every kernel compiles; no instantiation with a 2×2 or 3×3 fast path spills or uses local memory
    when it computes in float32 (fp32, bf16, fp16: the VGG-16 and ResNet path), forward and backward;
    no forward kernel spills in any dtype; the forward is one kernel whose interior path (the probes)
    fits the instruction budget for Lite 2×2 float32 and uses the special-function unit sparingly."""
    assert all(row["compiled"] for row in rows), rows[0]["error"]
    fast = [row for row in rows if row["config"].startswith(("k2", "k3")) and row["dtype"] in _FLOAT32_COMPUTED]
    kernels = {row["kernel"] for row in fast}
    assert kernels == {"dpp_forward_kernel", "dpp_backward_window_kernel", "dpp_backward_gather_kernel"}, kernels
    bad = [row for row in fast if row["spill_bytes"] != 0 or row["stack_bytes"] != 0]
    assert not bad, [(r["kernel"], r["variant"], r["dtype"], r["config"], r["spill_bytes"], r["stack_bytes"])
                     for r in bad]
    forward = [row for row in rows if row["kernel"].startswith("dpp_forward")]
    assert forward and all(row["spill_bytes"] == 0 for row in forward), [r for r in forward if r["spill_bytes"]]
    probes = [row for row in forward if row["config"].endswith("(probe)")]
    # k2 and k3, Lite and Full, the three float32-computed dtypes
    assert len(probes) == 12, [(r["variant"], r["dtype"], r["config"]) for r in probes]
    assert all(row["stack_bytes"] == 0 and row["sass_per_window"] for row in probes)
    (lite_k2,) = [r for r in probes if r["variant"] == "lite" and r["dtype"] == "float32" and r["config"].startswith("k2")]
    assert lite_k2["sass_per_window"] <= INTERIOR_FORWARD_BUDGET, lite_k2
    backward_probes = [row for row in rows if row["kernel"] == "dpp_backward_window_kernel"
                       and row["config"].endswith("(probe)")]
    assert len(backward_probes) == 12 and all(row["sass_per_window"] for row in backward_probes)
    # 4 taps: one log2 and one exp2 per tap, exp2 of α, λ's exp: nothing like the IEEE routines' extra MUFUs
    assert lite_k2["mufu"] <= 12, lite_k2


def test_interior_path_count_excludes_the_trap_and_the_final_self_branch():
    body = [(0x00, "S2R", " R0, SR_TID.X"), (0x10, "MUFU.EX2", " R1, R2"), (0x20, "BPT.TRAP", " 0x1"),
            (0x30, "EXIT", ""), (0x40, "BRA", " 0x40"), (0x50, "NOP", "")]
    assert static_report.interior_path_instructions(body) == 3  # S2R, MUFU, EXIT
    assert static_report.mufu_instructions(body) == 1


@pytest.mark.slow
@pytest.mark.skipif(_NO_TOOLKIT, reason="no CUDA toolkit (nvcc) or cuobjdump on this machine")
def test_cuda_kernels_compile_for_sm90_without_spills_or_local_memory_on_the_fast_paths():
    """nvcc -cubin for sm_90 (minutes on 2 cores), then the checks of assert_fast_paths_clean."""
    assert_fast_paths_clean(static_report.cuda_kernel_rows("sm_90"))


@pytest.mark.skipif(_NO_TOOLKIT, reason="no CUDA toolkit (nvcc) or cuobjdump on this machine")
def test_cached_sm90_compile_has_no_spills_or_local_memory_on_the_fast_paths():
    """The same checks in the default suite, from the cached compile of the current source (seconds);
    `python -m poolbench.impls.dpp_ext.static_report sm_90` or the slow test above makes that cache."""
    if not static_report.is_cached("sm_90"):
        pytest.skip("the current CUDA source has no cached sm_90 compile (the slow test makes one in minutes)")
    assert_fast_paths_clean(static_report.cuda_kernel_rows("sm_90"))
