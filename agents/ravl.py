"""RAVL: Reach-Aware Value Learning (offline model-based RL without an uncertainty penalty).

Sims, Lu, Teh 2024, "The Edge-of-Reach Problem in Offline Model-Based Reinforcement
Learning" (NeurIPS 2024; arXiv:2402.12527), with the values of the authors' code
(github.com/anyasims/edge-of-reach: ``train_ravl_agent.py``, ``agent_training/agent.py``,
itself adapted from CORL's EDAC).

The edge-of-reach problem: k-step model rollouts from dataset states produce states that
appear only as *next* states (the rollouts are truncated there), so their values are never
trained, only bootstrapped from. Uncertainty penalties (MOPO, MOBILE) hide this by
accident. RAVL instead makes the value function pessimistic where the critics disagree,
which is exactly at such unreached states: EDAC's ensemble of ``N`` critics with a
minimum over all of them in the target, and EDAC's gradient-diversity regulariser (An et
al. 2021, "Uncertainty-Based Offline Reinforcement Learning with Diversified
Q-Ensemble", arXiv:2110.01548). The rewards are the model's, **unpenalized**.

The loop (:mod:`mbrl.offline`): fit a 7-member ensemble (5 elites) on the dataset; every
epoch of ``updates_per_epoch`` = 1,000 updates, roll the current policy out for ``k`` = 5
model steps from 50,000 dataset states (a random elite per sample and step), keep 5
epochs of rollouts in a FIFO buffer, and train on batches of 256 with ``int(0.05·256)``
= 12 dataset rows. One update, with ``N`` critics ``Q_1..Q_N`` and targets ``Q̄_i``::

    a' ~ π(·|s')
    y   = r + γ (1 − terminated) (min_{i≤N} Q̄_i(s', a') − α log π(a'|s'))
    L_Q = Σ_i mean_B (Q_i(s, a) − y)²  +  η · L_div
    L_div = mean_B  Σ_{i≠j} ⟨g_i, g_j⟩ / (N − 1),   g_i = ∇_a Q_i(s, a) / (‖∇_a Q_i(s, a)‖ + 1e-10)
    ã ~ π(·|s);   L_π = mean_B (α log π(ã|s) − min_i Q_i(s, ã))
    L_α = −mean_B log α (log π(ã|s) − |A|);   Q̄_i ← (1 − τ) Q̄_i + τ Q_i

(``L_div`` is minimised: it pushes the critics' action-gradients apart, so their minimum
is pessimistic off the data manifold.) Networks: critics and actor 3×256 ReLU; EDAC's
initialisation (hidden biases 0.1, critic output layer U(±3e-3), actor output layer
U(±1e-3)); tanh-Gaussian actor with log σ clipped to [−5, 2]; Adam 3e-4 for actor,
critics and α; α starts at 1; γ 0.99, τ 5e-3. Defaults ``N = 10``, ``η = 1``, ``k = 5``,
real ratio 0.05 (the code's defaults); per-task values in ``configs/ravl/``.

The edge-of-reach experiment (the paper's Section 4): ``--agent.dynamics oracle`` replaces
the learned model by the true simulator (:class:`~mbrl.models.oracle.OracleDynamics`);
with ``--agent.num-critics 2 --agent.eta 0`` the same command is SAC on truncated true
rollouts, whose Q-values the paper shows to diverge (``train/q_mean`` vs ``eval/return``).

Deviations from the authors' code (each deliberate):

- Update order: critics, then actor, then α (SAC's, :mod:`mbrl.agents.sac`); the code
  (from CORL) updates α, then the actor, then the critics. Both are valid SAC orders.
- The α loss reuses the actor step's sample ``ã`` (the code draws a fresh one).
- The dynamics model is this project's ensemble and trainer (MBPO's recipe, holdout
  capped at 1,000 rows as in OfflineRL-Kit); the authors train theirs with a separate
  script of the same architecture (7 members, 5 elites, 4×200).
- Termination of model rollouts uses the env's termination function of the gymnasium v4
  env (same conditions as the code's Hopper/Walker2d done functions).
- Unterminated model transitions at the rollout horizon are stored with
  ``truncated=True`` and bootstrap, as in the code (it never masks truncation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mbrl.agents.sac import SAC, CriticEnsemble, SACConfig
from mbrl.config import check_non_negative
from mbrl.errors import MbrlError, unknown_name
from mbrl.models.oracle import OracleDynamics
from mbrl.offline import ModelBasedOfflineAgent, OfflineModelBasedConfig
from mbrl.registry import AGENTS
from mbrl.train import RunContext, TrainConfig
from mbrl.types import TransitionBatch

DYNAMICS = ("learned", "oracle")


def edac_diversity(grads: Tensor) -> Tensor:
    """EDAC's diversity term from per-critic action-gradients ``grads (N, B, A)`` -> ``()``.

    ``mean_B Σ_{i≠j} ⟨ĝ_i, ĝ_j⟩ / (N − 1)`` with ``ĝ_i = g_i / (‖g_i‖ + 1e-10)``. The
    pairwise sum is ``‖Σ_i ĝ_i‖² − Σ_i ‖ĝ_i‖²`` (O(N·B·A) instead of an N×N Gram matrix).
    """
    n = grads.shape[0]
    if n < 2:
        raise MbrlError(f"the EDAC diversity term needs at least 2 critics, got {n}.")
    unit = grads / (grads.norm(dim=-1, keepdim=True) + 1e-10)
    pairwise = unit.sum(0).square().sum(-1) - unit.square().sum((0, 2))  # (B,)
    return pairwise.mean() / (n - 1)


def critic_values_with_action_grad(
    critic: CriticEnsemble, obs: Tensor, act: Tensor
) -> tuple[Tensor, Tensor]:
    """``Q_i(s, a)`` of every critic, ``(N, B)``, and the per-critic action copies
    ``(N, B, A)`` they were computed from (leaves with ``requires_grad``).

    Each critic gets its own copy of the actions, so one backward pass of ``q.sum()``
    gives every ``∇_a Q_i`` separately. The values equal ``critic(obs, act)``: the
    ensemble expands a shared input to ``(N, B, ·)`` anyway.
    """
    n = critic.n
    obs_n = obs.unsqueeze(0).expand(n, *obs.shape)
    act_n = act.detach().unsqueeze(0).expand(n, *act.shape).clone().requires_grad_(True)
    return critic(obs_n, act_n), act_n


def edac_diversity_of(q: Tensor, act_n: Tensor) -> Tensor:
    """EDAC's diversity term from ``q (N, B)`` computed on the per-critic action copies
    ``act_n (N, B, A)`` (:func:`critic_values_with_action_grad`); differentiable in the
    critics' weights (the gradients are taken with ``create_graph=True``)."""
    (grads,) = torch.autograd.grad(q.sum(), act_n, create_graph=True)
    return edac_diversity(grads)


def edac_diversity_loss(critic: CriticEnsemble, obs: Tensor, act: Tensor) -> Tensor:
    """EDAC's diversity term of ``critic`` at ``(obs (B, O), act (B, A))``."""
    return edac_diversity_of(*critic_values_with_action_grad(critic, obs, act))


@torch.no_grad()
def edac_init_(sac: SAC) -> None:
    """EDAC's initialisation of SAC's networks (as in the RAVL and CORL code).

    Hidden-layer biases 0.1; critic output layer U(±3e-3); actor output layer (mean and
    log σ heads) U(±1e-3). Hidden weights keep torch's default; targets are re-synced.
    """
    layers = list(sac.critic.layers)
    for layer in layers[:-1]:
        nn.init.constant_(layer.bias, 0.1)
    nn.init.uniform_(layers[-1].weight, -3e-3, 3e-3)
    nn.init.uniform_(layers[-1].bias, -3e-3, 3e-3)
    linears = [m for m in sac.actor.net if isinstance(m, nn.Linear)]
    for layer in linears[:-1]:
        nn.init.constant_(layer.bias, 0.1)
    nn.init.uniform_(linears[-1].weight, -1e-3, 1e-3)
    nn.init.uniform_(linears[-1].bias, -1e-3, 1e-3)
    sac.target_critic.load_state_dict(sac.critic.state_dict())


class RAVLSAC(SAC):
    """SAC with EDAC's diversity term added to the critic loss (weight ``eta``)."""

    def __init__(self, *args: Any, eta: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.eta = float(eta)
        self.last_diversity = 0.0
        self._act_n: Tensor | None = None  # the action copies of the last critic_values

    def critic_values(self, batch: TransitionBatch) -> Tensor:
        if self.eta == 0.0:
            return super().critic_values(batch)
        # One forward serves both the TD loss and the diversity term (~23% per update here).
        q, self._act_n = critic_values_with_action_grad(self.critic, batch.obs, batch.act)
        return q

    def extra_critic_loss(self, batch: TransitionBatch, q_values: Tensor) -> Tensor:
        if self.eta == 0.0:
            return q_values.new_zeros(())
        assert self._act_n is not None, "critic_values() runs first in SAC.update"
        div = edac_diversity_of(q_values, self._act_n)
        self._act_n = None
        self.last_diversity = float(div.detach())
        return self.eta * div


@dataclass
class RAVLConfig(OfflineModelBasedConfig):
    """RAVL hyperparameters (Sims et al. 2024; defaults: the authors' code).

    Attributes:
        eta: weight ``η`` of EDAC's gradient-diversity term (0 turns it off).
        edac_init: EDAC's network initialisation (biases 0.1, small output layers).
        dynamics: ``learned`` (the ensemble fitted to the dataset, the paper's method) or
            ``oracle``: the true simulator (:class:`~mbrl.models.oracle.OracleDynamics`)
            replaces the model, the paper's edge-of-reach experiment; with
            ``num_critics=2, eta=0`` this is plain SAC on truncated true rollouts.
        (the other fields: :class:`~mbrl.offline.OfflineModelBasedConfig`)
    """

    hidden_sizes: tuple[int, ...] = (256, 256, 256)
    num_critics: int = 10
    eta: float = 1.0
    edac_init: bool = True
    dynamics: str = "learned"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_non_negative(self, "eta")
        if self.dynamics not in DYNAMICS:
            raise unknown_name("RAVL dynamics", self.dynamics, DYNAMICS)
        if self.eta > 0 and self.num_critics < 2:
            raise MbrlError(
                f"RAVLConfig.num_critics={self.num_critics}: the diversity term (eta > 0) "
                "needs at least 2 critics."
            )


@AGENTS.register("ravl", config=RAVLConfig)
class RAVLAgent(ModelBasedOfflineAgent):
    """RAVL: offline model-based SAC with an EDAC critic ensemble, no penalty (Sims et al. 2024)."""

    def __init__(self, cfg: TrainConfig[RAVLConfig], ctx: RunContext) -> None:
        super().__init__(cfg, ctx)
        if cfg.agent.dynamics == "oracle":
            self.oracle = OracleDynamics(
                self.spec.id, nthread=cfg.run.torch_threads, **self.spec.make_kwargs
            )

    def make_sac(self, cfg: SACConfig) -> SAC:
        a: RAVLConfig = self.cfg.agent
        sac = RAVLSAC(
            self.obs_dim, self.act_dim, cfg, self.act_low, self.act_high, self.device, eta=a.eta
        )
        if a.edac_init:
            edac_init_(sac)
        return sac

    def extra_metrics(self) -> dict[str, float]:
        assert isinstance(self.sac, RAVLSAC)
        return {"train/edac_diversity": self.sac.last_diversity}


__all__ = [
    "RAVLSAC",
    "RAVLAgent",
    "RAVLConfig",
    "critic_values_with_action_grad",
    "edac_diversity",
    "edac_diversity_loss",
    "edac_diversity_of",
]
