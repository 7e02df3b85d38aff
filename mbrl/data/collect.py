"""Collecting transitions from a real environment into a D4RL-format dataset.

:func:`collect_rollouts` runs any policy for a number of steps in one env and returns the
D4RL arrays; :func:`collect_random` is the uniform-random policy. The policy datasets of
``mbrl data collect`` (:mod:`mbrl.data.generate`) use the same loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from tqdm import tqdm

from mbrl.data.d4rl import D4RLDataset
from mbrl.envs import EnvSpec

ActFn = Callable[[int, np.ndarray], np.ndarray]
"""``act_fn(t, obs (O,)) -> act (A,)``: the action at collection step ``t``."""


def collect_rollouts(
    spec: EnvSpec,
    steps: int,
    act_fn: ActFn,
    seed: int = 0,
    *,
    progress: bool = True,
    desc: str | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Run ``act_fn`` for ``steps`` env steps; return ``(arrays, infos)`` in D4RL layout.

    ``arrays`` holds ``observations (N, O)``, ``actions (N, A)``, ``rewards (N,)``,
    ``next_observations (N, O)``, ``terminals (N,)`` (termination) and ``timeouts (N,)``
    (the env's time limit cut the episode; never set together with ``terminals``).
    ``next_observations`` is the env's own next observation, so terminal and timeout rows
    are exact. For MuJoCo envs ``infos`` holds ``qpos (N, nq)`` and ``qvel (N, nv)``, the
    simulator state *before* each step (as in D4RL); otherwise it is empty. The last
    episode is cut wherever ``steps`` ends (no flag: a trailing partial episode).
    Resets use ``seed + episode``, so the result is deterministic when ``act_fn`` is.
    """
    env = spec.make()
    obs_dim = int(np.prod(env.observation_space.shape or (1,)))
    act_dim = int(np.prod(env.action_space.shape or (1,)))
    data = {
        "observations": np.zeros((steps, obs_dim), np.float32),
        "actions": np.zeros((steps, act_dim), np.float32),
        "rewards": np.zeros(steps, np.float32),
        "next_observations": np.zeros((steps, obs_dim), np.float32),
        "terminals": np.zeros(steps, bool),
        "timeouts": np.zeros(steps, bool),
    }
    mj: Any = getattr(env.unwrapped, "data", None)
    has_state = mj is not None and hasattr(mj, "qpos")
    qpos = np.zeros((steps, mj.qpos.size), np.float32) if has_state else None
    qvel = np.zeros((steps, mj.qvel.size), np.float32) if has_state else None
    episode = 0
    obs, _ = env.reset(seed=seed)
    try:
        for t in tqdm(range(steps), desc=desc or f"collect {spec.id}", disable=not progress):
            if qpos is not None and qvel is not None:
                qpos[t], qvel[t] = mj.qpos, mj.qvel
            act = np.asarray(act_fn(t, np.asarray(obs)), dtype=np.float32).reshape(act_dim)
            next_obs, rew, terminated, truncated, _ = env.step(act)
            data["observations"][t] = obs
            data["actions"][t] = act
            data["next_observations"][t] = next_obs
            data["rewards"][t] = rew
            data["terminals"][t] = terminated
            data["timeouts"][t] = truncated and not terminated
            obs = next_obs
            if terminated or truncated:
                episode += 1
                obs, _ = env.reset(seed=seed + episode)
    finally:
        env.close()
    infos = {"qpos": qpos, "qvel": qvel} if qpos is not None and qvel is not None else {}
    return data, infos


def uniform_actions(spec: EnvSpec, steps: int, seed: int) -> np.ndarray:
    """``(steps, A)`` float32 uniform actions in the action space, from one numpy generator
    (drawn in one block: ``action_space.sample`` costs ~36 µs a call)."""
    env = spec.make()
    try:
        low, high = env.action_space.low, env.action_space.high
    finally:
        env.close()
    rng = np.random.default_rng(seed)
    return rng.uniform(low, high, size=(steps, low.size)).astype(np.float32)


def collect_random(
    spec: EnvSpec,
    steps: int,
    seed: int = 0,
    progress: bool = True,
    metadata: Mapping[str, Any] | None = None,
) -> D4RLDataset:
    """``steps`` transitions of a uniform-random policy, as a D4RL-format dataset.

    Episodes follow the env's own time limit (``timeouts``) and termination
    (``terminals``); see :func:`collect_rollouts`. Deterministic given ``seed``: resets
    use ``seed + episode`` and actions come from one numpy generator seeded with ``seed``.
    ``metadata`` is added to (and overrides) the default entries.
    """
    actions = uniform_actions(spec, steps, seed)
    data, infos = collect_rollouts(
        spec, steps, lambda t, obs: actions[t], seed, progress=progress, desc=f"random {spec.id}"
    )
    meta = {"env_id": spec.id, "policy": "uniform random", "seed": seed, "size": steps}
    meta.update(metadata or {})
    return D4RLDataset.from_arrays(
        data, where=f"random data from {spec.id}", infos=infos, metadata=meta, env_id=spec.id
    )
