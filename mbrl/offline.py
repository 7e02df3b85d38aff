"""The offline training loop: a fixed dataset, gradient updates, evaluation, checkpoints.

Offline agents (``mbrl train ravl|mopo|mobile|bc --dataset SOURCE``) learn from a
D4RL-format dataset only; the real environment is used for evaluation and nothing else.
**``run.total_steps`` counts gradient updates** (not env steps), and so do
``run.eval_every``, ``run.checkpoint_every`` and the ``step`` column of ``metrics.csv``.

Dataset -> environment (:func:`resolve_dataset_env`, called by ``mbrl train`` before the
run directory is written, so ``config.yaml`` records the env actually used):

1. a D4RL id (``d4rl:hopper-medium-v2``) -> the gymnasium v4 env of that family
   (:data:`mbrl.data.scores.FAMILY_GYM_ID`; v4 keeps the mujoco-py v2 models and
   observation layouts; see the README for how faithful each mapping is);
2. a file -> the env named by its metadata (``metadata/env_id`` etc.) or, failing that,
   by the env family in its file name (``hopper_medium-v2.hdf5`` -> ``Hopper-v4``);
3. otherwise the registered envs with the data's obs/act dims: one match is used; with
   several (17/6 dims: HalfCheetah and Walker2d) ``--run.env`` must name one of them;
   with none, ``--run.env`` is used.

Then the data are validated (the loader already refuses NaN/inf and inconsistent keys):
obs/act dims must equal the env's, actions must lie within the env's action bounds, and
model-based agents need rows with a known next observation and the env's termination
function. Every failure is one :class:`~mbrl.errors.MbrlError` naming the dataset and the
fix (``mbrl`` exits with status 2).

The model-based loop (MOPO, MOBILE, RAVL; the schedule of OfflineRL-Kit's
``MBPolicyTrainer`` and of the RAVL code)::

    fit the ensemble on the rows whose next observation is known   (once; checkpointed)
    for update t = 1 .. total_steps:
        if (t − 1) % updates_per_epoch == 0:                        (start of an epoch)
            s_0 ~ D  (rollout_batch_size rows, uniform with replacement)
            k-step rollouts of the current stochastic policy in the model: a random elite
            per sample and step, Gaussian sampling, terminated samples stop (the
            terminating transition is kept, terminated=True)
            agent.penalize(rollouts)            (MOPO: r − λ·u; identity otherwise)
            model buffer (FIFO of rollout_batch_size·k·model_retain_epochs rows) ← rollouts
        batch = int(real_ratio·B) rows of D, then B − that many rows of the model buffer
        one SAC update with the agent's hooks (RAVL: EDAC term; MOBILE: penalized target)

``int()`` (12 real rows of 256) as both reference codes do. The model predicts the reward
(as in all three papers' code); the env's termination function ends rollouts.

Evaluation: every ``run.eval_every`` updates and at the end, ``run.eval_episodes``
deterministic episodes in the real env (:func:`mbrl.evaluation.evaluate_policy`),
logged as ``eval/return``, ``eval/return_std``, ``eval/length`` and, where reference
scores are known (the dataset's own metadata first, then D4RL's table),
``eval/normalized_score``. The run's summary reports the final evaluation.

Metrics (every ``log_every`` updates): the agent's ``train/*`` losses; ``train/q_mean``:
the critics' mean ``Q_i(s, a)`` on a fixed set of up to 1,000 dataset rows,
``train/q_policy_mean``: ``min_i Q_i(s, π(s))`` on the same states (deterministic π),
``train/q_std``: the spread of the critics there (compare with ``eval/return`` to see
over-estimation); ``train/q_batch_mean``: SAC's mean Q on the (mixed) training batch;
``model/holdout_mse`` (mean over the elites), ``model/fit_epochs``,
``model/rollout_rows``, ``model/rollout_length_mean``, ``model/rollout_reward_mean``,
``model/buffer_size``; cumulative ``time/model_fit_s``, ``time/rollout_s``,
``time/update_s``; ``time/updates_per_s``.

Exact resume. A checkpoint holds the agent (nets, optimizers, the fitted model, the model
buffer, every generator), the update counter, the last evaluation and the global RNGs.
The dataset itself is not copied into checkpoints: it is re-read (read-only) from its
source. While the model is being fitted the trainer's state is checkpointed at most
every :data:`FIT_CHECKPOINT_SECONDS`, so a run killed during the fit resumes the fit;
once fitted, the model is in every checkpoint and is never refitted. On CPU a run killed
and resumed ends with the same metrics as one that never stopped.
"""

from __future__ import annotations

import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from mbrl.agents.sac import SAC, SACConfig
from mbrl.checkpoint import find_latest, load_checkpoint, rng_state, save_run_checkpoint
from mbrl.checkpoint import set_rng_state as restore_rng_state
from mbrl.config import RunConfig, check_in_range, check_positive, load_yaml
from mbrl.data.buffer import ReplayBuffer
from mbrl.data.d4rl import D4RLDataset, check_dims, qlearning_view, to_transition_batch
from mbrl.data.datasets import D4RL_DATASETS, get_dataset_spec, load_dataset, match_env
from mbrl.data.scores import normalized_score, ref_scores_for
from mbrl.envs import EnvSpec, get_env_spec
from mbrl.errors import MbrlError, unknown_name
from mbrl.evaluation import evaluate_policy
from mbrl.models.ensemble import (
    EnsembleConfig,
    ProbabilisticEnsemble,
    check_gaussian_ensemble_model,
)
from mbrl.models.model_env import ModelEnv
from mbrl.models.oracle import OracleDynamics
from mbrl.models.trainer import ModelTrainer, TrainerConfig
from mbrl.rundir import RunDir
from mbrl.train import RunContext, TrainConfig, eval_setup
from mbrl.types import TransitionBatch

CHECKPOINT_FORMAT = "offline-1"
FIT_CHECKPOINT_SECONDS = 60.0  # during the model fit, checkpoint at most this often
PROBE_ROWS = 1_000  # dataset rows on which train/q_* diagnostics are measured
# generator seeds: run.seed + offset, never shared between purposes
ROLLOUT_SEED_OFFSET = 30_000
REAL_SAMPLE_SEED_OFFSET = 40_000
MODEL_BUFFER_SEED_OFFSET = 50_000
PROBE_SEED_OFFSET = 60_000
ACTOR_LR_SCHEDULES = ("constant", "cosine")


# -- dataset -> env ----------------------------------------------------------------------
_CACHE: dict[tuple[str, float], D4RLDataset] = {}


def load_offline_dataset(source: str) -> D4RLDataset:
    """Load (and validate) a dataset source, remembering the last one.

    ``mbrl train`` resolves the env from the dataset before the agent loads it again;
    the one-entry cache (keyed by source and file mtime) avoids reading a 1M-row file
    twice. The returned dataset must not be modified.
    """
    path = Path(source).expanduser()
    key = (str(source), path.stat().st_mtime if path.is_file() else 0.0)
    ds = _CACHE.get(key)
    if ds is None:
        ds = load_dataset(source, load_infos=False)
        if len(ds) == 0:
            raise MbrlError(f"dataset '{source}' has no transitions; nothing to learn from.")
        _CACHE.clear()
        _CACHE[key] = ds
    return ds


def _d4rl_id(source: str) -> str | None:
    """The ``d4rl:`` id named by ``source``, if it names one (and is not a local file)."""
    if source.startswith("d4rl:"):
        return source
    if not Path(source).expanduser().exists() and f"d4rl:{source}" in D4RL_DATASETS:
        return f"d4rl:{source}"
    return None


def resolve_dataset_env(source: str, fallback_env: str) -> str:
    """The env id a dataset is evaluated on (rules in the module docstring).

    ``fallback_env`` (``run.env``) is used only when the dataset names no env and its dims
    match several or no registered env. Raises :class:`MbrlError` when the dataset cannot
    be loaded, the env is ambiguous, or the dims do not match the env.
    """
    ds = load_offline_dataset(source)
    d4rl_id = _d4rl_id(source)
    if d4rl_id is not None:
        env_id = get_dataset_spec(d4rl_id).env_id
    elif ds.env_id is not None:
        env_id = ds.env_id
    else:
        matches, _ = match_env(ds)
        if len(matches) == 1:
            env_id = matches[0]
        elif fallback_env in matches or not matches:
            env_id = fallback_env
        else:
            raise MbrlError(
                f"dataset '{source}' names no environment and its dims "
                f"(obs {ds.obs_dim}, act {ds.act_dim}) fit several: {', '.join(matches)}. "
                "Choose one with --run.env, or store metadata/env_id in the file."
            )
    try:
        spec = get_env_spec(env_id)
    except MbrlError as exc:
        raise MbrlError(
            f"dataset '{source}' belongs to env '{env_id}', which is unknown: {exc}"
        ) from None
    check_dataset_for_env(ds, spec, source)
    return spec.id


def check_dataset_for_env(ds: D4RLDataset, spec: EnvSpec, source: str) -> None:
    """Refuse a dataset whose obs/act dims differ from ``spec``'s or whose actions leave
    the env's action bounds (a wrong env, or unnormalized actions)."""
    obs_dim, act_dim = spec.dims()
    check_dims(ds, obs_dim, act_dim, spec.id)
    env = spec.make()
    try:
        space: Any = env.action_space
        low = np.asarray(space.low, dtype=np.float32).reshape(-1)
        high = np.asarray(space.high, dtype=np.float32).reshape(-1)
    finally:
        env.close()
    tol = 1e-4 * np.maximum(high - low, 1.0)
    outside = ((ds.actions < low - tol) | (ds.actions > high + tol)).any(axis=1)
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        raise MbrlError(
            f"dataset '{source}': {int(outside.sum())} actions lie outside the action bounds "
            f"of {spec.id} [{low.tolist()}, {high.tolist()}] (first row {row}: "
            f"{ds.actions[row].tolist()}). Is it the right env, or are actions unnormalized?"
        )


def dataset_ref_scores(source: str, env_id: str) -> tuple[float, float] | None:
    """Reference ``(min, max)`` returns of a dataset: its metadata first, then D4RL's table
    (by env family), then the env's declared scores (:func:`ref_scores_for`)."""
    return ref_scores_for(env_id=env_id, dataset=load_offline_dataset(source))


@dataclass
class OfflineData:
    """A validated dataset on the training device.

    Attributes:
        source: what the user gave (id or path).
        dataset: the loaded file (numpy, read-only).
        spec: the env it is evaluated on.
        real: the Q-learning view (:func:`mbrl.data.d4rl.qlearning_view`): ``M`` rows.
        model_rows: the rows with a known next observation (the dynamics fit's data).
        ref_scores: ``(min, max)`` reference returns, or ``None``.
    """

    source: str
    dataset: D4RLDataset
    spec: EnvSpec
    real: TransitionBatch
    model_rows: TransitionBatch
    ref_scores: tuple[float, float] | None

    def __len__(self) -> int:
        return len(self.real)


def load_offline_data(run: RunConfig, device: torch.device) -> OfflineData:
    """Load ``run.dataset``, resolve and check its env, and put the transitions on ``device``."""
    if run.dataset is None:
        raise MbrlError(
            "offline agents learn from a dataset: pass --dataset d4rl:hopper-medium-v2 "
            "(or --run.dataset path/to/file.hdf5)."
        )
    source = run.dataset
    env_id = resolve_dataset_env(source, run.env)
    ds = load_offline_dataset(source)
    spec = get_env_spec(env_id)
    view = qlearning_view(ds)
    if len(view) == 0:
        raise MbrlError(f"dataset '{source}' yields no transitions (every row ends an episode).")
    real = to_transition_batch(view, device)
    known = torch.as_tensor(view.next_obs_known, device=device)
    return OfflineData(
        source=source,
        dataset=ds,
        spec=spec,
        real=real,
        model_rows=real[known] if not bool(known.all()) else real,
        ref_scores=ref_scores_for(env_id=spec.id, dataset=ds),
    )


def concat_batches(a: TransitionBatch, b: TransitionBatch) -> TransitionBatch:
    """Rows of ``a`` then rows of ``b``."""
    return TransitionBatch(
        **{f.name: torch.cat([getattr(a, f.name), getattr(b, f.name)]) for f in fields(a)}
    )


# -- agents ------------------------------------------------------------------------------
class OfflineAgent(ABC):
    """Base class of agents trained by :func:`run_offline` on ``run.dataset``.

    A subclass is constructed as ``Agent(cfg, ctx)`` (the :class:`mbrl.train.Agent`
    protocol) and implements:

    - :meth:`act`: the policy, ``obs (O,) -> act (A,)`` within the action bounds;
    - :meth:`update`: one gradient update (``step`` is its 1-based index), returning
      ``train/*`` metrics;
    - :meth:`state_dict` / :meth:`load_state_dict`: everything that changes in training;
    - optionally :meth:`prepare` (work before the first update, e.g. the model fit),
      :meth:`diagnostics` (metrics measured at log time) and :attr:`log_every`.
    """

    log_every: int = 1_000

    @classmethod
    def extend_problem(cls, cfg: TrainConfig[Any]) -> str | None:
        """Why this run's budget cannot be raised on resume (``None``: it can); see
        :meth:`mbrl.online.OnlineAgent.extend_problem`."""
        return None

    def __init__(self, cfg: TrainConfig[Any], ctx: RunContext) -> None:
        self.cfg, self.ctx = cfg, ctx
        self.device = ctx.device
        self.data = load_offline_data(cfg.run, ctx.device)
        self.spec = self.data.spec
        self.obs_dim = self.data.dataset.obs_dim
        self.act_dim = self.data.dataset.act_dim
        env = self.spec.make()
        try:
            space: Any = env.action_space
            self.act_low = np.asarray(space.low, dtype=np.float32).reshape(-1)
            self.act_high = np.asarray(space.high, dtype=np.float32).reshape(-1)
        finally:
            env.close()
        self.prepared = False  # set by prepare(); part of the checkpoint
        self.real_generator = torch.Generator(device=self.device)
        self.real_generator.manual_seed(cfg.run.seed + REAL_SAMPLE_SEED_OFFSET)
        g = torch.Generator().manual_seed(cfg.run.seed + PROBE_SEED_OFFSET)
        n = len(self.data)
        self.probe_idx = torch.randperm(n, generator=g)[: min(n, PROBE_ROWS)].to(self.device)

    # -- hooks -------------------------------------------------------------------------
    @abstractmethod
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """The policy: ``obs (O,) -> act (A,)`` float32 within the action bounds."""

    @abstractmethod
    def update(self, step: int) -> dict[str, float]:
        """Gradient update number ``step`` (1-based); returns ``train/*`` metrics."""

    def prepare(
        self,
        resume: dict[str, Any] | None,
        checkpoint_fn: Callable[[dict[str, Any]], None],
    ) -> dict[str, float]:
        """Work before the first update; ``resume`` continues an interrupted one.

        ``checkpoint_fn(state)`` may be called with a resumable state. Returns metrics
        (logged at step 0). Sets :attr:`prepared`.
        """
        self.prepared = True
        return {}

    def diagnostics(self) -> dict[str, float]:
        """Metrics measured when a ``train/*`` row is logged (default: none)."""
        return {}

    @abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    # -- helpers -----------------------------------------------------------------------
    def sample_real(self, n: int) -> TransitionBatch:
        """``n`` dataset transitions, uniform with replacement (own generator)."""
        idx = torch.randint(
            0, len(self.data), (n,), generator=self.real_generator, device=self.device
        )
        return self.data.real[idx]

    def train(self) -> dict[str, float]:
        """Run the whole budget with :func:`run_offline`; returns the final evaluation."""
        return run_offline(self)

    def evaluate(self, episodes: int | None = None, video: Any = None) -> dict[str, float]:
        """Deterministic episodes in the real env: return, its std, length, normalized score."""
        out = evaluate_policy(
            self.spec,
            lambda obs: self.act(obs, deterministic=True),
            episodes or self.cfg.run.eval_episodes,
            self.cfg.run.seed,
            video_path=video,
        )
        if self.data.ref_scores is not None:
            out["eval/normalized_score"] = normalized_score(
                out["eval/return"], *self.data.ref_scores
            )
        return out

    @classmethod
    def evaluate_run(
        cls, run_dir: RunDir, episodes: int, video: bool, device: str
    ) -> dict[str, float]:
        """Re-evaluate the latest checkpoint of ``run_dir`` (used by ``mbrl eval``)."""
        setup = eval_setup(run_dir, device, unit="updates")
        if setup.state.get("phase") != "train":
            raise MbrlError(
                f"{setup.checkpoint} was written before training started; nothing to evaluate."
            )
        agent = cls(setup.cfg, setup.ctx)
        agent.load_state_dict(setup.state["agent"])
        return agent.evaluate(episodes=episodes, video=setup.video_path(video))


# -- model-based offline agents ----------------------------------------------------------
@dataclass
class OfflineModelBasedConfig:
    """Fields shared by MOPO, MOBILE and RAVL: the loop, the dynamics model and SAC.

    Defaults: OfflineRL-Kit's and the RAVL code's shared values (see each agent's
    docstring for its own).

    Attributes:
        rollout_batch_size: model rollouts started from dataset states each epoch.
        rollout_length: ``k``, steps per model rollout.
        model_retain_epochs: epochs of rollouts kept in the FIFO model buffer.
        real_ratio: fraction of dataset rows in every SAC batch (``int(ratio·B)`` rows).
        updates_per_epoch: SAC updates between two rollout rounds.
        model: the dynamics model; only ``ensemble`` (the probabilistic ensemble): the
            rollouts sample from a random elite's Gaussian and MOPO/MOBILE read its
            variances, which the deterministic sequence models lack (``koopman``/
            ``transformer`` are refused with that reason).
        num_members, num_elites: ensemble size and members used for rollouts.
        model_hidden_size, model_num_layers, model_activation: ensemble MLP shape.
        model_weight_decays: L2 decay per linear layer (``model_num_layers + 1`` values).
        model_lr, model_batch_size: ensemble Adam step size and per-member batch.
        model_holdout_ratio, model_max_holdout: holdout split of the fit.
        model_patience: epochs without improvement before the fit stops.
        model_max_epochs: cap on fit epochs (``None``: early stopping only).
        model_max_train_seconds: wall-clock cap on the fit (``None``: none).
        load_dynamics: reuse the ensemble already fitted by another offline model-based
            run (its run directory or one of its checkpoint files) instead of fitting one
            (OfflineRL-Kit's ``--load-dynamics-path``): that run must have been trained on
            the same dataset with the same ``num_members``/``model_*`` shape. Saves the fit
            when several algorithms or seeds share a dataset; the run's own seed then no
            longer varies the model (say so when reporting seeds).
        learning_rate: Adam step size of the critics (and of actor/α unless set).
        actor_learning_rate: actor step size (``None``: ``learning_rate``).
        alpha_learning_rate: temperature step size (``None``: ``learning_rate``).
        actor_lr_schedule: ``constant``, or ``cosine``: the actor's step size follows
            ``lr·(1 + cos(π·epoch/epochs))/2`` over the run's epochs (PyTorch's
            ``CosineAnnealingLR`` stepped once per epoch, as OfflineRL-Kit does).
        batch_size, tau, gamma, hidden_sizes, num_critics, target_entropy, init_alpha,
            learn_alpha, log_std_min, log_std_max: SAC's
            (:class:`~mbrl.agents.sac.SACConfig`).
        log_every: updates between ``train/*`` metric rows.
    """

    rollout_batch_size: int = 50_000
    rollout_length: int = 5
    model_retain_epochs: int = 5
    real_ratio: float = 0.05
    updates_per_epoch: int = 1_000
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
    model_max_holdout: int = 1_000
    model_patience: int = 5
    model_max_epochs: int | None = None
    model_max_train_seconds: float | None = None
    load_dynamics: str | None = None
    learning_rate: float = 3e-4
    actor_learning_rate: float | None = None
    alpha_learning_rate: float | None = None
    actor_lr_schedule: str = "constant"
    batch_size: int = 256
    tau: float = 0.005
    gamma: float = 0.99
    hidden_sizes: tuple[int, ...] = (256, 256)
    num_critics: int = 2
    target_entropy: float | None = None
    init_alpha: float = 1.0
    learn_alpha: bool = True
    log_std_min: float = -5.0
    log_std_max: float = 2.0
    log_every: int = 1_000

    def __post_init__(self) -> None:
        check_positive(
            self,
            "rollout_batch_size",
            "rollout_length",
            "model_retain_epochs",
            "updates_per_epoch",
            "model_lr",
            "model_batch_size",
            "model_max_holdout",
            "model_patience",
            "actor_learning_rate",
            "alpha_learning_rate",
            "log_every",
        )
        check_in_range(self, "real_ratio", 0.0, 1.0)
        if self.actor_lr_schedule not in ACTOR_LR_SCHEDULES:
            raise unknown_name("actor_lr_schedule", self.actor_lr_schedule, ACTOR_LR_SCHEDULES)
        name = type(self).__name__
        check_gaussian_ensemble_model(name.removesuffix("Config").lower(), self.model)
        try:
            ProbabilisticEnsemble(1, 1, self.ensemble_config())
        except MbrlError as exc:
            raise MbrlError(f"{name} (model_* fields): {exc}") from None
        if not 0.0 <= self.model_holdout_ratio < 1.0:
            raise MbrlError(
                f"{name}.model_holdout_ratio={self.model_holdout_ratio} must be in [0, 1)."
            )
        try:
            self.sac_config()
        except MbrlError as exc:
            raise MbrlError(f"{name}: {exc}") from None

    def ensemble_config(self) -> EnsembleConfig:
        return EnsembleConfig(
            num_members=self.num_members,
            num_elites=self.num_elites,
            hidden_size=self.model_hidden_size,
            num_layers=self.model_num_layers,
            activation=self.model_activation,
            weight_decays=tuple(self.model_weight_decays),
        )

    def trainer_config(self, seed: int) -> TrainerConfig:
        return TrainerConfig(
            lr=self.model_lr,
            batch_size=self.model_batch_size,
            holdout_ratio=self.model_holdout_ratio,
            max_holdout=self.model_max_holdout,
            patience=self.model_patience,
            max_epochs=self.model_max_epochs,
            max_train_seconds=self.model_max_train_seconds,
            seed=seed,
        )

    def sac_config(self) -> SACConfig:
        # SAC's fields appear here under SAC's names; no warm-up: the data are all there
        return SACConfig.from_flat(self, learning_starts=0)

    @property
    def real_rows(self) -> int:
        """Dataset rows in each SAC batch: ``int(real_ratio · batch_size)`` (both codes)."""
        return int(self.real_ratio * self.batch_size)

    @property
    def model_buffer_size(self) -> int:
        """``rollout_batch_size · rollout_length · model_retain_epochs`` rows."""
        return self.rollout_batch_size * self.rollout_length * self.model_retain_epochs


def cosine_lr(base: float, epoch: int, epochs: int) -> float:
    """``CosineAnnealingLR`` (η_min = 0) after ``epoch`` steps of ``epochs``."""
    return base * (1.0 + math.cos(math.pi * min(epoch, epochs) / max(epochs, 1))) / 2.0


class ModelBasedOfflineAgent(OfflineAgent):
    """SAC on a mix of dataset rows and short rollouts of a model fitted to the dataset.

    Subclasses choose the SAC variant (:meth:`make_sac`) and may penalize rollouts
    (:meth:`penalize`). The loop is in the module docstring.
    """

    @classmethod
    def extend_problem(cls, cfg: TrainConfig[Any]) -> str | None:
        if cfg.agent.actor_lr_schedule == "cosine":
            return (
                "its actor step size follows a cosine schedule over the run's budget "
                "(agent.actor_lr_schedule: cosine), which a larger budget would change"
            )
        return None

    def __init__(self, cfg: TrainConfig[Any], ctx: RunContext) -> None:
        super().__init__(cfg, ctx)
        a: OfflineModelBasedConfig = cfg.agent
        self.mcfg = a
        self.log_every = a.log_every
        if not self.spec.has_termination_fn:
            raise MbrlError(
                f"env '{self.spec.id}' has no batched termination function, so a learned "
                "model cannot roll out in it; register one (mbrl.envs.register_env) or use bc."
            )
        self.sac = self.make_sac(a.sac_config())
        lr_actor = a.actor_learning_rate or a.learning_rate
        lr_alpha = a.alpha_learning_rate or a.learning_rate
        for group in self.sac.actor_opt.param_groups:
            group["lr"] = lr_actor
        for group in self.sac.alpha_opt.param_groups:
            group["lr"] = lr_alpha
        self.base_actor_lr = lr_actor
        self.epochs = max(1, math.ceil(cfg.run.total_steps / a.updates_per_epoch))
        self.model = ProbabilisticEnsemble(self.obs_dim, self.act_dim, a.ensemble_config()).to(
            self.device
        )
        self.trainer = ModelTrainer(self.model, a.trainer_config(cfg.run.seed), self.device)
        self.model_env = ModelEnv(
            self.model, self.spec, propagation="random_elite", reward_source="model"
        )
        self.rollout_generator = torch.Generator(device=self.device)
        self.rollout_generator.manual_seed(cfg.run.seed + ROLLOUT_SEED_OFFSET)
        self.model_buffer = ReplayBuffer(
            a.model_buffer_size,
            self.obs_dim,
            self.act_dim,
            self.device,
            seed=cfg.run.seed + MODEL_BUFFER_SEED_OFFSET,
        )
        self.model_metrics: dict[str, float] = {}
        self.timers = {"model_fit_s": 0.0, "rollout_s": 0.0, "update_s": 0.0}
        # the true simulator in place of the learned model (set by a subclass; RAVL's
        # dynamics="oracle", the edge-of-reach experiment): no fit, exact rollouts
        self.oracle: OracleDynamics | None = None

    # -- hooks for subclasses ------------------------------------------------------------
    def make_sac(self, cfg: SACConfig) -> SAC:
        """The SAC learner (a subclass with the algorithm's hooks); default: plain SAC."""
        return SAC(self.obs_dim, self.act_dim, cfg, self.act_low, self.act_high, self.device)

    def penalize(self, rollouts: TransitionBatch) -> TransitionBatch:
        """Transform the rollouts before they enter the model buffer (default: none)."""
        return rollouts

    def extra_metrics(self) -> dict[str, float]:
        """Metrics of the algorithm's own, added to every update's (default: none)."""
        return {}

    # -- the loop's steps ----------------------------------------------------------------
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        return self.sac.act(obs, deterministic)

    def prepare(
        self,
        resume: dict[str, Any] | None,
        checkpoint_fn: Callable[[dict[str, Any]], None],
    ) -> dict[str, float]:
        """Fit the ensemble on the dataset rows with a known next observation."""
        if self.oracle is not None:
            self.prepared = True
            return {"model/oracle": 1.0}
        if self.mcfg.load_dynamics is not None:
            self.model_metrics = self._load_dynamics(self.mcfg.load_dynamics)
            self.prepared = True
            return dict(self.model_metrics)
        rows = self.data.model_rows
        if len(rows) < 2:
            raise MbrlError(
                f"dataset '{self.data.source}' has {len(rows)} transitions with a known next "
                "observation; the dynamics model needs more (store next_observations)."
            )
        result = self.trainer.fit(
            rows, progress=self.cfg.run.progress, checkpoint_fn=checkpoint_fn, resume_state=resume
        )
        self.timers["model_fit_s"] += result.wall_time  # all resumed parts of the fit
        elite_mse = [result.holdout_mse_per_member[i] for i in result.elite_idx]
        self.model_metrics = {
            "model/holdout_mse": float(np.mean(elite_mse)),
            "model/fit_epochs": float(result.epochs),
            "model/train_loss": float(result.train_loss),
        }
        self.prepared = True
        return {**self.model_metrics, "time/model_fit_s": self.timers["model_fit_s"]}

    def _load_dynamics(self, source: str) -> dict[str, float]:
        """Load the fitted ensemble of another run (``agent.load_dynamics``); its metrics."""
        path = Path(source).expanduser()
        if path.is_dir():
            ckpt = find_latest(path)
            if ckpt is None:
                raise MbrlError(
                    f"agent.load_dynamics: '{source}' holds no checkpoint; give the run "
                    "directory of a finished (or at least model-fitted) offline run."
                )
            run_dir = path
        elif path.is_file():
            ckpt, run_dir = path, path.parent.parent
        else:
            raise MbrlError(
                f"agent.load_dynamics: '{source}' is neither a run directory nor a file."
            )
        state = load_checkpoint(ckpt, map_location=self.device)
        agent_state = state.get("agent") if state.get("format") == CHECKPOINT_FORMAT else None
        if not isinstance(agent_state, dict) or "model" not in agent_state:
            raise MbrlError(
                f"agent.load_dynamics: {ckpt} holds no fitted dynamics model (a run of mopo, "
                "mobile or ravl that got past its model fit is needed)."
            )
        config_path = run_dir / "config.yaml"
        if config_path.is_file():
            theirs = load_yaml(config_path).get("run", {}).get("dataset")
            if theirs is not None and not _same_dataset(str(theirs), self.data.source):
                raise MbrlError(
                    f"agent.load_dynamics: {run_dir} was trained on '{theirs}', this run on "
                    f"'{self.data.source}'; a model only transfers between runs on one dataset."
                )
        try:
            self.model.load_state_dict(agent_state["model"])
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[-1].strip()
            raise MbrlError(
                f"agent.load_dynamics: the model in {ckpt} does not fit this run's ensemble "
                f"(num_members/model_* must match the run that fitted it): {first}"
            ) from None
        metrics = {k: float(v) for k, v in agent_state.get("model_metrics", {}).items()}
        return {**metrics, "model/loaded": 1.0}

    def _policy(self, obs: Tensor) -> Tensor:
        """The current stochastic policy on model states: ``(b, O) -> (b, A)``."""
        act, _ = self.sac.actor(obs)
        return act

    @torch.no_grad()
    def rollout(self, epoch: int) -> TransitionBatch:
        """One epoch's model rollouts into the model buffer; returns them (penalized)."""
        t0 = time.perf_counter()
        a = self.mcfg
        if a.actor_lr_schedule == "cosine":
            for group in self.sac.actor_opt.param_groups:
                group["lr"] = cosine_lr(self.base_actor_lr, epoch, self.epochs)
        idx = torch.randint(
            0,
            len(self.data),
            (a.rollout_batch_size,),
            generator=self.rollout_generator,
            device=self.device,
        )
        start = self.data.real.obs[idx]
        if self.oracle is None:
            data = self.model_env.rollout(
                self._policy, start, a.rollout_length, self.rollout_generator
            )
        else:
            data = oracle_rollout(self.oracle, self._policy, start, a.rollout_length)
        data = self.penalize(data)
        self.model_buffer.add_batch(
            data.obs, data.act, data.rew, data.next_obs, data.terminated, data.truncated
        )
        self.model_metrics.update(
            {
                "model/rollout_rows": float(len(data)),
                "model/rollout_length_mean": len(data) / a.rollout_batch_size,
                "model/rollout_reward_mean": float(data.rew.mean()),
                "model/buffer_size": float(len(self.model_buffer)),
            }
        )
        self.timers["rollout_s"] += time.perf_counter() - t0
        return data

    def sample_batch(self) -> TransitionBatch:
        """``int(real_ratio·B)`` dataset rows followed by ``B −`` that many model rows."""
        B, n_real = self.mcfg.batch_size, self.mcfg.real_rows
        if len(self.model_buffer) == 0 or n_real == B:
            return self.sample_real(B)
        fake = self.model_buffer.sample(B - n_real)
        return fake if n_real == 0 else concat_batches(self.sample_real(n_real), fake)

    def update(self, step: int) -> dict[str, float]:
        """Rollouts at the start of every epoch, then one SAC update on a mixed batch."""
        if (step - 1) % self.mcfg.updates_per_epoch == 0:
            self.rollout((step - 1) // self.mcfg.updates_per_epoch)
        t0 = time.perf_counter()
        metrics = self.sac.update(self.sample_batch())
        self.timers["update_s"] += time.perf_counter() - t0
        metrics["train/q_batch_mean"] = metrics.pop("train/q_mean")
        metrics["train/actor_lr"] = float(self.sac.actor_opt.param_groups[0]["lr"])
        metrics.update(self.extra_metrics())
        metrics.update(self.model_metrics)
        metrics.update({f"time/{k}": v for k, v in self.timers.items()})
        return metrics

    @torch.no_grad()
    def diagnostics(self) -> dict[str, float]:
        """Critic estimates on fixed dataset rows (``train/q_mean``, ``_policy_mean``, ``_std``)."""
        obs, act = self.data.real.obs[self.probe_idx], self.data.real.act[self.probe_idx]
        q_data = self.sac.critic(obs, act)  # (N, P)
        pi, _ = self.sac.actor(obs, deterministic=True)
        q_pi = self.sac.critic(obs, pi)  # (N, P)
        std = q_data.std(0).mean() if q_data.shape[0] > 1 else q_data.new_zeros(())
        values = torch.stack([q_data.mean(), q_pi.min(0).values.mean(), std]).tolist()
        return dict(
            zip(("train/q_mean", "train/q_policy_mean", "train/q_std"), values, strict=True)
        )

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "sac": self.sac.state_dict(),
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "prepared": self.prepared,
            "model_buffer": self.model_buffer.state_dict(),
            "rollout_generator": self.rollout_generator.get_state(),
            "real_generator": self.real_generator.get_state(),
            "model_metrics": dict(self.model_metrics),
            "timers": dict(self.timers),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sac.load_state_dict(state["sac"])
        self.model.load_state_dict(state["model"])
        self.prepared = bool(state["prepared"])
        self.model_buffer.load_state_dict(state["model_buffer"])
        self.rollout_generator.set_state(state["rollout_generator"].cpu())
        self.real_generator.set_state(state["real_generator"].cpu())
        self.model_metrics = {k: float(v) for k, v in state["model_metrics"].items()}
        self.timers = {k: float(v) for k, v in state["timers"].items()}


@torch.no_grad()
def oracle_rollout(
    oracle: OracleDynamics, policy: Callable[[Tensor], Tensor], start_obs: Tensor, horizon: int
) -> TransitionBatch:
    """:meth:`ModelEnv.rollout`'s semantics with the true simulator as the model.

    ``horizon`` steps of ``policy`` from ``start_obs (B, O)``; samples that terminate stop
    (their terminating transition is kept); the last step's survivors are ``truncated``.
    Returns up to ``B·horizon`` rows, step-major.
    """
    obs = start_obs
    parts: list[tuple[Tensor, ...]] = []
    for t in range(horizon):
        act = policy(obs)
        next_obs, rew, terminated = oracle.step(obs, act)
        last = t == horizon - 1
        parts.append((obs, act, rew, next_obs, terminated, ~terminated & last))
        alive = ~terminated
        if last or not bool(alive.any()):
            break
        obs = next_obs[alive]
    cols = [torch.cat(c) for c in zip(*parts, strict=True)]
    return TransitionBatch(*cols)


def _same_dataset(a: str, b: str) -> bool:
    """Two dataset sources name the same data (equal ids, or paths to the same file)."""
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.is_file() and pb.is_file() and pa.resolve() == pb.resolve()


# -- the loop ----------------------------------------------------------------------------
def run_offline(agent: OfflineAgent) -> dict[str, float]:
    """Train ``agent`` for ``run.total_steps`` gradient updates (see the module docstring).

    Resumes from the latest checkpoint of the run directory when ``ctx.resumed``.
    Returns the final deterministic evaluation, also logged at ``run.total_steps``.
    """
    run, ctx = agent.cfg.run, agent.ctx
    log = ctx.logger
    step = 0
    last_eval: dict[str, float] = {}
    prepare_resume: dict[str, Any] | None = None
    ckpt = find_latest(ctx.run_dir.path) if ctx.resumed else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, map_location=ctx.device)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise MbrlError(f"{ckpt} was not written by mbrl's offline loop; cannot resume.")
        if state["phase"] == "prepare":
            prepare_resume = state["prepare"]
        else:
            agent.load_state_dict(state["agent"])
            step = int(state["step"])
            last_eval = {k: float(v) for k, v in state["last_eval"].items()}
        restore_rng_state(state["rng"])  # last: building the agent drew from torch

    def save() -> None:
        state = {
            "format": CHECKPOINT_FORMAT,
            "phase": "train",
            "step": step,
            "last_eval": last_eval,
            "agent": agent.state_dict(),
            "rng": rng_state(),
        }
        save_run_checkpoint(ctx.run_dir.path, step, state, keep=run.keep_checkpoints)

    if not agent.prepared:
        last_save = [time.perf_counter()]

        def save_prepare(prepare_state: dict[str, Any]) -> None:
            if time.perf_counter() - last_save[0] < FIT_CHECKPOINT_SECONDS:
                return
            state = {
                "format": CHECKPOINT_FORMAT,
                "phase": "prepare",
                "prepare": prepare_state,
                "rng": rng_state(),
            }
            save_run_checkpoint(ctx.run_dir.path, 0, state, keep=run.keep_checkpoints)
            last_save[0] = time.perf_counter()

        log.log(0, agent.prepare(prepare_resume, save_prepare))
        save()  # the fitted model: a resumed run never refits it

    bar = tqdm(
        total=run.total_steps, initial=step, disable=not run.progress, unit="upd", smoothing=0.05
    )
    session_start, session_step0 = time.perf_counter(), step
    metrics: dict[str, float] = {}
    try:
        while step < run.total_steps:
            metrics = agent.update(step + 1)
            step += 1
            bar.update(1)
            if step % agent.log_every == 0:
                ups = (step - session_step0) / max(time.perf_counter() - session_start, 1e-9)
                log.log(step, {**metrics, **agent.diagnostics(), "time/updates_per_s": ups})
            if run.eval_every and step % run.eval_every == 0 and step < run.total_steps:
                last_eval = agent.evaluate()
                log.log(step, last_eval)
                bar.set_postfix(_postfix(last_eval), refresh=False)
            if run.checkpoint_every and step % run.checkpoint_every == 0 and step < run.total_steps:
                save()
    finally:
        bar.close()
    last_eval = agent.evaluate()
    log.log(step, last_eval)
    save()  # the final checkpoint: `mbrl eval` reads it; `--resume` of a finished run is a no-op
    return last_eval


def _postfix(metrics: dict[str, float]) -> dict[str, str]:
    out = {"eval": f"{metrics['eval/return']:.4g}"} if "eval/return" in metrics else {}
    if "eval/normalized_score" in metrics:
        out["score"] = f"{metrics['eval/normalized_score']:.1f}"
    return out


def dataset_label(source: str) -> str:
    """Name of a dataset in run-directory paths: the id, or the file's name without folder."""
    if _d4rl_id(source) is not None or source.startswith("minari:"):
        return source
    return os.path.basename(os.path.normpath(source)) or source


__all__ = [
    "ModelBasedOfflineAgent",
    "OfflineAgent",
    "OfflineData",
    "OfflineModelBasedConfig",
    "concat_batches",
    "cosine_lr",
    "dataset_label",
    "dataset_ref_scores",
    "load_offline_data",
    "load_offline_dataset",
    "oracle_rollout",
    "resolve_dataset_env",
    "run_offline",
]
