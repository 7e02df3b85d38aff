"""Per-feature standardization fitted on training data, stored as module buffers.

Buffers travel with ``.to(device)`` and ``state_dict()``, so a saved model keeps the
statistics it was trained with.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mbrl.errors import MbrlError


class Normalizer(nn.Module):
    """``x -> (x - mean) / std`` per feature.

    Features whose standard deviation is below ``min_std`` (constant in the data)
    get ``std = 1``: they are centred but not scaled, so a model that later sees a
    tiny deviation in such a feature does not get a ~1e6-sized input (the MBPO
    reference code does the same).

    Args:
        dim: number of features ``D``.
        min_std: threshold below which a feature counts as constant.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, dim: int, min_std: float = 1e-6) -> None:
        super().__init__()
        self.dim = dim
        self.min_std = min_std
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, x: Tensor) -> None:
        """Set mean/std from data ``x`` of shape ``(N, D)`` (``N >= 1``)."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise MbrlError(
                f"Normalizer.fit expects data of shape (N, {self.dim}), got {tuple(x.shape)}."
            )
        if x.shape[0] == 0:
            raise MbrlError("Normalizer.fit got no data (N = 0); collect data before fitting.")
        x = x.to(self.mean.device, torch.float32)
        mean = x.mean(0)
        std = x.std(0, unbiased=False)
        std = torch.where(std < self.min_std, torch.ones_like(std), std)
        self.mean.copy_(mean)
        self.std.copy_(std)

    def normalize(self, x: Tensor) -> Tensor:
        """``(..., D) -> (..., D)`` standardized."""
        return (x - self.mean) / self.std

    def denormalize(self, x: Tensor) -> Tensor:
        """Inverse of :meth:`normalize`: ``(..., D) -> (..., D)`` in raw units."""
        return x * self.std + self.mean
