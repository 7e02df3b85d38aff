"""BC: behavior cloning, the baseline every offline RL result is compared with.

Regression of the dataset's actions on its observations (Pomerleau 1991; as the "BC"
baseline of D4RL, Fu et al. 2020, arXiv:2004.07219), in the form CORL uses (Tarasov et
al. 2022, "CORL: Research-oriented Deep Offline Reinforcement Learning Library",
``algorithms/offline/any_percent_bc.py``): a **deterministic** MLP policy trained by
mean squared error on the actions::

    μ̄, σ̄ = mean and std of the dataset's observations (per dimension; σ̄ + 1e-3)
    π(s) = c + h · tanh(f((s − μ̄)/σ̄))        c, h: centre and half-range of the action box
    L    = mean_{B, A} (π(s) − a)²            (s, a) ~ D, uniform with replacement

``f``: 2×256 ReLU MLP; Adam 3e-4, batch 256, every row of the dataset (CORL's "100% BC";
no filtering by return). Evaluation, metrics and checkpoints are the offline loop's
(:mod:`mbrl.offline`): deterministic episodes in the dataset's env, normalized scores;
``run.total_steps`` counts gradient updates (CORL: 1M).

Deviations from CORL's recipe: only that the action box may be asymmetric (CORL
multiplies tanh by ``max_action``; here centre + half-range, identical for D4RL's
``[−1, 1]``). Metrics: ``train/bc_loss`` per update; ``train/bc_mse_probe`` (the same
loss) on a fixed set of up to 1,000 dataset rows at log time.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mbrl.config import check_positive
from mbrl.errors import MbrlError
from mbrl.offline import OfflineAgent
from mbrl.registry import AGENTS
from mbrl.train import RunContext, TrainConfig


@dataclass
class BCConfig:
    """Behavior-cloning hyperparameters (CORL's BC).

    Attributes:
        hidden_sizes: hidden layer sizes of the policy MLP.
        learning_rate: Adam step size.
        batch_size: dataset rows per update.
        normalize_obs: standardise observations with the dataset's mean and std.
        log_every: updates between ``train/*`` metric rows.
    """

    hidden_sizes: tuple[int, ...] = (256, 256)
    learning_rate: float = 3e-4
    batch_size: int = 256
    normalize_obs: bool = True
    log_every: int = 1_000

    def __post_init__(self) -> None:
        check_positive(self, "learning_rate", "batch_size", "log_every")
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise MbrlError(
                f"BCConfig.hidden_sizes={self.hidden_sizes!r} needs at least one layer, all "
                "sizes >= 1 (e.g. [256, 256])."
            )


class DeterministicPolicy(nn.Module):
    """``obs (B, O) -> act (B, A)``: normalise, MLP, tanh onto the action box."""

    def __init__(
        self,
        obs_mean: Tensor,
        obs_std: Tensor,
        act_low: np.ndarray,
        act_high: np.ndarray,
        hidden_sizes: tuple[int, ...],
    ) -> None:
        super().__init__()
        obs_dim, act_dim = obs_mean.shape[0], len(act_low)
        sizes = [obs_dim, *hidden_sizes, act_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(pairwise(sizes)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)
        low = torch.as_tensor(act_low, dtype=torch.float32)
        high = torch.as_tensor(act_high, dtype=torch.float32)
        self.obs_mean: Tensor
        self.obs_std: Tensor
        self.center: Tensor
        self.scale: Tensor
        self.register_buffer("obs_mean", obs_mean.float())
        self.register_buffer("obs_std", obs_std.float())
        self.register_buffer("center", (high + low) / 2)
        self.register_buffer("scale", (high - low) / 2)

    def forward(self, obs: Tensor) -> Tensor:
        h = self.net((obs - self.obs_mean) / self.obs_std)
        return self.center + self.scale * torch.tanh(h)


@AGENTS.register("bc", config=BCConfig)
class BCAgent(OfflineAgent):
    """BC: a deterministic MLP policy regressed onto the dataset's actions (MSE; CORL's BC)."""

    def __init__(self, cfg: TrainConfig[BCConfig], ctx: RunContext) -> None:
        super().__init__(cfg, ctx)
        a = cfg.agent
        self.bcfg = a
        self.log_every = a.log_every
        obs = self.data.real.obs
        if a.normalize_obs:
            mean, std = obs.mean(0), obs.std(0, unbiased=False) + 1e-3
        else:
            mean, std = torch.zeros_like(obs[0]), torch.ones_like(obs[0])
        self.policy = DeterministicPolicy(
            mean, std, self.act_low, self.act_high, tuple(a.hidden_sizes)
        ).to(self.device)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=a.learning_rate)

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """The policy is deterministic; ``deterministic`` is accepted for the protocol."""
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        act = self.policy(obs_t.reshape(-1, obs_t.shape[-1]))
        out: np.ndarray = act.cpu().numpy().astype(np.float32)
        return out.reshape(*obs_t.shape[:-1], self.act_dim)

    def update(self, step: int) -> dict[str, float]:
        batch = self.sample_real(self.bcfg.batch_size)
        loss = (self.policy(batch.obs) - batch.act).square().mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"train/bc_loss": float(loss.detach())}

    @torch.no_grad()
    def diagnostics(self) -> dict[str, float]:
        obs, act = self.data.real.obs[self.probe_idx], self.data.real.act[self.probe_idx]
        mse = (self.policy(obs) - act).square().mean()
        return {"train/bc_mse_probe": float(mse)}

    def state_dict(self) -> dict[str, Any]:
        return copy.deepcopy(
            {
                "policy": self.policy.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "real_generator": self.real_generator.get_state(),
                "prepared": self.prepared,
            }
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.real_generator.set_state(state["real_generator"].cpu())
        self.prepared = bool(state["prepared"])


__all__ = ["BCAgent", "BCConfig", "DeterministicPolicy"]
