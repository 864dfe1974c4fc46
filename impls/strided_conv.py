"""Strided convolution in place of pooling (the paper's "strided conv" baseline).

A full C→C k×k convolution with stride s, zero padding p and a bias: C²k² + C
parameters, PyTorch's default ``Conv2d`` initialisation.  It learns its own
downsampling filter, which is why it is the most expensive baseline in
parameters.  Zero padding is the convolution's, not a window average, so it
is kept (a learned filter, not an average, sees the border).

Where it goes: in VGG-16 a learned k2 s2 convolution replaces each max pool.
In ResNets the strided-conv baseline is the unmodified network — its
downsampling already is strided convolution, and the paper's table marks
ResNet's "Strided conv." row as the original architecture — so this pooler
declares torchvision's ResNet-50/101 as its network at both placements
(25,557,032 parameters for ResNet-50, no site to pool).

Half-precision input runs the convolution in that dtype with the weights
cast to it: cuDNN/oneDNN accumulate in float32 anyway, and upcasting would
make this baseline unfairly slow.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from poolbench.base import Pool2d
from poolbench.registry import PoolerNetwork, register


def original_resnet(model: nn.Module, make) -> list:
    """The unmodified ResNet: its strided convolutions are the strided-conv baseline; nothing is placed."""
    return []


#: ResNets: the original network (the paper's table marks that row as the original architecture).
ORIGINAL_RESNET = PoolerNetwork(original_resnet, "Saeedan et al., CVPR 2018: CIFAR-10 table, ResNet "
                                "'Strided conv.' row marked as the original architecture")
#: ... and the same network at the authors' placement (not measured twice).
SAME_AS_PAPER = PoolerNetwork(None, "the original ResNet (torchvision)")


@register(
    "strided_conv",
    "vectorized",
    params="C²·k² + C",
    param_count=lambda channels, kernel_size: channels * channels * kernel_size * kernel_size + channels,
    # a full C→C k×k convolution (no bias, as fvcore counts convolutions)
    macs=lambda g, o: g.channels * g.taps * g.outputs(),
    family="baseline",
    networks={"resnet50": ORIGINAL_RESNET, "resnet101": ORIGINAL_RESNET,
              "resnet50@authors": SAME_AS_PAPER, "resnet101@authors": SAME_AS_PAPER},
)
class StridedConvPool(Pool2d):
    """A learned C→C k×k convolution with stride s replacing the pooling layer."""

    def __init__(self, channels, kernel_size=2, stride=2, padding=0):
        super().__init__(channels, kernel_size, stride, padding)
        self.weight = nn.Parameter(torch.empty(channels, channels, self.kernel_size, self.kernel_size))
        self.bias = nn.Parameter(torch.empty(channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's ``nn.Conv2d`` default initialisation."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(self.weight[0].numel())
        nn.init.uniform_(self.bias, -bound, bound)

    def pool(self, x):
        return F.conv2d(x, self.weight.to(x.dtype), self.bias.to(x.dtype), stride=self.stride, padding=self.padding)
