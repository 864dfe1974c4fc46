"""Finding the C++/CUDA toolchain, once, for every part that builds or imports it.

``torch.utils.cpp_extension`` guesses ``CUDA_HOME`` when it is first imported,
from nvcc's location; where nvcc is a wrapper in ``/usr/local/bin`` (as on
poolbench's CI machines) it guesses ``/usr/local``, which lacks
``lib/libcudart.so``, logs "No CUDA runtime is found" and later fails to link.
:func:`cpp_extension` points ``CUDA_HOME`` at a real toolkit first (only when
the user has not set it), so every importer — the extension builder and
``torch.utils.benchmark``, which imports it too — sees the right one.
"""
from __future__ import annotations

import functools
import logging
import os
import shutil
import threading
from pathlib import Path

__all__ = ["cache_root", "cpp_extension", "cuda_home", "load_extension"]


def cache_root() -> Path:
    """The one folder every poolbench build caches under: ``$POOLBENCH_CACHE_DIR``, else the XDG cache.

    The DPP extension, the callgrind counter and any other JIT build keep their
    versioned subfolders here, so one variable moves (or clears) them all.
    """
    root = os.environ.get("POOLBENCH_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "poolbench"


@functools.cache
def cuda_home() -> str | None:
    """A CUDA toolkit directory holding nvcc, libcudart and cuda_runtime.h (CUDA_HOME first if valid)."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(os.path.realpath(nvcc)).parent.parent))
    candidates += ["/usr/local/cuda"] + sorted(str(p) for p in Path("/usr/local").glob("cuda-*"))
    for candidate in candidates:
        if not candidate:
            continue
        root = Path(candidate)
        has_nvcc = (root / "bin" / "nvcc").exists()
        has_runtime = any((root / lib / "libcudart.so").exists() for lib in ("lib64", "lib"))
        if has_nvcc and has_runtime and (root / "include" / "cuda_runtime.h").exists():
            return str(root)
    return None


def cpp_extension():
    """``torch.utils.cpp_extension``, imported after ``CUDA_HOME`` names a usable toolkit (if one exists).

    On a machine without a GPU torch logs "No CUDA runtime is found" at that
    import whatever CUDA_HOME is; that is the expected state on CPU machines
    (the CUDA tier says so itself when asked), so the import is kept quiet.
    """
    if not os.environ.get("CUDA_HOME") and cuda_home() is not None:
        os.environ["CUDA_HOME"] = cuda_home()
    extension_log = logging.getLogger("torch.utils.cpp_extension")
    level = extension_log.level
    extension_log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension as module
    finally:
        extension_log.setLevel(level)
    return module


#: torch's JIT loader is not thread-safe within a process: a second thread sees the
#: first one's version bump, skips the build and imports a library not yet linked.
_BUILD_LOCK = threading.Lock()


def load_extension(**kwargs):
    """``torch.utils.cpp_extension.load(**kwargs)``, one build at a time in this process.

    Processes are kept apart by torch's own lock file in the build directory.
    The compiler's output is shown when ``$POOLBENCH_VERBOSE_BUILD`` is set.
    """
    kwargs.setdefault("verbose", os.environ.get("POOLBENCH_VERBOSE_BUILD", "") not in ("", "0"))
    with _BUILD_LOCK:
        return cpp_extension().load(**kwargs)
