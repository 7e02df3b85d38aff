"""MOBILE: model-Bellman inconsistency penalized offline policy optimization.

Sun, Zhang, Jia, Lin, Ye, Yu 2023, "Model-Bellman Inconsistency for Model-based Offline
Reinforcement Learning" (ICML 2023), with the values of the authors' code (OfflineRL-Kit,
github.com/yihaosun1124/OfflineRL-Kit: ``run_example/run_mobile.py``,
``offlinerlkit/policy/model_based/mobile.py``).

MOBILE leaves the model's rewards alone and penalizes the Bellman *target* by how much
it disagrees across the elites' predicted next states. For each training row ``(s, a)``
of a model-data batch, with elites ``e = 1..K`` predicting ``N(μ_e, σ_e²)`` over the next
state and ``M`` = ``num_samples`` draws per elite::

    s'_{e,m} = s + μ_e(s, a) + σ_e(s, a) ⊙ ε_{e,m},   ε ~ N(0, I)
    a'_{e,m} ~ π(·|s'_{e,m})                              (current stochastic policy)
    Q'_{e,m} = min_i Q̄_i(s'_{e,m}, a'_{e,m})               (target critics)
    U(s, a)  = std_e ( mean_m Q'_{e,m} )                   (unbiased std over the K elites)
    y = max(0, r − β·U(s, a) + γ (1 − terminated) · min_i Q̄_i(s', a')),  a' ~ π(·|s')

with ``U = 0`` on the batch's dataset rows (the real data need no pessimism). There is
no entropy term in the target ("deterministic backup"); the clamp at 0 is the code's
(D4RL locomotion rewards are positive almost everywhere). The rest is SAC and the shared
loop of :mod:`mbrl.offline` (50,000 rollouts of ``k`` steps from dataset states every
1,000 updates, a random elite per sample and step, 5 epochs of rollouts kept, batches of
256 with 12 dataset rows): 2 critics and actor 2×256 ReLU, γ 0.99, τ 5e-3, automatic α
(target −|A|), log σ in [−5, 2], Adam 3e-4 for the critics and 1e-4 for actor and α, the
actor's step size cosine-annealed to 0 over the run. Defaults: halfcheetah-medium
(``k = 5``, ``β = 0.5``); per-task ``k``/``β`` in ``configs/mobile/``.

Deviations (each deliberate):

- The critic loss sums the critics' mean squared errors (SAC's, :mod:`mbrl.agents.sac`);
  the code averages them (a factor 1/N on the critics' step, which Adam undoes).
- SAC's update order (critics, actor, α), clipped log σ, torch's default initialisation.
- The dynamics model is this project's ensemble/trainer (MBPO's recipe; holdout capped
  at 1,000 rows as in OfflineRL-Kit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mbrl.agents.sac import SAC, SACConfig
from mbrl.config import check_non_negative, check_positive
from mbrl.models.ensemble import ProbabilisticEnsemble
from mbrl.offline import ModelBasedOfflineAgent, OfflineModelBasedConfig
from mbrl.registry import AGENTS
from mbrl.train import RunContext, TrainConfig
from mbrl.types import TransitionBatch


def mobile_penalty(
    obs: Tensor,
    next_mean: Tensor,
    next_std: Tensor,
    noise: Tensor,
    policy: Callable[[Tensor], Tensor],
    q_min: Callable[[Tensor, Tensor], Tensor],
) -> Tensor:
    """MOBILE's ``U(s, a)``: the spread across elites of the mean sampled target value.

    Args:
        obs: ``(B, O)``.
        next_mean: ``(K, B, O)`` elites' predicted means of ``Δobs``.
        next_std: ``(K, B, O)`` their standard deviations.
        noise: ``(M, K, B, O)`` standard-normal draws (``M`` samples per elite).
        policy: ``obs (n, O) -> act (n, A)``.
        q_min: ``(obs (n, O), act (n, A)) -> (n,)``, the min over target critics.

    Returns:
        ``(B,)``: ``std_K(mean_M Q'(s'_{k,m}, π(s'_{k,m})))`` (unbiased std).
    """
    m, k, b, o = noise.shape
    next_obs = obs + next_mean + next_std * noise  # (M, K, B, O)
    flat = next_obs.reshape(-1, o)
    q = q_min(flat, policy(flat)).reshape(m, k, b)
    return q.mean(0).std(0)


def mobile_target(
    rew: Tensor,
    penalty: Tensor,
    next_q: Tensor,
    terminated: Tensor,
    gamma: float,
    beta: float,
    clamp_min: float | None,
) -> Tensor:
    """``max(clamp_min, r − β·U + γ (1 − terminated) next_q)``, all ``(B,)``."""
    not_done = (~terminated).to(next_q.dtype)
    target = rew - beta * penalty + gamma * not_done * next_q
    return target if clamp_min is None else target.clamp(min=clamp_min)


class MOBILESAC(SAC):
    """SAC whose Bellman target subtracts MOBILE's penalty (see the module docstring).

    ``model`` and ``real_rows`` (the count of leading dataset rows in every batch, which
    get no penalty) are set by the agent.
    """

    def __init__(
        self,
        *args: Any,
        beta: float,
        num_samples: int,
        deterministic_backup: bool,
        clamp_min: float | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.beta, self.num_samples = float(beta), int(num_samples)
        self.deterministic_backup, self.clamp_min = deterministic_backup, clamp_min
        self.model: ProbabilisticEnsemble | None = None
        self.real_rows = 0
        self.last_penalty = 0.0

    def _q_min(self, obs: Tensor, act: Tensor) -> Tensor:
        return self.target_critic(obs, act).min(dim=0).values

    def _policy(self, obs: Tensor) -> Tensor:
        act, _ = self.actor(obs)
        return act

    def penalty(self, obs: Tensor, act: Tensor) -> Tensor:
        """``U(s, a)`` for ``obs (B, O)``, ``act (B, A)`` -> ``(B,)`` (under no_grad)."""
        assert self.model is not None, "MOBILESAC.model must be set before updates"
        model = self.model
        mean, logvar = model.predict(obs, act)  # (E, B, out), raw units
        elites = model.elite_idx
        o = model.obs_dim
        mu = mean[elites, :, :o]
        std = torch.zeros_like(mu) if logvar is None else logvar[elites, :, :o].mul(0.5).exp()
        noise = torch.randn(self.num_samples, *mu.shape, device=mu.device)
        return mobile_penalty(obs, mu, std, noise, self._policy, self._q_min)

    def critic_target(self, batch: TransitionBatch, next_act: Tensor, next_logp: Tensor) -> Tensor:
        n = self.real_rows  # dataset rows lead the batch and get no penalty
        penalty = batch.rew.new_zeros(batch.rew.shape)
        if n < penalty.shape[0]:
            penalty[n:] = self.penalty(batch.obs[n:], batch.act[n:])
        next_q = self._q_min(batch.next_obs, next_act)
        if not self.deterministic_backup:
            next_q = next_q - self.alpha * next_logp
        if n < penalty.shape[0]:
            self.last_penalty = float(penalty[n:].mean())
        return mobile_target(
            batch.rew,
            penalty,
            next_q,
            batch.terminated,
            self.cfg.gamma,
            self.beta,
            self.clamp_min,
        )


@dataclass
class MOBILEConfig(OfflineModelBasedConfig):
    """MOBILE hyperparameters (Sun et al. 2023; defaults: the authors' code).

    Attributes:
        penalty_coef: ``β``, weight of the Bellman-inconsistency penalty.
        num_samples: next states drawn per elite for the penalty (``M``).
        deterministic_backup: no entropy term in the Bellman target (the code's choice).
        target_clamp_min: lower clamp of the target (``None``: no clamp).
        (the other fields: :class:`~mbrl.offline.OfflineModelBasedConfig`)
    """

    penalty_coef: float = 0.5
    num_samples: int = 10
    deterministic_backup: bool = True
    target_clamp_min: float | None = 0.0
    actor_learning_rate: float | None = 1e-4
    alpha_learning_rate: float | None = 1e-4
    actor_lr_schedule: str = "cosine"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_non_negative(self, "penalty_coef")
        check_positive(self, "num_samples")


@AGENTS.register("mobile", config=MOBILEConfig)
class MOBILEAgent(ModelBasedOfflineAgent):
    """MOBILE: offline model-based SAC with a Bellman-inconsistency penalty (Sun et al. 2023)."""

    def __init__(self, cfg: TrainConfig[MOBILEConfig], ctx: RunContext) -> None:
        super().__init__(cfg, ctx)
        assert isinstance(self.sac, MOBILESAC)
        self.sac.model = self.model
        self.sac.real_rows = cfg.agent.real_rows

    def make_sac(self, cfg: SACConfig) -> SAC:
        a: MOBILEConfig = self.cfg.agent
        return MOBILESAC(
            self.obs_dim,
            self.act_dim,
            cfg,
            self.act_low,
            self.act_high,
            self.device,
            beta=a.penalty_coef,
            num_samples=a.num_samples,
            deterministic_backup=a.deterministic_backup,
            clamp_min=a.target_clamp_min,
        )

    def sample_batch(self) -> TransitionBatch:
        """The shared mixed batch; tells the learner how many leading rows are real."""
        batch = super().sample_batch()
        assert isinstance(self.sac, MOBILESAC)
        # an all-real batch (empty model buffer, or real_ratio = 1) has no model rows
        mixed = len(self.model_buffer) > 0 and self.mcfg.real_rows < len(batch)
        self.sac.real_rows = self.mcfg.real_rows if mixed else len(batch)
        return batch

    def extra_metrics(self) -> dict[str, float]:
        assert isinstance(self.sac, MOBILESAC)
        return {"train/penalty_mean": self.sac.last_penalty}


__all__ = ["MOBILESAC", "MOBILEAgent", "MOBILEConfig", "mobile_penalty", "mobile_target"]
