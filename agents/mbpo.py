"""MBPO: model-based policy optimization (SAC on short branched rollouts of a learned model).

Janner, Fu, Zhang, Levine 2019, "When to Trust Your Model: Model-Based Policy
Optimization" (NeurIPS; arXiv:1906.08253), with the hyperparameters of the authors'
code. Per env step ``t`` (after ``learning_starts`` uniform-random steps)::

    every model_train_freq steps (the first time at t = learning_starts):
        fit the ensemble on all real data D_env          (holdout, elites, early stop)
        k = rollout_length(epoch)                        linear schedule [a, b, k_a, k_b]
        s_0 ~ D_env  (rollout_batch_size starts, uniform with replacement)
        k-step rollouts under the current (stochastic) policy, random elite per sample
        per step (TS1), each sample stopped once the env's termination fn fires
        D_model <- FIFO of the last model_retain_epochs epochs of rollouts
    G times: SAC update on round(real_ratio·B) rows of D_env + the rest of D_model

The model is :class:`~mbrl.models.ensemble.ProbabilisticEnsemble` trained by
:class:`~mbrl.models.trainer.ModelTrainer` (7 members / 5 elites, 4×200 SiLU, MBPO's
decays; the trainer's Adam persists across refits, as in the reference code). Rollouts
use :meth:`~mbrl.models.model_env.ModelEnv.rollout`; SAC is :class:`~mbrl.agents.sac.SAC`
unchanged (composition: this file holds no SAC maths).

Rollout budget: **100k starts at each retrain** (``rollout_batch_size``, every 250 env
steps = 400 per env step), as in the official code, not 400 per step.

Epoch, rollout length and model-buffer size follow the official code: epoch
``e = (t − learning_starts) // epoch_length`` (its epoch counter starts after the
initial exploration), ``k = int(k_a + clip((e − a)/(b − a), 0, 1)·(k_b − k_a))``
(``k_a`` for ``e ≤ a``), and the model buffer holds
``model_retain_epochs · int(k · rollout_batch_size · epoch_length / model_train_freq)``
rows, reallocated (keeping the newest rows) whenever ``k`` changes it.

Deviations from the official code (each deliberate):

- Real rows per SAC batch: ``round(0.05·256) = 13`` (the code's ``int()`` gives 12).
- Member choice is exact TS1 (only the drawn elite runs on a sample); the code runs
  all 7 members on every sample and then picks one elite (same distribution, 7× work).
- Model fitting: the trainer stops after 5 epochs without improvement (the code: after
  more than 5) and keeps each member's own best snapshot (as the code does).
- The first model fit and SAC update happen at env step ``learning_starts`` (the code
  trains at the top of each step, i.e. one env step earlier: immaterial).
- The reward comes from the model by default (``reward_source="model"``, as in the
  paper); ``"env"`` uses the task's exact reward function instead.
- SAC itself: see :mod:`mbrl.agents.sac` (softlearning's choices).

Metrics (returned by :meth:`on_step`, logged by the online loop every ``log_every``
steps): ``train/*`` (SAC), ``model/holdout_mse`` (mean over the elites of the last
fit), ``model/fit_epochs``, ``model/rollout_length``, ``model/rollout_rows``,
``model/buffer_size``, and cumulative wall-clock counters ``time/model_train_s``,
``time/rollout_s``, ``time/sac_update_s``, ``time/env_s``. ``time/env_s`` is the time
spent outside the agent's hooks between two consecutive steps (acting, ``env.step``,
buffer writes); gaps that contain one of the loop's evaluations or checkpoints are not
counted. Each finished episode also logs ``rollout/episode_max_reward`` (the largest
single-step reward of the episode).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mbrl.agents.sac import SAC, SACConfig
from mbrl.config import check_in_range, check_positive
from mbrl.data.buffer import ReplayBuffer
from mbrl.errors import MbrlError, unknown_name
from mbrl.models.ensemble import (
    EnsembleConfig,
    ProbabilisticEnsemble,
    check_gaussian_ensemble_model,
)
from mbrl.models.model_env import PROPAGATIONS, ModelEnv
from mbrl.models.trainer import STATE_VERSION, ModelTrainer, TrainerConfig
from mbrl.online import OnlineAgent
from mbrl.registry import AGENTS
from mbrl.train import RunContext, TrainConfig
from mbrl.types import TransitionBatch

ROLLOUT_SEED_OFFSET = 30_000  # the rollout generator never shares a seed with the others


@dataclass
class MBPOConfig:
    """MBPO hyperparameters (Janner et al. 2019; defaults: the HalfCheetah values).

    Attributes:
        learning_starts: uniform-random env steps before the first model fit and update.
        epoch_length: env steps per epoch (the unit of the rollout-length schedule).
        model_train_freq: env steps between model fits (each followed by rollouts).
        rollout_batch_size: model rollouts started at each fit (from real-buffer states).
        rollout_schedule: ``[a, b, k_a, k_b]``: rollout length ``k_a`` up to epoch ``a``,
            growing linearly to ``k_b`` at epoch ``b``.
        model_retain_epochs: epochs of rollouts kept in the FIFO model buffer.
        real_ratio: fraction of real transitions in every SAC batch.
        propagation: ModelEnv member choice (``random_elite`` = TS1, the paper's).
        reward_source: ``model`` (learned reward, the paper's) or ``env`` (exact reward fn).
        model: the dynamics model; only ``ensemble`` (the probabilistic ensemble): MBPO's
            rollouts sample from a random elite's Gaussian, which the deterministic
            sequence models lack (``koopman``/``transformer`` are refused with that reason).
        num_members, num_elites: ensemble size and members used in rollouts.
        model_hidden_size, model_num_layers, model_activation: ensemble MLP shape.
        model_weight_decays: L2 decay per linear layer (``model_num_layers + 1`` values).
        model_lr, model_batch_size: ensemble Adam step size and per-member batch.
        model_holdout_ratio, model_max_holdout: holdout split of every fit.
        model_patience: epochs without improvement before a fit stops.
        model_max_epochs: cap on epochs per fit (``None``: early stopping only).
        model_max_train_seconds: wall-clock cap per fit (``None``: none).
        learning_rate ... log_std_max: SAC's (:class:`~mbrl.agents.sac.SACConfig`).
        buffer_size: real replay buffer capacity.
        log_every: env steps between metric rows.
    """

    learning_starts: int = 5_000
    epoch_length: int = 1_000
    model_train_freq: int = 250
    rollout_batch_size: int = 100_000
    rollout_schedule: tuple[int, int, int, int] = (20, 150, 1, 1)
    model_retain_epochs: int = 1
    real_ratio: float = 0.05
    propagation: str = "random_elite"
    reward_source: str = "model"
    model: str = "ensemble"
    num_members: int = 7
    num_elites: int = 5
    model_hidden_size: int = 200
    model_num_layers: int = 4
    model_activation: str = "silu"
    model_weight_decays: tuple[float, ...] = (2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4)
    model_lr: float = 1e-3
    model_batch_size: int = 256
    model_holdout_ratio: float = 0.2
    model_max_holdout: int = 5_000
    model_patience: int = 5
    model_max_epochs: int | None = None
    model_max_train_seconds: float | None = None
    learning_rate: float = 3e-4
    batch_size: int = 256
    tau: float = 0.005
    gamma: float = 0.99
    updates_per_step: int = 40
    hidden_sizes: tuple[int, ...] = (256, 256)
    num_critics: int = 2
    target_entropy: float | None = -3.0
    init_alpha: float = 1.0
    learn_alpha: bool = True
    log_std_min: float = -20.0
    log_std_max: float = 2.0
    buffer_size: int = 1_000_000
    log_every: int = 1_000

    def __post_init__(self) -> None:
        check_positive(
            self,
            "learning_starts",
            "epoch_length",
            "model_train_freq",
            "rollout_batch_size",
            "model_retain_epochs",
            "num_members",
            "num_elites",
            "model_lr",
            "model_batch_size",
            "model_patience",
            "buffer_size",
        )
        check_in_range(self, "real_ratio", 0.0, 1.0)
        a, b, k_a, k_b = self.rollout_schedule
        if not (0 <= a < b and k_a >= 1 and k_b >= 1):
            raise MbrlError(
                f"MBPOConfig.rollout_schedule={list(self.rollout_schedule)} must be "
                "[a, b, k_a, k_b] with 0 <= a < b and rollout lengths k_a, k_b >= 1 "
                "(e.g. [20, 150, 1, 15])."
            )
        if self.propagation not in PROPAGATIONS:
            raise unknown_name("propagation mode", self.propagation, PROPAGATIONS)
        # a shaped planning reward would change the objective the policy learns
        if self.reward_source not in ("env", "model"):
            raise unknown_name("reward source", self.reward_source, ("env", "model"))
        check_gaussian_ensemble_model("mbpo", self.model)
        # the nested configs validate their own fields (and name them)
        self.ensemble_config()
        self.trainer_config(0)
        self.sac_config()

    def ensemble_config(self) -> EnsembleConfig:
        cfg = EnsembleConfig(
            num_members=self.num_members,
            num_elites=self.num_elites,
            hidden_size=self.model_hidden_size,
            num_layers=self.model_num_layers,
            activation=self.model_activation,
            weight_decays=tuple(self.model_weight_decays),
        )
        try:
            ProbabilisticEnsemble(1, 1, cfg)  # validates, with a message naming the field
        except MbrlError as exc:
            raise MbrlError(f"MBPOConfig (model_* fields): {exc}") from None
        return cfg

    def trainer_config(self, seed: int) -> TrainerConfig:
        cfg = TrainerConfig(
            lr=self.model_lr,
            batch_size=self.model_batch_size,
            holdout_ratio=self.model_holdout_ratio,
            max_holdout=self.model_max_holdout,
            patience=self.model_patience,
            max_epochs=self.model_max_epochs,
            max_train_seconds=self.model_max_train_seconds,
            seed=seed,
        )
        if not 0.0 <= cfg.holdout_ratio < 1.0:
            raise MbrlError(
                f"MBPOConfig.model_holdout_ratio={cfg.holdout_ratio} must be in [0, 1)."
            )
        return cfg

    def sac_config(self) -> SACConfig:
        return SACConfig.from_flat(self)  # SAC's fields appear here under SAC's names

    @property
    def real_rows(self) -> int:
        """Real transitions in each SAC batch: ``round(real_ratio · batch_size)``."""
        return round(self.real_ratio * self.batch_size)


def rollout_length(epoch: int, schedule: tuple[int, int, int, int]) -> int:
    """MBPO's rollout length at ``epoch``: ``k_a`` until epoch ``a``, then linear to ``k_b``
    at epoch ``b`` and constant after, truncated to an int (the official code's rule)."""
    a, b, k_a, k_b = schedule
    if epoch <= a:
        return int(k_a)
    frac = min((epoch - a) / (b - a), 1.0)
    return int(frac * (k_b - k_a) + k_a)


def model_buffer_capacity(cfg: MBPOConfig, k: int) -> int:
    """Rows kept by the model buffer for rollout length ``k``: ``model_retain_epochs``
    epochs of rollouts, ``int(k · rollout_batch_size · epoch_length / model_train_freq)``
    rows each (the official code's pool size)."""
    per_epoch = int(k * cfg.rollout_batch_size * cfg.epoch_length / cfg.model_train_freq)
    return cfg.model_retain_epochs * max(per_epoch, 1)


def concat_batches(a: TransitionBatch, b: TransitionBatch) -> TransitionBatch:
    """Rows of ``a`` then rows of ``b``."""
    return TransitionBatch(
        obs=torch.cat([a.obs, b.obs]),
        act=torch.cat([a.act, b.act]),
        rew=torch.cat([a.rew, b.rew]),
        next_obs=torch.cat([a.next_obs, b.next_obs]),
        terminated=torch.cat([a.terminated, b.terminated]),
        truncated=torch.cat([a.truncated, b.truncated]),
    )


@AGENTS.register("mbpo", config=MBPOConfig)
class MBPOAgent(OnlineAgent):
    """MBPO: SAC on k-step model rollouts branched from real states (Janner et al. 2019)."""

    def __init__(self, cfg: TrainConfig[MBPOConfig], ctx: RunContext) -> None:
        super().__init__(cfg, ctx)
        a = cfg.agent
        self.mcfg = a
        self.learning_starts = a.learning_starts
        self.buffer_capacity = a.buffer_size
        self.log_every = a.log_every
        self.sac = SAC(
            self.obs_dim, self.act_dim, a.sac_config(), self.act_low, self.act_high, ctx.device
        )
        self.model = ProbabilisticEnsemble(self.obs_dim, self.act_dim, a.ensemble_config()).to(
            ctx.device
        )
        self.trainer = ModelTrainer(self.model, a.trainer_config(cfg.run.seed), ctx.device)
        self.model_env = ModelEnv(
            self.model, self.spec, propagation=a.propagation, reward_source=a.reward_source
        )
        self.rollout_generator = torch.Generator(device=ctx.device)
        self.rollout_generator.manual_seed(cfg.run.seed + ROLLOUT_SEED_OFFSET)
        self.model_buffer: ReplayBuffer | None = None  # allocated at the first rollout
        self.model_metrics: dict[str, float] = {}
        self.timers = {"model_train_s": 0.0, "rollout_s": 0.0, "sac_update_s": 0.0, "env_s": 0.0}
        self._left_hooks_at: float | None = None  # when the agent last returned to the loop
        self._left_hooks_step = 0

    # -- acting --------------------------------------------------------------------------
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        return self.sac.act(obs, deterministic)

    def _policy(self, obs: Tensor) -> Tensor:
        """The current stochastic policy on model states: ``(b, O) -> (b, A)``."""
        act, _ = self.sac.actor(obs)
        return act

    # -- the MBPO step -------------------------------------------------------------------
    def epoch(self, step: int) -> int:
        """Epoch of env step ``step``, counted from the end of the warm-up (official code)."""
        return max(step - self.mcfg.learning_starts, 0) // self.mcfg.epoch_length

    def on_step(self, step: int, buffer: ReplayBuffer) -> dict[str, float]:
        """Refit + rollouts every ``model_train_freq`` steps, then ``G`` SAC updates."""
        self._count_env_time(step)
        a = self.mcfg
        if step < a.learning_starts:
            self._leave_hooks(step)
            return {}
        if (step - a.learning_starts) % a.model_train_freq == 0:
            self.train_model(buffer)
            self.rollout(buffer, rollout_length(self.epoch(step), a.rollout_schedule))
        t0 = time.perf_counter()
        train: dict[str, float] = {}
        for _ in range(a.updates_per_step):
            train = self.sac.update(self.sample_sac_batch(buffer))
        self.timers["sac_update_s"] += time.perf_counter() - t0
        metrics = {**train, **self.model_metrics}
        metrics.update({f"time/{k}": v for k, v in self.timers.items()})
        self._leave_hooks(step)
        return metrics

    def train_model(self, buffer: ReplayBuffer) -> None:
        """Fit the ensemble on every real transition (elites by holdout MSE)."""
        t0 = time.perf_counter()
        result = self.trainer.fit(buffer.transitions(), progress=False)
        elite_mse = [result.holdout_mse_per_member[i] for i in result.elite_idx]
        self.model_metrics["model/holdout_mse"] = float(np.mean(elite_mse))
        self.model_metrics["model/fit_epochs"] = float(result.epochs)
        self.timers["model_train_s"] += time.perf_counter() - t0

    def rollout(self, buffer: ReplayBuffer, k: int) -> TransitionBatch:
        """``rollout_batch_size`` k-step model rollouts from real states into the model buffer.

        Returns the generated transitions (``(≤ rollout_batch_size·k, ...)``).
        """
        t0 = time.perf_counter()
        a = self.mcfg
        self._ensure_model_buffer(model_buffer_capacity(a, k))
        assert self.model_buffer is not None
        start_obs = buffer.sample(a.rollout_batch_size).obs
        data = self.model_env.rollout(self._policy, start_obs, k, self.rollout_generator)
        self.model_buffer.add_batch(
            data.obs, data.act, data.rew, data.next_obs, data.terminated, data.truncated
        )
        self.model_metrics.update(
            {
                "model/rollout_length": float(k),
                "model/rollout_rows": float(len(data)),
                "model/buffer_size": float(len(self.model_buffer)),
            }
        )
        self.timers["rollout_s"] += time.perf_counter() - t0
        return data

    def _ensure_model_buffer(self, capacity: int) -> None:
        """(Re)allocate the FIFO model buffer with ``capacity`` rows, keeping the newest."""
        old = self.model_buffer
        if old is not None and old.capacity == capacity:
            return
        g = self.rollout_generator
        seed = int(torch.randint(0, 2**62, (1,), generator=g, device=g.device).item())
        new = ReplayBuffer(capacity, self.obs_dim, self.act_dim, self.device, seed=seed)
        if old is not None and len(old) > 0:
            kept = old.transitions()
            new.add_batch(
                kept.obs, kept.act, kept.rew, kept.next_obs, kept.terminated, kept.truncated
            )
            new.generator.set_state(old.generator.get_state())
        self.model_buffer = new

    def sample_sac_batch(self, buffer: ReplayBuffer) -> TransitionBatch:
        """``round(real_ratio·B)`` real rows followed by ``B −`` that many model rows.

        Before the first rollout (an empty model buffer) the whole batch is real.
        """
        B = self.mcfg.batch_size
        if self.model_buffer is None or len(self.model_buffer) == 0:
            return buffer.sample(B)
        n_real = self.mcfg.real_rows
        if n_real == 0:
            return self.model_buffer.sample(B)
        if n_real == B:
            return buffer.sample(B)
        return concat_batches(buffer.sample(n_real), self.model_buffer.sample(B - n_real))

    def on_episode_end(self, step: int, buffer: ReplayBuffer) -> dict[str, float]:
        """Logs the episode's largest single-step reward (the point-mass learning check)."""
        ids = buffer.trajectory_ids()
        n = int((ids == ids[-1]).sum())
        rew = buffer.rew[buffer.chronological_indices()[-n:]]
        return {"rollout/episode_max_reward": float(rew.max())}

    # -- wall-clock split ----------------------------------------------------------------
    def _leave_hooks(self, step: int) -> None:
        self._left_hooks_at, self._left_hooks_step = time.perf_counter(), step

    def _count_env_time(self, step: int) -> None:
        """Adds the time since the agent last returned to the loop to ``env_s``, unless the
        loop evaluated or checkpointed in between (after step ``step − 1``)."""
        if self._left_hooks_at is None or self._left_hooks_step != step - 1:
            return
        run, prev = self.cfg.run, step - 1
        loop_work = (run.eval_every and prev % run.eval_every == 0) or (
            run.checkpoint_every and prev % run.checkpoint_every == 0
        )
        if not loop_work:
            self.timers["env_s"] += time.perf_counter() - self._left_hooks_at

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """SAC, ensemble, the trainer's optimizer, model buffer, rollout RNG, metrics, timers.

        The trainer's last-fit bookkeeping (splits, snapshots) is not kept: a finished fit
        is never resumed, the next one starts afresh from the optimizer's moments.
        """
        trainer = {
            "version": STATE_VERSION,
            "optimizer": copy.deepcopy(self.trainer.optimizer.state_dict()),
            "total_epochs": self.trainer.total_epochs,
            "in_fit": False,
        }
        return {
            "sac": self.sac.state_dict(),
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "trainer": trainer,
            "model_buffer": None if self.model_buffer is None else self.model_buffer.state_dict(),
            "rollout_generator": self.rollout_generator.get_state(),
            "model_metrics": dict(self.model_metrics),
            "timers": dict(self.timers),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sac.load_state_dict(state["sac"])
        self.trainer.load_state_dict(state["trainer"])
        self.model.load_state_dict(state["model"])
        mb = state["model_buffer"]
        if mb is None:
            self.model_buffer = None
        else:
            self.model_buffer = ReplayBuffer(
                int(mb["capacity"]), self.obs_dim, self.act_dim, self.device, seed=0
            )
            self.model_buffer.load_state_dict(mb)
        self.rollout_generator.set_state(state["rollout_generator"].cpu())
        self.model_metrics = {k: float(v) for k, v in state["model_metrics"].items()}
        self.timers = {k: float(v) for k, v in state["timers"].items()}
        self._left_hooks_at = None


__all__ = [
    "MBPOAgent",
    "MBPOConfig",
    "concat_batches",
    "model_buffer_capacity",
    "rollout_length",
]
