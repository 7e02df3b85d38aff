"""MOPO: model-based offline policy optimization with an uncertainty-penalized reward.

Yu, Thomas, Yu, Ermon, Zou, Levine, Finn, Ma 2020, "MOPO: Model-based Offline Policy
Optimization" (NeurIPS 2020; arXiv:2005.13239). The D4RL v2 settings follow
OfflineRL-Kit (Sun, github.com/yihaosun1124/OfflineRL-Kit, ``run_example/run_mopo.py``
and ``offlinerlkit/dynamics/ensemble_dynamics.py``), the reproduction the MOBILE paper
reports MOPO's v2 scores from (the MOPO paper used the v0 datasets).

MOPO trains SAC on model rollouts whose reward is lowered where the model is uncertain:
with the ensemble's members ``e = 1..E`` predicting Gaussians ``N(μ_e(s,a), σ_e(s,a)²)``
over ``(Δs, r)``, every model transition gets::

    r̃(s, a) = r̂(s, a) − λ · u(s, a)

    u (uncertainty="aleatoric", the paper's default) = max_e ‖σ_e(s, a)‖₂
    u ("pairwise_diff")  = max_e ‖μ_e^s(s, a) − mean_e' μ_e'^s(s, a)‖₂   (next-state means)
    u ("ensemble_std")   = sqrt(mean_d var_e μ_{e,d}^s(s, a))           (population variance)

over **all** ``E`` members (both reference codes), in raw (unnormalized) units; ``r̂`` is
the sampled model reward. Dataset rows are never penalized. Everything else is the shared
loop of :mod:`mbrl.offline`: a 7-member ensemble (5 elites; 4×200 SiLU, MBPO's decays),
50,000 rollouts of ``k`` steps from dataset states every 1,000 updates (a random elite per
sample and step), a FIFO buffer of 5 epochs of rollouts, batches of 256 with 12 dataset
rows, and SAC: 2 critics and actor of 2×256 ReLU, the min of both critics in the target
(with the entropy term), γ 0.99, τ 5e-3, automatic α (target −|A|), log σ in [−5, 2],
Adam 3e-4 for the critics and 1e-4 for actor and α, the actor's step size cosine-annealed
to 0 over the run's epochs. Defaults: halfcheetah-medium (``k = 5``, ``λ = 0.5``);
per-task ``k``/``λ`` in ``configs/mopo/``.

Deviations (each deliberate):

- The penalty is computed once per rollout batch from the pairs ``(s, a)`` (one extra
  all-members forward pass) instead of inside each model step; the value is identical.
- Member choice per sample: a random *elite* (the paper's and the MBPO code's rule).
- SAC's updates come in the order critics, actor, α; log σ is clipped (not softplus-
  bounded); initialisation is torch's default (:mod:`mbrl.agents.sac`).
- The dynamics model is this project's ensemble/trainer (MBPO's recipe; per-member early
  stopping after 5 epochs without a 1% improvement, holdout capped at 1,000 rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mbrl.config import check_non_negative
from mbrl.errors import unknown_name
from mbrl.models.ensemble import ProbabilisticEnsemble
from mbrl.offline import ModelBasedOfflineAgent, OfflineModelBasedConfig
from mbrl.registry import AGENTS
from mbrl.train import RunContext, TrainConfig
from mbrl.types import TransitionBatch

UNCERTAINTY_MODES = ("aleatoric", "pairwise_diff", "ensemble_std")
PENALTY_CHUNK = 8_192  # rows per all-members forward pass (bounds the (E, rows, 200) activations)


def mopo_uncertainty(mean: Tensor, logvar: Tensor | None, obs_dim: int, mode: str) -> Tensor:
    """MOPO's ``u(s, a)`` from every member's prediction -> ``(B,)``.

    Args:
        mean: ``(E, B, ≥ O + 1)`` predicted means of ``(Δobs, rew, ...)`` (raw units).
        logvar: ``(E, B, ≥ O + 1)`` log-variances, or ``None`` (a deterministic model:
            zero aleatoric uncertainty).
        obs_dim: ``O``.
        mode: one of :data:`UNCERTAINTY_MODES` (see the module docstring).
    """
    if mode == "aleatoric":
        if logvar is None:
            return mean.new_zeros(mean.shape[1])
        std = logvar[..., : obs_dim + 1].mul(0.5).exp()  # (E, B, O + 1)
        return std.norm(dim=-1).amax(0)
    mu = mean[..., :obs_dim]  # Δobs means; next-state means differ from them by obs only
    if mode == "pairwise_diff":
        return (mu - mu.mean(0, keepdim=True)).norm(dim=-1).amax(0)
    if mode == "ensemble_std":
        return mu.var(0, unbiased=False).mean(-1).sqrt()
    raise unknown_name("MOPO uncertainty mode", mode, UNCERTAINTY_MODES)


@torch.no_grad()
def model_uncertainty(model: ProbabilisticEnsemble, obs: Tensor, act: Tensor, mode: str) -> Tensor:
    """``u(s, a)`` for ``obs (B, O)``, ``act (B, A)`` over all members, in chunks -> ``(B,)``."""
    parts = []
    for i in range(0, obs.shape[0], PENALTY_CHUNK):
        mean, logvar = model.predict(obs[i : i + PENALTY_CHUNK], act[i : i + PENALTY_CHUNK])
        parts.append(mopo_uncertainty(mean, logvar, model.obs_dim, mode))
    return torch.cat(parts) if parts else obs.new_zeros(0)


@dataclass
class MOPOConfig(OfflineModelBasedConfig):
    """MOPO hyperparameters (Yu et al. 2020; D4RL v2 values of OfflineRL-Kit).

    Attributes:
        penalty_coef: ``λ``, weight of the uncertainty in the penalized reward.
        uncertainty: ``aleatoric`` (default), ``pairwise_diff`` or ``ensemble_std``.
        (the other fields: :class:`~mbrl.offline.OfflineModelBasedConfig`)
    """

    penalty_coef: float = 0.5
    uncertainty: str = "aleatoric"
    actor_learning_rate: float | None = 1e-4
    alpha_learning_rate: float | None = 1e-4
    actor_lr_schedule: str = "cosine"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_non_negative(self, "penalty_coef")
        if self.uncertainty not in UNCERTAINTY_MODES:
            raise unknown_name("MOPO uncertainty mode", self.uncertainty, UNCERTAINTY_MODES)


@AGENTS.register("mopo", config=MOPOConfig)
class MOPOAgent(ModelBasedOfflineAgent):
    """MOPO: offline model-based SAC on rewards penalized by model uncertainty (Yu et al. 2020)."""

    def __init__(self, cfg: TrainConfig[MOPOConfig], ctx: RunContext) -> None:
        super().__init__(cfg, ctx)

    def penalize(self, rollouts: TransitionBatch) -> TransitionBatch:
        """``r − λ·u(s, a)`` on every model transition."""
        a: MOPOConfig = self.cfg.agent
        u = model_uncertainty(self.model, rollouts.obs, rollouts.act, a.uncertainty)
        self.model_metrics["model/penalty_mean"] = float(u.mean())
        self.model_metrics["model/penalty_max"] = float(u.max())
        rollouts.rew = rollouts.rew - a.penalty_coef * u
        return rollouts


__all__ = ["UNCERTAINTY_MODES", "MOPOAgent", "MOPOConfig", "model_uncertainty", "mopo_uncertainty"]
