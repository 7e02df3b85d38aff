"""A complete custom environment in one file: a 2-D point robot reaching a goal.

This is the example of the README's "bring your own environment" section and of the
tests. It shows everything mbrl needs from a custom env:

1. a gymnasium env class (Box observation and action spaces),
2. batched torch termination and reward functions of ``(obs, act, next_obs)``, so a
   learned dynamics model can roll out in the env (PETS, MBPO, ...),
3. optional reference returns for normalized scores,
4. one ``@register_env`` decorator (it registers with gymnasium too, and runs
   gymnasium's env checker).

Use it without any other edit:

    mbrl train pets --preset point_mass --run.env mbrl.envs.examples.reach2d:Reach2D
    mbrl train sac --run.env path/to/reach2d.py:Reach2D      # a file works too
    mbrl envs --load mbrl.envs.examples.reach2d               # lists Reach2D-v0
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from mbrl.envs import register_env

DT = 0.1
GOAL_RADIUS = 0.1
ARENA = 2.0  # the robot starts in [-ARENA, ARENA]^2; the goal is the origin
CTRL_COST = 0.01


def reach2d_termination(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """Terminated when the robot is within ``GOAL_RADIUS`` of the goal: ``(B,)`` bool."""
    return next_obs[:, :2].norm(dim=1) < GOAL_RADIUS


def reach2d_reward(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """Negative distance to the goal after the step, minus a control cost: ``(B,)``."""
    return -next_obs[:, :2].norm(dim=1) - CTRL_COST * act.square().sum(dim=1)


@register_env(
    "Reach2D-v0",
    termination_fn=reach2d_termination,
    reward_fn=reach2d_reward,
    max_episode_steps=50,
    ref_min_score=-100.0,  # staying near a corner for 50 steps
    ref_max_score=-10.0,  # roughly a straight, fast approach
)
class Reach2D(gym.Env[np.ndarray, np.ndarray]):
    """2-D point robot: observation ``[x, y, vx, vy]``, action ``[ax, ay]`` in [-1, 1]."""

    metadata = {"render_modes": []}  # noqa: RUF012 (gymnasium declares it so)

    def __init__(self) -> None:
        high = np.array([10 * ARENA, 10 * ARENA, 10.0, 10.0], dtype=np.float32)
        self.observation_space = gym.spaces.Box(-high, high, dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.state = np.zeros(4, dtype=np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        pos = self.np_random.uniform(-ARENA, ARENA, size=2)
        self.state = np.concatenate([pos, np.zeros(2)]).astype(np.float32)
        return self.state.copy(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        act = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
        vel = np.clip(self.state[2:] + DT * act, -10.0, 10.0)
        pos = np.clip(self.state[:2] + DT * vel, -10 * ARENA, 10 * ARENA)
        next_state = np.concatenate([pos, vel]).astype(np.float32)
        # The same functions the model uses, so env and model agree exactly.
        o, a, n = (torch.as_tensor(x)[None] for x in (self.state, act, next_state))
        rew = float(reach2d_reward(o, a, n)[0])
        terminated = bool(reach2d_termination(o, a, n)[0])
        self.state = next_state
        return next_state.copy(), rew, terminated, False, {}
