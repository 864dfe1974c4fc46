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
from pathlib import Path

import pytest

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
