"""Model predictive path integral control (MPPI) with time-filtered noise.

Williams, Aldrich, Theodorou (2017), "Model Predictive Path Integral Control: From Theory
to Application", J. Guidance, Control, and Dynamics; in the sampling-based form used by
PDDM (Nagabandi, Konolige, Levine, Kumar 2019, "Deep Dynamics Models for Learning
Dexterous Manipulation", CoRL, arXiv:1909.11652). Per iteration:

- noise ``ε_t ~ N(0, σ²)`` is filtered in time, ``u_t = β·ε_t + (1 − β)·u_{t−1}``
  (``u_{−1} = 0``, β = 0.9), which makes neighbouring actions correlated (PDDM);
- candidates ``a = clip(mean + u)`` are scored by the objective (return ``R``);
- weights ``w ∝ exp((R − max R)/λ)`` (λ the temperature; PDDM writes ``exp(γ·R)`` with
  ``γ = 1/λ``; subtracting ``max R`` only avoids overflow);
- the new mean is the weighted average of the candidates.

The executed plan is the final mean, warm-started by shifting it one step.

Defaults: population 350, 5 iterations, β 0.9 (the project's reference recipe for
PDDM-style MPPI), temperature λ 1. We use 5 iterations rather than classic MPPI's 1
because a batched objective makes extra iterations cheap, and with an unadapted σ a
single weighted average per env step converges only across several env steps via the
warm start.

Deviations: no control-cost term (the objective owns the reward); the noise std σ is fixed
(``noise_std_fraction · (high − low)``), not adapted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mbrl.config import check_in_range, check_positive
from mbrl.planners.base import Objective, Planner
from mbrl.registry import PLANNERS


@dataclass
class MPPIConfig:
    """MPPI hyperparameters.

    Attributes:
        num_iterations: weighted-average updates per env step.
        population_size: candidate sequences per iteration and env.
        temperature: λ; small follows the best candidates, large averages uniformly.
            Scale it with the spread of returns of your objective.
        noise_std_fraction: σ of the white noise as a fraction of ``high − low``
            (0.5 gives σ = 1 on a ``[−1, 1]`` box).
        filter_beta: β of the time filter ``u_t = β·ε_t + (1 − β)·u_{t−1}``.
    """

    num_iterations: int = 5
    population_size: int = 350
    temperature: float = 1.0
    noise_std_fraction: float = 0.5
    filter_beta: float = 0.9


def mppi_weights(scores: Tensor, temperature: float) -> Tensor:
    """Normalized MPPI weights ``(S, P)`` from scores ``(S, P)``: ``∝ exp((R − max R)/λ)``."""
    w = torch.exp((scores - scores.max(dim=1, keepdim=True).values) / temperature)
    return w / w.sum(dim=1, keepdim=True)


@PLANNERS.register(
    "mppi", config=MPPIConfig, description="MPPI with filtered noise (Williams 2017, PDDM 2019)"
)
class MPPI(Planner):
    """MPPI over ``(H, A)`` action sequences, batched over envs; executes the mean."""

    cfg: MPPIConfig

    def __init__(
        self,
        act_low: Tensor,
        act_high: Tensor,
        horizon: int,
        cfg: MPPIConfig | None = None,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> None:
        cfg = cfg or MPPIConfig()
        check_positive(
            cfg, "num_iterations", "population_size", "temperature", "noise_std_fraction"
        )
        check_in_range(cfg, "filter_beta", 0.0, 1.0)
        super().__init__(act_low, act_high, horizon, cfg, device, generator)

    def filtered_noise(self, S: int, P: int) -> Tensor:
        """``(S, P, H, A)`` noise ``u_t = β·ε_t + (1 − β)·u_{t−1}``, ``ε ~ N(0, σ²)``."""
        cfg = self.cfg
        eps = self.randn(S, P, self.horizon, self.act_dim) * self.initial_std(
            cfg.noise_std_fraction
        )
        u = torch.empty_like(eps)
        prev = torch.zeros_like(eps[:, :, 0])
        for t in range(self.horizon):
            prev = cfg.filter_beta * eps[:, :, t] + (1 - cfg.filter_beta) * prev
            u[:, :, t] = prev
        return u

    def _optimize(self, objective: Objective, mean: Tensor) -> tuple[Tensor, Tensor]:
        cfg = self.cfg
        S = mean.shape[0]
        for _ in range(cfg.num_iterations):
            samples = self.clip(mean[:, None] + self.filtered_noise(S, cfg.population_size))
            w = mppi_weights(self.evaluate(objective, samples), cfg.temperature)  # (S, P)
            mean = torch.einsum("sp,spha->sha", w, samples)
        return mean, mean
