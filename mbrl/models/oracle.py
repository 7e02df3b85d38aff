"""Oracle dynamics: the true MuJoCo simulator behind a model's ``step`` interface.

Given a batch of observations and actions, :class:`OracleDynamics` rebuilds the
simulator state from each observation, advances it by the env's ``frame_skip`` substeps
and returns ``next_obs``, ``rew`` and ``terminated`` computed the env's way. It is the
"perfect model" for ablations (e.g. the edge-of-reach experiment of Sims et al. 2024,
"The Edge-of-Reach Problem in Offline Model-Based RL", which swaps the learned model for
the true dynamics) and for checking planners without model error.

State reconstruction per task (gymnasium default keyword arguments):

============================  ======================================================
task                          state from the observation
============================  ======================================================
HalfCheetah, Hopper, Walker2d x position set to 0 (dynamics do not depend on it);
                              exact, except Hopper/Walker2d velocities clipped to ±10
Swimmer                       x-y position set to 0; exact
Ant (v4: 27 dims; v5)         x-y position set to 0; exact (v5's contact forces are
                              outputs, recomputed by the simulator)
Humanoid                      x-y position set to 0; exact
InvertedPendulum              exact
InvertedDoublePendulum        angles from (sin, cos); velocities clipped to ±10
Reacher                       angles from (sin, cos); target velocity 0 (the target
                              never moves); exact
============================  ======================================================

Two paths compute the same thing:

* batched: ``mujoco.rollout`` steps every sample in a native thread pool, and rewards and
  terminations are evaluated in numpy. Used where the observation is plain ``qpos/qvel``
  and the reward reads only ``qpos/qvel`` (HalfCheetah, Hopper, Walker2d, Swimmer,
  InvertedPendulum).
* per sample: ``env.unwrapped.set_state`` + ``env.unwrapped.step`` for each row, i.e. the
  env's own code. Used for the other tasks, whose observation or reward reads quantities
  MuJoCo computes during the step (contact forces, body positions), and as the reference
  the batched path is tested against.

Deviations from a real episode, measured on random-action rollouts:

* MuJoCo's solver warm start is reset to zero for every sample (the env carries it over
  from the previous step). With the Newton solver this changes nothing visible
  (< 1e-12); Humanoid's PGS solver (50 iterations) differs by ~1e-4 in the observation.
* Ant, Humanoid and Reacher-v4 rewards read body positions (``xpos``/``xipos``), which
  after ``mj_step`` hold MuJoCo's last mid-step evaluation; in an episode the "before"
  position is that stale value, after ``set_state`` it is the exact one. Rewards differ
  from the episode's by up to ~0.06 (Ant), ~4e-4 (Humanoid), ~1e-3 (Reacher-v4).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from mbrl.errors import MbrlError, unknown_name

if TYPE_CHECKING:
    import mujoco

Array = np.ndarray
StateFn = Callable[[Array, int, int], tuple[Array, Array]]
"""``(obs (B,O), nq, nv) -> (qpos (B,nq), qvel (B,nv))``."""


# -- observation <-> state ----------------------------------------------------------------
def _prepend_zeros(n_hidden: int) -> StateFn:
    """Layout ``[qpos[n_hidden:], qvel]`` (+ anything after): hidden positions set to 0."""

    def state_from_obs(obs: Array, nq: int, nv: int) -> tuple[Array, Array]:
        n_obs_q = nq - n_hidden
        qpos = np.concatenate([np.zeros((obs.shape[0], n_hidden)), obs[:, :n_obs_q]], axis=1)
        return qpos, obs[:, n_obs_q : n_obs_q + nv]

    return state_from_obs


def _double_pendulum_state(obs: Array, nq: int, nv: int) -> tuple[Array, Array]:
    # obs = [x, sin th1, sin th2, cos th1, cos th2, qvel (3), qfrc_constraint...]
    angles = np.arctan2(obs[:, 1:3], obs[:, 3:5])
    return np.concatenate([obs[:, :1], angles], axis=1), obs[:, 5:8]


def _reacher_state(obs: Array, nq: int, nv: int) -> tuple[Array, Array]:
    # obs = [cos th (2), sin th (2), target xy (2), arm qvel (2), fingertip - target]
    angles = np.arctan2(obs[:, 2:4], obs[:, 0:2])
    qpos = np.concatenate([angles, obs[:, 4:6]], axis=1)
    qvel = np.concatenate([obs[:, 6:8], np.zeros((obs.shape[0], 2))], axis=1)
    return qpos, qvel


# -- rewards and terminations of the batched path, from full states ----------------------
@dataclass(frozen=True)
class _Step:
    """What the batched path hands to a task's reward function (numpy, float64)."""

    qpos0: Array  # (B, nq) state before the step
    qpos1: Array  # (B, nq) state after the step
    qvel1: Array  # (B, nv)
    act: Array  # (B, A)
    next_obs: Array  # (B, O)
    dt: float


RewardTermFn = Callable[[Any, _Step], tuple[Array, Array]]
"""``(unwrapped env, step) -> (rew (B,), terminated (B,) bool)``, read from env attributes."""


def _ctrl_cost(env: Any, s: _Step) -> Array:
    return float(env._ctrl_cost_weight) * np.square(s.act).sum(axis=1)


def _forward_reward(env: Any, s: _Step) -> Array:
    x_velocity = (s.qpos1[:, 0] - s.qpos0[:, 0]) / s.dt
    return float(env._forward_reward_weight) * x_velocity


def _runner_reward(env: Any, s: _Step) -> tuple[Array, Array]:
    """HalfCheetah, Swimmer: forward reward minus control cost; never terminates."""
    rew = _forward_reward(env, s) - _ctrl_cost(env, s)
    return rew, np.zeros(len(rew), dtype=bool)


def _hopper_healthy(env: Any, s: _Step) -> Array:
    z, angle = s.qpos1[:, 1], s.qpos1[:, 2]
    state = np.concatenate([s.qpos1[:, 2:], s.qvel1], axis=1)  # state_vector()[2:]
    lo, hi = env._healthy_state_range
    z_lo, z_hi = env._healthy_z_range
    a_lo, a_hi = env._healthy_angle_range
    state_ok = ((lo < state) & (state < hi)).all(axis=1)
    return state_ok & (z_lo < z) & (z < z_hi) & (a_lo < angle) & (angle < a_hi)


def _walker_healthy(env: Any, s: _Step) -> Array:
    z, angle = s.qpos1[:, 1], s.qpos1[:, 2]
    z_lo, z_hi = env._healthy_z_range
    a_lo, a_hi = env._healthy_angle_range
    return (z_lo < z) & (z < z_hi) & (a_lo < angle) & (angle < a_hi)


def _healthy_walker_reward(healthy_fn: Callable[[Any, _Step], Array], v5: bool) -> RewardTermFn:
    """Hopper/Walker2d: forward + healthy - control; terminated when unhealthy."""

    def reward(env: Any, s: _Step) -> tuple[Array, Array]:
        healthy = healthy_fn(env, s)
        if v5:  # v5 pays the healthy reward only while healthy
            alive = healthy.astype(np.float64)
        else:  # v4 pays it always when terminate_when_unhealthy (the default)
            alive = (healthy | bool(env._terminate_when_unhealthy)).astype(np.float64)
        rew = _forward_reward(env, s) + float(env._healthy_reward) * alive - _ctrl_cost(env, s)
        terminated = ~healthy & bool(env._terminate_when_unhealthy)
        return rew, terminated

    return reward


def _inverted_pendulum_reward(v5: bool) -> RewardTermFn:
    def reward(env: Any, s: _Step) -> tuple[Array, Array]:
        obs = s.next_obs
        terminated = ~np.isfinite(obs).all(axis=1) | (np.abs(obs[:, 1]) > 0.2)
        rew = (~terminated).astype(np.float64) if v5 else np.ones(len(obs))
        return rew, terminated

    return reward


@dataclass(frozen=True)
class _Task:
    """How the oracle handles one env id.

    ``batched_reward`` set: the batched path applies, with observation layout
    ``[qpos[n_hidden:], clip(qvel, ±vel_clip)]``. ``None``: per-sample path only.
    """

    state_from_obs: StateFn
    batched_reward: RewardTermFn | None = None
    n_hidden: int = 0
    vel_clip: float | None = None

    def obs_from_state(self, qpos: Array, qvel: Array) -> Array:
        if self.vel_clip is not None:
            qvel = np.clip(qvel, -self.vel_clip, self.vel_clip)
        return np.concatenate([qpos[:, self.n_hidden :], qvel], axis=1)


def _qpos_qvel_task(n_hidden: int, reward: RewardTermFn, vel_clip: float | None = None) -> _Task:
    return _Task(_prepend_zeros(n_hidden), reward, n_hidden, vel_clip)


_TASKS: dict[str, _Task] = {}
for _v in ("v4", "v5"):
    _is_v5 = _v == "v5"
    _TASKS[f"HalfCheetah-{_v}"] = _qpos_qvel_task(1, _runner_reward)
    _TASKS[f"Swimmer-{_v}"] = _qpos_qvel_task(2, _runner_reward)
    _hopper = _healthy_walker_reward(_hopper_healthy, _is_v5)
    _TASKS[f"Hopper-{_v}"] = _qpos_qvel_task(1, _hopper, vel_clip=10.0)
    _walker = _healthy_walker_reward(_walker_healthy, _is_v5)
    _TASKS[f"Walker2d-{_v}"] = _qpos_qvel_task(1, _walker, vel_clip=10.0)
    _TASKS[f"InvertedPendulum-{_v}"] = _qpos_qvel_task(0, _inverted_pendulum_reward(_is_v5))
    _TASKS[f"Ant-{_v}"] = _Task(_prepend_zeros(2))
    _TASKS[f"Humanoid-{_v}"] = _Task(_prepend_zeros(2))
    _TASKS[f"InvertedDoublePendulum-{_v}"] = _Task(_double_pendulum_state)
    _TASKS[f"Reacher-{_v}"] = _Task(_reacher_state)

SUPPORTED_ENVS: tuple[str, ...] = tuple(sorted(_TASKS))
"""Env ids :class:`OracleDynamics` supports."""


class OracleDynamics:
    """The true dynamics of a gymnasium MuJoCo task, batched.

    Args:
        env_id: one of :data:`SUPPORTED_ENVS`.
        nthread: threads of ``mujoco.rollout``'s pool (batched path); ``<= 1`` runs on
            the calling thread.
        batched: use ``mujoco.rollout`` where the task allows it; ``False`` forces the
            per-sample loop through the env's own ``step``.
        **make_kwargs: passed to ``gymnasium.make`` (reward weights are read from the
            env); the observation must exclude the x(-y) position, as by default.

    Example::

        oracle = OracleDynamics("HalfCheetah-v4")
        next_obs, rew, terminated = oracle.step(obs, act)  # (B,O), (B,), (B,)
    """

    def __init__(
        self, env_id: str, nthread: int = 2, batched: bool = True, **make_kwargs: Any
    ) -> None:
        if env_id not in _TASKS:
            raise unknown_name(
                "oracle env", env_id, _TASKS, hint="The oracle supports only these MuJoCo tasks."
            )
        import mujoco  # deferred: keeps `import mbrl.models` light
        import mujoco.rollout

        self.env_id = env_id
        self._task = _TASKS[env_id]
        self._env: gym.Env = gym.make(env_id, **make_kwargs)
        self._u: Any = cast(Any, self._env.unwrapped)  # a MujocoEnv; gymnasium types it Env
        self.model: mujoco.MjModel = self._u.model
        self.frame_skip: int = int(self._u.frame_skip)
        self.dt: float = float(self._u.dt)
        self.obs_dim = int(np.prod(self._env.observation_space.shape or ()))
        self.act_dim = int(np.prod(self._env.action_space.shape or ()))
        if getattr(self._u, "_exclude_current_positions_from_observation", True) is not True:
            self._env.close()
            raise MbrlError(
                f"OracleDynamics('{env_id}') needs the default observation layout; "
                "drop exclude_current_positions_from_observation=False from make_kwargs."
            )
        self.batched = batched and self._task.batched_reward is not None
        self._nthread = max(int(nthread), 1)
        self._rollout: Any = None
        self._datas: list[mujoco.MjData] = []
        if self.batched:
            self._rollout = mujoco.rollout.Rollout(nthread=self._nthread if nthread > 1 else 0)
            self._datas = [mujoco.MjData(self.model) for _ in range(self._nthread)]
            # Layout of mjSTATE_FULLPHYSICS vectors: [time, qpos, qvel, act, ...].
            spec = mujoco.mjtState
            self._nstate = mujoco.mj_stateSize(self.model, spec.mjSTATE_FULLPHYSICS.value)
            self._qpos_at = mujoco.mj_stateSize(self.model, spec.mjSTATE_TIME.value)
            self._template = np.empty(self._nstate)
            mujoco.mj_resetData(self.model, self._datas[0])
            mujoco.mj_getState(
                self.model, self._datas[0], self._template, spec.mjSTATE_FULLPHYSICS.value
            )

    # -- public -------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, obs: Tensor, act: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One env step for every row.

        Args:
            obs: ``(B, O)`` observations.
            act: ``(B, A)`` actions.

        Returns:
            ``next_obs (B, O)`` (dtype of ``obs``), ``rew (B,)`` (dtype of ``obs``) and
            ``terminated (B,)`` bool, on ``obs``'s device.
        """
        if obs.ndim != 2 or obs.shape[1] != self.obs_dim:
            raise MbrlError(
                f"oracle '{self.env_id}' expects obs (B, {self.obs_dim}), got {tuple(obs.shape)}."
            )
        if act.shape != (obs.shape[0], self.act_dim):
            raise MbrlError(
                f"oracle '{self.env_id}' expects act ({obs.shape[0]}, {self.act_dim}), "
                f"got {tuple(act.shape)}."
            )
        if obs.shape[0] == 0:
            empty = obs.new_zeros(0)
            return obs.new_zeros(0, self.obs_dim), empty, empty.bool()
        obs_np = obs.detach().to("cpu", torch.float64).numpy()
        act_np = act.detach().to("cpu", torch.float64).numpy()
        if self.batched:
            next_obs, rew, terminated = self._step_batched(obs_np, act_np)
        else:
            next_obs, rew, terminated = self._step_per_sample(obs_np, act_np)
        return (
            torch.as_tensor(next_obs).to(obs.device, obs.dtype),
            torch.as_tensor(rew).to(obs.device, obs.dtype),
            torch.as_tensor(terminated).to(obs.device),
        )

    def state_from_obs(self, obs: Array) -> tuple[Array, Array]:
        """``obs (B,O) -> (qpos (B,nq), qvel (B,nv))`` as numpy float64."""
        qpos, qvel = self._task.state_from_obs(
            np.asarray(obs, np.float64), self.model.nq, self.model.nv
        )
        return np.ascontiguousarray(qpos), np.ascontiguousarray(qvel)

    def close(self) -> None:
        if self._rollout is not None:
            self._rollout.close()
            self._rollout = None
        self._env.close()

    # -- the two paths --------------------------------------------------------------------
    def _step_batched(self, obs: Array, act: Array) -> tuple[Array, Array, Array]:
        nq, nv = self.model.nq, self.model.nv
        qpos0, qvel0 = self.state_from_obs(obs)
        batch = obs.shape[0]
        initial = np.tile(self._template, (batch, 1))
        initial[:, self._qpos_at : self._qpos_at + nq] = qpos0
        initial[:, self._qpos_at + nq : self._qpos_at + nq + nv] = qvel0
        # One control per sample, held for all frame_skip substeps (like do_simulation);
        # rollout expands the singleton step axis.
        control = np.ascontiguousarray(act.reshape(batch, 1, self.act_dim))
        state, _ = self._rollout.rollout(
            self.model,
            self._datas,
            initial,
            control,
            nstep=self.frame_skip,
            initial_warmstart=np.zeros((batch, nv)),
        )
        final = state[:, -1]
        qpos1 = final[:, self._qpos_at : self._qpos_at + nq]
        qvel1 = final[:, self._qpos_at + nq : self._qpos_at + nq + nv]
        assert self._task.batched_reward is not None
        next_obs = self._task.obs_from_state(qpos1, qvel1)
        step = _Step(qpos0, qpos1, qvel1, act, next_obs, self.dt)
        rew, terminated = self._task.batched_reward(self._u, step)
        return next_obs, rew, terminated

    def _step_per_sample(self, obs: Array, act: Array) -> tuple[Array, Array, Array]:
        qpos, qvel = self.state_from_obs(obs)
        batch = obs.shape[0]
        next_obs = np.empty((batch, self.obs_dim))
        rew = np.empty(batch)
        terminated = np.empty(batch, dtype=bool)
        data = self._u.data
        for i in range(batch):
            data.qacc_warmstart[:] = 0.0
            self._u.set_state(qpos[i], qvel[i])
            next_obs[i], rew[i], terminated[i], _, _ = self._u.step(act[i])
        return next_obs, rew, terminated


def benchmark_oracle(env_id: str, batch: int = 10_000, nthread: int = 2, repeats: int = 3) -> float:
    """Oracle throughput in transitions per second (best of ``repeats`` calls).

    States are the env's reset states advanced by a few random steps; actions uniform.
    """
    oracle = OracleDynamics(env_id, nthread=nthread)
    try:
        rng = np.random.default_rng(0)
        env = oracle._env
        obs0, _ = env.reset(seed=0)
        obs = torch.as_tensor(np.tile(obs0, (batch, 1)))
        low, high = env.action_space.low, env.action_space.high  # type: ignore[attr-defined]
        for _ in range(3):  # spread the start states
            act = torch.as_tensor(rng.uniform(low, high, (batch, oracle.act_dim)))
            obs, _, _ = oracle.step(obs, act)
        best = float("inf")
        for _ in range(repeats):
            act = torch.as_tensor(rng.uniform(low, high, (batch, oracle.act_dim)))
            start = time.perf_counter()
            oracle.step(obs, act)
            best = min(best, time.perf_counter() - start)
        return batch / best
    finally:
        oracle.close()


__all__ = ["SUPPORTED_ENVS", "OracleDynamics", "benchmark_oracle"]
