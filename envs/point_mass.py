"""A 1-D point mass (double integrator): the cheapest task a model-based agent can learn.

Used by the learning tests: PETS should reach a step reward above -0.02 within 5
episodes and MBPO within 12, a check borrowed from mbrl-lib's test suite (its 1-D
double integrator: action adds to velocity, reward -0.001 pos^2, 30-step episodes).

Dynamics (deterministic, ``dt = 0.03``)::

    vel' = vel + act            act in [-1, 1]
    pos' = pos + dt * vel'      (state kept in float32, like the observation)
    rew  = -0.001 * pos'^2

The episode starts at rest with ``|pos|`` uniform in [7, 10] (random sign). A reward above
-0.02 needs ``|pos| < 4.47``: full thrust towards the origin gets there in 13-19 steps,
while a uniform-random policy does so in about 1.6% of episodes (7.7% of 5-episode runs),
so reaching it is evidence of learning. Never terminates; truncated after 30 steps.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from torch import Tensor

from mbrl.envs import register_env

DT = 0.03
START_RANGE = (7.0, 10.0)
EPISODE_STEPS = 30
# Bounds of the observation space. Within one 30-step episode |vel| <= 30 and
# |pos| <= 10 + dt * (1 + ... + 30) < 24, so the clipping at these limits never acts there;
# it only keeps longer (unwrapped) runs inside the space.
POS_LIMIT = 50.0
VEL_LIMIT = 30.0


def point_mass_reward(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """``-0.001 * pos'^2`` of the next state, ``(B,)`` (exact)."""
    return -0.001 * next_obs[:, 0].square()


@register_env(
    "PointMass1D-v0",
    reward_fn=point_mass_reward,
    never_terminates=True,
    max_episode_steps=EPISODE_STEPS,
    description="1-D point mass: push a resting mass from |pos| in [7, 10] to the origin",
)
class PointMass1D(gym.Env[np.ndarray, np.ndarray]):
    """1-D point mass: observation ``[pos, vel]``, action ``[accel]`` in [-1, 1]."""

    metadata = {"render_modes": []}  # noqa: RUF012  (gymnasium declares it an instance dict)

    def __init__(self) -> None:
        high = np.array([POS_LIMIT, VEL_LIMIT], dtype=np.float32)
        self.observation_space = spaces.Box(-high, high, dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self._pos = 0.0
        self._vel = 0.0

    def _obs(self) -> np.ndarray:
        return np.array([self._pos, self._vel], dtype=np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        low, high = START_RANGE
        sign = 1.0 if self.np_random.random() < 0.5 else -1.0
        # float32 round trip: the state is exactly what the observation shows.
        self._pos = float(np.float32(sign * self.np_random.uniform(low, high)))
        self._vel = 0.0
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        act = float(np.clip(np.asarray(action, dtype=np.float32).reshape(-1)[0], -1.0, 1.0))
        self._vel = float(np.float32(np.clip(self._vel + act, -VEL_LIMIT, VEL_LIMIT)))
        self._pos = float(np.float32(np.clip(self._pos + DT * self._vel, -POS_LIMIT, POS_LIMIT)))
        rew = -0.001 * self._pos**2
        # Time limit (truncation) is added by gymnasium's TimeLimit wrapper.
        return self._obs(), rew, False, False, {}
