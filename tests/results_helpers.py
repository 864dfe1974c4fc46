"""Tiny results rows, environments and writers shared by the results-file tests (reliability, trust)."""
from __future__ import annotations

import torch

from poolbench.metrics import MetricRow as Row
from poolbench.run import results


def row(metric="params", quantity="params", value=1.0, status="ok", model="vgg16", pooler="avg"):
    """One network-scope row of ``pooler[vectorized]`` in ``model``."""
    return Row(model, pooler, "vectorized", "network", "", "1x3x32x32", metric, quantity, value, "count", status)


def env(batch=1, resolution=32):
    """A CPU float32 run environment with a fixed timing string."""
    return results.environment("cpu", torch.float32, batch, resolution, timing="t")


def write_cells(stem, cells, *, resume=False, env=None):
    """Append ``cells`` (lists of rows) to ``stem`` through one ResultsWriter; returns the writer."""
    with results.ResultsWriter(stem, env or globals()["env"](), resume=resume) as writer:
        for rows in cells:
            writer.write(rows)
    return writer
