"""The plugin registry: names, tiers, create(), duplicate protection and entry-point plugins."""
import importlib.metadata
import sys

import pytest
import torch

import poolbench
from poolbench import registry
from poolbench.base import Pool2d

DPP_NAMES = {"dpp_lite_sym", "dpp_lite_asym", "dpp_full_sym", "dpp_full_asym", "s3dpp_lite_sym"}


@pytest.fixture
def clean_registry(isolated_registries):
    """Let a test register poolers without leaking them into the others."""
    yield registry._REGISTRY


class Halve(Pool2d):
    def pool(self, x):
        return torch.nn.functional.avg_pool2d(x, self.kernel_size, self.stride, self.padding) / 2


def test_all_dpp_variants_have_reference_and_vectorized_tiers():
    assert DPP_NAMES <= set(poolbench.names())
    for name in DPP_NAMES:
        assert {"reference", "vectorized"} <= set(poolbench.tiers(name))


def test_create_default_tier_is_fastest_available_on_cpu():
    module = poolbench.create("dpp_lite_sym", 4)
    ranked = registry.by_priority([registry.get_spec("dpp_lite_sym", t) for t in registry.tiers("dpp_lite_sym")], "cpu")
    runnable = [spec.tier for spec in ranked if spec.unavailable_reason("cpu") is None]
    assert module.tier == runnable[0]
    assert module.tier != "reference" and ranked[-1].tier == "reference"
    assert module(torch.randn(1, 4, 6, 6)).shape == (1, 4, 3, 3)


def test_unknown_pooler_and_tier_are_named_in_the_error():
    with pytest.raises(ValueError, match="unknown pooler 'nope'"):
        poolbench.create("nope", 3)
    with pytest.raises(ValueError, match="has no 'warp' tier"):
        poolbench.create("dpp_lite_sym", 3, tier="warp")


def test_cuda_device_without_cuda_gives_reason():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match="cuda"):
        poolbench.create("dpp_lite_sym", 3, tier="vectorized", device="cuda")


def test_duplicate_registration_is_refused_unless_replace(clean_registry):
    registry.register("halve", "vectorized")(lambda c, k, s, p: Halve(c, k, s, p))
    with pytest.raises(ValueError, match="already has a 'vectorized' tier"):
        registry.register("halve", "vectorized")(lambda c, k, s, p: Halve(c, k, s, p))
    registry.register("halve", "vectorized", replace=True)(lambda c, k, s, p: Halve(c, k, s, p))


def test_register_rejects_bad_names_and_priorities():
    with pytest.raises(ValueError, match="tier name must be a non-empty identifier"):
        registry.register("x", "gpu kernel")
    with pytest.raises(ValueError, match="pooler name must be a non-empty identifier"):
        registry.register("bad name!", "vectorized")
    with pytest.raises(ValueError, match=r"priority names device\(s\) \['cuda'\]"):
        registry.register("x", "mine", devices=("cpu",), priority={"cuda": 1})
    with pytest.raises(TypeError, match="priority must be an int"):
        registry.register("x", "mine", priority="high")


def test_third_party_pooler_is_discovered_through_entry_points(clean_registry, monkeypatch, tmp_path):
    (tmp_path / "thirdparty_halve.py").write_text(
        "from poolbench.registry import register\n"
        "from test_registry import Halve\n\n"
        "@register('thirdparty_halve', 'vectorized')\n"
        "def make(channels, kernel_size, stride, padding):\n"
        "    return Halve(channels, kernel_size, stride, padding)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    good = importlib.metadata.EntryPoint("halve", "thirdparty_halve", registry.ENTRY_POINT_GROUP)
    broken = importlib.metadata.EntryPoint("broken", "thirdparty_missing_module", registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: [good, broken] if group == registry.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(registry, "_PLUGIN_ERRORS", {})
    assert "thirdparty_halve" not in poolbench.names()

    errors = registry.load_plugins(force=True)

    assert "thirdparty_halve" in poolbench.names()
    assert poolbench.create("thirdparty_halve", 2)(torch.ones(1, 2, 4, 4)).eq(0.5).all()
    assert any("thirdparty_missing_module" in label and "ModuleNotFoundError" in error for label, error in errors.items())
    monkeypatch.delitem(sys.modules, "thirdparty_halve")


def test_param_count_formula_matches_modules():
    for spec in registry.specs():
        if spec.name.startswith(("dpp", "s3dpp")):
            module = spec.factory(6, 2, 2, 0)
            assert sum(p.numel() for p in module.parameters()) == spec.param_count(6, 2), spec.name


def test_one_rule_leaves_a_tier_out_unless_asked_for_by_name():
    """run, layerbench and both gates ask the registry which tiers they leave out: the reference by default,
    a tool's own extras (the instruction gate's uncounted compiled tier) on top, and never a tier asked for."""
    reasons = registry.tiers_on("dpp_lite_sym", "cpu")
    assert "ground truth" in reasons["reference"] and reasons["vectorized"] is None
    assert registry.tiers_on("dpp_lite_sym", "cpu", asked=["reference"])["reference"] is None
    extra = {**registry.LEFT_OUT_BY_DEFAULT, "compiled": "compiles inside valgrind"}
    assert registry.tiers_on("dpp_lite_sym", "cpu", left_out=extra)["compiled"] == "compiles inside valgrind"
    assert registry.left_out_reason("compiled", asked=["compiled"], left_out=extra) is None
    assert registry.tiers_on("dpp_lite_sym", "cpu", left_out={})["reference"] is None
