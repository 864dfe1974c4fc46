"""The program valgrind runs for the instruction gate: warm every case up, then count one call of each.

Run by :func:`poolbench.gate.instructions.count_instructions` as
``valgrind --tool=callgrind ... python -m poolbench.gate.instruction_worker PLAN.json``;
never useful on its own.  The plan names the cases (pooler × tier × VGG-16
layer × pass, from :func:`poolbench.gate.bench_cases`), the configuration and
the client-request extension to load; the worker writes back what it could not
measure and why, and which dump label belongs to which case.

Order matters for speed, not for the counts: everything that is slow under
valgrind but not what is measured — importing torch, building modules, the
first calls that compile or initialise lazily — runs with instrumentation off.
Instrumentation is then switched on once (switching flushes valgrind's
translation cache, so doing it per case would re-translate torch every time)
and each closure is counted once: the count is deterministic, so one call is
the measurement.  The garbage collector is frozen and disabled first so that
a collection never lands inside a counted call.
"""
from __future__ import annotations

import gc
import importlib.util
import json
import sys
import traceback
from pathlib import Path

#: Calls of each closure before instrumentation: the first may compile or build, the second
#: settles caches that the first filled (allocator, dispatcher, autograd graph buffers).
WARMUP_CALLS = 2


def comparator_label(layer: int, pass_: str) -> str:
    """Dump label of ``avg_pool2d``'s count at VGG-16 pooling layer ``layer`` and ``pass_``."""
    from ..measure import COMPARATOR

    return f"{COMPARATOR}-layer{layer}-{pass_}"


def _load_requests(path: str):
    spec = importlib.util.spec_from_file_location("poolbench_callgrind", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _error(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] or [None]
    where = f" (at {last[0].filename}:{last[0].lineno})" if last[0] is not None else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _warmed_closures(plan: dict, config) -> tuple[list[dict], list[tuple[str, object]]]:
    """Every case's record and the (label, closure) pairs to count: comparators first, then the cases."""
    from ..measure import bench_cases, case_closures, comparator, make_input, pass_closure

    records, to_count = [], []
    comparators: dict[str, object] = {}
    for case in bench_cases(config, plan["poolers"], plan["tiers"]):
        record = {"pooler": case.pooler, "tier": case.tier, "layer": case.layer, "shape": list(case.shape),
                  "pass": case.pass_, "label": case.id, "comparator": comparator_label(case.layer, case.pass_),
                  "skip": case.skip_reason, "error": None}
        if record["skip"] is None:
            record["skip"] = plan["uncounted"].get(case.tier)
        records.append(record)
        if record["skip"] is not None:
            continue
        try:
            closure, _ = case_closures(case, config)
            for _ in range(WARMUP_CALLS):
                closure()
        except Exception as exc:  # a broken pooler is reported by the gate; the other cases go on
            record["error"] = _error(exc)
            continue
        to_count.append((case.id, closure))
        if record["comparator"] not in comparators:
            reference = pass_closure(comparator, make_input(case.shape, config), case.pass_)
            for _ in range(WARMUP_CALLS):
                reference()
            comparators[record["comparator"]] = reference
    return records, list(comparators.items()) + to_count


def main(argv: list[str]) -> int:
    plan = json.loads(Path(argv[0]).read_text())
    import torch

    from .. import registry
    from ..measure import BenchConfig

    torch.set_num_threads(plan["threads"])
    requests = _load_requests(plan["client_requests"])
    plugin_errors = registry.load_plugins()
    for module in plan.get("plugins", ()):
        importlib.import_module(module)
    config = BenchConfig(batch=plan["batch"], resolution=plan["resolution"], threads=plan["threads"],
                         seed=plan["seed"])
    print(f"instruction gate: torch imported under valgrind ({torch.backends.cpu.get_cpu_capability()}); "
          "building and warming up every case", flush=True)
    records, to_count = _warmed_closures(plan, config)
    print(f"instruction gate: counting {len(to_count)} calls with instrumentation on", flush=True)
    gc.collect()
    gc.freeze()
    gc.disable()
    requests.start_instrumentation()
    for label, closure in to_count:
        requests.count(closure, label)
    requests.stop_instrumentation()
    result = {"cases": records, "counted": [label for label, _ in to_count],
              "on_valgrind": bool(requests.running_on_valgrind()),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
              "plugin_errors": plugin_errors}
    Path(plan["result"]).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
