"""The generic online training loop: real-env collection, evaluation, checkpoints, resume.

Any online agent (SAC now; PETS, MBPO later) subclasses :class:`OnlineAgent` and
declares what happens at each step; :func:`run_online` owns the environment loop::

    step = 0
    while step < run.total_steps:
        act = uniform random          if step < agent.learning_starts
              agent.act(obs, False)   otherwise
        next_obs, rew, terminated, truncated = env.step(act)
        buffer.add(obs, act, rew, next_obs, terminated, truncated); step += 1
        if terminated or truncated:
            agent.on_episode_end(step, buffer); episode += 1
            obs = env.reset(seed=run.seed + episode)
        agent.on_step(step, buffer)                   # where the agent updates
        every run.eval_every steps:       deterministic evaluation (evaluate_policy)
        every run.checkpoint_every steps: checkpoint

Episodes end when the env reports ``terminated or truncated`` (gymnasium's
``TimeLimit`` sets ``truncated``); the next one starts with ``env.reset(seed=run.seed +
episode)``, ``episode`` counting from 0. Both flags go into the buffer, so agents
bootstrap through truncation and mask only termination.

Exact resume. A checkpoint holds the agent (nets and optimizers), the replay buffer
(with its sampling generator), the episode bookkeeping, the step counter and every RNG
(python, numpy, torch, and the generator of the random warm-up actions). The env's
internal state cannot be pickled in general, so it is *re-created*: on resume the
current episode is reset with its seed and the actions it has taken so far are
replayed from the replay buffer. Seeded gymnasium envs (MuJoCo included) are
deterministic, so this reproduces the env state bit for bit (the replayed last
observation is compared with the stored one; a mismatch is reported). Checkpoints may
therefore be written at any step, and on CPU a run killed and resumed ends with the
same metrics as one that never stopped. ``metrics.csv`` gets the rows between the last
checkpoint and the kill twice (once from each session).
"""

from __future__ import annotations

import time
import warnings
from abc import ABC, abstractmethod
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from mbrl.checkpoint import find_latest, load_checkpoint, rng_state, save_run_checkpoint
from mbrl.checkpoint import set_rng_state as restore_rng_state
from mbrl.data.buffer import ReplayBuffer
from mbrl.envs import flat_dim, get_env_spec
from mbrl.errors import MbrlError
from mbrl.evaluation import evaluate_policy
from mbrl.rundir import RunDir
from mbrl.train import RunContext, TrainConfig, eval_setup

ACTION_SEED_OFFSET = 20_000  # the warm-up action generator never shares a seed with resets
CHECKPOINT_FORMAT = 1


class UniformActions:
    """Uniform random actions in ``[low, high]``, drawn in chunks from a numpy Generator.

    ``action_space.sample()`` costs ~36 µs a call; one vectorised draw per ``chunk``
    steps is essentially free. The state (generator, current chunk and position) is
    checkpointed so a resumed run draws the same actions.
    """

    def __init__(self, low: np.ndarray, high: np.ndarray, seed: int, chunk: int = 1024) -> None:
        self.low = np.asarray(low, dtype=np.float32)
        self.high = np.asarray(high, dtype=np.float32)
        self.rng = np.random.default_rng(seed)
        self.chunk = int(chunk)
        self._actions = np.zeros((0, self.low.shape[0]), dtype=np.float32)
        self._pos = 0

    def sample(self) -> np.ndarray:
        """One action ``(A,)`` float32."""
        if self._pos >= len(self._actions):
            draw = self.rng.uniform(self.low, self.high, size=(self.chunk, self.low.shape[0]))
            self._actions = draw.astype(np.float32)
            self._pos = 0
        act = self._actions[self._pos]
        self._pos += 1
        return act

    def state_dict(self) -> dict[str, Any]:
        # PCG64's 128-bit integers travel as strings: the safe unpickler
        # (torch.load(weights_only=True)) should only ever see plain small values.
        bg = self.rng.bit_generator.state
        return {
            "bit_generator": bg["bit_generator"],
            "state": {k: str(v) for k, v in bg["state"].items()},
            "has_uint32": int(bg["has_uint32"]),
            "uinteger": str(bg["uinteger"]),
            "actions": torch.from_numpy(self._actions.copy()),
            "pos": self._pos,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = {
            "bit_generator": state["bit_generator"],
            "state": {k: int(v) for k, v in state["state"].items()},
            "has_uint32": int(state["has_uint32"]),
            "uinteger": int(state["uinteger"]),
        }
        self._actions = state["actions"].cpu().numpy().astype(np.float32)
        self._pos = int(state["pos"])


class OnlineAgent(ABC):
    """Base class of agents trained by :func:`run_online` (``mbrl train AGENT``).

    A subclass is constructed as ``Agent(cfg, ctx)`` (the :class:`mbrl.train.Agent`
    protocol), builds its networks in ``__init__`` and implements the hooks:

    - :meth:`act`: the policy, ``obs (O,) -> act (A,)`` within the action bounds.
    - :meth:`on_step`: called after every env step (the transition is already in the
      buffer); the agent trains here and returns metrics (``{"train/...": x}``) or ``{}``.
    - :meth:`on_episode_end` (optional): called when an episode ends (e.g. PETS refits).
    - :meth:`state_dict` / :meth:`load_state_dict`: everything of the agent that changes
      during training (nets *and* optimizers), for checkpoints.

    Attributes read by the loop (override as class or instance attributes):
    ``learning_starts`` (uniform-random steps first), ``buffer_capacity``,
    ``log_every`` (steps between ``train/*`` metric rows).
    """

    learning_starts: int = 0

    @classmethod
    def extend_problem(cls, cfg: TrainConfig[Any]) -> str | None:
        """Why this run's budget cannot be raised on resume (``None``: it can).

        ``mbrl train --resume RUN --run.total-steps N`` continues a run to a larger
        budget; an agent whose training depends on the budget itself says so here.
        """
        return None

    buffer_capacity: int = 1_000_000
    log_every: int = 1_000

    def __init__(self, cfg: TrainConfig[Any], ctx: RunContext) -> None:
        self.cfg, self.ctx = cfg, ctx
        self.device = ctx.device
        self.spec = get_env_spec(cfg.run.env)
        env = self.spec.make()
        try:
            space = env.action_space
            if not isinstance(space, gym.spaces.Box):
                raise MbrlError(
                    f"env '{cfg.run.env}' has a {type(space).__name__} action space; online "
                    "agents need a continuous Box action space."
                )
            self.obs_dim = flat_dim(env.observation_space)
            self.act_dim = flat_dim(space)
            self.act_low = np.asarray(space.low, dtype=np.float32).reshape(-1)
            self.act_high = np.asarray(space.high, dtype=np.float32).reshape(-1)
        finally:
            env.close()

    # -- hooks -----------------------------------------------------------------------
    @abstractmethod
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """The policy: ``obs (O,) -> act (A,)`` float32 within the action bounds."""

    @abstractmethod
    def on_step(self, step: int, buffer: ReplayBuffer) -> dict[str, float]:
        """Called after env step ``step`` (1-based) was added to ``buffer``; train here."""

    def on_episode_end(self, step: int, buffer: ReplayBuffer) -> dict[str, float]:
        """Called when an episode ended at env step ``step``; returns metrics or ``{}``."""
        return {}

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Nets, optimizers and any other training state of the agent."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    # -- driven by the loop ------------------------------------------------------------
    def train(self) -> dict[str, float]:
        """Run the whole budget with :func:`run_online`; returns the final evaluation."""
        return run_online(self)

    def evaluate(self, episodes: int | None = None, video: Any = None) -> dict[str, float]:
        """Deterministic evaluation in the real env (``eval/return``, ``_std``, ``length``)."""
        n = episodes or self.cfg.run.eval_episodes
        return evaluate_policy(
            self.spec,
            lambda obs: self.act(obs, deterministic=True),
            n,
            self.cfg.run.seed,
            video_path=video,
        )

    @classmethod
    def evaluate_run(
        cls, run_dir: RunDir, episodes: int, video: bool, device: str
    ) -> dict[str, float]:
        """Re-evaluate the latest checkpoint of ``run_dir`` (used by ``mbrl eval``)."""
        setup = eval_setup(run_dir, device, unit="steps")
        agent = cls(setup.cfg, setup.ctx)
        agent.load_state_dict(setup.state["agent"])
        return agent.evaluate(episodes=episodes, video=setup.video_path(video))


def run_online(agent: OnlineAgent) -> dict[str, float]:
    """Train ``agent`` in the real env for ``run.total_steps`` steps (see module docs).

    Resumes from the latest checkpoint of the run directory when ``ctx.resumed``.
    Returns the final deterministic evaluation, also logged at ``run.total_steps``.
    """
    run, ctx = agent.cfg.run, agent.ctx
    log = ctx.logger
    buffer = ReplayBuffer(
        min(agent.buffer_capacity, run.total_steps), agent.obs_dim, agent.act_dim, ctx.device
    )
    random_actions = UniformActions(agent.act_low, agent.act_high, run.seed + ACTION_SEED_OFFSET)
    env = agent.spec.make()
    step, episode, ep_return, ep_length = 0, 0, 0.0, 0
    last_eval: dict[str, float] = {}
    ckpt = find_latest(ctx.run_dir.path) if ctx.resumed else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, map_location=ctx.device)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise MbrlError(f"{ckpt} was not written by mbrl's online loop; cannot resume.")
        agent.load_state_dict(state["agent"])
        buffer.load_state_dict(state["buffer"])
        random_actions.load_state_dict(state["random_actions"])
        step, episode = int(state["step"]), int(state["episode"])
        ep_return, ep_length = float(state["episode_return"]), int(state["episode_length"])
        last_eval = {k: float(v) for k, v in state["last_eval"].items()}
        obs, episode, ep_return, ep_length = _restore_env(
            env, buffer, run.seed, episode, ep_return, ep_length
        )
        restore_rng_state(state["rng"])  # last: building the agent/buffer drew from torch
    else:
        obs, _ = env.reset(seed=run.seed + episode)

    def save() -> None:
        state = {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "episode": episode,
            "episode_return": ep_return,
            "episode_length": ep_length,
            "last_eval": last_eval,
            "agent": agent.state_dict(),
            "buffer": buffer.state_dict(),
            "random_actions": random_actions.state_dict(),
            "rng": rng_state(),
        }
        save_run_checkpoint(ctx.run_dir.path, step, state, keep=run.keep_checkpoints)

    act_dtype = np.float32
    train_metrics: dict[str, float] = {}
    session_start, session_step0 = time.perf_counter(), step
    bar = tqdm(
        total=run.total_steps, initial=step, disable=not run.progress, unit="step", smoothing=0.05
    )
    try:
        while step < run.total_steps:
            if step < agent.learning_starts:
                act = random_actions.sample()
            else:
                act = np.asarray(agent.act(np.asarray(obs), deterministic=False), act_dtype)
                act = np.clip(act, agent.act_low, agent.act_high).reshape(agent.act_dim)
            next_obs, rew, terminated, truncated, _ = env.step(act)
            buffer.add(obs, act, float(rew), next_obs, bool(terminated), bool(truncated))
            step += 1
            ep_return += float(rew)
            ep_length += 1
            bar.update(1)
            if terminated or truncated:
                ended = {"rollout/episode_return": ep_return, "rollout/episode_length": ep_length}
                ended.update(agent.on_episode_end(step, buffer))
                log.log(step, ended)
                bar.set_postfix(ep_return=f"{ep_return:.4g}", eval=_fmt(last_eval), refresh=False)
                episode += 1
                ep_return, ep_length = 0.0, 0
                obs, _ = env.reset(seed=run.seed + episode)
            else:
                obs = next_obs
            metrics = agent.on_step(step, buffer)
            if metrics:
                train_metrics = metrics
            if step % agent.log_every == 0:
                sps = (step - session_step0) / max(time.perf_counter() - session_start, 1e-9)
                log.log(step, {**train_metrics, "time/sps": sps})
            if run.eval_every and step % run.eval_every == 0 and step < run.total_steps:
                last_eval = agent.evaluate()
                log.log(step, last_eval)
                bar.set_postfix(ep_return=f"{ep_return:.4g}", eval=_fmt(last_eval), refresh=False)
            if run.checkpoint_every and step % run.checkpoint_every == 0 and step < run.total_steps:
                save()
    finally:
        bar.close()
        env.close()
    last_eval = agent.evaluate()
    log.log(step, last_eval)
    save()  # the final checkpoint: `mbrl eval` reads it, `--resume` of a finished run is a no-op
    return last_eval


def _restore_env(
    env: gym.Env[Any, Any],
    buffer: ReplayBuffer,
    seed: int,
    episode: int,
    ep_return: float,
    ep_length: int,
) -> tuple[Any, int, float, int]:
    """Re-create the env state of a checkpoint: reset the episode, replay its actions.

    Returns ``(obs, episode, episode_return, episode_length)``; if the episode cannot be
    replayed (its first steps were overwritten in the buffer) a new episode starts.
    """
    if ep_length > len(buffer):
        warnings.warn(
            f"cannot replay the current episode ({ep_length} steps, buffer holds "
            f"{len(buffer)}); starting a new episode, so the resumed run is not bit-identical.",
            stacklevel=3,
        )
        episode += 1
        obs, _ = env.reset(seed=seed + episode)
        return obs, episode, 0.0, 0
    obs, _ = env.reset(seed=seed + episode)
    if ep_length == 0:
        return obs, episode, ep_return, ep_length
    idx = buffer.chronological_indices()[-ep_length:]
    for a in buffer.act[idx].cpu().numpy():
        obs, *_ = env.step(a)
    stored = buffer.next_obs[idx[-1]].cpu().numpy()
    if not np.array_equal(np.asarray(obs, dtype=np.float32).reshape(-1), stored):
        warnings.warn(
            "replaying the current episode's actions did not reproduce the stored "
            "observation (is the env deterministic under a seeded reset?); the resumed run "
            "continues from the replayed state and is not bit-identical.",
            stacklevel=3,
        )
    return obs, episode, ep_return, ep_length


def _fmt(metrics: dict[str, float]) -> str:
    return f"{metrics['eval/return']:.4g}" if "eval/return" in metrics else "-"


__all__ = ["OnlineAgent", "UniformActions", "run_online"]
