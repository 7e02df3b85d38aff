"""The small shared vocabulary of the project.

Gymnasium names everywhere: ``obs, act, rew, next_obs, terminated, truncated``.
Shapes: ``B`` batch, ``O`` observation dim, ``A`` action dim.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Protocol

import torch
from torch import Tensor


@dataclass
class TransitionBatch:
    """A batch of transitions, all tensors on one device.

    Attributes:
        obs: ``(B, O)`` float32.
        act: ``(B, A)`` float32.
        rew: ``(B,)`` float32.
        next_obs: ``(B, O)`` float32.
        terminated: ``(B,)`` bool, true termination (no bootstrapping).
        truncated: ``(B,)`` bool, episode cut by a time limit (bootstrap through it).
    """

    obs: Tensor
    act: Tensor
    rew: Tensor
    next_obs: Tensor
    terminated: Tensor
    truncated: Tensor

    def __len__(self) -> int:
        return int(self.obs.shape[0])

    def to(self, device: torch.device | str) -> TransitionBatch:
        return TransitionBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def __getitem__(self, idx: Tensor | slice) -> TransitionBatch:
        return TransitionBatch(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})


class TerminationFn(Protocol):
    """Batched termination: ``(obs (B,O), act (B,A), next_obs (B,O)) -> terminated (B,) bool``."""

    def __call__(self, obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor: ...


class RewardFn(Protocol):
    """Batched reward: ``(obs (B,O), act (B,A), next_obs (B,O)) -> rew (B,) float``."""

    def __call__(self, obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor: ...
