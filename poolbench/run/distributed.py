"""Running under ``torchrun`` (or SLURM's ``srun``): which rank this is, its device, and the shared store.

Why only the c10d store and no process group: poolbench's ranks never
exchange tensors.  They need an atomic counter (to take the next unit of
work when free), a start line and a finish line, and torch.distributed's
``env://`` rendezvous gives exactly that store — the one
``init_process_group`` would build on.  Without collectives a dead rank
cannot hang a ``barrier()`` forever, and no NCCL communicator takes memory on
the GPUs being measured.  ``torchrun`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``;
without them poolbench runs in one process, exactly as before.
"""
from __future__ import annotations

import datetime
import json
import os
import sys
import time
from dataclasses import dataclass

import torch

__all__ = ["Launch", "RankStore", "cpu_threads", "detect", "rank_device", "device_healthy", "exit_if_told",
           "settings_if_told"]

#: Environment variables a launcher (torchrun, or srun with them exported) sets for every rank.
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
#: Fault injection for the tests: ``"<rank>:<units>:<exit code>"`` makes that rank exit right after
#: claiming unit number ``units + 1``, holding work it never measures (a rank that died mid-run).
FAULT_VARIABLE = "POOLBENCH_TEST_RANK_EXIT"
#: Settings for the tests: ``{"rank": 1, "batch": 2}`` makes rank 1 run as if its command line said ``--batch 2``
#: (on a multi-host launch every host types its own command, so one may differ).
SETTINGS_VARIABLE = "POOLBENCH_TEST_RANK_SETTINGS"
#: Seconds a rank may take to join the launch's store and see rank 0's preparation.
STARTUP_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Launch:
    """This process's place in a torchrun launch."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def detect(environ: dict | None = None) -> Launch | None:
    """The launch described by torchrun's environment variables, or ``None`` for a plain process."""
    environ = os.environ if environ is None else environ
    if not all(environ.get(name) for name in LAUNCH_VARIABLES):
        return None
    try:
        rank, world = int(environ["RANK"]), int(environ["WORLD_SIZE"])
        local_rank = int(environ.get("LOCAL_RANK", rank))
        local_world = int(environ.get("LOCAL_WORLD_SIZE", world))
    except ValueError as exc:
        raise ValueError(f"torchrun environment is malformed ({exc}); RANK, WORLD_SIZE, LOCAL_RANK and "
                         "LOCAL_WORLD_SIZE must be integers") from None
    if not (0 <= rank < world and 0 <= local_rank < local_world):
        raise ValueError(f"torchrun environment is inconsistent: RANK={rank}, WORLD_SIZE={world}, "
                         f"LOCAL_RANK={local_rank}, LOCAL_WORLD_SIZE={local_world}")
    return Launch(rank, world, local_rank, local_world)


def cpu_threads(cores: int, local_world_size: int) -> int:
    """Threads per rank when ``local_world_size`` ranks share ``cores``: an equal share, at least one."""
    return max(1, cores // max(1, local_world_size))


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def rank_device(device: str, launch: Launch) -> str:
    """``cuda`` becomes this rank's own GPU, ``cuda:LOCAL_RANK``; CPU ranks share the host's CPU."""
    if torch.device(device).type != "cuda":
        return "cpu"
    count = torch.cuda.device_count()
    if launch.local_rank >= count:
        raise ValueError(f"LOCAL_RANK {launch.local_rank} has no GPU: this host has {count}; start at most "
                         f"{count} processes per node (--nproc-per-node)")
    torch.cuda.set_device(launch.local_rank)
    return f"cuda:{launch.local_rank}"


def device_healthy(device: str) -> bool:
    """Whether ``device`` still runs a tiny kernel: after a sticky CUDA error every later cell fails at once."""
    try:
        value = (torch.ones(4, device=device) * 2).sum().item()
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
        return value == 8.0
    except Exception:  # any failure means the device is gone for this process
        return False


def exit_if_told(launch: Launch, units_done: int) -> None:
    """The tests' fault injection (see :data:`FAULT_VARIABLE`); does nothing unless the variable is set."""
    told = os.environ.get(FAULT_VARIABLE)
    if not told:
        return
    rank, units, code = (int(part) for part in told.split(":"))
    if rank == launch.rank and units_done >= units:
        print(f"rank {launch.rank}: exiting with {code} as {FAULT_VARIABLE} asks", file=sys.stderr, flush=True)
        os._exit(code)


def settings_if_told(launch: Launch) -> dict:
    """The tests' per-rank settings (see :data:`SETTINGS_VARIABLE`) for this rank; ``{}`` unless the variable is set."""
    told = os.environ.get(SETTINGS_VARIABLE)
    if not told:
        return {}
    overrides = json.loads(told)
    if overrides.pop("rank") != launch.rank:
        return {}
    return {key: tuple(value) if isinstance(value, list) else value for key, value in overrides.items()}


class RankStore:
    """The launch's c10d store, under one key prefix per run: a work counter, a start line, a finish line."""

    def __init__(self, launch: Launch, run_name: str, timeout_s: float):
        self.launch = launch
        self.timeout_s = timeout_s  # a rank silent this long counts as dead (see wait_for_all)
        # ranks start seconds apart (each imports torch on a busy host): joining the store and waiting for
        # rank 0's preparation get at least STARTUP_TIMEOUT_S, however short the dead-rank timeout is
        self._startup = datetime.timedelta(seconds=max(timeout_s, STARTUP_TIMEOUT_S))
        store, _, _ = next(torch.distributed.rendezvous("env://", timeout=self._startup))
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        self._store = torch.distributed.PrefixStore(f"poolbench/{run_name}/{restart}/", store)

    def set(self, key: str, value: str = "1") -> None:
        self._store.set(key, value)

    def get(self, key: str) -> str:
        """The value of ``key`` (waits for it up to the start-up timeout)."""
        self._store.wait([key], self._startup)
        return self._store.get(key).decode()

    def has(self, key: str) -> bool:
        return self._store.check([key])

    def wait(self, key: str) -> None:
        """Block until ``key`` is set (an error after the start-up timeout: the rank that sets it died)."""
        self._store.wait([key], self._startup)

    def claim(self) -> int:
        """The next unit's index, unique across ranks (an atomic add on the store)."""
        return self._store.add("next_unit", 1) - 1

    def heartbeat(self) -> None:
        self._store.add(f"beats/{self.launch.rank}", 1)

    def wait_for_all(self, line: str, *, starting: bool = False, poll_s: float = 0.2) -> list[int]:
        """Wait until every rank arrived at ``line``; return the ranks that never did.

        A rank counts as alive while its heartbeat keeps changing: the wait ends
        when all arrived, or when no missing rank has beaten for the timeout
        (it died, or its host did), so one dead rank cannot hang rank 0.  The
        start line waits the start-up timeout instead (nobody beats before it).
        """
        timeout = self._startup.total_seconds() if starting else self.timeout_s
        beats = {rank: -1 for rank in range(self.launch.world_size)}
        deadline = time.monotonic() + timeout
        while self._store.add(f"line/{line}", 0) < self.launch.world_size:
            current = {rank: self._store.add(f"beats/{rank}", 0) for rank in beats}
            if current != beats:
                beats, deadline = current, time.monotonic() + timeout
            if time.monotonic() > deadline:
                return [rank for rank in beats if not self._store.check([f"arrived/{line}/{rank}"])]
            time.sleep(poll_s)
        return []

    def mark_arrived(self, line: str) -> None:
        """Arrive at ``line`` and say so under this rank's own key (who is missing can then be named)."""
        self._store.set(f"arrived/{line}/{self.launch.rank}", "1")
        self._store.add(f"line/{line}", 1)
