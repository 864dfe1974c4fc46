"""Every pooler in the network its authors built (placement="authors"), against literal ports of their code.

Independent counts: each official network is ported here line for line (sebgao/LIP imagenet/lip_resnet.py,
adobe/antialiased-cnns antialiased_cnns/resnet.py + blurpool.py) and compared with what
``poolbench.models.build(..., placement="authors")`` builds: parameters, convolution MACs (forward hooks on a
meta-device forward at 224², no counter involved), output shape, and — with the official weights loaded —
the outputs themselves.
"""
from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from poolbench import models, registry
from poolbench.run.runner import RunConfig
from poolbench.tolerances import assert_close

TORCHVISION_RESNET50 = 25_557_032
LIP_RESNET50 = 23_864_232  # sebgao/LIP imagenet/README.md: 23.9M


# --------------------------------------------------------------------------------------------------
# literal port: sebgao/LIP imagenet/lip_resnet.py
# --------------------------------------------------------------------------------------------------

COEFF, BOTTLENECK_WIDTH = 12.0, 128


def lip2d(x, logit, kernel=3, stride=2, padding=1):
    weight = logit.exp()
    return F.avg_pool2d(x * weight, kernel, stride, padding) / F.avg_pool2d(weight, kernel, stride, padding)


class SoftGate(nn.Module):
    def forward(self, x):
        return torch.sigmoid(x).mul(COEFF)


def conv3x3(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BottleneckShared(nn.Module):
    def __init__(self, channels):
        super().__init__()
        rp = BOTTLENECK_WIDTH
        self.logit = nn.Sequential(OrderedDict((
            ("conv1", conv1x1(channels, rp)), ("bn1", nn.InstanceNorm2d(rp, affine=True)),
            ("relu1", nn.ReLU(inplace=True)), ("conv2", conv3x3(rp, rp)),
            ("bn2", nn.InstanceNorm2d(rp, affine=True)), ("relu2", nn.ReLU(inplace=True)))))

    def forward(self, x):
        return self.logit(x)


class BottleneckLIP(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.postprocessing = nn.Sequential(OrderedDict((
            ("conv", conv1x1(BOTTLENECK_WIDTH, channels)), ("bn", nn.InstanceNorm2d(channels, affine=True)),
            ("gate", SoftGate()))))

    def forward_with_shared(self, x, shared):
        return lip2d(x, self.postprocessing(shared))


class SimplifiedLIP(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.logit = nn.Sequential(OrderedDict((
            ("conv", nn.Conv2d(channels, channels, 3, padding=1, bias=False)),
            ("bn", nn.InstanceNorm2d(channels, affine=True)), ("gate", SoftGate()))))

    def forward(self, x):
        return lip2d(x, self.logit(x))


class LIPBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        if stride == 2:
            self.bottleneck_shared = BottleneckShared(inplanes)
            self.conv1 = conv1x1(inplanes, planes)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Sequential(BottleneckLIP(planes), conv1x1(planes, planes))
        else:
            self.conv1 = conv1x1(inplanes, planes)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        if self.stride == 2:
            shared = self.bottleneck_shared(x)
            out = self.conv2[0].forward_with_shared(out, shared)
            for layer in self.conv2[1:]:
                out = layer(out)
        else:
            out = self.conv2(out)
        out = self.relu(self.bn2(out))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            if self.stride == 1:
                residual = self.downsample(x)
            else:
                residual = self.downsample[0].forward_with_shared(x, shared)
                for layer in self.downsample[1:]:
                    residual = layer(residual)
        return self.relu(out + residual)


class PortedResNet(nn.Module):
    """The ResNet skeleton both upstream files share (torchvision's); each port gives its stem pooler and layers."""

    def __init__(self, layers, stem_pool: nn.Module, num_classes=1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = stem_pool
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * 4, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class LIPResNet(PortedResNet):
    def __init__(self, layers, num_classes=1000):
        super().__init__(layers, SimplifiedLIP(64), num_classes)

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            if stride != 1:
                downsample = OrderedDict([("lip", BottleneckLIP(self.inplanes)),
                                          ("conv", conv1x1(self.inplanes, planes * 4)),
                                          ("bn", nn.BatchNorm2d(planes * 4))])
            else:
                downsample = OrderedDict([("conv", conv1x1(self.inplanes, planes * 4, stride)),
                                          ("bn", nn.BatchNorm2d(planes * 4))])
        layers = [LIPBottleneck(self.inplanes, planes, stride, nn.Sequential(downsample) if downsample else None)]
        self.inplanes = planes * 4
        layers += [LIPBottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)


# --------------------------------------------------------------------------------------------------
# literal port: adobe/antialiased-cnns antialiased_cnns/resnet.py, blurpool.py (filter size 4)
# --------------------------------------------------------------------------------------------------

class OfficialBlurPool(nn.Module):
    def __init__(self, channels, filt_size=4, stride=2):
        super().__init__()
        self.pad = nn.ReflectionPad2d([(filt_size - 1) // 2, filt_size // 2] * 2)
        a = torch.tensor([1.0, 3.0, 3.0, 1.0])
        filt = a[:, None] * a[None, :]
        self.register_buffer("filt", (filt / filt.sum())[None, None].repeat(channels, 1, 1, 1))
        self.stride = stride

    def forward(self, inp):
        return F.conv2d(self.pad(inp), self.filt.to(inp.dtype), stride=self.stride, groups=inp.shape[1])


class AntialiasedBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * 4) if stride == 1 else nn.Sequential(
            OfficialBlurPool(planes, stride=stride), conv1x1(planes, planes * 4))
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class AntialiasedResNet(PortedResNet):
    def __init__(self, layers, num_classes=1000):
        super().__init__(layers, nn.Sequential(nn.MaxPool2d(kernel_size=2, stride=1), OfficialBlurPool(64, stride=2)),
                         num_classes)

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = [OfficialBlurPool(self.inplanes, stride=stride)] if stride != 1 else []
            downsample = nn.Sequential(*downsample, conv1x1(self.inplanes, planes * 4, 1), nn.BatchNorm2d(planes * 4))
        layers = [AntialiasedBottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * 4
        layers += [AntialiasedBottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)


# --------------------------------------------------------------------------------------------------
# independent counts
# --------------------------------------------------------------------------------------------------

def conv_and_linear_macs(model: nn.Module, resolution: int = 224, skip_depthwise: bool = False) -> int:
    """Σ over Conv2d/Linear of output elements × (in/groups)·k² (biases aside), from hooks on a meta forward."""
    total = [0]

    def hook(module, args, out):
        if isinstance(module, nn.Conv2d):
            if skip_depthwise and module.groups == module.in_channels > 1:
                return
            total[0] += out.numel() * module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        else:
            total[0] += out.numel() * module.in_features

    model = model.to("meta").eval()
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.empty(1, 3, resolution, resolution, device="meta"))
    for handle in handles:
        handle.remove()
    return total[0]


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
        for buffer_name, buffer in model.named_buffers():
            if buffer_name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5, generator=generator)
            elif buffer_name.endswith("running_mean"):
                buffer.normal_(0.0, 0.1, generator=generator)
    return model


# --------------------------------------------------------------------------------------------------
# LIP
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kernel_size, stride, padding", ((3, 2, 1), (2, 2, 0)))
def test_lip_bottleneck_logit_module_equals_the_official_one(kernel_size, stride, padding):
    """BottleneckShared + BottleneckLIP + lip2d (float64): outputs, input and parameter gradients."""
    ours = registry.create("lip", 6, kernel_size, stride, padding, logit_conv="bottleneck").double()
    trunk, head = BottleneckShared(6).double(), BottleneckLIP(6).double()
    randomise(ours, seed=1)
    with torch.no_grad():
        for mine, theirs in ((ours.trunk.conv1.weight, trunk.logit.conv1.weight),
                             (ours.trunk.bn1.weight, trunk.logit.bn1.weight), (ours.trunk.bn1.bias, trunk.logit.bn1.bias),
                             (ours.trunk.conv2.weight, trunk.logit.conv2.weight),
                             (ours.trunk.bn2.weight, trunk.logit.bn2.weight), (ours.trunk.bn2.bias, trunk.logit.bn2.bias),
                             (ours.head.conv.weight, head.postprocessing.conv.weight),
                             (ours.head.bn.weight, head.postprocessing.bn.weight),
                             (ours.head.bn.bias, head.postprocessing.bn.bias)):
            theirs.copy_(mine)
    x = torch.randn(2, 6, 9, 8, dtype=torch.float64, requires_grad=True)
    y = ours(x)
    expected = head.forward_with_shared(x, trunk(x)) if (kernel_size, stride, padding) == (3, 2, 1) else lip2d(
        x, head.postprocessing(trunk(x)), kernel_size, stride, padding)
    assert_close(y, expected)
    grad = torch.randn_like(y)
    ours_grads = torch.autograd.grad(y, [x, ours.trunk.conv2.weight, ours.head.conv.weight], grad)
    theirs_grads = torch.autograd.grad(expected, [x, trunk.logit.conv2.weight, head.postprocessing.conv.weight], grad)
    for mine, theirs in zip(ours_grads, theirs_grads):
        assert_close(mine, theirs)


def test_lip_per_site_modules_and_their_parameter_formula():
    spec = registry.get_spec("lip", "vectorized")
    stem, site = registry.create("lip", 64, 3, 2, 1), registry.create("lip", 256)
    assert stem.logit_conv == "full" and site.logit_conv == "bottleneck"
    assert count(stem) == spec.param_count(64, 3) == 9 * 64 * 64 + 2 * 64
    assert count(site) == spec.param_count(256, 2) == 258 * 256 + 147_968
    assert not site.head.conv.weight.detach().any(), "zero-initialised head: LIP starts as average pooling"
    x = torch.randn(1, 256, 6, 6)
    assert_close(site(x), F.avg_pool2d(x, 2, 2))


def test_lip_resnet50_at_the_authors_placement_is_the_official_network():
    with torch.device("meta"):
        ours = models.build("resnet50", "lip", placement="authors")
        official = LIPResNet([3, 4, 6, 3])
    assert count(ours) == count(official) == LIP_RESNET50
    assert models.param_overhead_analytic("resnet50@authors", "lip") == LIP_RESNET50 - TORCHVISION_RESNET50
    ours_macs, official_macs = conv_and_linear_macs(ours), conv_and_linear_macs(official)
    stem_logit_conv = 9 * 64 * 64 * 112 * 112  # poolbench's SimplifiedLIP runs F.conv2d, not an nn.Conv2d
    assert ours_macs + stem_logit_conv == official_macs
    assert official_macs == pytest.approx(5.30e9, rel=0.02)
    sites = models.pool_sites("resnet50@authors", "lip")
    assert [(s.name, s.channels, s.geometry) for s in sites[:3]] == [
        ("maxpool", 64, (3, 2, 1)), ("layer2.0.conv2.0", 128, (3, 2, 1)), ("layer2.0.downsample.lip", 256, (3, 2, 1))]


def _lip_name(name: str) -> str:
    """Official LIP-ResNet parameter name -> poolbench's (layer1's projection is torchvision's Sequential)."""
    if name.startswith("layer1."):
        name = name.replace("downsample.conv.", "downsample.0.").replace("downsample.bn.", "downsample.1.")
    return (name.replace("bottleneck_shared.logit.", "bottleneck_shared.")
            .replace("conv2.0.postprocessing.", "conv2.0.head.").replace("downsample.lip.postprocessing.",
                                                                         "downsample.lip.head.")
            .replace("maxpool.logit.conv.weight", "maxpool.logit_weight")
            .replace("maxpool.logit.bn.weight", "maxpool.norm_weight").replace("maxpool.logit.bn.bias", "maxpool.norm_bias"))


def test_lip_resnet_computes_what_the_official_network_computes():
    torch.manual_seed(0)
    official = randomise(LIPResNet([1, 1, 1, 1], num_classes=10)).double().eval()
    ours = models.build_baseline("resnet50")
    ours.layer1, ours.layer2, ours.layer3, ours.layer4 = (layer[:1] for layer in
                                                          (ours.layer1, ours.layer2, ours.layer3, ours.layer4))
    ours.fc = nn.Linear(2048, 10)
    # the same network with one block per stage, built by LIP's own declaration
    registry.networks("lip")["resnet50@authors"].swap(ours, lambda site: models.create_at(site, "lip"))
    ours = ours.double().eval()
    state = {_lip_name(name): value for name, value in official.state_dict().items()}
    ours.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    assert_close(ours(x), official(x))


def test_lip_at_the_papers_sites_shares_one_trunk_per_block():
    with torch.device("meta"):
        model = models.build("resnet50", "lip")
    overhead = count(model) - TORCHVISION_RESNET50
    assert overhead == models.param_overhead_analytic("resnet50", "lip") == 1_176_192
    assert overhead / TORCHVISION_RESNET50 <= 0.10
    block = model.layer2[0]
    assert block.conv1.pool.trunk is None and block.downsample[0].pool.trunk is None
    assert block.bottleneck_shared.conv1.in_channels == 256


@pytest.mark.slow
def test_lip_networks_run_forward_and_backward_at_small_inputs():
    torch.manual_seed(0)
    for placement in ("paper", "authors"):
        model = models.build("resnet50", "lip", placement=placement)
        out = model(torch.randn(2, 3, 32, 32))
        assert out.shape == (2, 1000)
        out.square().mean().backward()
        heads = [m for m in model.modules() if type(m).__name__ == "LogitHead"]
        assert len(heads) == (6 if placement == "authors" else 6)
        # the heads start at 0 (LIP starts as average pooling) and are the first to learn
        assert all(head.conv.weight.grad.abs().sum() > 0 for head in heads)


# --------------------------------------------------------------------------------------------------
# strided conv, antialiased, SoftPool/AdaPool, DPP
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("placement", ("paper", "authors"))
def test_strided_conv_in_resnets_is_the_original_network(placement):
    with torch.device("meta"):
        model = models.build("resnet50", "strided_conv", placement=placement)
    assert count(model) == TORCHVISION_RESNET50
    assert models.pool_sites(models.placed_name("resnet50", placement), "strided_conv") == []
    assert isinstance(model.maxpool, nn.MaxPool2d)
    with torch.device("meta"):
        vgg = models.build("vgg16", "strided_conv")
    assert count(vgg) - count(models.build_baseline("vgg16").to("meta")) == sum(
        c * c * 4 + c for c in (64, 128, 256, 512, 512)), "VGG-16: a learned k2 s2 conv per max pool"


def test_antialiased_resnet50_is_the_official_network():
    with torch.device("meta"):
        ours = {pooler: models.build("resnet50", pooler, placement="authors") for pooler in ("maxblur", "blurpool")}
        official = AntialiasedResNet([3, 4, 6, 3])
    for model in ours.values():
        assert count(model) == count(official) == TORCHVISION_RESNET50
        # the official blur is a depthwise conv; poolbench's is a pooler: compare every other convolution
        assert conv_and_linear_macs(model) == conv_and_linear_macs(official, skip_depthwise=True)
    assert [s.name for s in models.pool_sites("resnet50@authors", "maxblur")] == ["maxpool"]
    assert [s.name for s in models.pool_sites("resnet50@authors", "blurpool")][:2] == [
        "layer2.0.conv3.0", "layer2.0.downsample.0"]


def test_antialiased_resnet_computes_what_the_official_network_computes():
    torch.manual_seed(0)
    official = randomise(AntialiasedResNet([1, 1, 1, 1])).double().eval()
    ours = models.build("resnet50", "maxblur", placement="authors")
    ours.layer1, ours.layer2, ours.layer3, ours.layer4 = (layer[:1] for layer in
                                                          (ours.layer1, ours.layer2, ours.layer3, ours.layer4))
    ours = ours.double().eval()
    state = {name: value for name, value in official.state_dict().items() if not name.endswith("filt")}
    ours.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    out = ours(x)
    assert out.shape == (2, 1000)
    assert_close(out, official(x))


@pytest.mark.parametrize("pooler, added", (("softpool", 0), ("adapool", 64)))
def test_softpool_and_adapool_networks_pool_only_the_stem(pooler, added):
    model = models.build("resnet50", pooler, placement="authors").eval()
    sites = models.pool_sites("resnet50@authors", pooler)
    assert [(s.name, s.geometry) for s in sites] == [("maxpool", (2, 2, 0))]
    assert count(model) - TORCHVISION_RESNET50 == added
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_full_dpp_overheads_unchanged_at_both_placements():
    with torch.device("meta"):
        paper = count(models.build("resnet50", "dpp_full_sym", "vectorized")) - TORCHVISION_RESNET50
        authors = count(models.build("resnet50", "dpp_full_sym", "vectorized", placement="authors")) - \
            TORCHVISION_RESNET50
        r101 = models.build("resnet101", "dpp_full_sym", "vectorized")
        base101 = count(models.build_baseline("resnet101").to("meta"))
    assert (paper, authors) == (43_776, 43_008)
    assert round(100 * paper / TORCHVISION_RESNET50, 3) == 0.171
    assert round(100 * (count(r101) - base101) / base101, 3) == 0.098


def test_a_network_an_author_did_not_publish_is_a_clear_error():
    with pytest.raises(ValueError, match="not published: lip's authors published no VGG-16 network"):
        models.build("vgg16", "lip", placement="authors")
    with pytest.raises(ValueError, match="not published: s3pool's authors published no ResNet-50 network"):
        models.build("resnet50", "s3pool", placement="authors")
    assert not models.has_network("resnet50@authors", "max")
    assert models.has_network("resnet50@authors", "lip") and not models.has_network("vgg16@authors", "maxblur")


def test_run_config_measures_each_pooler_only_in_its_own_authors_network():
    config = RunConfig(models=("resnet50", "vgg16"), placement="both", poolers=("lip", "maxblur", "s3pool"),
                       metrics=("params",), batch=1, resolution=64)
    assert config.models == ("resnet50", "resnet50@authors", "vgg16"), "VGG-16 is measured once"
    from poolbench.run.runner import plan

    cells = {(g.model, g.pooler) for g in plan(config) if g.scope == "network"}
    assert ("resnet50@authors", "lip") in cells and ("resnet50@authors", "maxblur") in cells
    assert ("resnet50@authors", "s3pool") not in cells and ("resnet50", "s3pool") in cells
    assert RunConfig(models=("vgg16",), placement="authors", poolers=("lip",)).models == ("vgg16",)


def test_a_plugin_declares_its_own_network(monkeypatch):
    swap = lambda model, make: []  # noqa: E731
    network = registry.PoolerNetwork(swap, "a plugin's repository")
    monkeypatch.setattr(registry, "_NETWORKS", dict(registry._NETWORKS))  # forgotten after the test
    registry.register_network("mixed", "vgg16@authors", network)
    assert models.placements_of("vgg16", ["mixed"]) == ("paper", "authors")
    with torch.device("meta"):
        assert count(models.build("vgg16", "mixed", placement="authors")) == count(
            models.build_baseline("vgg16").to("meta"))
    with pytest.raises(ValueError, match="already declares its 'vgg16@authors' network"):
        registry.register_network("mixed", "vgg16@authors", registry.PoolerNetwork(lambda m, f: [], "elsewhere"))
    with pytest.raises(TypeError, match="PoolerNetwork"):
        registry.register_network("mixed", "resnet50@authors", swap)


# --------------------------------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pooler, placement", (("lip", "paper"), ("lip", "authors"), ("blurpool", "authors"),
                                               ("dpp_full_sym", "authors")))
def test_networks_round_trip_through_state_dict(pooler, placement):
    torch.manual_seed(0)
    tier = "vectorized" if pooler.startswith("dpp") else None
    first = randomise(models.build("resnet50", pooler, tier, placement=placement)).eval()
    second = models.build("resnet50", pooler, tier, placement=placement).eval()
    second.load_state_dict(first.state_dict(), strict=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(first(x), second(x))


@pytest.mark.slow
@pytest.mark.parametrize("placement", ("paper", "authors"))
def test_lip_network_compiles(placement):
    torch.manual_seed(0)
    model = models.build("resnet50", "lip", placement=placement).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert_close(torch.compile(model)(x), model(x), torch.float32)


@pytest.mark.slow
def test_lip_resnet50_macs_by_both_counters_at_224():
    """fvcore and FlopCounterMode agree, within 2% of the official network's ≈5.30 G (README: 5.33 GFLOPs)."""
    from poolbench import flops

    model = models.build("resnet50", "lip", placement="authors").eval()
    counts = flops.count_network(model, torch.randn(1, 3, 224, 224))
    flop_counter = counts["flop_counter"].total
    assert flop_counter == pytest.approx(5.30e9, rel=0.02)
    if counts["fvcore"] is not None:
        assert counts["fvcore"].total == pytest.approx(flop_counter, rel=1e-3)
