"""One table of per-dtype tolerances, used by the checks and every test.

A tier computing in ``dtype`` is compared with the float64 reference; the
bounds grow with the dtype's machine epsilon.  Gradients get a looser bound
than outputs because they chain more roundings (the ratio w·x/Σw and its
derivative w.r.t. λ through log).
"""
from __future__ import annotations

import torch

__all__ = ["DTYPES", "TOLERANCES", "assert_close", "tolerance"]

#: The dtypes poolbench measures and checks, by the name the CLI and pytest options take.
DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

#: dtype -> {"output": (rtol, atol), "grad": (rtol, atol)}
TOLERANCES: dict[torch.dtype, dict[str, tuple[float, float]]] = {
    torch.float64: {"output": (1e-9, 1e-10), "grad": (1e-7, 1e-8)},
    torch.float32: {"output": (1e-4, 1e-5), "grad": (2e-3, 1e-4)},
    torch.float16: {"output": (1e-2, 1e-2), "grad": (5e-2, 5e-2)},
    torch.bfloat16: {"output": (2e-2, 2e-2), "grad": (1e-1, 1e-1)},
}


def tolerance(dtype: torch.dtype, kind: str = "output") -> tuple[float, float]:
    """(rtol, atol) for comparing a ``dtype`` result with the reference."""
    if dtype not in TOLERANCES:
        raise ValueError(f"no tolerance for dtype {dtype}; known: {', '.join(map(str, TOLERANCES))}")
    return TOLERANCES[dtype][kind]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None,
                 kind: str = "output", msg: str = "") -> None:
    """``torch.testing.assert_close`` with the table's bounds for ``dtype`` (default: actual's)."""
    rtol, atol = tolerance(dtype or actual.dtype, kind)
    torch.testing.assert_close(actual.to(expected.dtype), expected, rtol=rtol, atol=atol,
                               equal_nan=True, msg=(lambda m: f"{msg}\n{m}") if msg else None)
