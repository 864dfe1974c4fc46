"""Build the DPP C++ and CUDA libraries for ``scripts/gpu_check.sh``: stale locks removed, both builds at once.

    python3 scripts/gpu_build.py            # cuda in this process, cpu in a child process, concurrently
    python3 scripts/gpu_build.py cpu|cuda   # one library

Why a script: torch's extension builder guards a build directory with a ``lock`` file
(``FileBaton``); a build stopped mid-way (a step's time limit) leaves it behind and every later
``load()`` waits on it forever.  Nothing else of this check builds while this runs, so any lock in
the two build directories is stale and is removed first — by the extension's own helper where it
has one, else here.  ``TORCH_CUDA_ARCH_LIST`` comes from ``gpu_check.sh`` (the visible GPU's
capability).  Under ``POOLBENCH_PLAN=1`` (``gpu_plan.py``) the locks are cleared but nothing is
built: the build's cost is the documented constant in ``gpu_check.sh``.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time


def clear_stale_locks(kinds=("cpu", "cuda")) -> list[str]:
    """Remove leftover extension build locks; returns what was removed."""
    from poolbench.impls.dpp_ext import build

    for name in ("remove_stale_build_lock", "remove_stale_lock", "clear_stale_lock", "clear_stale_locks"):
        helper = getattr(build, name, None)
        if callable(helper):  # the extension's own helper knows its lock files best
            removed = []
            for kind in kinds:
                try:
                    result = helper(kind)
                except TypeError:
                    result = helper()
                removed += [str(r) for r in (result or [])] if isinstance(result, (list, tuple)) else []
            return removed
    removed = []
    for kind in kinds:
        lock = build.build_directory(kind) / "lock"
        if lock.exists():
            lock.unlink()
            removed.append(str(lock))
    return removed


def build_one(kind: str) -> None:
    from poolbench.impls.dpp_ext import ops

    started = time.time()
    getattr(ops, f"load_{kind}")()
    print(f"{kind} library built in {time.time() - started:.1f} s", flush=True)


def main(argv: list[str]) -> int:
    print(f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '(unset)')}", flush=True)
    removed = clear_stale_locks()
    print(f"stale build locks removed: {removed or 'none'}", flush=True)
    if os.environ.get("POOLBENCH_PLAN") == "1":
        print("plan: builds replaced by their documented cost", flush=True)
        return 0
    if argv:
        build_one(argv[0])
        return 0
    # the CUDA build does not wait behind the CPU one: the CPU library builds in a child process meanwhile
    child = subprocess.Popen([sys.executable, __file__, "cpu"])
    cuda_rc = 0
    try:
        build_one("cuda")
    except Exception as exc:  # noqa: BLE001 -- reported, and the cpu build is still awaited
        print(f"cuda build failed: {type(exc).__name__}: {exc}", flush=True)
        cuda_rc = 1
    return cuda_rc or child.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
