"""The shared interface of the trajectory optimizers (CEM, iCEM, MPPI).

A planner optimizes open-loop action sequences for ``S`` start states at once (several
envs planned in one call). It only sees an *objective*::

    objective(actions (S, P, H, A)) -> scores (S, P)   # higher is better

scoring ``P`` candidate sequences of horizon ``H`` for each of the ``S`` start states.
``ModelEnv.evaluate_action_sequences`` (bound to the current observations) has exactly
this signature. Everything is batched over ``S`` and ``P`` on one device; the inner
loop of every optimizer issues no host synchronization (no ``.item()``, no data-dependent
Python branches), and every random draw uses the planner's ``torch.Generator`` so that
a seeded planner is reproducible and resumable from :meth:`Planner.state_dict`.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from mbrl.errors import MbrlError

Objective = Callable[[Tensor], Tensor]
"""``objective(actions (S, P, H, A)) -> scores (S, P)``, higher is better."""

# Score given to candidates whose objective is NaN/inf (a diverging model): they are
# never chosen as elites and get zero MPPI weight.
WORST_SCORE = -1e30


class Planner(abc.ABC):
    """Base class: bounds, warm start, random draws, checkpointing.

    Subclasses implement :meth:`_optimize`. The warm start (the mean the next call starts
    from) is the optimizer's final mean shifted by one step, its last step re-initialized
    to the middle of the action box, as in PETS (Chua et al. 2018).

    Args:
        act_low: ``(A,)`` lower action bounds.
        act_high: ``(A,)`` upper action bounds.
        horizon: planning horizon ``H``.
        cfg: the planner's config dataclass.
        device: where samples live (the objective must accept tensors there).
        generator: source of all random draws (on ``device``); ``None`` uses torch's
            global RNG.
    """

    def __init__(
        self,
        act_low: Tensor,
        act_high: Tensor,
        horizon: int,
        cfg: Any,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.act_low = torch.as_tensor(act_low, dtype=torch.float32, device=self.device).reshape(-1)
        self.act_high = torch.as_tensor(act_high, dtype=torch.float32, device=self.device).reshape(
            -1
        )
        if self.act_low.shape != self.act_high.shape:
            raise MbrlError(
                f"act_low {tuple(self.act_low.shape)} and act_high {tuple(self.act_high.shape)} "
                "must have the same shape (A,)."
            )
        if not bool((self.act_low < self.act_high).all()):
            raise MbrlError(
                f"every act_low must be < act_high; got {self.act_low.tolist()} and "
                f"{self.act_high.tolist()}. Planners need a bounded action box."
            )
        if horizon < 1:
            raise MbrlError(f"planning horizon must be >= 1, got {horizon}.")
        if generator is not None and generator.device.type != self.device.type:
            raise MbrlError(
                f"the planner's generator is on {generator.device} but the planner runs on "
                f"{self.device}; create it with torch.Generator(device={str(self.device)!r})."
            )
        self.horizon = horizon
        self.act_dim = int(self.act_low.shape[0])
        self.cfg = cfg
        self.generator = generator
        self.num_envs = 1
        self._warm_start: Tensor | None = None

    # -- public API ----------------------------------------------------------------------
    @property
    def warm_start(self) -> Tensor | None:
        """``(S, H, A)`` mean the next :meth:`plan` starts from, or ``None`` after reset."""
        return self._warm_start

    def reset(self, num_envs: int = 1) -> None:
        """Forget the warm start (call at the start of each episode)."""
        self.num_envs = num_envs
        self._warm_start = None

    def plan(self, objective: Objective, num_envs: int = 1) -> Tensor:
        """Optimize action sequences for ``num_envs`` start states.

        If the warm start was planned for a different number of envs it is discarded.

        Returns:
            ``(S, H, A)`` plan within bounds; the agent executes ``plan[:, 0]``.
        """
        if self._warm_start is None or self._warm_start.shape[0] != num_envs:
            self.reset(num_envs)
            mean = self.initial_mean(num_envs)
        else:
            mean = self._warm_start
        plan, final_mean = self._optimize(objective, mean)
        self._warm_start = self.shift(final_mean)
        return plan

    def act(self, objective: Objective, num_envs: int = 1) -> Tensor:
        """First action of :meth:`plan`: ``(S, A)``."""
        return self.plan(objective, num_envs)[:, 0]

    def state_dict(self) -> dict[str, Any]:
        """Warm start, generator state and subclass memory (e.g. iCEM's kept elites)."""
        return {
            "warm_start": None if self._warm_start is None else self._warm_start.clone(),
            "num_envs": self.num_envs,
            "generator": None if self.generator is None else self.generator.get_state(),
            **self._extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ws = state["warm_start"]
        self._warm_start = None if ws is None else ws.to(self.device)
        self.num_envs = int(state["num_envs"])
        if self.generator is not None and state["generator"] is not None:
            self.generator.set_state(state["generator"])
        self._load_extra_state(state)

    # -- helpers for subclasses ----------------------------------------------------------
    def initial_mean(self, num_envs: int) -> Tensor:
        """``(S, H, A)`` middle of the action box."""
        mid = (self.act_low + self.act_high) / 2
        return mid.expand(num_envs, self.horizon, self.act_dim).clone()

    def initial_std(self, fraction: float) -> Tensor:
        """``(A,)`` ``fraction · (high − low)``; 1/4 gives PETS' variance (ub−lb)²/16."""
        return fraction * (self.act_high - self.act_low)

    def shift(self, seqs: Tensor) -> Tensor:
        """Drop the first step of ``(..., H, A)`` sequences, append the box middle."""
        last = ((self.act_low + self.act_high) / 2).expand(*seqs.shape[:-2], 1, self.act_dim)
        return torch.cat([seqs[..., 1:, :], last], dim=-2)

    def clip(self, actions: Tensor) -> Tensor:
        return torch.maximum(torch.minimum(actions, self.act_high), self.act_low)

    def randn(self, *shape: int) -> Tensor:
        return torch.randn(shape, generator=self.generator, device=self.device)

    def rand(self, *shape: int) -> Tensor:
        return torch.rand(shape, generator=self.generator, device=self.device)

    def evaluate(self, objective: Objective, actions: Tensor) -> Tensor:
        """Call the objective on ``(S, P, H, A)`` and check it returned ``(S, P)``."""
        scores = objective(actions)
        if scores.shape != actions.shape[:2]:
            raise MbrlError(
                f"a planning objective must map actions {tuple(actions.shape)} (S, P, H, A) "
                f"to scores (S, P) = {tuple(actions.shape[:2])}; got {tuple(scores.shape)}."
            )
        return torch.where(torch.isfinite(scores), scores, torch.full_like(scores, WORST_SCORE))

    # -- subclass hooks ------------------------------------------------------------------
    @abc.abstractmethod
    def _optimize(self, objective: Objective, mean: Tensor) -> tuple[Tensor, Tensor]:
        """Run the optimizer from ``mean (S, H, A)``; return ``(plan, final_mean)``."""

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        return None


def gather_rows(x: Tensor, idx: Tensor) -> Tensor:
    """Pick ``idx (S, K)`` along dim 1 of ``x (S, P, H, A)`` -> ``(S, K, H, A)``."""
    S, _, H, A = x.shape
    return torch.gather(x, 1, idx[:, :, None, None].expand(S, idx.shape[1], H, A))


def truncated_standard_normal(
    shape: tuple[int, ...],
    bound: float,
    generator: torch.Generator | None,
    device: torch.device,
) -> Tensor:
    """Standard normal samples truncated to ``[-bound, bound]`` by inverse-CDF sampling."""
    cdf_low = 0.5 * (1 + math.erf(-bound / math.sqrt(2)))
    u = torch.rand(shape, generator=generator, device=device)
    p = cdf_low + u * (1 - 2 * cdf_low)
    x = math.sqrt(2) * torch.erfinv(2 * p - 1)
    return x.clamp(-bound, bound)
