"""Building and loading the ``poolbench_dpp`` libraries, and saying in one line why one cannot be.

Building is lazy: nothing compiles at import.  :func:`load_cpu_library` /
:func:`load_cuda_library` build with ``torch.utils.cpp_extension`` (ninja,
cached under ``$POOLBENCH_CACHE_DIR`` or ``~/.cache/poolbench``) once per
process; later processes reuse the cached library.  The CPU library needs only
a C++ compiler; the CUDA library needs nvcc and a CUDA build of torch.

The ``cpp`` tier's availability hook (:func:`cpu_unavailable_reason`) tries the
(cached) build, so ``poolbench.create(name, C)`` never picks a tier whose
library cannot be built (unusable cache directory, missing compiler, compile
error): it falls back to the next tier.  Every failure is reported as one line
that leads with its cause (``cpp tier unavailable: C++ compiler '/x' (from $CXX)
not found``); the compiler's full output stays on the chained exception and is
printed with ``POOLBENCH_VERBOSE_BUILD=1``.
"""
from __future__ import annotations

import functools
import hashlib
import os
import platform
import re
import shutil
import sys
from pathlib import Path

import torch

from poolbench.toolchain import cache_root, cpp_extension, cuda_home, load_extension

__all__ = [
    "CSRC",
    "CUDA_SOURCES",
    "HEADERS",
    "SCHEMA_SOURCES",
    "BuildError",
    "build_directory",
    "cpu_unavailable_reason",
    "cuda_unavailable_reason",
    "load_cpu_library",
    "load_cuda_library",
    "summarise_build_failure",
]

CSRC = Path(__file__).resolve().parent / "csrc"
SCHEMA_SOURCES = (CSRC / "dpp.cpp", CSRC / "cpu" / "dpp_kernel.cpp")
CUDA_SOURCES = (CSRC / "cuda" / "dpp_kernel.cu",)
HEADERS = (CSRC / "dpp_math.h", CSRC / "dpp_args.h")

#: tier name of each library, for messages
_TIER = {"cpu": "cpp", "cuda": "cuda"}
#: kind -> one-line reason of a failed build in this process (a failed build is not retried)
_BUILD_ERRORS: dict[str, str] = {}
_LOADED: set[str] = set()


class BuildError(RuntimeError):
    """A library of the extension cannot be built or loaded; the message is one line, cause first."""


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
    """Where the ``kind`` ("cpu", "cuda", ...) library is built and cached (created if needed).

    Keyed by torch/CUDA/Python versions, the CPU (the CPU library is built with
    -march=native) and the source tree, so a shared home directory never loads a
    library built elsewhere or from other sources.  Raises :class:`BuildError`
    naming the directory when it cannot be created or written.
    """
    tag = f"torch{torch.__version__}-py{sys.version_info.major}{sys.version_info.minor}"
    if kind == "cuda":
        tag += f"-cuda{torch.version.cuda}"
    tag += f"-cpu{_cpu_fingerprint()}"
    if cpu_march() != "native":
        tag += f"-march{cpu_march()}"
    # and by source tree, so two checkouts sharing a home directory do not rebuild each other's library
    tag += f"-src{hashlib.sha1(str(CSRC).encode()).hexdigest()[:8]}"
    path = cache_root() / "torch_extensions" / f"dpp_{kind}-{tag.replace('+', '_')}"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BuildError(f"build cache directory {str(cache_root())!r} is unusable ({exc.strerror or exc}); "
                         "set POOLBENCH_CACHE_DIR to a writable directory") from exc
    if not os.access(path, os.W_OK):
        raise BuildError(f"build cache directory {str(path)!r} is not writable; "
                         "set POOLBENCH_CACHE_DIR to a writable directory")
    return path


def _compiler_reason() -> str | None:
    """Why no C++ compiler can be run (torch's builder runs $CXX, else c++), or ``None``."""
    chosen = os.environ.get("CXX")
    if chosen:
        if shutil.which(chosen) is None:
            return f"C++ compiler {chosen!r} (from $CXX) not found"
        return None
    if not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        return "no C++ compiler found (set CXX or install g++/clang++)"
    return None


@functools.cache
def _ninja_reason() -> str | None:
    return None if cpp_extension().is_ninja_available() else "ninja is not installed (pip install ninja)"


# Lines of a compiler/ninja log that state a cause, most specific first.
_CAUSE_PATTERNS = (
    re.compile(r"(?:fatal )?error: .*", re.IGNORECASE),
    re.compile(r".*(?:not found|No such file or directory|Permission denied).*"),
)


def summarise_build_failure(exc: BaseException) -> str:
    """One line naming the cause of a failed build, from the exception and the compiler output it carries."""
    parts = (getattr(exc, "output", None), getattr(exc, "stderr", None), str(exc))
    text = "\n".join(p.decode(errors="replace") if isinstance(p, bytes) else str(p) for p in parts if p)
    for pattern in _CAUSE_PATTERNS:
        for line in text.splitlines():
            match = pattern.search(line.strip())
            if match:
                cause = match.group(0).strip()
                return cause if len(cause) <= 300 else cause[:297] + "..."
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first[:300]}"


def _fail(kind: str, cause: str, exc: BaseException | None = None) -> BuildError:
    message = f"{_TIER[kind]} tier unavailable: {cause}"
    if exc is not None and not isinstance(exc, BuildError):
        message += " (POOLBENCH_VERBOSE_BUILD=1 shows the full build log)"
    _BUILD_ERRORS[kind] = message
    error = BuildError(message)
    error.__cause__ = exc
    return error


def _load(name: str, sources, kind: str, **kwargs) -> None:
    if kind in _LOADED:
        return
    if kind in _BUILD_ERRORS:
        raise BuildError(_BUILD_ERRORS[kind])
    try:
        directory = build_directory(kind)
        load_extension(
            name=name,
            sources=[str(s) for s in sources],
            extra_include_paths=[str(CSRC)],
            build_directory=str(directory),
            is_python_module=False,
            **kwargs,
        )
    except BuildError as exc:
        raise _fail(kind, str(exc), exc) from exc
    except Exception as exc:  # compiler/ninja/linker/loader failure: one line, cause first
        raise _fail(kind, summarise_build_failure(exc), exc) from exc
    _LOADED.add(kind)


def cpu_march() -> str:
    """The CPU library's -march: ``$POOLBENCH_CPP_MARCH`` or native (as torch's ``TORCHINDUCTOR_CPP_MARCH``).

    The instruction-count gate runs under valgrind, which cannot decode AVX-512:
    it builds its own copy for a CPU valgrind can emulate (x86-64-v3).
    """
    return os.environ.get("POOLBENCH_CPP_MARCH", "").strip() or "native"


def cpu_flags() -> list[str]:
    # -fno-trapping-math: nothing here relies on FP exception traps, and it lets GCC if-convert
    # (vectorise) the branch-free window maths.
    flags = ["-O3", "-fopenmp", "-fno-trapping-math"]
    if platform.machine() in ("x86_64", "AMD64", "aarch64", "arm64"):
        flags.append(f"-march={cpu_march()}")
    return flags


def cuda_arch_flags() -> list[str]:
    """-gencode flags: TORCH_CUDA_ARCH_LIST if set (torch handles it), else the visible GPUs, else sm_90."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return []
    if torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    else:
        caps = [(9, 0)]
    return [f"-gencode=arch=compute_{a}{b},code=sm_{a}{b}" for a, b in caps]


#: nvcc flags of the CUDA library (the static kernel report compiles with the same ones).
CUDA_CFLAGS = ("-O3", "--expt-relaxed-constexpr")


def load_cpu_library() -> None:
    """Build (once, cached) and load the schema + CPU kernel; :class:`BuildError` with the cause if impossible."""
    reason = _static_cpu_reason()
    if reason is not None:
        raise _fail("cpu", reason)
    _load("poolbench_dpp_cpu", SCHEMA_SOURCES, "cpu", extra_cflags=cpu_flags(), extra_ldflags=["-fopenmp"])


def load_cuda_library() -> None:
    """Build (once, cached) and load the CUDA kernel (the schema comes from the CPU library)."""
    reason = cuda_unavailable_reason("cuda", need_device=False)
    if reason is not None:
        raise BuildError(reason if reason.startswith("cuda tier") else f"cuda tier unavailable: {reason}")
    load_cpu_library()
    home = cuda_home()
    # torch resolves CUDA_HOME once, at import, from nvcc's location; /usr/local/bin/nvcc
    # wrappers make that /usr/local.  Point it (and nvcc's subprocess) at the real toolkit.
    os.environ["CUDA_HOME"] = home
    cpp_extension().CUDA_HOME = home
    _load("poolbench_dpp_cuda", CUDA_SOURCES, "cuda", extra_cflags=["-O3"],
          extra_cuda_cflags=[*CUDA_CFLAGS, *cuda_arch_flags()])


def _static_cpu_reason() -> str | None:
    """What rules the CPU build out before trying it: no compiler, no ninja."""
    return _compiler_reason() or _ninja_reason()


def cpu_unavailable_reason(device: str = "cpu") -> str | None:
    """Why the ``cpp`` tier cannot run, in one line, or ``None``.

    Tries the build (a no-op once the library is cached and loaded), so a tier
    that would fail at its first call is never reported available.
    """
    if "cpu" in _LOADED:
        return None
    if "cpu" in _BUILD_ERRORS:
        return _BUILD_ERRORS["cpu"]
    try:
        load_cpu_library()
    except BuildError as exc:
        return str(exc)
    return None


def cuda_unavailable_reason(device: str = "cuda", *, need_device: bool = True) -> str | None:
    """Why the ``cuda`` tier cannot run (no GPU, CPU-only torch, no nvcc, failed build), or ``None``.

    Cheap: the CUDA build takes minutes, so it is tried at the first call, not here.
    """
    if torch.version.cuda is None:
        return "this torch build has no CUDA support"
    if need_device and not torch.cuda.is_available():
        return "no CUDA device is available"
    if "cuda" in _BUILD_ERRORS:
        return _BUILD_ERRORS["cuda"]
    if cuda_home() is None:
        return "no CUDA toolkit (nvcc + libcudart) found; set CUDA_HOME to build the cuda DPP kernel"
    return _static_cpu_reason()
