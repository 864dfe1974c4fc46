"""Networks with swapped pooling: published baseline figures, placement, shapes, parameter overheads."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from poolbench import flops, models, registry
from poolbench.validation import pooled_size

#: Published figures of the unmodified torchvision networks: parameters, and GMACs at 224² (batch 1).
PUBLISHED = {
    "resnet50": (25_557_032, 4.1),
    "resnet101": (44_549_160, 7.8),
    "vgg16": (138_357_544, 15.5),
}

#: Channels entering each pooler, in forward order (the paper's placement).
RESNET_CHANNELS = [64, 256, 256, 512, 512, 1024, 1024]
EXPECTED_CHANNELS = {
    "vgg16": [64, 128, 256, 512, 512],
    "resnet50": RESNET_CHANNELS,
    "resnet101": RESNET_CHANNELS,
}


def _meta_baseline(name: str) -> nn.Module:
    with torch.device("meta"):
        return models.build_baseline(name).eval()


def _test_tier(name: str) -> str:
    """The tier the network tests run: vectorized where registered (no compile or C++ build), else the fastest."""
    return "vectorized" if "vectorized" in registry.tiers(name) else registry.get_spec(name, None, "cpu").tier


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_baseline_parameters_match_published(name):
    assert models.count_params(_meta_baseline(name)) == PUBLISHED[name][0]


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_baseline_macs_at_224_match_published(name):
    # FlopCounterMode on the meta device: shapes only, no arithmetic, so 224² is cheap
    count = flops.flop_counter_count(_meta_baseline(name), torch.empty(1, 3, 224, 224, device="meta"))
    assert count.total / 1e9 == pytest.approx(PUBLISHED[name][1], abs=0.05)


@pytest.mark.slow
@pytest.mark.skipif(not flops.HAS_FVCORE, reason="fvcore is not installed")
@pytest.mark.parametrize("name", list(PUBLISHED))
def test_baseline_macs_at_224_fvcore(name):
    model = models.build_baseline(name).eval()
    counts = flops.count_network(model, torch.randn(1, 3, 224, 224))
    assert counts["fvcore"].total / 1e9 == pytest.approx(PUBLISHED[name][1], abs=0.05)
    assert counts["fvcore"].total == pytest.approx(counts["flop_counter"].total, rel=1e-3)


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_swap_places_poolers_at_the_papers_sites(name):
    sites = models.pool_sites(name)
    assert [site.channels for site in sites] == EXPECTED_CHANNELS[name]
    if name == "vgg16":
        assert {site.geometry for site in sites} == {(2, 2, 0)}
        assert all(site.role == "vgg" for site in sites)
    else:
        assert sites[0].name == "maxpool" and sites[0].geometry == (3, 2, 1) and sites[0].role == "stem"
        assert {site.geometry for site in sites[1:]} == {(2, 2, 0)}
        assert [site.role for site in sites[1:]] == ["main", "shortcut"] * 3
        assert sum(site.channels for site in sites) == 3648  # 64 + 2·(256 + 512 + 1024)


@pytest.mark.parametrize("name", ["resnet50", "resnet101"])
def test_swap_removes_every_strided_block_convolution(name):
    with torch.device("meta"):
        model = models.build(name, "avg")
    strided = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.stride != (1, 1)]
    assert strided == ["conv1"]  # only the 7×7 stem convolution keeps its stride
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    found = models.pooler_modules(model)
    assert list(found) == [site.name for site in models.pool_sites(name)]
    # main path and shortcut of a block get separate modules (separate learned parameters)
    assert found["layer2.0.conv1.pool"] is not found["layer2.0.downsample.0.pool"]


def test_vgg_swap_replaces_all_five_max_pools():
    with torch.device("meta"):
        model = models.build("vgg16", "avg")
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert list(models.pooler_modules(model)) == ["features.4", "features.9", "features.16", "features.23", "features.30"]


def test_layer_input_shapes_at_224():
    shapes = [shape for _, shape in models.layer_input_shapes("resnet50", 2, 224)]
    assert shapes == [(2, 64, 112, 112), (2, 256, 56, 56), (2, 256, 56, 56), (2, 512, 28, 28), (2, 512, 28, 28),
                      (2, 1024, 14, 14), (2, 1024, 14, 14)]
    vgg = [shape for _, shape in models.layer_input_shapes("vgg16", 1, 224)]
    assert vgg == [(1, 64, 224, 224), (1, 128, 112, 112), (1, 256, 56, 56), (1, 512, 28, 28), (1, 512, 14, 14)]


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'resnet18'"):
        models.pool_sites("resnet18")


def test_full_dpp_parameter_overhead_reproduces_the_paper():
    for name, paper_pct in (("resnet50", 0.172), ("resnet101", 0.098)):
        with torch.device("meta"):
            overhead = models.count_params(models.build(name, "dpp_full_sym")) - PUBLISHED[name][0]
        assert overhead == 43_776 == 12 * 3648
        assert round(100 * overhead / PUBLISHED[name][0], 3) == pytest.approx(paper_pct, abs=0.0015)


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_parameter_overhead_equals_registry_count_for_every_pooler(name):
    baseline = PUBLISHED[name][0]
    for pooler in registry.names():
        tier = _test_tier(pooler)
        with torch.device("meta"):
            measured = models.count_params(models.build(name, pooler, tier)) - baseline
        assert measured == models.param_overhead_analytic(name, pooler, tier), pooler


@pytest.fixture
def one_thread():
    """Shapes do not depend on threads; on a shared 2-core machine two processes' OpenMP pools stall each other."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def networks():
    """One randomly initialised network per model with max pooling at every site; tests swap poolers in place."""
    torch.manual_seed(0)
    return {name: models.build(name, "max", _test_tier("max")).eval() for name in PUBLISHED}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_forward_shapes_for_every_pooler(name, networks, one_thread):
    resolution = 32
    expected = {site.name: (shape[0], shape[1], pooled_size(shape[2], *site.geometry),
                            pooled_size(shape[3], *site.geometry))
                for site, shape in models.layer_input_shapes(name, 1, resolution)}
    x = torch.rand(1, 3, resolution, resolution)
    model = networks[name]
    for pooler in registry.names():
        tier = _test_tier(pooler)
        options = {"seed": 0} if registry.get_spec(pooler, tier).stochastic else {}
        models.replace_poolers(model, lambda site: registry.create(pooler, site.channels, *site.geometry, tier=tier,
                                                                    **options))
        seen = {}
        hooks = [module.register_forward_hook(lambda m, args, out, n=site_name: seen.__setitem__(n, tuple(out.shape)))
                 for site_name, module in models.pooler_modules(model).items()]
        with torch.no_grad():
            out = model.eval()(x)
        for hook in hooks:
            hook.remove()
        assert out.shape == (1, 1000), pooler
        assert torch.isfinite(out).all(), pooler
        assert seen == expected, pooler
        assert all(getattr(m, "pooler_name", None) == pooler for m in models.pooler_modules(model).values())
