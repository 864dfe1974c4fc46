"""Rich output shared by the CLI commands.

Output piped to a file or captured by a test should not be squeezed to
rich's 80-column default (pooler names would be cut), so non-terminals get a
wide console.
"""
from __future__ import annotations

from rich.console import Console

__all__ = ["console", "print_table"]

WIDE = 200


def console(stderr: bool = False) -> Console:
    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, width=WIDE)


def print_table(table) -> None:
    console().print(table)
