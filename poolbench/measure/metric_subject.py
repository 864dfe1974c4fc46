"""What a metric measures: a network or one pooling layer, with its input, on a device.

:class:`Subject` builds the module lazily and once (every metric of a cell
group shares it); its passes — inference, training step, training forward —
are the measurement core's :class:`poolbench.measure.PassSubject`, the same
closures the per-layer benchmark and the regression gates time.
"""
from __future__ import annotations

import copy
import json
from typing import Callable

import torch
from torch import nn

from .. import models, registry
from .subject import PassSubject, check_amp
from ..metrics import BASELINE_POOLER, BASELINE_TIER, SCOPES, MetricRow, Settings

__all__ = ["Subject"]


class Subject:
    """A network or one pooling layer, with its input, ready to be measured on ``device``.

    Built lazily and once: every metric of a cell group shares the module.
    Layer inputs are ReLU'd Gaussians — every pooling site in these networks
    follows a ReLU — at the shape the layer sees in the network.
    """

    def __init__(self, model_name: str, pooler: str, tier: str, scope: str, *, device: torch.device | str,
                 batch: int, resolution: int, sites: list[models.PoolSite] | None = None,
                 shape: tuple[int, ...] | None = None, layer: str = "", settings: Settings = Settings(),
                 dtype: torch.dtype = torch.float32, seed: int = 0, baselines: dict | None = None,
                 amp: str = "off", channels_last: bool = False):
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        self.model_name, self.pooler, self.tier, self.scope = model_name, pooler, tier, scope
        self.device, self.dtype = torch.device(device), dtype
        self.batch, self.resolution = batch, resolution
        self.sites = list(sites or [])
        self.layer = layer
        self.shape = tuple(shape) if shape is not None else (batch, 3, resolution, resolution)
        self.settings, self.seed = settings, seed
        check_amp(amp)
        self.amp, self.channels_last = amp, bool(channels_last)  # how people train: autocast, memory format
        self.baselines = baselines if baselines is not None else {}
        self._module: nn.Module | None = None
        self._inputs: torch.Tensor | None = None
        self._passes: PassSubject | None = None

    # -- identity ---------------------------------------------------------------------------
    @property
    def is_baseline(self) -> bool:
        return self.pooler == BASELINE_POOLER and self.tier == BASELINE_TIER

    @property
    def site(self) -> models.PoolSite:
        if not self.sites:
            raise ValueError("a network subject has no pooling site")
        return self.sites[0]

    def row(self, metric: str, quantity: str, value, unit: str, status: str = "ok", error: str = "",
            detail: dict | None = None) -> MetricRow:
        return MetricRow(self.model_name, self.pooler, self.tier, self.scope, self.layer,
                   "x".join(map(str, self.shape)), metric, quantity,
                   None if value is None else float(value), unit, status, error,
                   json.dumps(detail, sort_keys=True, default=str) if detail else "")

    # -- building ---------------------------------------------------------------------------
    def pooler_options(self) -> dict:
        spec = registry.get_spec(self.pooler, self.tier)
        return {"seed": self.seed} if spec.stochastic else {}

    def build(self, tier: str | None = None) -> nn.Module:
        """A fresh module for this subject (``tier`` overrides the pooler's tier, e.g. for FLOP counting).

        Networks are deep copies of one initialised baseline per model (shared
        through ``baselines``), so every pooler sees the same weights and
        VGG-16's seconds-long initialisation happens once per run.
        """
        tier = tier or self.tier
        if self.scope == "network":
            base = self.baselines.get(self.model_name)
            if base is None:
                torch.manual_seed(self.seed)
                base = self.baselines[self.model_name] = models.build_baseline(self.model_name)
            module = copy.deepcopy(base)
            if not self.is_baseline:
                torch.manual_seed(self.seed)
                models.swap_in(module, self.model_name, self.pooler, tier, device=self.device, **self.pooler_options())
        elif self.is_baseline:
            module = nn.MaxPool2d(*self.site.geometry)
        else:
            module = models.create_at(self.site, self.pooler, tier, **self.pooler_options())  # the site's options too
        module = module.to(device=self.device, dtype=self.dtype)
        return module.to(memory_format=torch.channels_last) if self.channels_last else module

    @property
    def module(self) -> nn.Module:
        if self._module is None:
            torch.manual_seed(self.seed)
            self._module = self.build()
        return self._module

    def inputs(self, batch: int | None = None) -> torch.Tensor:
        """The subject's input (batch ``batch`` if given: a slice of the same tensor)."""
        if self._inputs is None:
            generator = torch.Generator().manual_seed(self.seed)
            x = torch.randn(self.shape, generator=generator, dtype=self.dtype)
            self._inputs = (x if self.scope == "network" else x.relu_()).to(self.device)
            if self.channels_last:
                self._inputs = self._inputs.contiguous(memory_format=torch.channels_last)
        return self._inputs if batch is None else self._inputs[:batch]

    # -- closures (zero-argument, set-up outside) -------------------------------------------
    @property
    def passes(self) -> PassSubject:
        """The module's passes on this subject's input (a layer's training step includes the input gradient)."""
        if self._passes is None:
            module = self.module
            params = [p for p in module.parameters() if p.requires_grad]
            self._passes = PassSubject(module, self.inputs(), params, module, seed=self.seed,
                                       input_grad=self.scope == "layer", amp=self.amp)
        return self._passes

    def forward_fn(self) -> Callable[[], object]:
        """Inference: eval mode, no autograd."""
        return self.passes.closure("forward")

    def train_fn(self) -> Callable[[], object]:
        """One training step without the optimizer: train-mode forward and backward (input grads for layers)."""
        return self.passes.closure("forward_backward")

    def training_forward_fn(self) -> Callable[[], object]:
        """A train-mode forward with autograd recording (what a training step keeps for backward)."""
        return self.passes.training_forward

    def release(self) -> None:
        self._module = self._inputs = self._passes = None


