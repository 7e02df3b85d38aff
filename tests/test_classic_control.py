"""Classic-control specs: the batched termination/reward fns reproduce the real envs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mbrl.envs import get_env_spec


def _rollout(env_id: str, policy: str, steps: int, seed: int = 0) -> dict[str, np.ndarray]:
    spec = get_env_spec(env_id)
    env = spec.make()
    rng = np.random.default_rng(seed)
    rows: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "act", "rew", "next", "term")}
    obs, _ = env.reset(seed=seed)
    for _ in range(steps):
        if policy == "pump":  # push along the velocity: gains energy, reaches the flag
            act = np.array([1.0 if obs[1] >= 0 else -1.0], dtype=np.float32)
        else:
            act = rng.uniform(env.action_space.low, env.action_space.high).astype(np.float32)
        next_obs, rew, terminated, truncated, _ = env.step(act)
        for k, v in zip(rows, (obs, act, rew, next_obs, terminated), strict=True):
            rows[k].append(np.asarray(v))
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()
    return {k: np.stack(v) for k, v in rows.items()}


@pytest.mark.parametrize(
    "env_id,policy", [("MountainCarContinuous-v0", "pump"), ("Pendulum-v1", "random")]
)
def test_fns_match_env(env_id: str, policy: str) -> None:
    spec = get_env_spec(env_id)
    d = _rollout(env_id, policy, 1500)
    obs, act, nxt = (torch.as_tensor(d[k], dtype=torch.float64) for k in ("obs", "act", "next"))
    assert spec.reward_fn is not None
    np.testing.assert_allclose(spec.reward_fn(obs, act, nxt).numpy(), d["rew"], atol=1e-4)
    if spec.never_terminates:
        assert spec.termination_fn is None and not d["term"].any()
    else:
        assert spec.termination_fn is not None
        term = spec.termination_fn(obs, act, nxt).numpy()
        assert d["term"].sum() >= 3, "the pumping policy should reach the flag repeatedly"
        np.testing.assert_array_equal(term, d["term"])
    assert (spec.obs_dim, spec.act_dim) == (d["obs"].shape[1], d["act"].shape[1])
