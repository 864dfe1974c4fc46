"""The CLI is a thin layer: list shows the registry, check reports and exits non-zero on a mismatch."""
import json

import pytest
import torch

from poolbench import registry
from poolbench.base import Pool2d
from poolbench.cli import main


def test_list_shows_every_pooler_and_its_tiers(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in registry.names():
        assert name in out
    assert "12·C" in out and "2·C" in out


def test_check_passes_for_vectorized_dpp_and_emits_json(capsys):
    code = main(["check", "--poolers", "dpp_lite_sym", "dpp_full_asym", "--tiers", "reference", "vectorized", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    rows = {(row["pooler"], row["tier"]): row for row in report["summary"]}
    assert rows[("dpp_full_asym", "vectorized")]["status"] == "pass"
    assert rows[("dpp_full_asym", "vectorized")]["cases"] >= 3
    assert rows[("dpp_lite_sym", "vectorized")]["gradcheck"] == "pass"


class OffByOne(Pool2d):
    """A deliberately wrong tier: the check must catch it."""

    def pool(self, x):
        return torch.nn.functional.avg_pool2d(x, self.kernel_size, self.stride, self.padding) + 1e-3


class Average(Pool2d):
    def pool(self, x):
        return torch.nn.functional.avg_pool2d(x, self.kernel_size, self.stride, self.padding, count_include_pad=False)


def test_check_fails_on_a_tier_that_differs_from_reference(isolated_registries, capsys):
    registry.register("avg_for_check", "reference")(lambda c, k, s, p: Average(c, k, s, p))
    registry.register("avg_for_check", "vectorized")(lambda c, k, s, p: OffByOne(c, k, s, p))
    code = main(["check", "--poolers", "avg_for_check", "--no-gradcheck", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    row = next(r for r in report["summary"] if r["tier"] == "vectorized")
    assert row["status"] == "fail" and "output differs by" in row["detail"] and "× the tolerance" in row["detail"]


def test_cuda_without_cuda_is_a_clear_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert main(["check", "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_an_error_line_goes_to_stderr_in_one_write(monkeypatch):
    """Guards against print()'s two writes (text, then newline): the ranks of a torchrun launch share one
    stderr, and two ranks' refusals once landed on one line."""
    import sys

    from poolbench import cli

    writes = []

    class Recorder:
        def write(self, text):
            writes.append(text)
            return len(text)

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stderr", Recorder())
    monkeypatch.setattr(cli, "build_parser", lambda: _FailingParser())
    assert cli.main(["run"]) == 2
    assert writes == ["poolbench run: error: rank 1 was launched with other settings than rank 0\n"]


class _FailingParser:
    """Parses any command into one whose function raises the ValueError a refusing rank raises."""

    def parse_args(self, argv):
        import argparse

        def refuse(args):
            raise ValueError("rank 1 was launched with other settings than rank 0")

        return argparse.Namespace(command="run", func=refuse)
