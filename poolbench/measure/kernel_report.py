"""Static GPU report without a GPU: compile every fused kernel for a target architecture and read the machine code.

For each Triton kernel of the DPP ``triton`` tier × variant × dtype × autotune
config, :func:`triton_kernel_rows` builds the launch exactly as the tier's
launchers do (:func:`poolbench.impls.dpp_triton_kernels.forward_plan` /
``backward_plan`` on *meta* tensors of a VGG-16 / ResNet pooling shape), binds
the arguments with Triton's own specialisation rules, and compiles them with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))``.  No GPU is
needed: the cubin comes from ptxas.  From it we read

* registers, spill bytes and shared memory (ptxas ``-v``, the same flags Triton uses),
* SASS instructions (``cuobjdump -sass``) and, through :func:`per_window_counts` (the one
  definition, shared with the CUDA tier's report), SASS and special-function (MUFU) instructions
  **per output window on the executed path**: kernels without a loop are straight-line
  predicated code, so the whole body runs once per thread and is divided by the windows a thread
  owns (BLOCK / (32·num_warps)); a kernel with a loop (the backward's window kernel walks its
  chunk of windows) counts the loop body only (prologue and epilogue are amortised over the
  chunk); the pixel gather counts per pixel and multiplies by the pixels per output window (s²).

Instruction counts are a proxy for the issue rate of a memory-bound kernel, not a timing.
CUDA kernel rows (same keys) come from ``poolbench.impls.dpp_ext.static_report.cuda_kernel_rows`` when
that module exists.
"""
from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..report.tables import markdown_table

__all__ = ["ROW_KEYS", "KernelCase", "cases", "compile_case", "cuda_rows", "executed_path", "kernel_rows",
           "per_window_counts", "to_markdown", "toolchain_versions", "triton_kernel_rows", "vgg_cases"]

ROW_KEYS = ("tier", "kernel", "variant", "dtype", "config", "compiled", "registers", "spill_bytes",
            "shared_bytes", "sass_instructions", "sass_per_window", "mufu_per_window", "error")

VARIANTS = {"lite_sym": (False, False), "lite_asym": (True, False), "full_sym": (False, True),
            "full_asym": (True, True)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: Layer shapes the launches are specialised for: VGG-16's first pooling layer (k2s2) and ResNet's stem.
GEOMETRIES = {"k2s2": ((32, 64, 224, 224), (2, 2, 0)), "k3s2p1": ((32, 64, 112, 112), (3, 2, 1))}


@dataclass(frozen=True)
class KernelCase:
    """One launch to compile: which pass, variant, dtype and layer geometry."""

    direction: str  # "forward" | "backward"
    variant: str
    dtype: str
    geometry: str = "k2s2"


def cases(geometries=tuple(GEOMETRIES), dtypes=("fp32", "bf16"), variants=tuple(VARIANTS)) -> list[KernelCase]:
    return [KernelCase(direction, variant, dtype, geometry) for geometry in geometries for variant in variants
            for dtype in dtypes for direction in ("forward", "backward")]


def vgg_cases() -> list[KernelCase]:
    """The VGG-16 path: Lite and Full (Sym), k=2 s=2, fp32 and bf16, forward and backward."""
    return cases(geometries=("k2s2",), variants=("lite_sym", "full_sym"))


def _launches(case: KernelCase):
    """The tier's own launches for ``case``, built on meta tensors (no memory, no GPU)."""
    from poolbench.impls import dpp_triton_kernels as kernels

    if kernels.INTERPRET:
        raise RuntimeError("the kernel report compiles for a GPU; unset TRITON_INTERPRET")
    shape, (k, s, pad) = GEOMETRIES[case.geometry]
    asym, full = VARIANTS[case.variant]
    meta = dict(device="meta")
    x = torch.empty(shape, dtype=DTYPES[case.dtype], **meta)
    channels = shape[1]
    alpha, lam = torch.empty(channels, **meta), torch.empty(channels, **meta)
    weight, bias = (torch.empty(channels, 1, 3, 3, **meta), torch.empty(channels, **meta)) if full else (None, None)
    options = (k, s, pad, asym, 1e-3, False, True)  # log_params: the stored logs, as the modules call it
    if case.direction == "forward":
        return kernels.forward_plan(x, alpha, lam, weight, bias, *options)[1]
    y = kernels.forward_plan(x, alpha, lam, weight, bias, *options)[0]
    return kernels.backward_plan(torch.empty_like(y), x, alpha, lam, weight, bias, *options).launches


def _bind(kernel, launch, config, target):
    """(ASTSource, options) as JITFunction.run would build them for ``config`` on ``target``."""
    from triton.compiler.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = kernel.fn
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = {**launch.constexprs, **config.all_kwargs()}
    bound_args, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound_args, specialization, options)
    return ASTSource(fn, signature, constexprs, attrs), options


def _ptxas_log(ptx: str, arch: str) -> str:
    """ptxas -v for ``ptx`` with Triton's flags (registers, spills, shared memory)."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    capability = int(arch.removeprefix("sm_"))
    ptxas = get_ptxas(capability).path
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "kernel.ptx"
        source.write_text(ptx)
        done = subprocess.run([ptxas, "-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name={sm_arch_from_capability(capability)}",
                               str(source), "-o", str(Path(folder) / "kernel.cubin")],
                              capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ptxas failed: {(done.stderr + done.stdout).strip()[-300:]}")
    return done.stderr + done.stdout


def _cuobjdump() -> str | None:
    from triton.backends.nvidia.compiler import get_ptxas

    bundled = Path(get_ptxas(90).path).with_name("cuobjdump")
    return str(bundled) if bundled.exists() else shutil.which("cuobjdump")


_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);")


def sass_instructions(cubin: bytes) -> list[tuple[int, str]]:
    """(address, instruction) of every SASS instruction but NOPs."""
    tool = _cuobjdump()
    if tool is None:
        raise RuntimeError("cuobjdump not found (ships with the CUDA toolkit and with triton)")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        text = subprocess.run([tool, "-sass", handle.name], capture_output=True, text=True, check=True).stdout
    found = [(int(address, 16), body.strip()) for address, body in _SASS_LINE.findall(text)]
    return [(address, body) for address, body in found if not body.startswith("NOP")]


def loop_body(instructions: list[tuple[int, str]]) -> list[tuple[int, str]] | None:
    """The instructions of the outermost backward-branching loop, or None for straight-line code."""
    loops = []
    for address, body in instructions:
        match = re.search(r"\bBRA\b.*?(0x[0-9a-f]+)", body)
        if match and int(match.group(1), 16) < address:
            loops.append((int(match.group(1), 16), address))
    if not loops:
        return None
    start, end = max(loops, key=lambda span: span[1] - span[0])
    return [(a, b) for a, b in instructions if start <= a <= end]


def executed_path(instructions: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """What one thread executes per pass over its items: the outermost loop's body, else the whole kernel."""
    body = loop_body(instructions)
    return body if body is not None else instructions


def per_window_counts(path: list[tuple[int, str]], items_per_thread: float,
                      items_per_window: float = 1.0) -> tuple[float, float]:
    """(SASS, MUFU) instructions per output window of an executed path; the one definition for every tier.

    ``path``: the SASS (address, instruction) one thread executes per pass (:func:`executed_path`, or
    the interior-window path of a CUDA kernel), NOPs excluded; ``items_per_thread``: the windows (or
    pixels) that pass handles per thread; ``items_per_window``: items per output window (1 for window
    kernels, s² for a per-pixel gather).  MUFU counts the special-function unit's instructions (ex2,
    lg2, rcp, rsq, sin/cos: ``MUFU.*``), the scarce issue slots of a transcendental-heavy kernel.
    """
    scale = items_per_window / max(items_per_thread, 1e-9)
    mufu = sum(1 for _, body in path if re.search(r"\bMUFU\.", body))
    return round(len(path) * scale, 1), round(mufu * scale, 1)


def _per_window(kernel_name: str, instructions, config, stride: int) -> tuple[float, float]:
    per_thread = max(1, config.kwargs["BLOCK"] // (32 * config.num_warps))
    per_window = stride * stride if "input" in kernel_name else 1
    return per_window_counts(executed_path(instructions), per_thread, per_window)


def toolchain_versions() -> dict:
    """The compiler versions a report was made with (the counts change with them)."""
    import triton

    return {"triton": triton.__version__, "torch": torch.__version__}


def _resources(log: str) -> tuple[int, int, int]:
    registers = re.search(r"Used (\d+) registers", log)
    spill = [int(m) for m in re.findall(r"(\d+) bytes spill (?:stores|loads)", log)]
    shared = re.search(r"(\d+) bytes smem", log)
    return (int(registers.group(1)) if registers else -1, max(spill, default=0),
            int(shared.group(1)) if shared else 0)


@functools.cache
def _compile_config(case: KernelCase, launch_index: int, config_index: int, arch: str) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget

    launch = _launches(case)[launch_index]
    kernel = launch.kernel
    config = kernel.configs[config_index]
    named = dict(zip(kernel.fn.arg_names, launch.args))
    kept = kernel.early_config_prune(kernel.configs, named, **launch.constexprs) if kernel.early_config_prune \
        else kernel.configs
    label = f"BLOCK={config.kwargs['BLOCK']},warps={config.num_warps}" + ("" if config in kept else " (pruned)")
    row = dict(tier="triton", kernel=kernel.fn.__name__.strip("_"), variant=f"{case.variant} {case.geometry}",
               dtype=case.dtype, config=label, compiled=False, registers=None, spill_bytes=None,
               shared_bytes=None, sass_instructions=None, sass_per_window=None, mufu_per_window=None, error="")
    target = GPUTarget("cuda", int(arch.removeprefix("sm_")), 32)
    try:
        source, options = _bind(kernel, launch, config, target)
        compiled = triton.compile(source, target=target, options=options.__dict__)
        registers, spill, shared = _resources(_ptxas_log(compiled.asm["ptx"], arch))
        instructions = sass_instructions(compiled.asm["cubin"])
        sass_per_window, mufu_per_window = _per_window(row["kernel"], instructions, config,
                                                       GEOMETRIES[case.geometry][1][1])
        row.update(compiled=True, registers=registers, spill_bytes=spill,
                   shared_bytes=max(shared, compiled.metadata.shared), sass_instructions=len(instructions),
                   sass_per_window=sass_per_window, mufu_per_window=mufu_per_window)
    except Exception as exc:  # a failing compile is a row of the report, not the end of it
        row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
    return row


def _largest_kept(launch) -> int:
    """Index of the config with the most windows per thread that the autotune prune keeps for ``launch``."""
    from poolbench.impls.dpp_triton_kernels import windows_per_thread

    kernel = launch.kernel
    kept = kernel.early_config_prune(kernel.configs, dict(zip(kernel.fn.arg_names, launch.args)),
                                     **launch.constexprs)
    return kernel.configs.index(max(kept, key=windows_per_thread))


def compile_case(case: KernelCase, arch: str = "sm_90", largest_only: bool = False) -> list[dict]:
    """One row per (launch, autotune config) of ``case``, compiled for ``arch``; cached per process.

    ``largest_only``: just the kept config holding the most windows per thread, the one that needs
    the most registers (a quick no-spill check: smaller tiles of the same code need fewer).
    """
    rows = []
    for launch_index, launch in enumerate(_launches(case)):
        indices = [_largest_kept(launch)] if largest_only else range(len(launch.kernel.configs))
        for config_index in indices:
            rows.append(dict(_compile_config(case, launch_index, config_index, arch),
                             kernel=f"{launch.kernel.fn.__name__.strip('_')} ({case.direction})"))
    return rows


def triton_kernel_rows(arch: str = "sm_90", selected: list[KernelCase] | None = None, progress=None) -> list[dict]:
    rows = []
    for case in selected or cases():
        if progress:
            progress(f"{case.direction} {case.variant} {case.geometry} {case.dtype}")
        rows += compile_case(case, arch)
    return rows


def cuda_rows(arch: str) -> tuple[list[dict], str]:
    """CUDA kernel rows from the C++/CUDA tier's own static report, and a note when it is absent."""
    try:
        from poolbench.impls.dpp_ext.static_report import cuda_kernel_rows
    except ImportError as exc:
        return [], f"CUDA kernels not reported: {exc}"
    return cuda_kernel_rows(arch), ""


def kernel_rows(arch: str = "sm_90", progress=None) -> tuple[list[dict], list[str]]:
    """Every Triton row, then every CUDA row; notes for what could not be reported."""
    rows = triton_kernel_rows(arch, progress=progress)
    extra, note = cuda_rows(arch)
    return rows + extra, [note] if note else []


def _cell(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    return str(value)


def summary(rows: list[dict]) -> list[dict]:
    """Per (tier, kernel, variant, dtype): the autotune configs kept, their worst registers/spills and SASS per window."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["tier"], row["kernel"], row["variant"], row["dtype"]), []).append(row)
    lines = []
    for (tier, kernel, variant, dtype), members in groups.items():
        kept = [r for r in members if r["compiled"] and "(pruned)" not in str(r["config"])]
        per_window = [r["sass_per_window"] for r in kept if r["sass_per_window"] is not None]
        mufu = [r["mufu_per_window"] for r in kept if r.get("mufu_per_window") is not None]
        lines.append(dict(tier=tier, kernel=kernel, variant=variant, dtype=dtype,
                          kept=f"{len(kept)}/{len(members)}",
                          max_registers=max((r["registers"] for r in kept), default=None),
                          max_spill_bytes=max((r["spill_bytes"] for r in kept), default=None),
                          sass_per_window=f"{min(per_window):g}–{max(per_window):g}" if per_window else None,
                          mufu_per_window=f"{min(mufu):g}–{max(mufu):g}" if mufu else None))
    return lines


def _table(rows: list[dict], keys) -> list[str]:
    return markdown_table(rows, list(keys), format_cell=_cell).splitlines()


def to_markdown(rows: list[dict], arch: str, notes: list[str] = (), command: str = "",
                versions: dict | None = None) -> str:
    lines = [f"# Static kernel report for {arch} (compiled without a GPU)", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    versions = versions or toolchain_versions()
    lines += [f"Compiled with triton {versions['triton']}, torch {versions['torch']}.", ""]
    lines += ["SASS / MUFU per window (`poolbench.measure.kernel_report.per_window_counts`): instructions of the executed "
              "path per output window; straight-line kernels count every instruction (NOPs excluded) divided by the "
              "windows a thread owns; looping kernels count the loop body; the pixel gather counts per pixel × s². "
              "MUFU: special-function instructions (exp2, log2, reciprocal) among them. "
              "Configs marked *(pruned)* are dropped by the autotune register budget for that launch.", ""]
    lines += [f"- {note}" for note in notes]
    brief = summary(rows)
    lines += ["", "## Summary over the configs the autotuner keeps", ""] + _table(brief, tuple(brief[0]) if brief else ())
    lines += ["", "## Every config", ""] + _table(rows, ROW_KEYS)
    return "\n".join(lines) + "\n"


def write_reports(rows: list[dict], arch: str, json_path: Path | None, md_path: Path | None, notes=(),
                  command: str = "", versions: dict | None = None) -> None:
    """JSON and markdown of ``rows``; ``versions`` (triton, torch) default to the running process's."""
    versions = versions or toolchain_versions()
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({"arch": arch, "versions": versions, "notes": list(notes),
                                         "rows": rows}, indent=1) + "\n")
    if md_path is not None:
        md_path.parent.mkdir(parents=True, exist_ok=True)
        md_path.write_text(to_markdown(rows, arch, notes, command, versions))
