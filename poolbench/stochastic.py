"""Seeded randomness and S3Pool's stochastic spatial sampling.

Stochastic poolers (stochastic pooling, S3Pool, S3DPP) own a
``torch.Generator`` so that a run is reproducible from a seed and two tiers of
the same pooler can be compared sample for sample.
"""
from __future__ import annotations

import torch

__all__ = ["Seeded", "s3_indices", "s3_sample"]


class Seeded:
    """Mixin: a private CPU generator seeded from ``seed`` (or a given generator).

    ``reseed()`` restarts the random stream, so the same forward can be
    replayed (gradcheck, tier comparisons).
    """

    def init_generator(self, seed: int | None = None, generator: torch.Generator | None = None) -> None:
        if seed is not None and generator is not None:
            raise ValueError("pass either seed or generator, not both")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.seed = int(torch.seed() % (2**63) if seed is None and generator is None else (seed or 0))
        self.generator = generator if generator is not None else torch.Generator().manual_seed(self.seed)
        self._initial_state = self.generator.get_state()

    def reseed(self) -> None:
        """Rewind the generator to its state at construction."""
        self.generator.set_state(self._initial_state)


def s3_indices(
    size: int, stride: int, grid_size: int, training: bool, generator: torch.Generator | None
) -> torch.Tensor:
    """Indices of the rows (or columns) S3Pool keeps out of ``size``.

    The axis is cut into cells of ``grid_size`` (a multiple of ``stride``);
    each full cell keeps ``grid_size // stride`` of its rows, drawn without
    replacement and kept in order (Zhai et al. 2017); a last partial cell of
    length r keeps ceil(r / stride).  In eval mode the choice is deterministic:
    every ``stride``-th row, i.e. plain strided subsampling.  The result has
    ``ceil(size / stride)`` entries, the size a stride-``stride`` pooling gives.
    """
    if grid_size % stride != 0:
        raise ValueError(f"grid_size must be a multiple of stride ({stride}), got {grid_size}")
    if not training:
        return torch.arange(0, size, stride)
    picked = []
    for start in range(0, size, grid_size):
        length = min(grid_size, size - start)
        count = -(-length // stride)
        choice = torch.randperm(length, generator=generator)[:count].sort().values
        picked.append(choice + start)
    return torch.cat(picked)


def s3_sample(
    x: torch.Tensor, stride: int, grid_size: int | tuple[int, int], training: bool,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Keep S3Pool-sampled rows and columns of ``x`` (N, C, H, W); one draw per batch.

    ``grid_size`` is one cell size for both axes or (rows, columns).
    """
    grid_h, grid_w = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    rows = s3_indices(x.shape[-2], stride, grid_h, training, generator).to(x.device)
    cols = s3_indices(x.shape[-1], stride, grid_w, training, generator).to(x.device)
    return x.index_select(-2, rows).index_select(-1, cols)
