"""Tests of the benchmark regression gate itself (poolbench.gate, ``poolbench compare``).

The comparison logic is tested on synthetic pytest-benchmark JSON (exact and
instant); one small end-to-end run of the real suite, on a test-only pooler
at a tiny resolution, shows that an unchanged run passes, a synthetic
slowdown fails naming the pooler and its ratio, and a tier that stops
matching its reference fails.
"""
from __future__ import annotations

import json
import textwrap

import pytest
import torch
import torch.nn.functional as F

from poolbench.verify import equivalence
from poolbench import gate, registry
from poolbench.base import Pool2d

LAYERS = range(1, 6)


def bench_json(ratios: dict[tuple, float], config: gate.BenchConfig | None = None) -> dict:
    """A pytest-benchmark document holding one benchmark per (pooler, tier, layer, pass) → ratio."""
    config = config or gate.BenchConfig()
    shapes = config.shapes()
    benchmarks = []
    for (pooler, tier, layer, pass_), ratio in ratios.items():
        case = gate.BenchCase(pooler, tier, layer, shapes[layer - 1], pass_)
        info = gate.extra_info(case, config, None, {"ratio": ratio, "comparator_median_s": 1e-3, "rounds": 5})
        benchmarks.append({"fullname": f"test_bench_poolers.py::test_pooler[{case.id}]",
                           "extra_info": info, "stats": {"median": ratio * 1e-3, "rounds": 5}})
    return {"benchmarks": benchmarks}


def ratios_for(pooler="dpp_lite_sym", tier="vectorized", pass_="forward", values=(5.0, 5.5, 6.0, 6.5, 7.0)):
    return {(pooler, tier, layer, pass_): value for layer, value in zip(LAYERS, values)}


def scaled(ratios: dict, factors) -> dict:
    factors = factors if isinstance(factors, (list, tuple)) else [factors] * len(ratios)
    return {key: value * factor for (key, value), factor in zip(ratios.items(), factors)}


def loaded(ratios: dict, config=None):
    return gate.load_benchmarks(bench_json(ratios, config))


# --------------------------------------------------------------------------- comparison logic


def test_unchanged_ratios_pass():
    base = {**ratios_for(), **ratios_for("max", pass_="forward_backward", values=(1.4, 1.5, 1.5, 1.6, 1.6))}
    comparison = gate.compare(loaded(base), loaded(base))
    assert comparison.regressions == []
    assert {row.status for row in comparison.rows} == {"unchanged"}
    assert len(comparison.groups) == 2


def test_pooler_slower_on_every_layer_fails_naming_pooler_and_ratios():
    base = {**ratios_for(), **ratios_for("max")}
    current = {**scaled(ratios_for(), 1.15), **ratios_for("max")}
    comparison = gate.compare(loaded(base), loaded(current))
    assert len(comparison.regressions) == 1
    message = comparison.regressions[0]
    assert "dpp_lite_sym[vectorized] forward" in message
    assert "+15.0%" in message and "threshold +10%" in message
    assert "layer1 5.000x -> 5.750x" in message  # the per-layer ratios, not just a verdict
    assert "max" not in message


def test_threshold_is_configurable():
    base, current = loaded(ratios_for()), loaded(scaled(ratios_for(), 1.15))
    assert gate.compare(base, current, threshold=0.20).regressions == []
    assert gate.compare(base, current, threshold=0.05).regressions


def test_noise_within_threshold_passes():
    base = ratios_for()
    current = scaled(base, [1.08, 0.95, 1.09, 1.12, 0.97])  # one layer past 10%, the pooler's mean is not
    comparison = gate.compare(loaded(base), loaded(current))
    assert comparison.regressions == []
    assert [row.status for row in comparison.rows].count("slower") == 1


def test_one_layer_far_slower_fails_on_its_own():
    base = ratios_for()
    current = scaled(base, [1.0, 1.0, 1.5, 1.0, 1.0])  # geometric mean +8.4%: only the layer check catches it
    comparison = gate.compare(loaded(base), loaded(current))
    assert comparison.regressed_groups == []
    assert len(comparison.regressions) == 1
    assert "dpp_lite_sym[vectorized] layer3" in comparison.regressions[0]
    assert "6.000x -> 9.000x (+50.0%" in comparison.regressions[0]
    assert comparison.suspects == [("dpp_lite_sym", "vectorized", 3, "forward")]
    assert gate.compare(loaded(base), loaded(current), case_threshold=0.6).regressions == []


def test_faster_new_and_missing_are_reported_not_failed():
    base = {**ratios_for(), **ratios_for("max")}
    current = {**scaled(ratios_for(), 0.5), **ratios_for("softpool")}
    comparison = gate.compare(loaded(base), loaded(current))
    assert comparison.regressions == []
    assert len(comparison.by_status("faster")) == 5
    assert len(comparison.by_status("new")) == 5
    assert len(comparison.by_status("missing")) == 5
    # a pooler deselected with --poolers is not "missing"
    selected = gate.compare(loaded(base), loaded(current), selected=lambda key: key[0] != "max")
    assert selected.by_status("missing") == []


def test_shape_mismatch_is_an_error():
    base = loaded(ratios_for(), gate.BenchConfig(resolution=112))
    with pytest.raises(ValueError, match="baseline measured shape"):
        gate.compare(base, loaded(ratios_for()))


def test_config_mismatch_and_baseline_names():
    base = loaded(ratios_for(), gate.BenchConfig(threads=2))
    assert "threads=2" in gate.config_mismatch(base, gate.BenchConfig())
    assert gate.config_mismatch(loaded(ratios_for()), gate.BenchConfig()) is None
    assert gate.baseline_name(gate.BenchConfig()) == "cpu"
    assert gate.baseline_name(gate.BenchConfig(resolution=112, batch=2)) == "cpu-b2-r112"


@pytest.mark.parametrize("bad", [0, -0.1, True])
def test_threshold_must_be_positive(bad):
    with pytest.raises(ValueError, match="threshold"):
        gate.compare({}, {}, threshold=bad)


def test_markdown_report_says_what_got_slower_and_faster():
    base = {**ratios_for(), **ratios_for("max")}
    current = {**scaled(ratios_for(), 1.2), **scaled(ratios_for("max"), 0.8)}
    comparison = gate.compare(loaded(base), loaded(current))
    text = gate.render_markdown(comparison, passed=False, messages=comparison.regressions)
    assert text.startswith("# Benchmark gate: FAIL")
    assert "| dpp_lite_sym | vectorized | forward | 5 | +20.0% |" in text
    assert "| max | vectorized | forward | 5 | -20.0% |" in text
    assert "## Faster layers" in text and "## Slower layers" in text


def test_save_and_find_baseline(tmp_path):
    first = gate.save_baseline(bench_json(ratios_for()), tmp_path, "cpu")
    assert first.name == "0001_cpu.json" and gate.find_baseline(tmp_path, "cpu") == first
    second = gate.save_baseline(bench_json(ratios_for()), tmp_path, "cpu")
    assert second.name == "0002_cpu.json" and gate.find_baseline(tmp_path, "cpu") == second
    assert first.exists()  # a user's older baselines are never deleted
    other = gate.save_baseline(bench_json(ratios_for()), tmp_path, "cpu-r112")
    assert other.name == "0003_cpu-r112.json"  # pytest-benchmark numbers across names in one machine folder
    assert gate.find_baseline(tmp_path, "cpu") == second
    assert gate.find_baseline(tmp_path, "cpu-r113") is None
    # a partial refresh (--poolers max) keeps the other poolers' ratios
    previous = json.loads(second.read_text())
    third = gate.save_baseline(bench_json(ratios_for("max")), tmp_path, "cpu", previous=previous,
                               keep=lambda bench: bench["extra_info"]["pooler"] != "max")
    assert {key[0] for key in gate.load_benchmarks(third)} == {"dpp_lite_sym", "max"}


def test_baseline_from_several_runs_takes_the_median_ratio():
    runs = [bench_json(scaled(ratios_for(), factor)) for factor in (1.0, 1.3, 0.9)]
    merged = gate.load_benchmarks(gate.merge_runs(runs))
    layer1 = merged[("dpp_lite_sym", "vectorized", 1, "forward")]
    assert layer1.ratio == pytest.approx(5.0)  # median of 5.0, 6.5, 4.5
    info = gate.merge_runs(runs)["benchmarks"][0]["extra_info"]
    assert info["ratio_runs"] == pytest.approx([5.0, 6.5, 4.5])


# --------------------------------------------------------------------------- cases and equivalence


class _Probe(Pool2d):
    """Average pooling plus an optional offset (a tier that stopped matching its reference)."""

    def __init__(self, channels, kernel_size=2, stride=2, padding=0, offset=0.0):
        super().__init__(channels, kernel_size, stride, padding)
        self.scale = torch.nn.Parameter(torch.ones(channels))
        self.offset = offset

    def pool(self, x):
        y = F.avg_pool2d(x, self.kernel_size, self.stride, self.padding) * self.scale.view(1, -1, 1, 1)
        return y + self.offset


@pytest.fixture
def probe_registry(isolated_registries):
    """A private copy of the registry, so test poolers vanish after the test."""
    gate.clear_equivalence_cache()
    yield registry
    gate.clear_equivalence_cache()


def test_cases_follow_the_registry(probe_registry):
    registry.register("gate_probe", "reference")(lambda c, k, s, p: _Probe(c, k, s, p))
    registry.register("gate_probe", "vectorized")(lambda c, k, s, p: _Probe(c, k, s, p))
    registry.register("gate_probe", "cuda", devices=("cuda",))(lambda c, k, s, p: _Probe(c, k, s, p))
    registry.register("gate_flat", "vectorized", differentiable=False)(lambda c, k, s, p: _Probe(c, k, s, p))
    config = gate.BenchConfig(resolution=32)
    cases = {case.id: case for case in gate.bench_cases(config, poolers=["gate_probe", "gate_flat"])}
    assert len(cases) == 3 * 5 * 2  # reference is never timed
    assert cases["gate_probe-vectorized-layer1-forward"].skip_reason is None
    assert "cuda" in cases["gate_probe-cuda-layer3-forward"].skip_reason
    assert "not differentiable" in cases["gate_flat-vectorized-layer2-forward_backward"].skip_reason
    assert cases["gate_probe-vectorized-layer2-forward"].group == "layer2 1x128x16x16 forward"
    everything = gate.bench_cases(config)
    assert {spec.name for spec in registry.specs()} - {case.pooler for case in everything} == set()
    with pytest.raises(ValueError, match="unknown pooler 'nope'"):
        gate.bench_cases(config, poolers=["nope"])


def test_equivalence_passes_for_a_matching_tier_and_fails_for_a_broken_one(probe_registry):
    registry.register("gate_probe", "reference")(lambda c, k, s, p: _Probe(c, k, s, p))
    registry.register("gate_probe", "vectorized")(lambda c, k, s, p: _Probe(c, k, s, p))
    registry.register("gate_probe", "compiled")(lambda c, k, s, p: _Probe(c, k, s, p, offset=1e-2))
    config = gate.BenchConfig(resolution=64, crop=8)
    good = gate.equivalence_at("gate_probe", "vectorized", (1, 64, 64, 64), config)
    assert good.ok and good.reference == "reference@float64" and "8x8 corner" in good.compared
    bad = gate.equivalence_at("gate_probe", "compiled", (1, 64, 64, 64), config)
    assert not bad.ok
    assert "gate_probe[compiled] at 1x64x64x64 does not match gate_probe[reference@float64]" in bad.message
    assert "full input" in bad.compared  # a corner mismatch is re-checked on the full input before failing


def test_equivalence_falls_back_to_the_full_input_for_non_local_poolers(probe_registry):
    class GlobalShift(_Probe):  # output depends on the whole map (like LIP's instance norm)
        def pool(self, x):
            return super().pool(x) + x.mean((2, 3), keepdim=True)

    registry.register("gate_global", "reference")(lambda c, k, s, p: GlobalShift(c, k, s, p))
    registry.register("gate_global", "vectorized")(lambda c, k, s, p: GlobalShift(c, k, s, p))
    result = gate.equivalence_at("gate_global", "vectorized", (1, 64, 32, 32), gate.BenchConfig(resolution=32, crop=8))
    assert result.ok and "full input" in result.compared


def test_normwise_gradient_check():
    expected = torch.randn(100, dtype=torch.float64)
    close = equivalence.compare((expected, expected), [("w", expected.float() + 1e-6, expected)], torch.float32)
    assert close.ok and close.grad_error < 1
    off = equivalence.compare((expected, expected), [("w", expected.float() * 1.1, expected)], torch.float32)
    assert not off.ok and "gradient of w" in off.problem and "norm of the difference" in off.problem


def test_pass_closures_run_forward_and_backward():
    module = _Probe(4)
    x = torch.randn(1, 4, 8, 8)
    gate.pass_closure(module, x, "forward", module=module)()
    assert not module.training
    gate.pass_closure(module, x, "forward_backward", list(module.parameters()), module)()
    assert module.training and module.scale.grad is None  # autograd.grad, no accumulation
    with pytest.raises(ValueError, match="pass must be one of"):
        gate.pass_closure(module, x, "backward")


def test_bench_config_validation():
    assert gate.BenchConfig().clock == "cpu" and gate.BenchConfig(threads=2).clock == "wall"
    with pytest.raises(ValueError, match="resolution must be >= 32"):
        gate.BenchConfig(resolution=16)
    with pytest.raises(ValueError, match="clock='cpu'"):
        gate.BenchConfig(threads=2, clock="cpu")


# --------------------------------------------------------------------------- end to end

PLUGIN = textwrap.dedent('''
    """Test-only poolers for the gate's end-to-end test; GATE_PROBE_MODE=bad breaks both."""
    import os, time
    import torch.nn.functional as F
    from poolbench.base import Pool2d
    from poolbench.registry import register

    BAD = os.environ.get("GATE_PROBE_MODE") == "bad"

    class Probe(Pool2d):
        def __init__(self, channels, kernel_size=2, stride=2, padding=0, spin=0.0, offset=0.0):
            super().__init__(channels, kernel_size, stride, padding)
            self.spin, self.offset = spin, offset

        def pool(self, x):
            # burn CPU rather than sleep: the gate reads process CPU time, in which a sleep does not show
            end = time.perf_counter() + self.spin
            while time.perf_counter() < end:
                pass
            return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding) + self.offset

    # gate_probe gets 2 ms slower; gate_twin stops matching its reference
    register("gate_probe", "reference")(lambda c, k, s, p: Probe(c, k, s, p))
    register("gate_probe", "vectorized")(lambda c, k, s, p: Probe(c, k, s, p, spin=2e-3 if BAD else 0.0))
    register("gate_twin", "reference")(lambda c, k, s, p: Probe(c, k, s, p))
    register("gate_twin", "vectorized")(lambda c, k, s, p: Probe(c, k, s, p, offset=0.01 if BAD else 0.0))
''')


def test_gate_end_to_end(tmp_path):
    """Save a baseline, pass unchanged, fail on a slowdown and on a broken tier (5 suite runs, ~35 s).

    Run as a user's CI would run an installed poolbench: from the user's own
    directory (``root``), whose plugin module is imported from there, with the
    baselines in ``benchmarks/baselines`` of that directory.
    """
    (tmp_path / "gate_probe_plugin.py").write_text(PLUGIN)
    config = gate.BenchConfig(resolution=32, budget_s=0.01, min_rounds=3, max_rounds=30)

    def run(mode: str, **options) -> gate.GateResult:
        return gate.run_gate(gate.GateOptions(
            config=config, poolers=["gate_probe", "gate_twin"], root=tmp_path,
            report=f"report_{mode}.md", plugins=["gate_probe_plugin"], echo=False,
            env={"GATE_PROBE_MODE": mode}, **options))

    saved = run("save", save_baseline=True)
    assert saved.passed, saved.messages
    assert saved.saved_path.name == "0001_cpu-r32.json"
    assert saved.saved_path.parent.parent == tmp_path / "benchmarks" / "baselines"
    assert saved.report_path == tmp_path / "report_save.md"
    stored = gate.load_benchmarks(saved.saved_path)
    assert {key[0] for key in stored} == {"gate_probe", "gate_twin", gate.COMPARATOR}
    equivalence = stored[("gate_probe", "vectorized", 1, "forward")].equivalence
    assert equivalence["ok"] and equivalence["reference"] == "reference@float64"

    # Tiny shapes are overhead-bound and noisy, so the unchanged run gets a loose threshold;
    # the 2 ms slowdown multiplies the ratio by ~100 and fails even so.
    unchanged = run("unchanged", threshold=1.0)
    assert unchanged.passed, unchanged.messages
    assert "Benchmark gate: PASS" in unchanged.report_path.read_text()

    bad = run("bad", threshold=1.0)
    assert not bad.passed
    assert len(bad.runs) == 3  # the suspects were measured twice more before failing
    assert any(m.startswith("REGRESSION gate_probe[vectorized] forward: time ratio to avg_pool2d up")
               for m in bad.messages), bad.messages
    assert any("EQUIVALENCE gate_twin[vectorized]" in m and "does not match gate_twin[reference@float64]" in m
               for m in bad.messages), bad.messages
    assert not any("gate_twin" in m for m in bad.messages if m.startswith("REGRESSION"))
    report = bad.report_path.read_text()
    assert "Benchmark gate: FAIL" in report and "gate_probe" in report
