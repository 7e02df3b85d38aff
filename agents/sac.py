"""Soft Actor-Critic, native: the maths in one file, with hooks for SAC-based algorithms.

Haarnoja et al. 2018, "Soft Actor-Critic Algorithms and Applications"
(arXiv:1812.05905), the version with automatic entropy tuning. Per update, on a batch
``(s, a, r, s', terminated, truncated)`` of size ``B`` with ``N`` critics::

    a' ~ π(·|s')                                            (tanh-Gaussian, reparameterised)
    y   = r + γ (1 − terminated) (min_i Q̄_i(s', a') − α log π(a'|s'))   hook: critic_target
    L_Q = Σ_i mean_B (Q_i(s, a) − y)²  + extra_critic_loss                hook
    ã ~ π(·|s)
    L_π = mean_B (α log π(ã|s) − min_i Q_i(s, ã)) + extra_actor_loss       hook
    L_α = −mean_B (log α · (log π(ã|s) + H̄)),  H̄ = −|A|
    Q̄_i ← (1 − τ) Q̄_i + τ Q_i                                           (Polyak)

Only ``terminated`` masks the bootstrap: a time-limit ``truncated`` step is not an end
of the MDP, so its target still bootstraps from ``s'``. The critic update comes first,
then the actor (against the freshly updated critics), then α, then the targets, as in
the authors' code (softlearning). ``α`` in ``y`` and ``L_π`` is the value before this
update's temperature step.

The ``N`` critics (default 2, the clipped double-Q of the paper; RAVL/EDAC use 10+) are
one batched module: weights ``[N, in, out]``, one batched matmul per layer.

Hooks for algorithms built on SAC (override in a subclass of :class:`SAC`):

- ``critic_target(batch, next_act, next_logp) -> (B,)``: the Bellman target
  (MOBILE subtracts its penalty here; MBPO/RAVL keep the default).
- ``critic_values(batch) -> (N, B)``: every critic's ``Q_i(s, a)`` on the batch, the
  values regressed onto the target (RAVL computes them so that its diversity term can
  reuse the same forward pass).
- ``extra_critic_loss(batch, q_values) -> ()``: added to ``L_Q`` (EDAC/RAVL's
  gradient-diversity term plugs in here). ``q_values`` is ``(N, B)``.
- ``extra_actor_loss(batch, act, logp, q) -> ()``: added to ``L_π``; ``act (B, A)``,
  ``logp (B,)``, ``q (N, B)`` are the reparameterised action, its log-probability and
  every critic's value of it.

Defaults follow the paper's Table 1: Adam 3e-4 for everything, batch 256, 2×256 ReLU
MLPs, γ 0.99, τ 0.005, target entropy −|A|, 1 update per env step, buffer 1e6; 10,000
initial uniform-random steps as in the authors' code (MBPO uses 5,000). Choices and
deviations:

- log σ is clipped to [−20, 2] as in softlearning (RAVL/EDAC use [−5, 2]: set
  ``log_std_min``).
- The critic loss sums the critics' mean squared errors without the paper's factor ½
  (Adam is invariant to that scale up to its ε).
- Initial α is 1 (log α = 0, as in softlearning).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, fields
from itertools import pairwise
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mbrl.config import check_in_range, check_positive
from mbrl.data.buffer import ReplayBuffer
from mbrl.errors import MbrlError
from mbrl.online import OnlineAgent
from mbrl.registry import AGENTS
from mbrl.train import RunContext, TrainConfig
from mbrl.types import TransitionBatch


@dataclass
class SACConfig:
    """SAC hyperparameters (Haarnoja et al. 2018, Table 1).

    Attributes:
        learning_rate: Adam step size for actor, critics and temperature.
        buffer_size: replay buffer capacity (capped at the run's total steps).
        learning_starts: uniform-random env steps before the first update.
        batch_size: minibatch size.
        tau: Polyak coefficient of the target critics.
        gamma: discount.
        updates_per_step: SAC updates per env step.
        hidden_sizes: hidden layer sizes of actor and critics.
        num_critics: critics in the ensemble (min over all of them in target and actor loss).
        target_entropy: entropy target of the temperature; ``None`` means −|A|.
        init_alpha: initial temperature α.
        learn_alpha: tune α automatically (otherwise α stays ``init_alpha``).
        log_std_min: lower clip of the actor's log σ.
        log_std_max: upper clip of the actor's log σ.
        log_every: env steps between ``train/*`` metric rows.
    """

    learning_rate: float = 3e-4
    buffer_size: int = 1_000_000
    learning_starts: int = 10_000
    batch_size: int = 256
    tau: float = 0.005
    gamma: float = 0.99
    updates_per_step: int = 1
    hidden_sizes: tuple[int, ...] = (256, 256)
    num_critics: int = 2
    target_entropy: float | None = None
    init_alpha: float = 1.0
    learn_alpha: bool = True
    log_std_min: float = -20.0
    log_std_max: float = 2.0
    log_every: int = 1_000

    def __post_init__(self) -> None:
        check_positive(
            self,
            "learning_rate",
            "buffer_size",
            "batch_size",
            "updates_per_step",
            "num_critics",
            "init_alpha",
            "log_every",
        )
        check_in_range(self, "tau", 0.0, 1.0)
        check_in_range(self, "gamma", 0.0, 1.0)
        if self.learning_starts < 0:
            raise MbrlError(f"SACConfig.learning_starts={self.learning_starts} must be >= 0.")
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise MbrlError(
                f"SACConfig.hidden_sizes={self.hidden_sizes!r} needs at least one layer, "
                "all sizes >= 1 (e.g. [256, 256])."
            )
        if self.log_std_min >= self.log_std_max:
            raise MbrlError(
                f"SACConfig.log_std_min={self.log_std_min} must be below "
                f"log_std_max={self.log_std_max}."
            )

    @classmethod
    def from_flat(cls, cfg: object, **overrides: Any) -> SACConfig:
        """The SAC settings carried by a flat agent config (MBPO's, the offline agents'):
        every :class:`SACConfig` field that ``cfg`` also has, under the same name, then
        ``overrides``."""
        values = {f.name: getattr(cfg, f.name) for f in fields(cls) if hasattr(cfg, f.name)}
        values.update(overrides)
        if "hidden_sizes" in values:
            values["hidden_sizes"] = tuple(values["hidden_sizes"])  # YAML gives lists
        return cls(**values)


# -- networks ------------------------------------------------------------------------
class BatchedLinear(nn.Module):
    """``N`` independent linear layers as one batched matmul.

    ``x (N, B, in)`` (or ``(B, in)``, shared by all members) ``-> (N, B, out)``.
    Weight ``[N, in, out]``, bias ``[N, 1, out]``; each member is initialised like
    ``nn.Linear`` (``U(±1/√in)`` for weights and biases).
    """

    def __init__(self, n: int, in_features: int, out_features: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        weight = torch.empty(n, in_features, out_features).uniform_(-bound, bound)
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.empty(n, 1, out_features).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 2:
            x = x.expand(self.weight.shape[0], *x.shape)
        return torch.baddbmm(self.bias, x, self.weight)


class CriticEnsemble(nn.Module):
    """``N`` Q-networks ``Q_i(s, a)`` evaluated together: ``(B, O), (B, A) -> (N, B)``."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: tuple[int, ...], n: int) -> None:
        super().__init__()
        sizes = [obs_dim + act_dim, *hidden_sizes, 1]
        self.layers = nn.ModuleList(BatchedLinear(n, i, o) for i, o in pairwise(sizes))
        self.n = n

    def forward(self, obs: Tensor, act: Tensor) -> Tensor:
        x = torch.cat([obs, act], dim=-1)  # (B, O + A), shared by all critics
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        q: Tensor = self.layers[-1](x)
        return q.squeeze(-1)


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class TanhGaussianActor(nn.Module):
    """``a = center + scale · tanh(u)``, ``u ~ N(μ(s), σ(s)²)``, with exact log-density.

    ``forward(obs (B, O)) -> (act (B, A), logp (B,))``. The affine map sends tanh's
    ``(−1, 1)`` onto the env's action bounds, so actions go to the env as they are.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden_sizes: tuple[int, ...],
        act_low: np.ndarray,
        act_high: np.ndarray,
        log_std_min: float,
        log_std_max: float,
    ) -> None:
        super().__init__()
        self.net = mlp([obs_dim, *hidden_sizes, 2 * act_dim])
        low = torch.as_tensor(act_low, dtype=torch.float32)
        high = torch.as_tensor(act_high, dtype=torch.float32)
        self.scale: Tensor
        self.center: Tensor
        self.register_buffer("scale", (high - low) / 2)
        self.register_buffer("center", (high + low) / 2)
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def forward(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor]:
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        log_std = log_std.clamp(self.log_std_min, self.log_std_max)
        eps = torch.zeros_like(mean) if deterministic else torch.randn_like(mean)
        u = mean + log_std.exp() * eps
        # log N(u; μ, σ²) with (u − μ)/σ = eps exactly.
        logp = (-0.5 * eps.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        # Change of variables: log|da/du| = log scale + log(1 − tanh²u), written stably
        # as log scale + 2 (log 2 − u − softplus(−2u)).
        logp = logp - (self.scale.log() + 2 * (math.log(2) - u - F.softplus(-2 * u))).sum(-1)
        return self.center + self.scale * torch.tanh(u), logp


# -- the algorithm ---------------------------------------------------------------------
class SAC:
    """SAC's networks, optimizers and update (see the module docstring for the maths).

    Args:
        obs_dim, act_dim: sizes ``O`` and ``A``.
        cfg: hyperparameters.
        act_low, act_high: action bounds ``(A,)``.
        device: where the networks live.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        cfg: SACConfig,
        act_low: np.ndarray,
        act_high: np.ndarray,
        device: torch.device | str = "cpu",
    ) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.act_dim = act_dim
        self.actor = TanhGaussianActor(
            obs_dim, act_dim, cfg.hidden_sizes, act_low, act_high, cfg.log_std_min, cfg.log_std_max
        ).to(self.device)
        self.critic = CriticEnsemble(obs_dim, act_dim, cfg.hidden_sizes, cfg.num_critics).to(
            self.device
        )
        self.target_critic = CriticEnsemble(obs_dim, act_dim, cfg.hidden_sizes, cfg.num_critics).to(
            self.device
        )
        self.target_critic.load_state_dict(self.critic.state_dict())
        self.target_critic.requires_grad_(False)
        self.log_alpha = torch.tensor(
            math.log(cfg.init_alpha), device=self.device, requires_grad=cfg.learn_alpha
        )
        self.target_entropy = (
            -float(act_dim) if cfg.target_entropy is None else float(cfg.target_entropy)
        )
        lr = cfg.learning_rate
        # The fused (single-kernel) Adam: same update rule, ~4% less time per SAC update
        # on CPU at these sizes (benchmarks/bench_sac_update.py).
        fused = self.device.type in ("cpu", "cuda")
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=lr, fused=fused)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=lr, fused=fused)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=lr, fused=fused)
        self._critic_params: list[Tensor] = list(self.critic.parameters())
        self._target_params: list[Tensor] = list(self.target_critic.parameters())

    @property
    def alpha(self) -> Tensor:
        """Current temperature ``α = exp(log α)`` (detached scalar)."""
        return self.log_alpha.detach().exp()

    # -- hooks ---------------------------------------------------------------------------
    def critic_target(self, batch: TransitionBatch, next_act: Tensor, next_logp: Tensor) -> Tensor:
        """Bellman target ``r + γ (1 − terminated)(min_i Q̄_i(s', a') − α log π(a'|s'))``.

        ``next_act (B, A)``, ``next_logp (B,)`` -> ``(B,)``. Called under ``no_grad``.
        Truncated rows bootstrap; only terminated rows are masked.
        """
        next_q = self.target_critic(batch.next_obs, next_act).min(dim=0).values
        not_done = (~batch.terminated).to(next_q.dtype)
        return batch.rew + self.cfg.gamma * not_done * (next_q - self.alpha * next_logp)

    def critic_values(self, batch: TransitionBatch) -> Tensor:
        """``Q_i(s, a)`` of every critic on the batch: ``(N, B)``."""
        q: Tensor = self.critic(batch.obs, batch.act)
        return q

    def extra_critic_loss(self, batch: TransitionBatch, q_values: Tensor) -> Tensor:
        """Added to the critic loss; ``q_values (N, B)``. Default: 0."""
        return q_values.new_zeros(())

    def extra_actor_loss(
        self, batch: TransitionBatch, act: Tensor, logp: Tensor, q: Tensor
    ) -> Tensor:
        """Added to the actor loss; ``act (B, A)``, ``logp (B,)``, ``q (N, B)``. Default: 0."""
        return logp.new_zeros(())

    # -- update -----------------------------------------------------------------------
    def update(self, batch: TransitionBatch) -> dict[str, float]:
        """One SAC update on ``batch``; returns the losses and diagnostics (before the step)."""
        alpha = self.alpha

        # 1. Critics: regress every Q_i onto the shared soft Bellman target.
        with torch.no_grad():
            next_act, next_logp = self.actor(batch.next_obs)
            target = self.critic_target(batch, next_act, next_logp)  # (B,)
        q = self.critic_values(batch)  # (N, B)
        critic_loss = (q - target).square().mean(dim=1).sum()
        critic_loss = critic_loss + self.extra_critic_loss(batch, q)
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()

        # 2. Actor: maximise min_i Q_i(s, ã) + α H, through the reparameterised ã.
        self.critic.requires_grad_(False)  # gradients flow to ã, not into the critics
        act, logp = self.actor(batch.obs)
        q_pi = self.critic(batch.obs, act)  # (N, B)
        actor_loss = (alpha * logp - q_pi.min(dim=0).values).mean()
        actor_loss = actor_loss + self.extra_actor_loss(batch, act, logp, q_pi)
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()
        self.critic.requires_grad_(True)

        # 3. Temperature: push the policy's entropy towards the target.
        alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
        if self.cfg.learn_alpha:
            self.alpha_opt.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_opt.step()

        # 4. Target critics: Polyak averaging.
        with torch.no_grad():  # one multi-tensor kernel instead of a Python loop
            torch._foreach_lerp_(self._target_params, self._critic_params, self.cfg.tau)

        values = torch.stack(
            [
                critic_loss.detach(),
                actor_loss.detach(),
                alpha_loss.detach(),
                alpha,
                q.detach().mean(),
                -logp.detach().mean(),
            ]
        ).tolist()  # one host sync for all metrics
        names = ("critic_loss", "actor_loss", "alpha_loss", "alpha", "q_mean", "entropy")
        return {f"train/{k}": float(v) for k, v in zip(names, values, strict=True)}

    # -- acting and state ---------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: np.ndarray | Tensor, deterministic: bool = False) -> np.ndarray:
        """``obs (O,)`` or ``(B, O)`` -> action ``(A,)`` or ``(B, A)`` float32 (numpy)."""
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        act, _ = self.actor(obs_t.reshape(-1, obs_t.shape[-1]), deterministic=deterministic)
        out: np.ndarray = act.cpu().numpy().astype(np.float32)
        return out.reshape(*obs_t.shape[:-1], self.act_dim)

    def state_dict(self) -> dict[str, Any]:
        """A snapshot (deep copy) of networks, targets, temperature and the three optimizers.

        A copy, not references: optimizers keep their step counters in tensors that
        ``load_state_dict`` would otherwise share between two agents.
        """
        return copy.deepcopy(
            {
                "actor": self.actor.state_dict(),
                "critic": self.critic.state_dict(),
                "target_critic": self.target_critic.state_dict(),
                "log_alpha": self.log_alpha.detach().clone(),
                "actor_opt": self.actor_opt.state_dict(),
                "critic_opt": self.critic_opt.state_dict(),
                "alpha_opt": self.alpha_opt.state_dict(),
            }
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.target_critic.load_state_dict(state["target_critic"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.alpha_opt.load_state_dict(state["alpha_opt"])


# -- the online agent --------------------------------------------------------------------
@AGENTS.register("sac", config=SACConfig)
class SACAgent(OnlineAgent):
    """Soft Actor-Critic, native implementation (Haarnoja et al. 2018)."""

    def __init__(self, cfg: TrainConfig[SACConfig], ctx: RunContext) -> None:
        super().__init__(cfg, ctx)
        a = cfg.agent
        self.learning_starts = a.learning_starts
        self.buffer_capacity = a.buffer_size
        self.log_every = a.log_every
        self.sac = SAC(self.obs_dim, self.act_dim, a, self.act_low, self.act_high, ctx.device)

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        return self.sac.act(obs, deterministic)

    def on_step(self, step: int, buffer: ReplayBuffer) -> dict[str, float]:
        """``updates_per_step`` SAC updates once ``learning_starts`` steps are collected."""
        if step < self.learning_starts:
            return {}
        metrics: dict[str, float] = {}
        for _ in range(self.cfg.agent.updates_per_step):
            metrics = self.sac.update(buffer.sample(self.cfg.agent.batch_size))
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return self.sac.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sac.load_state_dict(state)


__all__ = [
    "SAC",
    "BatchedLinear",
    "CriticEnsemble",
    "SACAgent",
    "SACConfig",
    "TanhGaussianActor",
]
