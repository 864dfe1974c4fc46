"""The ``poolbench_dpp`` op family: JIT build, fake kernels, autograd, Python front end.

Layout (as torchvision's ops): ``csrc/dpp.cpp`` declares the schema once
(``poolbench_dpp::dpp_forward`` and ``poolbench_dpp::dpp_backward``);
``csrc/cpu/dpp_kernel.cpp`` and ``csrc/cuda/dpp_kernel.cu`` each register only
their own dispatch key; both include ``csrc/dpp_math.h``, the per-window maths,
so the formulas the GPU runs are the ones the CPU tests check.  This file
registers the fake kernels and the autograd formula (backward is its own op).

Building is lazy: nothing compiles at import.  The first call of
:func:`load_cpu` / :func:`load_cuda` builds with ``torch.utils.cpp_extension``
(ninja, cached under ``$POOLBENCH_CACHE_DIR`` or ``~/.cache/poolbench``) once
per process; later processes reuse the cached library.  The CPU library needs
only a C++ compiler; the CUDA library needs nvcc and a CUDA build of torch.
"""
from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import sys
from pathlib import Path

import torch

from poolbench.toolchain import cpp_extension, cuda_home

__all__ = [
    "CUDA_MAX_KERNEL_SIZE",
    "build_directory",
    "cpu_unavailable_reason",
    "cuda_unavailable_reason",
    "dpp",
    "load_cpu",
    "load_cuda",
]

CSRC = Path(__file__).resolve().parent / "csrc"
SCHEMA_SOURCES = (CSRC / "dpp.cpp", CSRC / "cpu" / "dpp_kernel.cpp")
CUDA_SOURCES = (CSRC / "cuda" / "dpp_kernel.cu",)
HEADERS = (CSRC / "dpp_math.h", CSRC / "dpp_args.h")

#: The CUDA kernel keeps a window in registers/local memory; larger windows are refused with a reason.
CUDA_MAX_KERNEL_SIZE = 8

_BUILD_ERRORS: dict[str, str] = {}
_FAKE_REGISTERED = False


# ---------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------

def _cache_root() -> Path:
    root = os.environ.get("POOLBENCH_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "poolbench"


@functools.cache
def _cpu_fingerprint() -> str:
    """Hash of the host CPU's model and flags: the CPU library is built with -march=native."""
    text = platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(("model name", "flags", "Features")):
                    text += line
                    if line.startswith(("flags", "Features")):
                        break
    except OSError:
        pass
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def build_directory(kind: str) -> Path:
    """Where the ``kind`` ("cpu" or "cuda") library is built and cached.

    Keyed by torch/CUDA/Python versions, the CPU (the CPU library is built with
    -march=native) and the source tree, so a shared home directory never loads a
    library built elsewhere or from other sources.
    """
    tag = f"torch{torch.__version__}-py{sys.version_info.major}{sys.version_info.minor}"
    if kind == "cuda":
        tag += f"-cuda{torch.version.cuda}"
    tag += f"-cpu{_cpu_fingerprint()}"
    if _cpu_march() != "native":
        tag += f"-march{_cpu_march()}"
    # and by source tree, so two checkouts sharing a home directory do not rebuild each other's library
    tag += f"-src{hashlib.sha1(str(CSRC).encode()).hexdigest()[:8]}"
    path = _cache_root() / "torch_extensions" / f"dpp_{kind}-{tag.replace('+', '_')}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _cxx() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")


@functools.cache
def _ninja_reason() -> str | None:
    return None if cpp_extension().is_ninja_available() else "ninja is not installed (pip install ninja)"


def _cpu_march() -> str:
    """The CPU library's -march: ``$POOLBENCH_CPP_MARCH`` or native (as torch's ``TORCHINDUCTOR_CPP_MARCH``).

    The instruction-count gate runs under valgrind, which cannot decode AVX-512:
    it builds its own copy for a CPU valgrind can emulate (x86-64-v3).
    """
    return os.environ.get("POOLBENCH_CPP_MARCH", "").strip() or "native"


def _cpu_flags() -> list[str]:
    # -fno-trapping-math: nothing here relies on FP exception traps, and it lets GCC if-convert
    # (vectorise) the branch-free window maths.
    flags = ["-O3", "-fopenmp", "-fno-trapping-math"]
    if platform.machine() in ("x86_64", "AMD64", "aarch64", "arm64"):
        flags.append(f"-march={_cpu_march()}")
    return flags


def _cuda_arch_flags() -> list[str]:
    """-gencode flags: TORCH_CUDA_ARCH_LIST if set (torch handles it), else the visible GPUs, else sm_90."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return []
    if torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    else:
        caps = [(9, 0)]
    return [f"-gencode=arch=compute_{a}{b},code=sm_{a}{b}" for a, b in caps]


def _load(name: str, sources, kind: str, **kwargs) -> None:
    try:
        cpp_extension().load(
            name=name,
            sources=[str(s) for s in sources],
            extra_include_paths=[str(CSRC)],
            build_directory=str(build_directory(kind)),
            is_python_module=False,
            verbose=os.environ.get("POOLBENCH_VERBOSE_BUILD", "") not in ("", "0"),
            **kwargs,
        )
    except Exception as exc:  # recorded so `available` can explain, then re-raised
        _BUILD_ERRORS[kind] = f"building the {kind} extension failed: {type(exc).__name__}: {str(exc)[-2000:]}"
        raise RuntimeError(_BUILD_ERRORS[kind]) from exc


@functools.cache
def load_cpu() -> None:
    """Build (once, cached) and load the schema + CPU kernel; register fake and autograd."""
    reason = cpu_unavailable_reason("cpu")
    if reason is not None:
        raise RuntimeError(reason)
    _load("poolbench_dpp_cpu", SCHEMA_SOURCES, "cpu", extra_cflags=_cpu_flags(), extra_ldflags=["-fopenmp"])
    _register_python_kernels()


@functools.cache
def load_cuda() -> None:
    """Build (once, cached) and load the CUDA kernel (the schema comes from the CPU library)."""
    reason = cuda_unavailable_reason("cuda", need_device=False)
    if reason is not None:
        raise RuntimeError(reason)
    load_cpu()
    home = cuda_home()
    # torch resolves CUDA_HOME once, at import, from nvcc's location; /usr/local/bin/nvcc
    # wrappers make that /usr/local.  Point it (and nvcc's subprocess) at the real toolkit.
    os.environ["CUDA_HOME"] = home
    cpp_extension().CUDA_HOME = home
    _load(
        "poolbench_dpp_cuda",
        CUDA_SOURCES,
        "cuda",
        extra_cflags=["-O3"],
        extra_cuda_cflags=["-O3", "--expt-relaxed-constexpr", *_cuda_arch_flags()],
    )


def cpu_unavailable_reason(device: str = "cpu") -> str | None:
    """Why the ``cpp`` tier cannot run (no compiler, no ninja, failed build), or ``None``. Cheap."""
    if "cpu" in _BUILD_ERRORS:
        return _BUILD_ERRORS["cpu"]
    if _cxx() is None:
        return "no C++ compiler found (set CXX or install g++/clang++) to build the cpp DPP kernel"
    return _ninja_reason()


def cuda_unavailable_reason(device: str = "cuda", *, need_device: bool = True) -> str | None:
    """Why the ``cuda`` tier cannot run (no GPU, CPU-only torch, no nvcc, failed build), or ``None``. Cheap."""
    if torch.version.cuda is None:
        return "this torch build has no CUDA support"
    if need_device and not torch.cuda.is_available():
        return "no CUDA device is available"
    if "cuda" in _BUILD_ERRORS:
        return _BUILD_ERRORS["cuda"]
    if cuda_home() is None:
        return "no CUDA toolkit (nvcc + libcudart) found; set CUDA_HOME to build the cuda DPP kernel"
    return cpu_unavailable_reason("cpu")


# ---------------------------------------------------------------------------
# Fake kernels and autograd (registered once, after the library is loaded)
# ---------------------------------------------------------------------------

def _pooled(size: int, kernel_size: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel_size) // stride + 1


def _register_python_kernels() -> None:
    global _FAKE_REGISTERED
    if _FAKE_REGISTERED:
        return
    _FAKE_REGISTERED = True

    @torch.library.register_fake("poolbench_dpp::dpp_forward")
    def _forward_fake(x, alpha, lam, weight, bias, kernel_size, stride, padding, asym, eps2, scale_invariant):
        n, c, h, w = x.shape
        return x.new_empty((n, c, _pooled(h, kernel_size, stride, padding), _pooled(w, kernel_size, stride, padding)))

    @torch.library.register_fake("poolbench_dpp::dpp_backward")
    def _backward_fake(grad, x, alpha, lam, weight, bias, kernel_size, stride, padding, asym, eps2, scale_invariant):
        g_weight = weight.new_empty(weight.shape) if weight is not None else alpha.new_empty((0,))
        g_bias = bias.new_empty(bias.shape) if bias is not None else alpha.new_empty((0,))
        return x.new_empty(x.shape), alpha.new_empty(alpha.shape), lam.new_empty(lam.shape), g_weight, g_bias

    def setup_context(ctx, inputs, output):
        x, alpha, lam, weight, bias, *config = inputs
        # Only the input (and the per-channel parameters) are kept: backward recomputes the weights.
        ctx.save_for_backward(x, alpha, lam, weight, bias)
        ctx.config = config

    def backward(ctx, grad):
        x, alpha, lam, weight, bias = ctx.saved_tensors
        g_x, g_alpha, g_lam, g_weight, g_bias = torch.ops.poolbench_dpp.dpp_backward(
            grad, x, alpha, lam, weight, bias, *ctx.config
        )
        if weight is None:
            g_weight = g_bias = None
        return g_x, g_alpha, g_lam, g_weight, g_bias, None, None, None, None, None, None

    torch.library.register_autograd("poolbench_dpp::dpp_forward", backward, setup_context=setup_context)


# ---------------------------------------------------------------------------
# Front end
# ---------------------------------------------------------------------------

_LOADERS = {"cpu": load_cpu, "cuda": load_cuda}
#: Set once a library is loaded; a plain flag so torch.compile traces straight past the loader.
_LOADED = {"cpu": False, "cuda": False}


@torch.compiler.disable  # building is not traceable (and happens at most once per process)
def _ensure_loaded(device_type: str) -> None:
    _LOADERS[device_type]()
    _LOADED[device_type] = True


def dpp(x, alpha, lam, kernel_size, stride, padding, asym, guide, eps2, scale_invariant, *, device_type: str):
    """Run the fused op for an already validated input on ``device_type`` ("cpu" or "cuda").

    Same arguments as every DPP tier kernel (see :mod:`poolbench.dpp`).
    """
    if x.device.type != device_type:
        tier = "cpp" if device_type == "cpu" else "cuda"
        raise ValueError(f"the {tier} DPP tier runs on {device_type} tensors, got a tensor on {x.device}")
    if device_type == "cuda" and kernel_size > CUDA_MAX_KERNEL_SIZE:
        raise ValueError(
            f"the cuda DPP tier supports kernel_size <= {CUDA_MAX_KERNEL_SIZE} (window kept in registers), "
            f"got {kernel_size}; use the vectorized tier"
        )
    if not _LOADED[device_type]:
        _ensure_loaded(device_type)
    weight, bias = guide if guide is not None else (None, None)
    return torch.ops.poolbench_dpp.dpp_forward(
        x, alpha, lam, weight, bias, int(kernel_size), int(stride), int(padding), bool(asym), float(eps2),
        bool(scale_invariant),
    )
