"""``poolbench`` command line: a thin shell over the library API.

Each subcommand lives in its own module under :mod:`poolbench.commands` and
exposes ``add_parser(subparsers)``, which registers its arguments and sets
``func(args) -> exit code``.  ``poolbench --help`` is the CLI's documentation.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import signal
import sys
import threading
import warnings

from . import __version__, commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="poolbench",
        description="Benchmark harness for pooling layers built around Detail-Preserving Pooling (DPP).",
    )
    parser.add_argument("--version", action="version", version=f"poolbench {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        importlib.import_module(f"{commands.__name__}.{module_info.name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: a usage error (2, message already printed) or --help/--version (0)
        return exc.code if isinstance(exc.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    previous_format, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    previous_term = _on_sigterm(_terminated)
    saved = " — finished cells are saved; rerun the same command with --resume" if args.command == "run" else ""
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError) as exc:
        say_error(f"poolbench {args.command}: error: {exc}")
        return 2
    except Terminated:
        say_error(f"poolbench {args.command}: terminated (SIGTERM){saved}")
        return 143
    except KeyboardInterrupt:
        say_error(f"poolbench {args.command}: interrupted{saved}")
        return 130
    except OSError as exc:  # the disk filled up, a file was made read-only or immutable mid-run
        where = f" {exc.filename}" if exc.filename else ""
        say_error(f"poolbench {args.command}: error: cannot write{where}: {exc.strerror or exc}{saved}")
        return 1
    finally:
        _on_sigterm(previous_term)
        warnings.formatwarning = previous_format


def say_error(line: str) -> None:
    """Write one line to stderr in one write call.

    ``print`` writes the text and the newline separately, and the ranks of a torchrun launch share
    one stderr: two ranks' messages could then land on one line (each rank's refusal must be a line
    of its own).  A single short write to a pipe is not interleaved with another.
    """
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or torchrun's stop) ends a command the way Ctrl-C does: cleanly, with the hint."""


def _terminated(signum, frame):
    raise Terminated


def _on_sigterm(handler):
    """Install ``handler`` for SIGTERM and return the previous one (``None`` outside the main thread)."""
    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings (a skipped torn line, a moved results file) read as one line, not a source excerpt."""
    return f"poolbench: warning: {message}\n"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
