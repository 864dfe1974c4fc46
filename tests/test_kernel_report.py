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
    assert len(kernels) == 10  # (fwd + bwd window) × Lite/Full × fp32/bf16, + the Full guide gather × 2
    bad = [row for row in rows if not row["compiled"] or row["spill_bytes"] != 0]
    assert not bad, bad


@needs_toolchain
def test_lite_k2s2_fp32_instruction_budget_sm90():
    """Lite-DPP 2×2/2 fp32 on sm_90: ≤ 260 SASS instructions per window forward, ≤ 450 backward."""
    for direction, budget in (("forward", 260), ("backward", 450)):
        rows = kernel_report.compile_case(kernel_report.KernelCase(direction, "lite_sym", "fp32"), "sm_90", True)
        assert len(rows) == 1 and rows[0]["compiled"], rows
        assert 0 < rows[0]["sass_per_window"] <= budget, rows[0]


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
