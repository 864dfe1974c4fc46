"""Figures the poolers' papers and official repositories publish for these networks, each with its source.

Quoted, never measured: the report puts each beside what a run measured.  Two kinds:

* :data:`COSTS` — parameters, FLOPs and time the authors give for a network (``network`` is poolbench's
  name for it, placement included: LIP-ResNet-50 is ``"resnet50@authors"``);
* :data:`ACCURACY` — accuracy the authors report with and without their pooler, on the dataset and network
  named (``change`` in accuracy points, positive = better), for the "is it worth it" view.

A pooler whose paper or repository gives no such figure for these networks has no entry: the report says
so instead of inventing one.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ACCURACY", "COSTS", "PublishedAccuracy", "PublishedCost", "SLIDES"]

#: The DPP paper's slides (Saeedan, Weber, Goesele, Roth: "Detail-Preserving Pooling in Deep Networks", CVPR 2018).
SLIDES = "Saeedan et al., CVPR 2018, slides"
LIP_README = "sebgao/LIP imagenet/README.md (Summary table)"
ANTIALIASED_README = "adobe/antialiased-cnns README.md, (4) Results (commit 00c134d)"


@dataclass(frozen=True)
class PublishedCost:
    """One published cost: ``quantity`` is ``"params"`` (count), ``"params_overhead_pct"``, ``"gmacs"``
    (GMACs per 224² image; the LIP table's "FLOPs" are multiply-accumulates, as fvcore counts),
    ``"macs_overhead_pct"`` or ``"train_time_overhead_pct_max"`` (an upper bound)."""

    pooler: str
    network: str
    quantity: str
    value: float
    source: str
    label: str


@dataclass(frozen=True)
class PublishedAccuracy:
    """One published accuracy pair: the pooler's and the network's original, on ``dataset``."""

    pooler: str
    network: str
    dataset: str
    metric: str  # "top-1 %" (higher is better) or "error %" (lower is better)
    value: float
    baseline: float
    baseline_label: str
    source: str
    note: str = ""

    @property
    def change(self) -> float:
        """Accuracy points gained over the original network (positive = better)."""
        return self.value - self.baseline if self.metric.startswith("top") else self.baseline - self.value


COSTS: tuple[PublishedCost, ...] = (
    PublishedCost("dpp_full_sym", "resnet50", "params_overhead_pct", 0.172, SLIDES + ", 'Properties'",
                  "Full-DPP parameter overhead, ResNet-50"),
    PublishedCost("dpp_full_sym", "resnet101", "params_overhead_pct", 0.098, SLIDES + ", 'Properties'",
                  "Full-DPP parameter overhead, ResNet-101"),
    *(PublishedCost("lip", f"resnet{depth}@authors", quantity, value, LIP_README, f"LIP-ResNet-{depth} {what}")
      for depth, figures in (("50", (23.9e6, 5.33, -6.6, 29.4)), ("101", (42.9e6, 9.06, -3.6, 15.4)))
      for (quantity, what), value in zip((("params", "parameters"), ("gmacs", "FLOPs (224²)"),
                                          ("params_overhead_pct", f"parameters vs ResNet-{depth}"),
                                          ("macs_overhead_pct", f"FLOPs vs ResNet-{depth}")), figures)),
    PublishedCost("max", "resnet50", "gmacs", 4.12, LIP_README, "ResNet-50 FLOPs (224²), LIP's baseline row"),
    PublishedCost("max", "resnet101", "gmacs", 7.85, LIP_README, "ResNet-101 FLOPs (224²), LIP's baseline row"),
)
#: The DPP slides' time bound: "worst case scenario in our experiments: 20% overhead for VGG-16".
DPP_VGG16_TIME_BOUND_PCT = 20.0

ACCURACY: tuple[PublishedAccuracy, ...] = (
    PublishedAccuracy("lip", "resnet50@authors", "ImageNet val", "top-1 %", 78.19, 76.40, "ResNet-50", LIP_README),
    PublishedAccuracy("lip", "resnet101@authors", "ImageNet val", "top-1 %", 79.33, 77.98, "ResNet-101", LIP_README),
    PublishedAccuracy("maxblur", "resnet50@authors", "ImageNet val", "top-1 %", 77.04, 76.16, "ResNet-50",
                      ANTIALIASED_README, "binomial filter of 5 taps (Bin-5); poolbench's default is 4"),
    PublishedAccuracy("blurpool", "resnet50@authors", "ImageNet val", "top-1 %", 77.04, 76.16, "ResNet-50",
                      ANTIALIASED_README, "the same antialiased network as maxblur's (Bin-5)"),
    PublishedAccuracy("maxblur", "vgg16", "ImageNet val", "top-1 %", 72.33, 71.59, "VGG-16", ANTIALIASED_README,
                      "Bin-5; MaxBlurPool at VGG's max pools, the paper's sites"),
    # the DPP slides' CIFAR-10 table, as far as its transcription is legible (test error %, VGG-16 column;
    # max pooling is VGG-16's original choice there)
    PublishedAccuracy("avg", "vgg16", "CIFAR-10", "error %", 7.12, 7.43, "max pooling (original)",
                      SLIDES + ", CIFAR-10 table", "transcribed from the slides' text"),
    PublishedAccuracy("stochastic", "vgg16", "CIFAR-10", "error %", 7.67, 7.43, "max pooling (original)",
                      SLIDES + ", CIFAR-10 table", "transcribed from the slides' text"),
)
