"""Gymnasium's classic-control tasks with continuous actions, with exact batched fns.

- ``MountainCarContinuous-v0``: ``obs = [pos, vel]``, ``act = [force] in [-1, 1]``; the
  episode terminates when the car reaches ``pos >= 0.45`` with ``vel >= 0``; reward
  ``100·terminated − 0.1·force²`` (the env squares the *unclipped* action; agents clip
  to the bounds before acting, so the two agree). A sparse reward with an action
  penalty: dithering exploration learns to stand still. 999-step episodes.
- ``Pendulum-v1``: ``obs = [cos θ, sin θ, θ̇]``, ``act = [torque] in [-2, 2]``; reward
  ``−(θ² + 0.1·θ̇² + 0.001·u²)`` of the state *before* the step, with θ wrapped to
  ``[−π, π)`` and ``u`` clipped to the bounds. Never terminates; 200-step episodes.

Both functions are exact (they reproduce gymnasium's ``step`` from
``(obs, act, next_obs)``); the contract tests check them against the real envs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mbrl.envs import EnvSpec, add_env_spec

MOUNTAIN_CAR_GOAL_POSITION = 0.45
MOUNTAIN_CAR_GOAL_VELOCITY = 0.0
PENDULUM_MAX_TORQUE = 2.0


def mountain_car_termination(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """The car reached the flag: ``pos' >= 0.45`` and ``vel' >= 0``, ``(B,)`` bool."""
    return (next_obs[:, 0] >= MOUNTAIN_CAR_GOAL_POSITION) & (
        next_obs[:, 1] >= MOUNTAIN_CAR_GOAL_VELOCITY
    )


def mountain_car_reward(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """``100·[goal reached] − 0.1·act²``, ``(B,)``."""
    goal = mountain_car_termination(obs, act, next_obs).to(act.dtype)
    return 100.0 * goal - 0.1 * act[:, 0].square()


def pendulum_reward(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """``−(θ² + 0.1·θ̇² + 0.001·u²)`` of the pre-step state, ``(B,)``."""
    theta = torch.atan2(obs[:, 1], obs[:, 0])
    # gymnasium wraps θ into [−π, π); atan2 gives (−π, π]: only θ = π differs, and
    # squares agree there
    u = act[:, 0].clamp(-PENDULUM_MAX_TORQUE, PENDULUM_MAX_TORQUE)
    return -(theta.square() + 0.1 * obs[:, 2].square() + 0.001 * u.square())


add_env_spec(
    EnvSpec(
        id="MountainCarContinuous-v0",
        obs_dim=2,
        act_dim=1,
        termination_fn=mountain_car_termination,
        reward_fn=mountain_car_reward,
        max_episode_steps=999,
        notes="sparse goal reward (+100) with an action penalty; exact fns",
    ),
    description="classic control: drive an underpowered car up a hill (sparse reward)",
)
add_env_spec(
    EnvSpec(
        id="Pendulum-v1",
        obs_dim=3,
        act_dim=1,
        reward_fn=pendulum_reward,
        never_terminates=True,
        max_episode_steps=200,
        notes="swing-up with a torque limit; exact reward fn",
    ),
    description="classic control: swing a pendulum up and balance it",
)
