"""The static GPU report: fused kernels compiled for sm_90/sm_80 on a machine without a GPU.

Guards against kernels that fail to compile for a real GPU, spill registers to local memory on the
VGG-16 path (k=2, s=2, Lite and Full, fp32 and bf16), or lose the instruction budget per output
window of the memory-bound design (one thread per window, all taps in its registers).
"""
from __future__ import annotations

import importlib.util
import os
import shutil

import pytest

from poolbench.measure import kernel_report

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _toolchain_reason() -> str | None:
    if not HAS_TRITON:
        return "triton is not installed"
    if INTERPRETED:
        return "TRITON_INTERPRET=1: the kernels are defined for the interpreter, not for a GPU"
    try:
        if kernel_report._cuobjdump() is None:
            return "cuobjdump not found"
    except ImportError as exc:  # a triton without the NVIDIA backend
        return f"triton's NVIDIA backend is missing: {exc}"
    return None


needs_toolchain = pytest.mark.skipif(_toolchain_reason() is not None, reason=str(_toolchain_reason()))


@needs_toolchain
@pytest.mark.parametrize("arch", ("sm_90", "sm_80"))
def test_vgg_path_kernels_compile_without_spills(arch):
    """Every launch of the VGG-16 path, at its largest kept autotune config (the most registers)."""
    rows = [row for case in kernel_report.vgg_cases() for row in kernel_report.compile_case(case, arch, True)]
    kernels = {(row["kernel"], row["variant"], row["dtype"]) for row in rows}
    # (fwd + bwd window) × Lite/Full × fp32/bf16: the Full-DPP 2×2 backward is one kernel (no guide gather)
    assert len(kernels) == 8 and not any("input" in kernel for kernel, _, _ in kernels), sorted(kernels)
    bad = [row for row in rows if not row["compiled"] or row["spill_bytes"] != 0]
    assert not bad, bad


@needs_toolchain
@pytest.mark.parametrize("direction,budget", (("forward", 260), ("backward", 450)))
def test_lite_k2s2_fp32_instruction_budget_sm90(direction, budget):
    """Lite-DPP 2×2/2 fp32 on sm_90, every config the autotuner keeps: ≤ 260 SASS instructions per window
    forward, ≤ 450 backward, no spills (run it under the GPU image's triton too: its older compiler once
    tripled these counts)."""
    rows = kernel_report.compile_case(kernel_report.KernelCase(direction, "lite_sym", "fp32"), "sm_90")
    kept = [row for row in rows if "(pruned)" not in row["config"]]
    assert kept and all(row["compiled"] for row in kept), rows
    for row in kept:
        assert 0 < row["sass_per_window"] <= budget, row
        assert row["spill_bytes"] == 0, row
        # log-domain weights: an exp2 and a log2 per tap at least, through the special-function unit
        assert row["mufu_per_window"] >= 8, row


def test_per_window_counts_divide_the_executed_path():
    path = [(0x00, "MUFU.EX2 R1, R2"), (0x10, "FADD R1, R1, R2"), (0x20, "@P0 MUFU.LG2 R3, R3"), (0x30, "FMUL R3, R3, R1")]
    assert kernel_report.per_window_counts(path, 2) == (2.0, 1.0)
    assert kernel_report.per_window_counts(path, 4, items_per_window=4) == (4.0, 2.0)  # a per-pixel gather, s = 2
    listing = [(0x00, "S2R R0, SR_TID.X"), (0x10, "MUFU.RCP R1, R0"), (0x20, "@P0 BRA 0x10"), (0x30, "EXIT")]
    assert kernel_report.executed_path(listing) == listing[1:3]


def test_loop_body_is_the_backward_branch_span():
    listing = [(0x00, "S2R R0, SR_TID.X"), (0x10, "IADD3 R1, R0, 1, RZ"), (0x20, "FADD R2, R1, R1"),
               (0x30, "@P0 BRA 0x10"), (0x40, "EXIT"), (0x50, "BRA 0x50")]
    assert [address for address, _ in kernel_report.loop_body(listing)] == [0x10, 0x20, 0x30]
    assert kernel_report.loop_body([(0x00, "FADD R2, R1, R1"), (0x10, "EXIT")]) is None


def test_markdown_has_every_row_key_and_notes():
    row = dict.fromkeys(kernel_report.ROW_KEYS, None) | {"tier": "triton", "compiled": False, "error": "boom"}
    text = kernel_report.to_markdown([row], "sm_90", ["CUDA kernels not reported: no module"])
    headers = [line for line in text.splitlines() if line.startswith("| tier")]
    assert len(headers) == 2  # the summary over kept configs, then every row
    assert headers[1].split(" | ")[1:-1] == list(kernel_report.ROW_KEYS[1:-1])
    assert "**no**" in text and "boom" in text and "CUDA kernels not reported" in text


def test_cli_rejects_a_malformed_arch():
    from poolbench.commands import kernels

    class Args:
        arch, json, md = "hopper", None, None

    with pytest.raises(ValueError, match="sm_90"):
        kernels.run(Args())


@needs_toolchain
@pytest.mark.parametrize("variant", ("full_sym", "lite_sym"))
def test_resnet_stem_backward_is_one_kernel_without_spills_sm90(variant):
    """k3s2p1 backward (ResNet stem), fp32 on sm_90: one kernel writing ∂x once, no spills at the largest kept
    config, ≤ 1000 SASS per window (the window kernel plus the pixel gather it replaced took ≥ 1,800)."""
    rows = kernel_report.compile_case(kernel_report.KernelCase("backward", variant, "fp32", "k3s2p1"), "sm_90", True)
    assert [row["kernel"] for row in rows] == ["dpp_bwd_window_kernel (backward)"], rows
    (row,) = rows
    assert row["compiled"] and row["spill_bytes"] == 0, row
    assert 0 < row["sass_per_window"] <= 1000, row
