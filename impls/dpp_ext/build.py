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
import subprocess
import sys
import time
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
    "remove_stale_lock",
    "summarise_build_failure",
]

CSRC = Path(__file__).resolve().parent / "csrc"
SCHEMA_SOURCES = (CSRC / "dpp.cpp", CSRC / "dpp_autograd.cpp", CSRC / "cpu" / "dpp_kernel.cpp",
                  CSRC / "cpu" / "dpp_kernel_nhwc.cpp")
#: The CUDA library's translation units: the entry points, then forward/backward × fp32/half
#: kernels, which ninja compiles in parallel (one 120-kernel unit took ~3 minutes on 2 cores).
CUDA_SOURCES = (CSRC / "cuda" / "dpp_cuda.cu", CSRC / "cuda" / "dpp_forward_f32.cu", CSRC / "cuda" / "dpp_forward_f16.cu",
                CSRC / "cuda" / "dpp_backward_f32.cu", CSRC / "cuda" / "dpp_backward_f16.cu")
HEADERS = (CSRC / "dpp_math.h", CSRC / "dpp_args.h", CSRC / "cuda" / "dpp_kernel.cuh")

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
        # and by the GPU architectures compiled for: a library built for another GPU is never loaded
        tag += f"-cuda{torch.version.cuda}-{arch_tag(cuda_archs())}"
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
        remove_stale_lock(directory)
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
    # (vectorise) the branch-free window maths.  -ffp-contract=off: GCC fused multiply-adds differently
    # in a vectorised loop's body and in its scalar remainder, so a window's value depended on its
    # place in a block, and so on the thread count; the maths fuses its multiply-adds explicitly (dpp_fma).
    flags = ["-O3", "-fopenmp", "-fno-trapping-math", "-ffp-contract=off"]
    if platform.machine() in ("x86_64", "AMD64", "aarch64", "arm64"):
        flags.append(f"-march={cpu_march()}")
    return flags


def _parse_arch_list(text: str) -> list[tuple[int, int, bool]]:
    """``TORCH_CUDA_ARCH_LIST`` ("8.0;9.0+PTX", "9.0 9.0a", "sm_90") → [(major, minor, ptx)]."""
    archs = []
    for token in re.split(r"[;,\s]+", text.strip()):
        match = re.fullmatch(r"(?:sm_)?(\d+)\.?(\d)([a-z]?)(\+PTX)?", token, re.IGNORECASE)
        if match:
            archs.append((int(match.group(1)), int(match.group(2)), bool(match.group(4))))
    return archs


def cuda_archs() -> list[tuple[int, int, bool]]:
    """The GPU architectures the CUDA library is built for, as (major, minor, with PTX).

    A visible GPU decides: its own capability (every visible device's), whatever
    ``TORCH_CUDA_ARCH_LIST`` says — an image-wide list (often older archs, or
    several) would otherwise build code the GPU at hand cannot run, or run
    slower.  Without a GPU (compile-only machines): ``TORCH_CUDA_ARCH_LIST`` if
    set, else sm_90 (the GPU the benchmarks target).
    """
    if torch.version.cuda is not None and torch.cuda.is_available():
        return sorted({(*torch.cuda.get_device_capability(i), False) for i in range(torch.cuda.device_count())})
    listed = _parse_arch_list(os.environ.get("TORCH_CUDA_ARCH_LIST", ""))
    return sorted(set(listed)) if listed else [(9, 0, False)]


def arch_tag(archs) -> str:
    """The build-cache tag of an arch list: ``sm90``, ``sm80+sm90ptx``."""
    return "+".join(f"sm{a}{b}" + ("ptx" if ptx else "") for a, b, ptx in archs)


def cuda_arch_flags() -> list[str]:
    """-gencode flags for :func:`cuda_archs`.

    Always explicit: torch's builder adds its own flags from ``TORCH_CUDA_ARCH_LIST`` only when
    the flags name no arch, so these replace the environment's list.
    """
    flags = []
    for a, b, ptx in cuda_archs():
        flags.append(f"-gencode=arch=compute_{a}{b},code=sm_{a}{b}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{a}{b},code=compute_{a}{b}")
    return flags


#: nvcc flags of the CUDA library (the static kernel report compiles with the same ones).  -ftz=true:
#: float32 subnormals flush to zero, as the CPU kernel sets FTZ/DAZ (weights 2^-126 below a window's
#: largest are invisible in float32) — and exp2/log2/divide need no subnormal fix-ups.
CUDA_CFLAGS = ("-O3", "--expt-relaxed-constexpr", "-ftz=true")


def load_cpu_library() -> None:
    """Build (once, cached) and load the schema + CPU kernel; :class:`BuildError` with the cause if impossible."""
    reason = _static_cpu_reason()
    if reason is not None:
        raise _fail("cpu", reason)
    _load("poolbench_dpp_cpu", SCHEMA_SOURCES, "cpu", extra_cflags=cpu_flags(), extra_ldflags=["-fopenmp"])


def _build_cuda_in_place() -> None:
    home = cuda_home()
    # torch resolves CUDA_HOME once, at import, from nvcc's location; /usr/local/bin/nvcc
    # wrappers make that /usr/local.  Point it (and nvcc's subprocess) at the real toolkit.
    os.environ["CUDA_HOME"] = home
    cpp_extension().CUDA_HOME = home
    _load("poolbench_dpp_cuda", CUDA_SOURCES, "cuda", extra_cflags=["-O3"],
          extra_cuda_cflags=[*CUDA_CFLAGS, *cuda_arch_flags()])


def load_cuda_library() -> None:
    """Build (once, cached) and load the CUDA kernels, and the CPU library that holds the schema.

    The two builds do not wait for each other: while this process builds (or just loads)
    the CPU library, a child process compiles the CUDA library, whose translation units
    ninja compiles in parallel; then this process loads it (ninja finds it up to date).
    The child's failure is not reported itself: the in-process build repeats it and says why.
    """
    reason = cuda_unavailable_reason("cuda", need_device=False)
    if reason is not None:
        raise BuildError(reason if reason.startswith("cuda tier") else f"cuda tier unavailable: {reason}")
    builder = None
    if "cuda" not in _LOADED and "cpu" not in _LOADED:
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        builder = subprocess.Popen([sys.executable, "-m", "poolbench.impls.dpp_ext.build", "cuda"], cwd=root, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        load_cpu_library()
    finally:
        if builder is not None:
            builder.wait()
    _build_cuda_in_place()


def _process_cwds() -> list[Path]:
    """The working directories of the live processes this user can see (Linux /proc)."""
    cwds = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cwds.append(Path(os.readlink(entry / "cwd")))
        except OSError:
            continue
    return cwds


#: A lock younger than this is never removed: its builder may not have started ninja yet.
STALE_LOCK_GRACE_S = 30.0


def remove_stale_lock(directory, grace_s: float = STALE_LOCK_GRACE_S, cwds=None) -> bool:
    """Remove ``directory``/lock if no live process can hold it; return whether it was removed.

    torch's JIT builder takes a lock file (``FileBaton``) in the build directory and
    deletes it when the build ends; a build killed on the way (``timeout``'s SIGTERM, a
    Ctrl-C during ninja) leaves it behind, and every later build in that directory then
    waits for it forever.  The file names no owner, so the rule is:

    * the lock is older than ``grace_s`` seconds (a holder writes the build files and
      starts ninja within that), and
    * no live process has its working directory in the build directory: torch runs
      ninja there, and ninja's compilers and linker inherit it, so a build that is
      still running always has such a process.

    Only then is the lock stale and removed.  Where /proc cannot be read, nothing is removed.
    """
    lock = Path(directory) / "lock"
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return False
    if age < grace_s:
        return False
    if cwds is None:
        if not Path("/proc/self/cwd").exists():
            return False
        cwds = _process_cwds()
    root = Path(directory).resolve()
    if any(cwd == root or root in cwd.parents for cwd in cwds):
        return False
    try:
        lock.unlink()
    except FileNotFoundError:
        return False
    return True


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


if __name__ == "__main__":  # python -m poolbench.impls.dpp_ext.build cuda|cpu: build (and load) one library
    kind = sys.argv[1] if len(sys.argv) > 1 else "cpu"
    if kind == "cuda":
        _build_cuda_in_place()
    else:
        load_cpu_library()
