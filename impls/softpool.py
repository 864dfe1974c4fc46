"""SoftPool (Stergiou, Poppe & Kalliatakis, ICCV 2021): y = Σ e^x·x / Σ e^x over the window.

The weights are each channel's own e^x, as in the paper and the authors' CUDA
kernel (alexandrosstergiou/SoftPool, pytorch/CUDA/softpool_cuda_kernel.cu).
The repository's non-CUDA path (pytorch/SoftPool/idea.py, ``soft_pool2d`` on
CPU tensors or with ``force_inplace``) differs: it weights every channel by
the channel sum ``torch.sum(torch.exp(x), dim=1, keepdim=True)`` — one
weight map for all channels — and, unshifted, overflows to inf/NaN once x
exceeds ~88 in float32 (an earlier revision used the per-channel
``avg_pool(x·e^x) / avg_pool(e^x)``, also unshifted).  Here the weights are a
softmax over each window, which subtracts the window maximum first: |x| = 1e4
stays finite and, as the input scale grows, the output tends to the window
max.  Padded positions get weight 0.  Half precision runs in float32.

The authors' network (alexandrosstergiou/SoftPool, ``main/models/resnet.py``,
``use_softpool=True``): torchvision's ResNet with the stem's 3×3 stride-2 max
pool replaced by ``SoftPool2d(kernel_size=(2, 2), stride=(2, 2))``; the
strided convolutions stay.  The repository has no VGG.
"""
from __future__ import annotations

from poolbench.impls._window import compute_dtype, softmax_pool, unfold_windows
from poolbench.base import Pool2d
from poolbench.models.sites import PoolSite, tag
from poolbench.registry import PoolerNetwork, register


def stem_pool_resnet(model, make) -> list[PoolSite]:
    """torchvision's ResNet with its stem max pool (k3 s2 p1) replaced by the pooler with a 2×2 window, stride 2.

    SoftPool's and AdaPool's ImageNet ResNets (their repositories' ``main/models/resnet.py``): the output
    size is the max pool's (H/2 for even H); nothing else changes.
    """
    site = PoolSite("maxpool", model.conv1.out_channels, 2, 2, 0, "stem")
    model.maxpool = tag(make(site), site)
    return [site]


_NETWORK = PoolerNetwork(stem_pool_resnet, "alexandrosstergiou/SoftPool main/models/resnet.py",
                         note="SoftPool2d(2, 2) at the stem only")


# MACs: softmax over the window (5 per tap), w·x and Σ (2 per tap)
@register("softpool", "vectorized", params="0", family="baseline", macs=lambda g, o: 7 * g.taps * g.outputs(),
          networks={"resnet50@authors": _NETWORK, "resnet101@authors": _NETWORK})
class SoftPool(Pool2d):
    """Σ softmax(x)·x over each window, max-subtracted (no overflow)."""

    def pool(self, x):
        windows = unfold_windows(x.to(compute_dtype(x.dtype)), self.kernel_size, self.stride, self.padding)
        return windows.fold(softmax_pool(windows, windows.values)).to(x.dtype)
