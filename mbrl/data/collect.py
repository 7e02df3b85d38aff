"""Collecting transitions from a real environment into a D4RL-format dataset."""

from __future__ import annotations

from typing import Any

import numpy as np
from tqdm import tqdm

from mbrl.data.d4rl import D4RLDataset
from mbrl.envs import EnvSpec


def collect_random(spec: EnvSpec, steps: int, seed: int = 0, progress: bool = True) -> D4RLDataset:
    """``steps`` transitions of a uniform-random policy, as a D4RL-format dataset.

    Episodes follow the env's own time limit (``timeouts``) and termination
    (``terminals``); ``next_observations`` are stored, so terminal rows are exact.
    For MuJoCo envs ``infos/qpos`` and ``infos/qvel`` hold the state before each step.
    Deterministic given ``seed``: resets use ``seed + episode`` and actions come from
    one numpy generator (drawn in blocks: ``action_space.sample`` costs ~36 µs a call).
    """
    env = spec.make()
    rng = np.random.default_rng(seed)
    low, high = env.action_space.low, env.action_space.high
    obs_dim = int(np.prod(env.observation_space.shape or (1,)))
    act_dim = int(np.prod(env.action_space.shape or (1,)))
    data = {
        "observations": np.zeros((steps, obs_dim), np.float32),
        "actions": rng.uniform(low, high, size=(steps, act_dim)).astype(np.float32),
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
    for t in tqdm(range(steps), desc=f"collect {spec.id}", disable=not progress, leave=False):
        if qpos is not None and qvel is not None:
            qpos[t], qvel[t] = mj.qpos, mj.qvel
        act = data["actions"][t]
        next_obs, rew, terminated, truncated, _ = env.step(act)
        data["observations"][t] = obs
        data["next_observations"][t] = next_obs
        data["rewards"][t] = rew
        data["terminals"][t] = terminated
        data["timeouts"][t] = truncated and not terminated
        obs = next_obs
        if terminated or truncated:
            episode += 1
            obs, _ = env.reset(seed=seed + episode)
    env.close()
    infos = {"qpos": qpos, "qvel": qvel} if qpos is not None and qvel is not None else {}
    metadata = {"env_id": spec.id, "policy": "uniform random", "seed": seed, "size": steps}
    return D4RLDataset.from_arrays(
        data, where=f"random data from {spec.id}", infos=infos, metadata=metadata, env_id=spec.id
    )
