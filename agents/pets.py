"""PETS: probabilistic ensembles with trajectory sampling, planned by MPC.

Chua, Calandra, McAllister, Levine (2018), "Deep Reinforcement Learning in a Handful of
Trials using Probabilistic Dynamics Models", NeurIPS (arXiv:1805.12114). The loop::

    collect learning_starts uniform-random steps (PETS: one random episode)
    fit the ensemble on all data
    every env step t:
        objective(a (S,P,H,A)) = mean over num_particles particles of
                                 sum_h reward_fn(s_h, a_h, s_{h+1}),  s_0 = obs_t,
                                 s_{h+1} ~ member_p(s_h, a_h)   (trajectory sampling)
        plan = planner(objective)      (CEM by default; warm-started by shifting)
        execute plan[0]
    at the end of every episode (or every ``train_every`` steps): refit on all data

Trajectory sampling ("TS", not Thompson sampling): ``propagation="fixed_member"`` is
TS∞, every particle draws an elite at the start of the horizon and keeps it (the
paper's best variant); ``"random_elite"`` is TS1, a new elite per particle per step.
Candidates are scored by the mean return over their particles; rewards come from the
env's known reward function and terminations from the env spec (PETS uses known
reward functions; a particle that terminates stops earning). With
``reward_source="model"`` the ensemble's reward head is used instead, and with
``reward_source="planning"`` the env's shaped planning reward (a deviation: the planner
then maximizes a different objective from the task's; see ``EnvSpec.planning_reward_fn``).

Evaluation (``deterministic=True``) plans exactly as training does, with its own
planner and random generator, re-seeded from the run seed at every evaluation and
reset at every evaluation episode, so evaluating never disturbs the training planner
and a given checkpoint always evaluates to the same numbers.

Deviations from the paper and its code:
    * Model training: the paper trains for a fixed 5 epochs on all data per iteration
      (no holdout); here :class:`~mbrl.models.trainer.ModelTrainer` trains until the
      holdout MSE stops improving (per-member best snapshots, elites by holdout MSE, as
      in MBPO). ``trainer.max_epochs`` gives a fixed budget instead.
    * Elites: planning uses the ``ensemble.num_elites`` best members (PETS used all 5 of
      its 5 members: set ``num_members == num_elites`` to match).
    * CEM runs all iterations (no early stop on a small variance), see
      :mod:`mbrl.planners.cem`.
    * The number of initial random steps is a step count (``learning_starts``), not a
      number of episodes: presets set it to one episode of the task.
    * ``train_every > 0`` refits every that many steps instead of per episode (an
      option, not in the paper).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from mbrl.config import check_non_negative, check_positive
from mbrl.data.buffer import ReplayBuffer
from mbrl.envs import EnvSpec
from mbrl.errors import MbrlError, unknown_name
from mbrl.models.ensemble import EnsembleConfig, ProbabilisticEnsemble
from mbrl.models.koopman import KoopmanConfig, KoopmanModel
from mbrl.models.model_env import ModelEnv
from mbrl.models.seq_trainer import (
    SequenceTrainer,
    SequenceTrainerConfig,
    windows_from_trajectories,
)
from mbrl.models.trainer import ModelTrainer, TrainerConfig
from mbrl.models.transformer import TransformerConfig, TransformerModel
from mbrl.online import OnlineAgent
from mbrl.planners.base import Planner
from mbrl.planners.cem import CEM, CEMConfig
from mbrl.planners.icem import ICEM, ICEMConfig
from mbrl.planners.mppi import MPPI, MPPIConfig
from mbrl.registry import AGENTS
from mbrl.train import RunContext, TrainConfig

PLANNER_NAMES = ("cem", "icem", "mppi")
PETS_PROPAGATIONS = ("fixed_member", "random_elite")
PETS_MODELS = ("ensemble", "koopman", "transformer")
# sequence models (fitted on episode windows by SequenceTrainer): name -> (class, the
# field of its config, ``PETSConfig.<name>``, that sets the training window length)
SEQUENCE_MODELS: dict[str, tuple[Callable[..., Any], str]] = {
    "koopman": (KoopmanModel, "horizon"),
    "transformer": (TransformerModel, "context"),
}
# a sequence-model refit needs a few windows for its train/holdout split
MIN_WINDOWS = 10
PLANNER_SEED_OFFSET = 30_000  # the planners' generators never share a seed with resets
EVAL_SEED_OFFSET = 40_000


def window_length(episode_lengths: list[int], window: int, min_windows: int) -> int:
    """The longest window ``L <= window`` for which the episodes give at least
    ``min_windows`` windows (``Σ max(0, T − L + 1)``), or 1 if none does."""
    for length in range(min(window, max(episode_lengths, default=1)), 0, -1):
        if sum(max(0, t - length + 1) for t in episode_lengths) >= min_windows:
            return length
    return 1


@dataclass
class PETSConfig:
    """PETS hyperparameters (Chua et al. 2018; defaults: the paper's generic values).

    Attributes:
        ensemble: the dynamics ensemble (PETS/MBPO: 7 members, 5 elites, 4×200 SiLU).
        trainer: how the ensemble is fitted after each episode.
        model: the dynamics model: ``ensemble`` (PETS), or a deterministic sequence-model
            ensemble refitted on windows of the stored episodes (TS∞ particles then
            differ only by member): ``koopman`` (:mod:`mbrl.models.koopman`) or
            ``transformer`` (:mod:`mbrl.models.transformer`).
        koopman: the Koopman model's settings (``model=koopman``).
        transformer: the transformer model's settings (``model=transformer``).
        seq_trainer: how a sequence model is fitted (``model=koopman``/``transformer``).
        planner: ``cem`` (PETS), ``icem`` or ``mppi``; its settings are the matching
            field below (the other two are ignored).
        cem: CEM settings (PETS: 5 iterations, population 500, elite ratio 0.1, α 0.1).
        icem: iCEM settings (Pinneri et al. 2020).
        mppi: MPPI settings.
        horizon: planning horizon ``H`` (PETS: 30 for HalfCheetah, 25 elsewhere).
        num_particles: rollouts per candidate sequence (PETS: 20).
        propagation: ``fixed_member`` (TS∞, PETS' best) or ``random_elite`` (TS1).
        reward_source: ``env`` (the task's known reward function), ``model`` (the
            ensemble's reward head) or ``planning`` (the env's shaped planning reward,
            e.g. InvertedPendulum's; a deviation from the task's objective, which still
            measures every return).
        learning_starts: uniform-random env steps before the first fit (PETS: one episode).
        train_every: 0 refits at the end of every episode (PETS); ``N > 0`` every N steps.
        buffer_size: replay buffer capacity (PETS keeps all data).
        log_every: env steps between ``train/*`` metric rows.
    """

    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    model: str = "ensemble"
    koopman: KoopmanConfig = field(default_factory=KoopmanConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    seq_trainer: SequenceTrainerConfig = field(default_factory=SequenceTrainerConfig)
    planner: str = "cem"
    cem: CEMConfig = field(default_factory=CEMConfig)
    icem: ICEMConfig = field(default_factory=ICEMConfig)
    mppi: MPPIConfig = field(default_factory=MPPIConfig)
    horizon: int = 30
    num_particles: int = 20
    propagation: str = "fixed_member"
    reward_source: str = "env"
    learning_starts: int = 1000
    train_every: int = 0
    buffer_size: int = 1_000_000
    log_every: int = 1_000

    def __post_init__(self) -> None:
        check_positive(self, "horizon", "num_particles", "buffer_size", "log_every")
        check_non_negative(self, "train_every")
        if self.learning_starts < 1:
            raise MbrlError(
                f"{type(self).__name__}.learning_starts={self.learning_starts} must be >= 1: "
                "the model needs data before the first plan (PETS: one random episode)."
            )
        if self.model not in PETS_MODELS:
            raise unknown_name("model", self.model, PETS_MODELS)
        if self.planner not in PLANNER_NAMES:
            raise unknown_name("planner", self.planner, PLANNER_NAMES)
        if self.reward_source not in ("env", "model", "planning"):
            raise MbrlError(
                f"{type(self).__name__}.reward_source={self.reward_source!r} must be "
                "'env', 'model' or 'planning'."
            )
        self._check_propagation()

    def _check_propagation(self) -> None:
        if self.propagation not in PETS_PROPAGATIONS:
            raise unknown_name("PETS propagation", self.propagation, PETS_PROPAGATIONS)

    def planner_config(self) -> CEMConfig | ICEMConfig | MPPIConfig:
        """The settings of the chosen planner."""
        cfg: CEMConfig | ICEMConfig | MPPIConfig = getattr(self, self.planner)
        return cfg


_PLANNER_CLASSES: dict[str, type[Planner]] = {"cem": CEM, "icem": ICEM, "mppi": MPPI}


class _ResetHook(gym.Wrapper[Any, Any, Any, Any]):
    """Calls ``on_reset()`` before every ``reset`` (evaluation: a fresh plan per episode)."""

    def __init__(self, env: gym.Env[Any, Any], on_reset: Callable[[], None]) -> None:
        super().__init__(env)
        self._on_reset = on_reset

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        self._on_reset()
        return self.env.reset(**kwargs)


@dataclass(frozen=True)
class _HookedSpec(EnvSpec):
    """An :class:`EnvSpec` whose envs call ``on_reset`` at every reset."""

    on_reset: Callable[[], None] | None = None

    def make(self, **kwargs: Any) -> gym.Env[Any, Any]:
        env = super().make(**kwargs)
        return env if self.on_reset is None else _ResetHook(env, self.on_reset)


@AGENTS.register("pets", config=PETSConfig)
class PETSAgent(OnlineAgent):
    """PETS: probabilistic ensemble + trajectory sampling + CEM MPC (Chua et al. 2018)."""

    cfg: TrainConfig[PETSConfig]
    propagation: str  # the ModelEnv mode used by the training planner

    def __init__(self, cfg: TrainConfig[PETSConfig], ctx: RunContext) -> None:
        super().__init__(cfg, ctx)
        a = cfg.agent
        if a.reward_source == "env" and self.spec.reward_fn is None:
            raise MbrlError(
                f"env '{cfg.run.env}' has no known reward function, which PETS plans with; "
                "set agent.reward_source=model to plan with the ensemble's reward head."
            )
        if a.reward_source == "planning" and self.spec.planning_reward_fn is None:
            raise MbrlError(
                f"env '{cfg.run.env}' registers no planning reward "
                "(agent.reward_source=planning); use agent.reward_source=env."
            )
        self.learning_starts = a.learning_starts
        self.buffer_capacity = a.buffer_size
        self.log_every = a.log_every
        self.model: ProbabilisticEnsemble | KoopmanModel | TransformerModel
        self.trainer: ModelTrainer | SequenceTrainer
        if a.model in SEQUENCE_MODELS:
            model_cls = SEQUENCE_MODELS[a.model][0]
            seq_model = model_cls(self.obs_dim, self.act_dim, getattr(a, a.model)).to(self.device)
            seq_cfg = dataclasses.replace(a.seq_trainer, seed=a.seq_trainer.seed + cfg.run.seed)
            self.model, self.trainer = seq_model, SequenceTrainer(seq_model, seq_cfg)
        else:
            self.model = ProbabilisticEnsemble(self.obs_dim, self.act_dim, a.ensemble).to(
                self.device
            )
            trainer_cfg = dataclasses.replace(a.trainer, seed=a.trainer.seed + cfg.run.seed)
            self.trainer = ModelTrainer(self.model, trainer_cfg, self.device)
        self.propagation = getattr(self, "propagation", a.propagation)
        self.model_env = self._make_model_env(self.propagation)
        self.eval_model_env = self._make_model_env(a.propagation)
        seed = cfg.run.seed + PLANNER_SEED_OFFSET
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.planner = self._make_planner(torch.Generator(device=self.device).manual_seed(seed + 1))
        self.eval_generator = torch.Generator(device=self.device)
        self.eval_planner = self._make_planner(torch.Generator(device=self.device))
        self.fitted = False  # no plan before the first fit
        self.last_fit_step = -1
        self._plan_seconds: list[float] = []

    def _make_model_env(self, propagation: str) -> ModelEnv:
        return ModelEnv(
            self.model,
            self.spec,
            propagation=propagation,
            reward_source=self.cfg.agent.reward_source,
        )

    def _make_planner(self, generator: torch.Generator) -> Planner:
        a = self.cfg.agent
        return _PLANNER_CLASSES[a.planner](
            torch.as_tensor(self.act_low),
            torch.as_tensor(self.act_high),
            a.horizon,
            a.planner_config(),
            self.device,
            generator,
        )

    # -- model -------------------------------------------------------------------------
    def fit_model(self, step: int, buffer: ReplayBuffer) -> dict[str, float]:
        """Refit the ensemble on every transition in ``buffer``; logs and returns metrics."""
        if isinstance(self.trainer, SequenceTrainer):
            # windows of the stored episodes: the model's length, shortened while early
            # episodes are too short (a falling task) to give MIN_WINDOWS windows
            a = self.cfg.agent
            window = getattr(getattr(a, a.model), SEQUENCE_MODELS[a.model][1])
            episodes = list(buffer.episodes())
            length = window_length([len(e.obs) for e in episodes], window, MIN_WINDOWS)
            result: Any = self.trainer.fit(
                windows_from_trajectories(episodes, length), progress=False
            )
        else:
            result = self.trainer.fit(buffer.transitions(), progress=False)
        self.fitted, self.last_fit_step = True, step
        elites = result.elite_idx
        mse = float(np.mean([result.holdout_mse_per_member[i] for i in elites]))
        metrics = {
            "model/holdout_mse": mse,
            "model/train_loss": result.train_loss,
            "model/epochs": float(result.epochs),
            "model/fit_seconds": result.wall_time,
        }
        self.ctx.logger.log(step, metrics)
        self.on_model_fitted(step)
        return metrics

    def on_model_fitted(self, step: int) -> None:
        """Called after every fit at env step ``step`` (PSRL draws its first sample here)."""

    # -- planning ----------------------------------------------------------------------
    def plan_action(
        self,
        obs: np.ndarray,
        planner: Planner,
        model_env: ModelEnv,
        generator: torch.Generator,
    ) -> np.ndarray:
        """One MPC step: optimise ``(H, A)`` sequences from ``obs (O,)``, return ``(A,)``."""
        start = torch.as_tensor(obs, dtype=torch.float32, device=self.device).reshape(1, -1)
        num_particles = self.cfg.agent.num_particles

        def objective(actions: Tensor) -> Tensor:  # (1, P, H, A) -> (1, P)
            return model_env.evaluate_action_sequences(actions, start, num_particles, generator)

        act = planner.act(objective, num_envs=1)[0]
        out: np.ndarray = act.cpu().numpy().astype(np.float32)
        return out

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        if not self.fitted:
            raise MbrlError(
                "PETS was asked to act before its model was fitted (no data yet); "
                "agent.learning_starts must be >= 1."
            )
        if deterministic:
            return self.plan_action(
                obs, self.eval_planner, self.eval_model_env, self.eval_generator
            )
        t0 = time.perf_counter()
        act = self.plan_action(obs, self.planner, self.model_env, self.generator)
        self._plan_seconds.append(time.perf_counter() - t0)
        return act

    # -- hooks -------------------------------------------------------------------------
    def on_step(self, step: int, buffer: ReplayBuffer) -> dict[str, float]:
        a = self.cfg.agent
        if step < a.learning_starts:
            return {}
        if self.last_fit_step != step and (
            not self.fitted  # learning_starts ended mid-episode
            or (a.train_every and (step - a.learning_starts) % a.train_every == 0)
        ):
            self.fit_model(step, buffer)
        if step % self.log_every == 0 and self._plan_seconds:
            mean = float(np.mean(self._plan_seconds))
            self._plan_seconds.clear()
            return {"train/plan_seconds": mean}
        return {}

    def on_episode_end(self, step: int, buffer: ReplayBuffer) -> dict[str, float]:
        """PETS refits on all data after every episode; the next episode plans afresh."""
        self.planner.reset()
        if step >= self.cfg.agent.learning_starts and not self.cfg.agent.train_every:
            self.fit_model(step, buffer)
        self.on_new_episode(step)
        return {}

    def on_new_episode(self, step: int) -> None:
        """Called when a training episode ends, after any refit (PSRL resamples here)."""

    def evaluate(self, episodes: int | None = None, video: Any = None) -> dict[str, float]:
        """Deterministic MPC in the real env, reproducible: fresh planner state and seed."""
        seed = self.cfg.run.seed + EVAL_SEED_OFFSET
        self.eval_generator.manual_seed(seed)
        if self.eval_planner.generator is not None:
            self.eval_planner.generator.manual_seed(seed + 1)
        spec, self.spec = self.spec, self._hooked_spec()
        try:
            return super().evaluate(episodes, video)
        finally:
            self.spec = spec

    def _hooked_spec(self) -> EnvSpec:
        values = {f.name: getattr(self.spec, f.name) for f in dataclasses.fields(self.spec)}
        return _HookedSpec(**values, on_reset=self.eval_planner.reset)

    # -- state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": {k: v.clone() for k, v in self.model.state_dict().items()},
            "trainer": self.trainer.state_dict(),
            "planner": self.planner.state_dict(),
            "generator": self.generator.get_state(),
            "fitted": self.fitted,
            "last_fit_step": self.last_fit_step,
            "plan_seconds": list(self._plan_seconds),
            "model_env_member": self.model_env.member,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # the elite list may differ in length from the freshly built model's
        if isinstance(self.model, ProbabilisticEnsemble):
            self.model.elite_idx = state["model"]["elite_idx"].clone().to(self.device)
        self.model.load_state_dict(state["model"])
        self.trainer.load_state_dict(state["trainer"])
        self.planner.load_state_dict(state["planner"])
        self.generator.set_state(state["generator"])
        self.fitted = bool(state["fitted"])
        self.last_fit_step = int(state["last_fit_step"])
        self._plan_seconds = [float(x) for x in state["plan_seconds"]]
        member = state["model_env_member"]
        if member is not None:
            self.model_env.set_member(int(member))


__all__ = ["PLANNER_NAMES", "PETSAgent", "PETSConfig"]
