"""Random-action episodes of the 1-D point mass for the sequence-model tests
(``from point_mass_data import point_mass_episodes``)."""

from __future__ import annotations

import numpy as np

from mbrl.envs.point_mass import PointMass1D


def point_mass_episodes(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """``n`` 30-step episodes of uniform actions, as trajectories (obs, act, rew, next_obs)."""
    env, rng, out = PointMass1D(), np.random.default_rng(seed), []
    for i in range(n):
        o, _ = env.reset(seed=seed * 1000 + i)
        rows: dict[str, list[np.ndarray]] = {"obs": [], "act": [], "rew": [], "next_obs": []}
        for _ in range(30):
            a = rng.uniform(-1, 1, size=1).astype(np.float32)
            o2, r, *_ = env.step(a)
            for key, v in zip(rows, (o, a, np.float32(r), o2), strict=True):
                rows[key].append(v)
            o = o2
        out.append({key: np.asarray(v) for key, v in rows.items()})
    return out
