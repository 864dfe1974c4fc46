"""Static report of the CUDA kernels, without a GPU: registers, spills, local memory, SASS size.

:func:`cuda_kernel_rows` compiles ``csrc/cuda/dpp_kernel.cu`` for one architecture
with nvcc (``-cubin -Xptxas -v``, the library's own flags), reads ptxas' resource
usage per kernel and disassembles the cubin (``cuobjdump -sass``).  Every kernel
template instantiation the host code launches is one row: kernel × variant
(Lite/Full) × dtype × config (window size of the fast path, or ``generic``).

``sass_per_window`` is, for the forward, the instruction count of the interior
path of one output window, read from probe instantiations compiled only for the
report (the border path replaced by a trap: what executes for an interior
window, index split and store included); for grid-stride kernels it is the
static span of the loop body.  ``mufu`` counts special-function instructions.
Both are proxies for the issue rate of a memory-bound kernel, not timings.  ``stack_bytes`` is the per-thread stack frame
(local memory): 0 for every 2×2 and 3×3 instantiation that computes in float32 (fp32,
bf16, fp16), forward and backward.

The cubin and ptxas log are cached per architecture and source content (the
compile takes minutes on a small machine).
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import torch

from poolbench.report.tables import markdown_table
from poolbench.toolchain import cpp_extension, cuda_home

from .build import CSRC, CUDA_CFLAGS, CUDA_SOURCES, HEADERS, BuildError, build_directory

__all__ = ["cuda_kernel_rows", "find_tool", "is_cached", "parse_ptxas", "sass_loop_instructions", "to_markdown"]

#: scalar_t spelled by the demangler → poolbench dtype name
_DTYPES = {"float": "float32", "double": "float64", "c10::Half": "float16", "c10::BFloat16": "bfloat16"}
#: kernels that handle one output window per grid-stride iteration (their loop span is reported
#: where no interior-path probe exists)
_PER_WINDOW = ("dpp_forward_kernel", "dpp_backward_window_kernel")
_COMPILE_TIMEOUT_S = 1800
#: One translation unit with every kernel (the library splits them for parallel builds) plus the
#: interior-path probes of the forward kernel (INTERIOR_ONLY instantiations, never launched).
_REPORT_DEFINES = ("-DPOOLBENCH_DPP_ALL_IN_ONE", "-DPOOLBENCH_DPP_STATIC_PROBES")
_COMPILE_FLAGS_TEXT = (*_REPORT_DEFINES, *CUDA_CFLAGS)


def find_tool(name: str) -> str | None:
    """A CUDA binary tool: the toolkit's bin/, PATH, then the copy Triton ships (cuobjdump, nvdisasm)."""
    home = cuda_home()
    candidates = [Path(home) / "bin" / name] if home else []
    on_path = shutil.which(name)
    if on_path:
        candidates.append(Path(on_path))
    try:
        import triton

        candidates.append(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)
    except ImportError:
        pass
    return next((str(path) for path in candidates if path.is_file()), None)


def _normalise_arch(arch: str) -> str:
    digits = re.sub(r"^(sm_|compute_)", "", str(arch))
    if not re.fullmatch(r"\d{2,3}[a-z]?", digits):
        raise ValueError(f"arch must look like 'sm_90' or '90', got {arch!r}")
    return digits


def _cubin_path(arch: str, float32_only: bool) -> Path:
    """Where the cubin of the current CUDA source for sm_<arch> is cached (keyed by source content and mode)."""
    digest = hashlib.sha1()
    for path in (*CUDA_SOURCES, *HEADERS, *_COMPILE_FLAGS_TEXT):
        digest.update(path.read_bytes() if isinstance(path, Path) else path.encode())
    mode = "-f32" if float32_only else ""
    return build_directory("static_report") / f"dpp_kernel-sm{arch}{mode}-{digest.hexdigest()[:12]}.cubin"


def is_cached(arch: str = "sm_90", float32_only: bool = False) -> bool:
    """Whether the current CUDA source was compiled for ``arch`` already (the report then takes seconds)."""
    try:
        cubin = _cubin_path(_normalise_arch(arch), float32_only)
    except BuildError:  # no usable cache directory: nothing can be cached
        return False
    return cubin.exists() and cubin.with_suffix(".ptxas.log").exists()


def _compile(arch: str, float32_only: bool = False) -> tuple[Path, str]:
    """(cubin, ptxas log) of the CUDA source for sm_<arch>, cached by architecture, source content and mode."""
    nvcc = find_tool("nvcc")
    if nvcc is None:
        raise RuntimeError("nvcc not found (set CUDA_HOME to a CUDA toolkit)")
    cubin = _cubin_path(arch, float32_only)
    log_path = cubin.with_suffix(".ptxas.log")
    if cubin.exists() and log_path.exists():
        return cubin, log_path.read_text(encoding="utf-8")
    include = [f"-I{path}" for path in (str(CSRC), *cpp_extension().include_paths(device_type="cuda"))]
    command = [
        nvcc, "-cubin", f"-gencode=arch=compute_{arch},code=sm_{arch}", "-std=c++20", "-Xptxas", "-v",
        *CUDA_CFLAGS, *cpp_extension().COMMON_NVCC_FLAGS,
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}", *include,
        *(["-DPOOLBENCH_DPP_FLOAT32_ONLY"] if float32_only else []), *_REPORT_DEFINES,
        "-o", str(cubin), str(CUDA_SOURCES[0]),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=_COMPILE_TIMEOUT_S)
    if result.returncode != 0:
        cubin.unlink(missing_ok=True)
        errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
        raise RuntimeError(f"nvcc failed for sm_{arch}: {(errors or result.stderr.splitlines() or ['?'])[0][:300]}")
    log_path.write_text(result.stderr, encoding="utf-8")
    return cubin, result.stderr


def parse_ptxas(log: str) -> dict[str, dict]:
    """Per mangled kernel name: registers, spill bytes (stores + loads), stack frame and shared memory bytes."""
    kernels: dict[str, dict] = {}
    current = None
    for line in log.splitlines():
        if match := re.search(r"Function properties for (\S+)", line):
            current = kernels.setdefault(match.group(1), {})
        elif match := re.search(r"Compiling entry function '(\S+)'", line):
            current = kernels.setdefault(match.group(1), {})
        elif current is not None and (match := re.search(
                r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)):
            current["stack_bytes"] = int(match.group(1))
            current["spill_bytes"] = int(match.group(2)) + int(match.group(3))
        elif current is not None and (match := re.search(r"Used (\d+) registers", line)):
            current["registers"] = int(match.group(1))
            shared = re.search(r"(\d+) bytes smem", line)
            current["shared_bytes"] = int(shared.group(1)) if shared else 0
    return kernels


_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def sass_loop_instructions(body: list[tuple[int, str, str]]) -> tuple[int, int | None]:
    """(all instructions, instructions of the outermost backward-branch loop) of one function, NOPs excluded."""
    real = [(address, op) for address, op, _ in body if not op.startswith("NOP")]
    loop = None
    for address, op, operands in body:
        target = re.search(r"0x([0-9a-f]+)", operands) if op.startswith("BRA") else None
        if target and int(target.group(1), 16) < address:
            span = sum(1 for a, _ in real if int(target.group(1), 16) <= a <= address)
            loop = max(loop or 0, span)
    return len(real), loop


def interior_path_instructions(body: list[tuple[int, str, str]]) -> int:
    """Instructions of a probe kernel (one interior window, no loop): all but NOPs, the trap
    that stands for the border path (BPT.TRAP) and the branch-to-self after the final EXIT."""
    return sum(1 for _, op, operands in body
               if not op.startswith(("NOP", "BPT")) and not (op == "BRA" and _self_branch(body, operands)))


def _self_branch(body, operands) -> bool:
    target = re.search(r"0x([0-9a-f]+)", operands)
    return bool(target) and any(address == int(target.group(1), 16) and op == "BRA" for address, op, _ in body)


def mufu_instructions(body: list[tuple[int, str, str]]) -> int:
    """Special-function-unit instructions (MUFU.EX2, MUFU.LG2, MUFU.RCP, ...): a quarter-rate pipe on sm_90."""
    return sum(1 for _, op, _ in body if op.startswith("MUFU"))


def _sass_functions(cubin: Path) -> dict[str, list[tuple[int, str, str]]]:
    tool = find_tool("cuobjdump")
    if tool is None:
        raise RuntimeError("cuobjdump not found (CUDA toolkit or the triton package provides it)")
    text = subprocess.run([tool, "-sass", str(cubin)], capture_output=True, text=True, check=True,
                          timeout=600).stdout
    functions: dict[str, list] = {}
    current = None
    for line in text.splitlines():
        if match := re.search(r"Function : (\S+)", line):
            current = functions.setdefault(match.group(1), [])
        elif current is not None and (match := _SASS_LINE.search(line)):
            current.append((int(match.group(1), 16), match.group(2), match.group(3)))
    return functions


def _demangle(names: list[str]) -> dict[str, str]:
    tool = shutil.which("c++filt") or shutil.which("llvm-cxxfilt")
    if tool is None:
        return {name: name for name in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return dict(zip(names, out.splitlines()))


def _template_args(signature: str) -> tuple[str, list[str]]:
    """('dpp_forward_interior_kernel', ['2', 'false', 'float', 'float']) from a demangled signature."""
    head = signature.replace("(anonymous namespace)", "").split("(", 1)[0]
    name_part, _, args = head.partition("<")
    name = name_part.rsplit("::", 1)[-1].strip()
    args = args.rsplit(">", 1)[0]
    parts, depth, token = [], 0, ""
    for char in args:
        if char == "," and depth == 0:
            parts.append(token.strip())
            token = ""
            continue
        depth += (char == "<") - (char == ">")
        token += char
    if token.strip():
        parts.append(token.strip())
    return name, parts


def _describe(name: str, args: list[str]) -> dict:
    """kernel, variant, dtype and config of one instantiation from its template arguments."""
    dtypes = [_DTYPES.get(arg) for arg in args if arg in _DTYPES]
    if name == "dpp_forward_kernel":  # <K, FULL, SI, SMALL, INTERIOR_ONLY, scalar_t, T>
        k, full, si, small, probe = args[0], args[1] == "true", args[2], args[3] == "true", args[4] == "true"
        config = f"k{k}" if k != "0" else "generic"
        config += {"1": ", scale-invariant", "0": "", "-1": ", scale-invariant at run time"}.get(si, f", SI={si}")
        config += ", 32-bit index" if small else ", 64-bit index"
        config += ", interior path (probe)" if probe else ""
        return {"kernel": name, "variant": "full" if full else "lite", "dtype": dtypes[0], "config": config}
    if name == "dpp_reduce_partials_kernel":  # <SLOTS, T, P>
        variant = "full" if args[0] == "12" else "lite"
        return {"kernel": name, "variant": variant, "dtype": dtypes[-1],
                "config": f"{args[0]} slots, per channel, {_DTYPES.get(args[1], args[1])} partials"}
    if name == "dpp_backward_stencil_kernel":  # <scalar_t, T>
        return {"kernel": name, "variant": "full", "dtype": dtypes[0], "config": "per input pixel"}
    k, full = args[0], args[1] == "true"
    config = f"k{k}" if k != "0" else "generic"
    if name == "dpp_backward_window_kernel":  # <K, FULL, WRITE_TAPS, scalar_t, T, INTERIOR_ONLY>
        config += ", writes taps" if args[2] == "true" else ", parameter grads only"
        config += ", interior path (probe)" if len(args) > 5 and args[5] == "true" else ""
    if name == "dpp_backward_gather_kernel":
        config += ", per input pixel"
    return {"kernel": name, "variant": "full" if full else "lite", "dtype": dtypes[0], "config": config}


def cuda_kernel_rows(arch: str = "sm_90", float32_only: bool = False) -> list[dict]:
    """One dict per CUDA kernel instantiation compiled for ``arch`` (e.g. "sm_90", "sm_80").

    ``float32_only`` compiles the float32 instantiations only (about a quarter of the
    compile time; for iterating on one kernel's register use, not for the report).

    Keys: tier ("cuda"), kernel, variant, dtype, config, compiled, registers, spill_bytes,
    shared_bytes, sass_instructions, sass_per_window, mufu, error, stack_bytes.  When the source
    cannot be compiled, one row with ``compiled=False`` and the error.
    """
    digits = _normalise_arch(arch)
    try:
        cubin, log = _compile(digits, float32_only)
        resources = parse_ptxas(log)
        sass = _sass_functions(cubin)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        return [{"tier": "cuda", "kernel": "dpp_kernel.cu", "variant": None, "dtype": None, "config": f"sm_{digits}",
                 "compiled": False, "registers": None, "spill_bytes": None, "shared_bytes": None,
                 "sass_instructions": None, "sass_per_window": None, "mufu": None, "stack_bytes": None,
                 "error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}]
    names = sorted(set(resources) & set(sass) | {name for name in sass if name.startswith("_Z")})
    demangled = _demangle(names)
    rows = []
    for mangled in names:
        name, args = _template_args(demangled[mangled])
        if not name.startswith("dpp_"):
            continue
        body = sass.get(mangled, [])
        total, loop = sass_loop_instructions(body)
        usage = resources.get(mangled, {})
        described = _describe(name, args)
        probe = described["config"].endswith("(probe)")
        if probe and name == "dpp_backward_window_kernel":  # a grid-stride loop: its body, trap excluded
            loop = sass_loop_instructions([i for i in body if not i[1].startswith("BPT")])[1]
        rows.append({
            "tier": "cuda", **described, "compiled": True,
            "registers": usage.get("registers"), "spill_bytes": usage.get("spill_bytes"),
            "shared_bytes": usage.get("shared_bytes"), "sass_instructions": total,
            # a probe runs one interior window and exits: all its instructions are that window's path
            "sass_per_window": (loop if name == "dpp_backward_window_kernel" else interior_path_instructions(body))
            if probe else (loop if name in _PER_WINDOW and "32-bit index" not in described["config"] else None),
            "mufu": mufu_instructions(body), "error": "",
            "stack_bytes": usage.get("stack_bytes"),
        })
    order = {"float32": 0, "bfloat16": 1, "float16": 2, "float64": 3}
    rows.sort(key=lambda r: (r["kernel"], r["variant"], order.get(r["dtype"], 9), r["config"]))
    return rows


_COLUMNS = ("kernel", "variant", "dtype", "config", "compiled", "registers", "spill_bytes", "stack_bytes",
            "shared_bytes", "sass_instructions", "sass_per_window", "mufu", "error")


def to_markdown(rows: list[dict], arch: str) -> str:
    """The rows as a markdown table (one line per kernel instantiation)."""
    lines = [f"# CUDA DPP kernels compiled for {arch} (nvcc -cubin -Xptxas -v, cuobjdump -sass; no GPU)", "",
             "Command: `python -m poolbench.impls.dpp_ext.static_report " + arch + " --md FILE`", "",
             "stack_bytes is the per-thread local-memory frame.  sass_per_window: for the forward's interior-path "
             "probes (rows marked `(probe)`: the forward kernel compiled with the border path replaced by a trap, "
             "one window per thread) the instructions an interior output window executes, index arithmetic and "
             "store included; for the backward window kernel's probes the grid-stride loop body with border "
             "windows trapped (per interior window; the per-block reduction after the loop not counted); "
             "for other grid-stride kernels (64-bit-index forward, backward window kernel) the static "
             "span of the loop body, which includes never-taken border paths. NOPs excluded. mufu: "
             "special-function instructions (MUFU.*) in the kernel.", "",
             markdown_table(rows, _COLUMNS)]
    return "\n".join(lines)


if __name__ == "__main__":  # python -m poolbench.impls.dpp_ext.static_report sm_90 [--md FILE]
    import argparse

    parser = argparse.ArgumentParser(description="Static report of the CUDA DPP kernels (no GPU needed).")
    parser.add_argument("arch", nargs="?", default="sm_90")
    parser.add_argument("--md", type=Path, help="write a markdown table here instead of JSON to stdout")
    parser.add_argument("--float32-only", action="store_true",
                        help="compile the float32 instantiations only (quick iteration, ~4x faster)")
    parser.add_argument("--kernel", default="", help="keep only rows whose kernel name contains this text")
    options = parser.parse_args()
    report_rows = [row for row in cuda_kernel_rows(options.arch, options.float32_only)
                   if options.kernel in row["kernel"]]
    if options.md:
        options.md.write_text(to_markdown(report_rows, options.arch), encoding="utf-8")
    else:
        print(json.dumps(report_rows, indent=1))
