"""The pytest-benchmark regression suite run by ``poolbench compare`` (shipped with the package)."""
