"""One writer per results file: an advisory lock held for the whole run.

Why: two ``poolbench run`` on the same ``--out/--name`` would interleave their
rows (and the second would move the first's file aside under it); both would
then report success over a file that mixes two runs.  The lock is an
``flock`` on ``<stem>.lock``, so the kernel releases it when the holder dies
however it dies (a SIGKILLed run never leaves a stale lock behind), and
``--resume`` can take it again at once.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .linefile import open_no_follow

__all__ = ["RunLock"]


class RunLock:
    """Exclusive, non-blocking lock on ``<stem>.lock``; a second holder gets a ValueError naming the first."""

    def __init__(self, stem: Path):
        stem = Path(stem)
        self.path = stem.with_name(stem.name + ".lock")  # not with_suffix: a stem may hold dots (run.rank1)
        self._results = stem.with_name(stem.name + ".jsonl")
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        try:
            fd = open_no_follow(self.path, os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            raise ValueError(f"cannot write results to {self.path.parent}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ValueError(f"{self._results} is being written by another poolbench run "
                             f"(pid {holder}); wait for it to finish or choose another --name") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
