"""Cross-entropy method (CEM) as used by PETS.

Chua, Calandra, McAllister, Levine (2018), "Deep Reinforcement Learning in a Handful of
Trials using Probabilistic Dynamics Models", NeurIPS (arXiv:1805.12114). Per env step:
start from the previous mean shifted by one step and the initial variance; for each
iteration sample a population, keep the top ``elite_ratio`` as elites, and move the
mean and variance towards the elites' with momentum
``mean = α·old + (1 − α)·elite_mean`` (same for the variance); execute the first action
of the final mean.

Sampling (``sampling="truncated"``, PETS): the per-coordinate variance is first capped so
that ``mean ± 2σ`` stays inside the action box, then samples are
``mean + σ·z`` with ``z`` a standard normal truncated to ``[−2, 2]``, so samples are
always feasible. ``sampling="clipped"``: ``clip(mean + σ·z)`` with an untruncated ``z``
(keeps more exploration when the mean sits near a bound, where the PETS cap shrinks σ
to zero).

Deviations from PETS' code:
- No early stop when the variance falls below ε (it needs a host sync per iteration);
  all ``num_iterations`` always run.
- Defaults are the paper's generic values (5 iterations, population 500, elite ratio
  0.1, α 0.1); PETS' HalfCheetah used population 400, elite ratio 0.16, α 0.12.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mbrl.config import check_in_range, check_positive
from mbrl.errors import MbrlError
from mbrl.planners.base import Objective, Planner, gather_rows, truncated_standard_normal
from mbrl.registry import PLANNERS


@dataclass
class CEMConfig:
    """CEM hyperparameters (PETS defaults).

    Attributes:
        num_iterations: CEM iterations per env step.
        population_size: candidate sequences per iteration and env.
        elite_ratio: fraction of the population refitting the distribution.
        alpha: momentum; weight of the *old* mean/variance in each update.
        init_std_fraction: initial std as a fraction of ``high − low`` (1/4 gives PETS'
            variance ``(ub − lb)²/16``).
        sampling: ``truncated`` (PETS: 2σ-truncated normal inside bounds) or
            ``clipped`` (Gaussian clipped to bounds).
    """

    num_iterations: int = 5
    population_size: int = 500
    elite_ratio: float = 0.1
    alpha: float = 0.1
    init_std_fraction: float = 0.25
    sampling: str = "truncated"

    def num_elites(self) -> int:
        return max(1, round(self.elite_ratio * self.population_size))


@PLANNERS.register(
    "cem", config=CEMConfig, description="CEM with PETS' defaults (Chua et al. 2018)"
)
class CEM(Planner):
    """Cross-entropy method over ``(H, A)`` action sequences, batched over envs."""

    cfg: CEMConfig

    def __init__(
        self,
        act_low: Tensor,
        act_high: Tensor,
        horizon: int,
        cfg: CEMConfig | None = None,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> None:
        cfg = cfg or CEMConfig()
        check_positive(cfg, "num_iterations", "population_size", "init_std_fraction")
        check_in_range(cfg, "elite_ratio", 0.0, 1.0)
        check_in_range(cfg, "alpha", 0.0, 1.0)
        if cfg.alpha == 1.0:
            raise MbrlError("CEMConfig.alpha=1.0 would never move the mean; use a value < 1.")
        if cfg.sampling not in ("truncated", "clipped"):
            raise MbrlError(
                f"CEMConfig.sampling={cfg.sampling!r} must be 'truncated' or 'clipped'."
            )
        super().__init__(act_low, act_high, horizon, cfg, device, generator)

    def _optimize(self, objective: Objective, mean: Tensor) -> tuple[Tensor, Tensor]:
        cfg = self.cfg
        S, H, A = mean.shape
        P, E = cfg.population_size, cfg.num_elites()
        var = self.initial_std(cfg.init_std_fraction).square().expand(S, H, A)
        for _ in range(cfg.num_iterations):
            samples = self._sample(mean, var, P)
            scores = self.evaluate(objective, samples)  # (S, P)
            elite_idx = scores.topk(E, dim=1).indices  # (S, E)
            elites = gather_rows(samples, elite_idx)  # (S, E, H, A)
            mean = cfg.alpha * mean + (1 - cfg.alpha) * elites.mean(1)
            var = cfg.alpha * var + (1 - cfg.alpha) * elites.var(1, unbiased=False)
        # PETS executes the mean; it is inside the box as a convex combination of samples.
        return mean, mean

    def _sample(self, mean: Tensor, var: Tensor, P: int) -> Tensor:
        """``(S, P, H, A)`` samples around ``mean (S, H, A)`` with variance ``var``."""
        S, H, A = mean.shape
        if self.cfg.sampling == "truncated":
            # Cap σ so that mean ± 2σ stays in the box (PETS), then truncate z to ±2.
            room = torch.minimum(mean - self.act_low, self.act_high - mean).clamp_min(0) / 2
            std = torch.minimum(var.sqrt(), room)
            z = truncated_standard_normal((S, P, H, A), 2.0, self.generator, self.device)
        else:
            std = var.sqrt()
            z = self.randn(S, P, H, A)
        # Clipping only guards against rounding in the truncated case.
        return self.clip(mean[:, None] + std[:, None] * z)
