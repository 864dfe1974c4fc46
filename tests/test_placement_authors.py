"""The authors' ResNet placement (visinf/dpp models/resnetdpp.lua, models/cudads.lua) and its pooler."""
from __future__ import annotations

import itertools

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from poolbench import functional as PF
from poolbench import models
from poolbench.dpp import AverageDownSample, build_authors_resnet
from poolbench.models import placed_name, split_placement
from poolbench.report.placement import placement_comparison
from poolbench.run.runner import RunConfig
from poolbench.tolerances import assert_close


def official_average_downsample(x, theta_alpha, theta_lam, eps=1e-3):
    """visinf_package/SpatialInverseBilateralPooling.cu ``GPU_FORWARD<false>`` with the guide of cudads.lua's
    ``AverageDownSample`` (``nn.SpatialAveragePooling(3,3,2,2,1,1)``, padding counted), loop for loop."""
    guide = F.avg_pool2d(x, 3, 2, 1, count_include_pad=True)
    alpha_e = theta_alpha.exp().view(1, -1)
    lambda_e = (theta_lam.exp() / 2).view(1, -1)
    out = x.new_zeros(guide.shape)
    for py, px in itertools.product(range(x.shape[-2] // 2), range(x.shape[-1] // 2)):
        it = guide[:, :, py, px]
        pixels = [x[:, :, 2 * py + dy, 2 * px + dx] for dy in (0, 1) for dx in (0, 1)]
        vmax = sum((pixel - it) ** 2 + eps for pixel in pixels)  # calcVMAX summed over the window
        weights = [(((pixel - it) ** 2 + eps) / vmax) ** lambda_e + alpha_e for pixel in pixels]  # calcSUM
        out[:, :, py, px] = sum(p * w for p, w in zip(pixels, weights)) / sum(weights)
    return out


@pytest.mark.parametrize("tier", ("vectorized", "reference"))
@pytest.mark.parametrize("height, width", ((8, 8), (6, 10)))
def test_average_downsample_equals_the_authors_cuda_kernel(tier, height, width):
    module = AverageDownSample(3, tier=tier).double()
    with torch.no_grad():
        module.log_alpha.copy_(torch.tensor([-0.4, 0.0, 0.7]))
        module.log_lam.copy_(torch.tensor([0.5, -0.3, 1.2]))
    x = torch.randn(2, 3, height, width, dtype=torch.float64, requires_grad=True)
    expected = official_average_downsample(x, module.log_alpha.detach(), module.log_lam.detach())
    y = module(x)
    assert_close(y, expected)
    grad = torch.randn_like(y)
    assert_close(torch.autograd.grad(y, x, grad)[0], torch.autograd.grad(expected, x, grad)[0])


def test_window_sum_and_window_mean_normalisations_differ_by_alpha_scaling():
    """The authors' CUDA kernel (sum) vs their Lua layers (mean): equal only with α′ = α·4^(λ/2)."""
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    module = AverageDownSample(2).double()
    guide = (torch.full((2, 1, 3, 3), 1 / 9, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    lam = torch.full((2,), 1.0, dtype=torch.float64)
    mean_form = PF.dpp(x, 1.0, lam, 2, 2, 0, guide=guide, scale_invariant=True)
    assert (module(x) - mean_form).abs().max() > 1e-3
    assert_close(module(x), PF.dpp(x, 1.0 * 4 ** 0.5, lam, 2, 2, 0, guide=guide, scale_invariant=True))


def test_average_downsample_rejects_other_windows():
    with pytest.raises(ValueError, match="pools 2x2 windows at stride 2"):
        AverageDownSample(4, 3, 2, 1)


def test_authors_resnet_sites_follow_the_lua_model():
    """Stem max pool kept; one pooler per stride-2 block, on its output (after addition and ReLU)."""
    model = models.build("resnet50", "dpp_lite_sym", "vectorized", placement="authors").eval()
    assert isinstance(model.maxpool, nn.MaxPool2d)
    sites = models.pool_sites("resnet50@authors")
    assert [(s.name, s.channels, s.geometry) for s in sites] == [
        ("layer2.0.pool", 512, (2, 2, 0)), ("layer3.0.pool", 1024, (2, 2, 0)), ("layer4.0.pool", 2048, (2, 2, 0))]
    block = model.layer2[0].block
    assert all(conv.stride == (1, 1) for conv in (block.conv1, block.conv2, block.conv3, block.downsample[0]))
    seen = {}
    model.layer2[0].pool.register_forward_pre_hook(lambda module, args: seen.setdefault("x", args[0]))
    model(torch.randn(1, 3, 64, 64))
    assert seen["x"].shape == (1, 512, 16, 16) and (seen["x"] >= 0).all(), "the block output, after its ReLU"
    baseline = models.count_params(models.build_baseline("resnet50"))
    assert models.count_params(model) - baseline == 2 * 3584
    assert models.param_overhead_analytic("resnet50@authors", "dpp_full_sym", "vectorized") == 12 * 3584


def test_authors_own_resnet_uses_average_downsample():
    model = build_authors_resnet("resnet101").eval()
    pools = [m for m in model.modules() if isinstance(m, AverageDownSample)]
    assert [p.channels for p in pools] == [512, 1024, 2048]
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    with pytest.raises(ValueError, match="bottleneck ResNet"):
        build_authors_resnet("vgg16")


def test_vgg_declares_only_the_paper_placement():
    """The authors' code has no VGG: asking for VGG-16's authors' placement is an error naming what it has."""
    assert models.placements_of("vgg16") == ("paper",)
    assert models.placements_of("resnet50") == ("paper", "authors")
    with pytest.raises(ValueError, match="network 'vgg16' declares no 'authors' placement; it has paper"):
        models.pool_sites("vgg16@authors")


def test_placement_names_and_errors():
    assert split_placement("resnet50") == ("resnet50", "paper")
    assert split_placement(placed_name("resnet50", "authors")) == ("resnet50", "authors")
    with pytest.raises(ValueError, match="unknown placement 'theirs'"):
        models.build("resnet50@theirs")
    with pytest.raises(ValueError, match="placement must be one of paper, authors, got 'x'"):
        models.build("resnet50", "max", placement="x")


def test_run_config_expands_placements():
    # only networks that declare a second placement are expanded: VGG-16 is measured once
    assert RunConfig(models=("resnet50", "vgg16"), placement="both").models == (
        "resnet50", "resnet50@authors", "vgg16")
    assert RunConfig(models=("resnet50", "vgg16"), placement="authors").models == ("resnet50@authors", "vgg16")
    with pytest.raises(ValueError, match="placement must be one of paper, authors, both"):
        RunConfig(placement="sideways")


def test_placement_comparison_puts_both_overheads_side_by_side():
    def row(model, pooler, tier, params_pct, macs, forward, train):
        return {"model": model, "pooler": pooler, "tier": tier, "params_overhead_pct": params_pct,
                "macs_flop_counter": macs, "latency_forward": forward, "latency_train": train}

    net = pd.DataFrame([
        row("resnet50", "max", "torchvision", 0.0, 100.0, 1.0, 2.0),
        row("resnet50", "dpp_full_sym", "vectorized", 0.171, 96.0, 1.2, 2.5),
        row("resnet50@authors", "max", "torchvision", 0.0, 100.0, 1.0, 2.0),
        row("resnet50@authors", "dpp_full_sym", "vectorized", 0.168, 160.0, 1.1, 3.0),
    ])
    (only,) = placement_comparison(net, ("max", "torchvision"))
    assert only["params (paper)"] == "+0.171%" and only["params (authors)"] == "+0.168%"
    assert only["MACs (paper)"] == "-4.0%" and only["MACs (authors)"] == "+60.0%"
    assert only["forward (paper)"] == "+20.0%" and only["train step (authors)"] == "+50.0%"
    paper_only = placement_comparison(net[~net["model"].str.contains("@")], ("max", "torchvision"))
    assert paper_only[0]["params (authors)"] == "–"
