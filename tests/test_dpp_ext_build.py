"""Building the C++ extension fails cleanly: the fastest-tier choice falls back, an explicit cpp tier says why.

Each scenario runs in a fresh process (the build state is per process and the
environment variables are read by torch's builder), with the cause of the
failure set up the way a user would hit it: an unusable ``POOLBENCH_CACHE_DIR``
(a path under /proc, a regular file) or a ``CXX`` that does not exist.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from poolbench.impls.dpp_ext import build
from poolbench.impls.dpp_ext.build import summarise_build_failure

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import poolbench, torch
print("picked", poolbench.create("dpp_lite_sym", 2).tier)
try:
    poolbench.create("dpp_lite_sym", 2, tier="cpp")(torch.rand(1, 2, 4, 4))
except Exception as exc:
    print("error", type(exc).__name__, str(exc))
else:
    print("error none")
"""


def run_probe(**env_overrides) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **env_overrides)
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    return lines


def unusable_cache_dirs(tmp_path):
    regular_file = tmp_path / "not_a_directory"
    regular_file.write_text("")
    return {"/proc/x": "/proc/x", "regular file": str(regular_file)}


@pytest.mark.parametrize("which", ["/proc/x", "regular file"])
def test_unusable_cache_dir_falls_back_and_names_the_directory(tmp_path, which):
    """Guards against: cpp chosen with an unusable POOLBENCH_CACHE_DIR, then FileNotFoundError at the first forward."""
    cache_dir = unusable_cache_dirs(tmp_path)[which]
    result = run_probe(POOLBENCH_CACHE_DIR=cache_dir)
    assert result["picked"] == "vectorized"
    message = result["error"]
    # create(tier="cpp") refuses at once; the one line leads with the tier and then the cause
    assert message.startswith("ValueError dpp_lite_sym[cpp] cannot run on cpu: cpp tier unavailable: "
                              "build cache directory")
    assert repr(cache_dir) in message and "POOLBENCH_CACHE_DIR" in message
    assert "\n" not in message and len(message) < 300


def test_missing_compiler_falls_back_and_leads_with_the_cause(tmp_path):
    """Guards against: CXX=/nonexistent reported available, then a 2,000-character error with the cause at the end."""
    result = run_probe(CXX="/nonexistent", POOLBENCH_CACHE_DIR=str(tmp_path))
    assert result["picked"] == "vectorized"
    assert result["error"] == ("ValueError dpp_lite_sym[cpp] cannot run on cpu: cpp tier unavailable: "
                               "C++ compiler '/nonexistent' (from $CXX) not found")


def test_build_failure_summary_leads_with_the_compiler_error():
    """A failed compile is reported by its first `error:` line, not by the tail of the ninja log."""
    log = (
        "[1/3] c++ -MMD -MF dpp.o.d -DTORCH_EXTENSION_NAME=x -isystem /very/long/include/path " + "-I/x " * 200 + "\n"
        "/src/cpu/dpp_kernel.cpp:12:3: error: 'foo' was not declared in this scope\n"
        "ninja: build stopped: subcommand failed.\n"
    )
    exc = subprocess.CalledProcessError(1, ["ninja", "-v"], output=log.encode())
    assert summarise_build_failure(exc) == "error: 'foo' was not declared in this scope"
    assert summarise_build_failure(RuntimeError("Error building extension 'x'")) == "RuntimeError: Error building extension 'x'"


# ---------------------------------------------------------------------------
# Stale build locks, the arch in the cache tag, TORCH_CUDA_ARCH_LIST against a visible GPU
# ---------------------------------------------------------------------------

def _lock(directory, age_s):
    lock = directory / "lock"
    lock.write_text("")
    stamp = time.time() - age_s
    os.utime(lock, (stamp, stamp))
    return lock


def test_stale_lock_is_removed_when_old_and_no_process_works_in_the_directory(tmp_path):
    """Guards against: a build killed by SIGTERM leaves torch's lock and every later load_cuda() waits forever."""
    lock = _lock(tmp_path, age_s=120)
    assert build.remove_stale_lock(tmp_path, cwds=[Path("/"), tmp_path.parent]) is True
    assert not lock.exists()
    assert build.remove_stale_lock(tmp_path) is False  # nothing left to remove


def test_young_lock_is_kept(tmp_path):
    """A holder may not have started ninja yet: a lock younger than the grace period is never removed."""
    lock = _lock(tmp_path, age_s=1)
    assert build.remove_stale_lock(tmp_path, cwds=[]) is False
    assert lock.exists()


def test_lock_of_a_running_build_is_kept(tmp_path):
    """A live process working in the build directory (ninja, a compiler) holds the lock, however old it is."""
    lock = _lock(tmp_path, age_s=3600)
    (tmp_path / "sub").mkdir()
    assert build.remove_stale_lock(tmp_path, cwds=[tmp_path / "sub"]) is False
    child = subprocess.Popen(["sleep", "30"], cwd=tmp_path)
    try:
        assert build.remove_stale_lock(tmp_path) is False  # found through /proc/<pid>/cwd
    finally:
        child.kill()
        child.wait()
    assert lock.exists()
    assert build.remove_stale_lock(tmp_path) is True


def test_cuda_cache_tag_names_the_arch(monkeypatch, tmp_path):
    """Libraries built for different GPUs live in different cache directories."""
    monkeypatch.setenv("POOLBENCH_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    assert build.cuda_archs() == [(8, 0, False), (9, 0, True)]
    assert build.build_directory("cuda").name.split("-cuda")[1].split("-")[1] == "sm80_sm90ptx"  # ("+" is spelled "_" in directory names)
    assert "-gencode=arch=compute_90,code=compute_90" in build.cuda_arch_flags()
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    sm90 = build.build_directory("cuda").name
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST")
    assert build.build_directory("cuda").name == sm90  # the default is sm_90
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.6")
    assert build.build_directory("cuda").name != sm90 and "sm86" in build.build_directory("cuda").name


def test_visible_gpu_overrides_the_image_arch_list(monkeypatch, tmp_path):
    """An image-wide TORCH_CUDA_ARCH_LIST must not build for another GPU than the one present."""
    monkeypatch.setenv("POOLBENCH_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "7.0;8.0")
    monkeypatch.setattr(torch.version, "cuda", torch.version.cuda or "12.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (9, 0))
    assert build.cuda_archs() == [(9, 0, False)]
    assert build.cuda_arch_flags() == ["-gencode=arch=compute_90,code=sm_90"]
    assert "sm90" in build.build_directory("cuda").name


def test_cuda_sources_are_split_for_parallel_compiles():
    """Forward/backward × fp32/half kernels in their own translation units (plus the entry points)."""
    names = {path.name for path in build.CUDA_SOURCES}
    assert {"dpp_forward_f32.cu", "dpp_forward_f16.cu", "dpp_backward_f32.cu", "dpp_backward_f16.cu"} <= names
    assert all(path.exists() for path in build.CUDA_SOURCES)
