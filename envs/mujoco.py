"""Gymnasium MuJoCo tasks (v4 and v5): dimensions, termination and reward functions.

Every function here is batched torch, ``(obs (B,O), act (B,A), next_obs (B,O)) -> (B,)``,
pure (no state, no host syncs, no loops over the batch) and works on any device and
float dtype. The layouts and constants follow the gymnasium 1.x sources
(``gymnasium/envs/mujoco/*_v4.py`` and ``*_v5.py``) with their default keyword arguments;
a spec made with other ``make_kwargs`` needs its own functions.

Which reward terms are exact:

* control, healthy/alive, contact (Ant/Humanoid v5: the contact forces are observed) and
  Reacher/Pusher distance terms are exact functions of ``(obs, act, next_obs)``;
  InvertedDoublePendulum's are exact up to velocity clipping (see its functions);
* the forward-velocity term is an approximation. The env rewards the finite difference
  ``(x_after - x_before) / dt`` of a position that the observation excludes; we blend the
  instantaneous velocities of both states, ``w * v(next_obs) + (1 - w) * v(obs)``:
  ``w = 0.5`` (trapezoid rule) for the RK4 models, ``w = (n + 1) / (2n) = 0.6`` for
  HalfCheetah, whose semi-implicit Euler integration over ``n = 5`` substeps averages the
  post-substep velocities. On random and bang-bang rollouts the estimate's rms error is
  0.21 of the velocity's standard deviation for HalfCheetah (correlation 0.98) and at most
  0.10 for the RK4 tasks (correlation >= 0.995; see ``tests/test_env_fns.py``).
  Hopper/Walker2d observations clip velocities to ±10, so the estimate degrades beyond
  that speed.

:data:`FORWARD_VELOCITY` exposes the velocity estimate and its reward weight per env, so
that a caller (or a test) can separate the exact part of a reward from the approximate one.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable

import torch
from torch import Tensor

from mbrl.envs import EnvSpec, add_env_spec
from mbrl.types import RewardFn, TerminationFn

VelocityFn = Callable[[Tensor, Tensor], Tensor]
"""Forward-velocity estimate ``(obs (B,O), next_obs (B,O)) -> (B,)``."""

# D4RL reference returns (Fu et al. 2020, "D4RL: Datasets for Deep Data-Driven RL"),
# used for normalized scores ``100 * (R - min) / (max - min)``.
D4RL_REF_SCORES: dict[str, tuple[float, float]] = {
    "HalfCheetah": (-280.178953, 12135.0),
    "Hopper": (-20.272305, 3234.3),
    "Walker2d": (1.629008, 4592.3),
    "Ant": (-325.6, 3879.7),
}


# -- shared pieces --------------------------------------------------------------------
def _ctrl_cost(act: Tensor, weight: float) -> Tensor:
    """``weight * ||act||^2`` per row, ``(B,)``."""
    return weight * act.square().sum(dim=-1)


def _blended_velocity(index: int, next_weight: float) -> VelocityFn:
    """Estimate of the finite-difference velocity from the observed velocity at ``index``."""

    def velocity(obs: Tensor, next_obs: Tensor) -> Tensor:
        return next_weight * next_obs[:, index] + (1.0 - next_weight) * obs[:, index]

    return velocity


def _in_open(x: Tensor, low: float, high: float) -> Tensor:
    """``low < x < high`` elementwise (NaN gives False, like the envs' comparisons)."""
    return (x > low) & (x < high)


# -- HalfCheetah: obs = qpos[1:] (8), qvel (9) -----------------------------------------
_halfcheetah_velocity = _blended_velocity(8, next_weight=0.6)


def halfcheetah_reward(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """HalfCheetah v4/v5: ``vx - 0.1 ||a||^2``.

    Control cost exact; ``vx`` approximated by ``0.6 * qvel_x(next) + 0.4 * qvel_x(obs)``
    (semi-implicit Euler, 5 substeps) instead of the env's finite difference of x.
    """
    return _halfcheetah_velocity(obs, next_obs) - _ctrl_cost(act, 0.1)


# -- Hopper: obs = qpos[1:] (5: z, angle, 3 joints), clip(qvel, ±10) (6) ------------------
_hopper_velocity = _blended_velocity(5, next_weight=0.5)


def _hopper_healthy(next_obs: Tensor) -> Tensor:
    """Hopper's ``is_healthy``: all of obs[1:] in (-100, 100), z > 0.7, |angle| < 0.2.

    The env checks the *unclipped* velocities against ±100; the observation clips them
    to ±10, so a state with |qvel| > 100 (never seen in practice) is missed.
    """
    state_ok = _in_open(next_obs[:, 1:], -100.0, 100.0).all(dim=-1)
    z_ok = next_obs[:, 0] > 0.7
    angle_ok = _in_open(next_obs[:, 1], -0.2, 0.2)
    return state_ok & z_ok & angle_ok


def hopper_termination(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """Hopper v4/v5: terminated when unhealthy (exact up to the ±100 velocity check)."""
    return ~_hopper_healthy(next_obs)


def hopper_v4_reward(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """Hopper-v4: ``vx + 1 - 1e-3 ||a||^2`` (healthy reward paid on every step).

    Healthy and control terms exact; ``vx`` = mean of the observed x-velocities (RK4).
    """
    return _hopper_velocity(obs, next_obs) + 1.0 - _ctrl_cost(act, 1e-3)


def hopper_v5_reward(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """Hopper-v5: ``vx + 1[healthy] - 1e-3 ||a||^2`` (healthy reward only while healthy).

    Healthy and control terms exact; ``vx`` = mean of the observed x-velocities (RK4).
    """
    healthy = _hopper_healthy(next_obs).to(obs.dtype)
    return _hopper_velocity(obs, next_obs) + healthy - _ctrl_cost(act, 1e-3)


# -- Walker2d: obs = qpos[1:] (8: z, angle, 6 joints), clip(qvel, ±10) (9) ---------------
_walker_velocity = _blended_velocity(8, next_weight=0.5)


def _walker_healthy(next_obs: Tensor) -> Tensor:
    """Walker2d's ``is_healthy``: 0.8 < z < 2 and -1 < angle < 1."""
    return _in_open(next_obs[:, 0], 0.8, 2.0) & _in_open(next_obs[:, 1], -1.0, 1.0)


def walker2d_termination(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """Walker2d v4/v5: terminated when unhealthy (exact)."""
    return ~_walker_healthy(next_obs)


def walker2d_v4_reward(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """Walker2d-v4: ``vx + 1 - 1e-3 ||a||^2``; ``vx`` approximate as for Hopper."""
    return _walker_velocity(obs, next_obs) + 1.0 - _ctrl_cost(act, 1e-3)


def walker2d_v5_reward(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """Walker2d-v5: ``vx + 1[healthy] - 1e-3 ||a||^2``; ``vx`` approximate as for Hopper."""
    healthy = _walker_healthy(next_obs).to(obs.dtype)
    return _walker_velocity(obs, next_obs) + healthy - _ctrl_cost(act, 1e-3)


# -- Swimmer: obs = qpos[2:] (3), qvel (5) ---------------------------------------------
_swimmer_velocity = _blended_velocity(3, next_weight=0.5)


def swimmer_reward(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """Swimmer v4/v5: ``vx - 1e-4 ||a||^2``; control exact, ``vx`` approximate (RK4)."""
    return _swimmer_velocity(obs, next_obs) - _ctrl_cost(act, 1e-4)


# -- Ant: obs = qpos[2:] (13: z, quat, 8 joints), qvel (14)[, clip(cfrc_ext[1:], ±1) (78)]
_ant_velocity = _blended_velocity(13, next_weight=0.5)


def _ant_healthy(next_obs: Tensor) -> Tensor:
    """Ant's ``is_healthy``: finite state and 0.2 <= z <= 1 (closed interval)."""
    z = next_obs[:, 0]
    return torch.isfinite(next_obs).all(dim=-1) & (z >= 0.2) & (z <= 1.0)


def ant_termination(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """Ant v4/v5: terminated when unhealthy (exact; the x-y position is not observed but
    is finite whenever the observed state is)."""
    return ~_ant_healthy(next_obs)


def ant_v4_reward(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """Ant-v4 (default ``use_contact_forces=False``): ``vx + 1 - 0.5 ||a||^2``.

    Healthy and control terms exact; ``vx`` (torso) = mean of the observed x-velocities.
    """
    return _ant_velocity(obs, next_obs) + 1.0 - _ctrl_cost(act, 0.5)


def ant_v5_reward(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """Ant-v5: ``vx + 1[healthy] - 0.5 ||a||^2 - 5e-4 ||clip(cfrc_ext, ±1)||^2``.

    The contact cost is exact: the observation holds the clipped ``cfrc_ext`` of every
    body but the world, whose entry is always zero. ``vx`` approximate as for Ant-v4.
    """
    healthy = _ant_healthy(next_obs).to(obs.dtype)
    contact_cost = 5e-4 * next_obs[:, 27:].square().sum(dim=-1)
    return _ant_velocity(obs, next_obs) + healthy - _ctrl_cost(act, 0.5) - contact_cost


# -- Humanoid: obs = qpos[2:] (22), qvel (23), cinert, cvel, qfrc_actuator, cfrc_ext ------
# v4 keeps all 14 bodies (and qfrc_actuator of all 23 dofs): 22+23+140+84+23+84 = 376.
# v5 drops the world body (and the free joint's 6 actuator forces): 22+23+130+78+17+78 = 348.
def _com_velocity_from(
    cinert_start: int, cvel_start: int, nbody: int
) -> Callable[[Tensor], Tensor]:
    """x-velocity of the whole-body centre of mass from the observed ``cinert`` and ``cvel``.

    For each body ``cinert[6:9] = m * (xipos - c)`` and ``cinert[9] = m``, with ``c`` the
    centre of mass of the tree; ``cvel = [omega; v_c]`` is the body's spatial velocity at
    ``c``. The body's centre of mass moves at ``v_c + omega x (xipos - c)``, so the total
    momentum is ``sum(m v_c + omega x (m (xipos - c)))``.
    """

    def com_vx(obs: Tensor) -> Tensor:
        batch = obs.shape[0]
        cinert = obs[:, cinert_start : cinert_start + 10 * nbody].reshape(batch, nbody, 10)
        cvel = obs[:, cvel_start : cvel_start + 6 * nbody].reshape(batch, nbody, 6)
        mass = cinert[..., 9]
        momentum = mass.unsqueeze(-1) * cvel[..., 3:] + torch.linalg.cross(
            cvel[..., :3], cinert[..., 6:9], dim=-1
        )
        return momentum[..., 0].sum(dim=-1) / mass.sum(dim=-1)

    return com_vx


def _humanoid_velocity(com_vx: Callable[[Tensor], Tensor]) -> VelocityFn:
    # RK4 model: trapezoid rule between the two observed centre-of-mass velocities.
    def velocity(obs: Tensor, next_obs: Tensor) -> Tensor:
        return 0.5 * (com_vx(obs) + com_vx(next_obs))

    return velocity


_humanoid_v4_velocity = _humanoid_velocity(_com_velocity_from(45, 185, 14))
_humanoid_v5_velocity = _humanoid_velocity(_com_velocity_from(45, 175, 13))


def _humanoid_healthy(next_obs: Tensor) -> Tensor:
    """Humanoid's ``is_healthy``: 1 < z < 2."""
    return _in_open(next_obs[:, 0], 1.0, 2.0)


def humanoid_termination(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """Humanoid v4/v5: terminated when the torso height leaves (1, 2) (exact)."""
    return ~_humanoid_healthy(next_obs)


def humanoid_v4_reward(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """Humanoid-v4: ``1.25 vx_com + 5 - 0.1 ||a||^2``.

    Healthy and control terms exact; ``vx_com`` is the centre-of-mass x-velocity computed
    from the observed ``cinert``/``cvel``, averaged over both states (the env differences
    the centre-of-mass position, which is not observed).
    """
    return 1.25 * _humanoid_v4_velocity(obs, next_obs) + 5.0 - _ctrl_cost(act, 0.1)


def humanoid_v5_reward(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """Humanoid-v5: ``1.25 vx_com + 5 * 1[healthy] - 0.1 ||a||^2 - min(5e-7 ||cfrc_ext||^2, 10)``.

    Healthy, control and contact terms exact (the world body's ``cfrc_ext``, left out of
    the observation, is always zero); ``vx_com`` approximate as for Humanoid-v4.
    """
    healthy = _humanoid_healthy(next_obs).to(obs.dtype)
    contact_cost = (5e-7 * next_obs[:, 270:348].square().sum(dim=-1)).clamp(max=10.0)
    return (
        1.25 * _humanoid_v5_velocity(obs, next_obs)
        + 5.0 * healthy
        - _ctrl_cost(act, 0.1)
        - contact_cost
    )


# -- InvertedPendulum: obs = qpos (cart x, pole angle), qvel (2) --------------------------
def inverted_pendulum_termination(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """InvertedPendulum v4/v5: non-finite observation or |angle| > 0.2 (exact)."""
    return ~torch.isfinite(next_obs).all(dim=-1) | (next_obs[:, 1].abs() > 0.2)


def inverted_pendulum_v4_reward(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """InvertedPendulum-v4: 1 on every step, the terminal one included (exact)."""
    return torch.ones(obs.shape[0], dtype=obs.dtype, device=obs.device)


def inverted_pendulum_v5_reward(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """InvertedPendulum-v5: 1 while not terminated, 0 on the terminal step (exact)."""
    return (~inverted_pendulum_termination(obs, act, next_obs)).to(obs.dtype)


_IP_POLE_LENGTH = 0.6  # inverted_pendulum.xml: the pole's geom runs from 0 to 0.6 on z


def inverted_pendulum_planning_reward(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """A shaped reward for *planning* on InvertedPendulum (not the task's reward):
    ``alive · exp(−d² / L²)``, where ``d`` is the distance of the pole's tip from its
    goal ``L`` straight above the rail's centre, ``L = 0.6`` the pole length:
    ``d² = (x + L sin θ)² + (L (1 − cos θ))²``; 0 once terminated.

    This is PETS' own cost for its cartpole task (Chua et al. 2018: ``−exp(−d²/0.6²)``
    on the tip's distance from the goal) with the task's termination on top. The task
    pays a constant 1 per step alive, so every plan that the model keeps up for the whole
    horizon scores the same, and nothing keeps the cart from drifting to the end of its
    rail, where the pole falls (``results/planner_ceiling_ip.md``). The tip distance
    couples the two: tilting the pole towards the centre already moves the tip there,
    which is how a cart is brought back without dropping the pole. At most 1 per step,
    like the task.
    """
    alive = (~inverted_pendulum_termination(obs, act, next_obs)).to(obs.dtype)
    x, angle = next_obs[:, 0].nan_to_num(), next_obs[:, 1].nan_to_num()
    L = _IP_POLE_LENGTH
    d2 = (x + L * torch.sin(angle)) ** 2 + (L * (1.0 - torch.cos(angle))) ** 2
    return alive * torch.exp(-d2 / L**2)


# -- InvertedDoublePendulum: obs = x, sin(th1, th2), cos(th1, th2), clip(qvel, ±10) (3),
#    clip(qfrc_constraint, ±10) (3 in v4, 1 in v5) ---------------------------------------
_POLE_LENGTH = 0.6  # both links, from inverted_double_pendulum.xml; the tip site ends link 2


def _double_pendulum_tip(next_obs: Tensor) -> tuple[Tensor, Tensor]:
    """World ``(x, z)`` of the tip site from the cart position and the link angles."""
    x, s1, s2, c1, c2 = (next_obs[:, i] for i in range(5))
    s12 = s1 * c2 + c1 * s2  # sin(th1 + th2)
    c12 = c1 * c2 - s1 * s2  # cos(th1 + th2)
    return x + _POLE_LENGTH * (s1 + s12), _POLE_LENGTH * (c1 + c12)


def inverted_double_pendulum_termination(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """InvertedDoublePendulum v4/v5: terminated when the tip height ``y <= 1``.

    The env reads the tip from ``site_xpos``, which MuJoCo computed at the last RK4 stage
    rather than the final state; it differs from the observed-state tip by < 1e-4, so the
    two only disagree when ``y`` is within that distance of 1.
    """
    _, y = _double_pendulum_tip(next_obs)
    return y <= 1.0


def _double_pendulum_penalties(next_obs: Tensor) -> Tensor:
    x, y = _double_pendulum_tip(next_obs)
    dist_penalty = 0.01 * x.square() + (y - 2.0).square()
    vel_penalty = 1e-3 * next_obs[:, 6].square() + 5e-3 * next_obs[:, 7].square()
    return dist_penalty + vel_penalty


def inverted_double_pendulum_v4_reward(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """InvertedDoublePendulum-v4: ``10 - 0.01 x_tip^2 - (y_tip - 2)^2 - 1e-3 w1^2 - 5e-3 w2^2``.

    Near-exact: the tip is the observed state's (≤ 1e-4 from the env's, see termination)
    and the link velocities ``w1, w2`` are clipped to ±10 in the observation.
    """
    return 10.0 - _double_pendulum_penalties(next_obs)


def inverted_double_pendulum_v5_reward(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """InvertedDoublePendulum-v5: as v4, but the alive bonus 10 only while not terminated."""
    alive = (~inverted_double_pendulum_termination(obs, act, next_obs)).to(obs.dtype)
    return 10.0 * alive - _double_pendulum_penalties(next_obs)


# -- Reacher: obs = cos(th) (2), sin(th) (2), target xy (2), qvel[:2], fingertip - target
def reacher_v4_reward(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """Reacher-v4: ``-||fingertip - target|| - ||a||^2`` of the state *before* the step (exact;
    obs[8:11] is that 3-d vector)."""
    return -obs[:, 8:11].norm(dim=-1) - act.square().sum(dim=-1)


def reacher_v5_reward(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """Reacher-v5: ``-||fingertip - target|| - ||a||^2`` of the state *after* the step (exact;
    next_obs[8:10] is the vector's x-y, its z is always 0)."""
    return -next_obs[:, 8:10].norm(dim=-1) - act.square().sum(dim=-1)


# -- Pusher: obs = qpos[:7], qvel[:7], tips_arm xyz, object xyz, goal xyz -----------------
def _pusher_reward(state: Tensor, act: Tensor) -> Tensor:
    tips, obj, goal = state[:, 14:17], state[:, 17:20], state[:, 20:23]
    reward_near = -(obj - tips).norm(dim=-1)
    reward_dist = -(obj - goal).norm(dim=-1)
    return reward_dist + 0.5 * reward_near - 0.1 * act.square().sum(dim=-1)


def pusher_v4_reward(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """Pusher-v4: ``-||obj - goal|| - 0.5 ||obj - tips|| - 0.1 ||a||^2`` before the step (exact)."""
    return _pusher_reward(obs, act)


def pusher_v5_reward(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """Pusher-v5: as v4 but of the state after the step (exact)."""
    return _pusher_reward(next_obs, act)


# -- forward-velocity terms (for callers separating exact and approximate reward parts) --
FORWARD_VELOCITY: dict[str, tuple[float, VelocityFn]] = {
    **{f"HalfCheetah-{v}": (1.0, _halfcheetah_velocity) for v in ("v4", "v5")},
    **{f"Hopper-{v}": (1.0, _hopper_velocity) for v in ("v4", "v5")},
    **{f"Walker2d-{v}": (1.0, _walker_velocity) for v in ("v4", "v5")},
    **{f"Swimmer-{v}": (1.0, _swimmer_velocity) for v in ("v4", "v5")},
    **{f"Ant-{v}": (1.0, _ant_velocity) for v in ("v4", "v5")},
    "Humanoid-v4": (1.25, _humanoid_v4_velocity),
    "Humanoid-v5": (1.25, _humanoid_v5_velocity),
}
"""``env id -> (forward_reward_weight, velocity estimate)`` for the approximate term."""


# -- registration ----------------------------------------------------------------------
def _mujoco_major_version() -> int:
    """Installed mujoco's major version, read without importing it (0 if unknown)."""
    try:
        return int(importlib.metadata.version("mujoco").split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return 0


_FWD = (
    "Reward: the forward-velocity term is approximated from the observed velocities of obs "
    "and next_obs (the env differences an unobserved position); the other terms are exact."
)
_D4RL_V2 = "Reference scores are D4RL's (v2 envs)"


def _register(
    env_id: str,
    obs_dim: int,
    act_dim: int,
    *,
    reward_fn: RewardFn,
    termination_fn: TerminationFn | None = None,
    planning_reward_fn: RewardFn | None = None,
    max_episode_steps: int = 1000,
    d4rl: str | None = None,
    notes: str,
    description: str,
    register: bool = True,
) -> EnvSpec:
    ref_min, ref_max = D4RL_REF_SCORES[d4rl] if d4rl is not None else (None, None)
    spec = EnvSpec(
        id=env_id,
        obs_dim=obs_dim,
        act_dim=act_dim,
        termination_fn=termination_fn,
        reward_fn=reward_fn,
        planning_reward_fn=planning_reward_fn,
        never_terminates=termination_fn is None,
        ref_min_score=ref_min,
        ref_max_score=ref_max,
        max_episode_steps=max_episode_steps,
        notes=notes,
    )
    if register:
        add_env_spec(spec, description=description)
    return spec


for _v, _d4rl_note in (
    ("v4", f"{_D4RL_V2}; v4 has the same model, observation and reward."),
    ("v5", f"{_D4RL_V2}; v5 keeps v2's model, observation and reward, so they apply."),
):
    _register(
        f"HalfCheetah-{_v}",
        17,
        6,
        reward_fn=halfcheetah_reward,
        d4rl="HalfCheetah",
        notes=f"{_FWD} Never terminates. {_d4rl_note}",
        description="HalfCheetah: run forward; never terminates",
    )
    _register(
        f"Swimmer-{_v}",
        8,
        2,
        reward_fn=swimmer_reward,
        notes=f"{_FWD} Never terminates.",
        description="Swimmer: swim forward in a viscous fluid; never terminates",
    )

_HOPPER_TERM = (
    "Termination exact except the env's |qvel| < 100 check, which the ±10-clipped "
    "observation cannot see (not reached in practice)."
)
_register(
    "Hopper-v4",
    11,
    3,
    reward_fn=hopper_v4_reward,
    termination_fn=hopper_termination,
    d4rl="Hopper",
    notes=f"{_FWD} {_HOPPER_TERM} {_D4RL_V2}; v4 has the same model and reward.",
    description="Hopper: hop forward; terminates when it falls",
)
_register(
    "Hopper-v5",
    11,
    3,
    reward_fn=hopper_v5_reward,
    termination_fn=hopper_termination,
    d4rl="Hopper",
    notes=(
        f"{_FWD} {_HOPPER_TERM} {_D4RL_V2}; v5 has the same model but pays the healthy "
        "reward only while healthy (an episode's return is 1 lower when it ends by falling)."
    ),
    description="Hopper: hop forward; terminates when it falls",
)
_register(
    "Walker2d-v4",
    17,
    6,
    reward_fn=walker2d_v4_reward,
    termination_fn=walker2d_termination,
    d4rl="Walker2d",
    notes=f"{_FWD} Termination exact. {_D4RL_V2}; v4 has the same model and reward.",
    description="Walker2d: walk forward; terminates when it falls",
)
_register(
    "Walker2d-v5",
    17,
    6,
    reward_fn=walker2d_v5_reward,
    termination_fn=walker2d_termination,
    d4rl="Walker2d",
    notes=(
        f"{_FWD} Termination exact. {_D4RL_V2}; v5 gives both feet friction 1.9 (v2: 0.9 "
        "on the right foot), so its dynamics differ, and pays the healthy reward only while "
        "healthy: scores are only roughly comparable."
    ),
    description="Walker2d: walk forward; terminates when it falls",
)
_register(
    "Ant-v4",
    27,
    8,
    reward_fn=ant_v4_reward,
    termination_fn=ant_termination,
    d4rl="Ant",
    notes=(
        f"{_FWD} Termination exact. Default use_contact_forces=False: 27-dim observation "
        f"and no contact cost. {_D4RL_V2}; D4RL's ant datasets have 111-dim observations "
        "(with contact forces), so they need use_contact_forces=True."
    ),
    description="Ant: walk forward; terminates when the torso leaves 0.2 <= z <= 1",
)
_register(
    "Ant-v5",
    105,
    8,
    reward_fn=ant_v5_reward,
    termination_fn=ant_termination,
    d4rl="Ant",
    notes=(
        f"{_FWD} The contact cost is exact (the clipped contact forces are observed). "
        f"Termination exact. {_D4RL_V2}; v5 observes 105 dims, always adds the contact cost "
        "and pays the healthy reward only while healthy: scores are only roughly comparable."
    ),
    description="Ant: walk forward; terminates when the torso leaves 0.2 <= z <= 1",
)
_HUMANOID_FWD = (
    "Reward: the centre-of-mass velocity is computed from the observed cinert/cvel of obs "
    "and next_obs (the env differences the unobserved centre of mass); the other terms "
    "are exact. Termination exact."
)
_register(
    "Humanoid-v4",
    376,
    17,
    reward_fn=humanoid_v4_reward,
    termination_fn=humanoid_termination,
    notes=_HUMANOID_FWD,
    description="Humanoid: walk forward; terminates when the torso leaves 1 < z < 2",
)
_register(
    "Humanoid-v5",
    348,
    17,
    reward_fn=humanoid_v5_reward,
    termination_fn=humanoid_termination,
    notes=(
        f"{_HUMANOID_FWD} v5 leaves out the world body's entries (348 dims), adds a contact "
        "cost and pays the healthy reward only while healthy."
    ),
    description="Humanoid: walk forward; terminates when the torso leaves 1 < z < 2",
)
_register(
    "InvertedPendulum-v4",
    4,
    1,
    reward_fn=inverted_pendulum_v4_reward,
    termination_fn=inverted_pendulum_termination,
    planning_reward_fn=inverted_pendulum_planning_reward,
    notes="Termination and reward exact (1 on every step); a shaped planning reward.",
    description="InvertedPendulum: balance a pole on a cart; terminates when |angle| > 0.2",
)
_register(
    "InvertedPendulum-v5",
    4,
    1,
    reward_fn=inverted_pendulum_v5_reward,
    termination_fn=inverted_pendulum_termination,
    planning_reward_fn=inverted_pendulum_planning_reward,
    notes="Termination and reward exact (1 while not terminated, 0 on the terminal step); "
    "a shaped planning reward.",
    description="InvertedPendulum: balance a pole on a cart; terminates when |angle| > 0.2",
)
_IDP = (
    "Termination (tip height <= 1) and reward use the tip position from the observed "
    "angles, within 1e-4 of the env's site position (computed by MuJoCo at the last RK4 "
    "stage), and the observed link velocities, clipped to ±10: exact up to these."
)
_register(
    "InvertedDoublePendulum-v4",
    11,
    1,
    reward_fn=inverted_double_pendulum_v4_reward,
    termination_fn=inverted_double_pendulum_termination,
    notes=_IDP,
    description="InvertedDoublePendulum: balance two poles; terminates when the tip drops",
)
_register(
    "InvertedDoublePendulum-v5",
    9,
    1,
    reward_fn=inverted_double_pendulum_v5_reward,
    termination_fn=inverted_double_pendulum_termination,
    notes=f"{_IDP} v5 pays the alive bonus only while not terminated.",
    description="InvertedDoublePendulum: balance two poles; terminates when the tip drops",
)
_register(
    "Reacher-v4",
    11,
    2,
    reward_fn=reacher_v4_reward,
    max_episode_steps=50,
    notes="Reward exact; v4 scores the state before the step (obs). Never terminates.",
    description="Reacher: bring a 2-link arm's fingertip to a target; never terminates",
)
_register(
    "Reacher-v5",
    10,
    2,
    reward_fn=reacher_v5_reward,
    max_episode_steps=50,
    notes="Reward exact; v5 scores the state after the step (next_obs). Never terminates.",
    description="Reacher: bring a 2-link arm's fingertip to a target; never terminates",
)
PUSHER_V4_SPEC = _register(
    "Pusher-v4",
    23,
    7,
    reward_fn=pusher_v4_reward,
    max_episode_steps=100,
    notes="Reward exact; v4 scores the state before the step (obs). Never terminates.",
    description="Pusher: push an object to a goal with a 7-DoF arm; never terminates",
    # gymnasium refuses to build Pusher-v4 with mujoco >= 3 (its object is lighter than
    # air there), so it is only offered where it can be made; Pusher-v5 is the fix.
    register=_mujoco_major_version() < 3,
)
"""Pusher-v4's spec, registered only with mujoco < 3 (gymnasium cannot build it otherwise)."""
_register(
    "Pusher-v5",
    23,
    7,
    reward_fn=pusher_v5_reward,
    max_episode_steps=100,
    notes="Reward exact; v5 scores the state after the step (next_obs). Never terminates.",
    description="Pusher: push an object to a goal with a 7-DoF arm; never terminates",
)

__all__ = ["D4RL_REF_SCORES", "FORWARD_VELOCITY", "PUSHER_V4_SPEC", "VelocityFn"]
