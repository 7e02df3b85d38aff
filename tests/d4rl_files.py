"""Small D4RL-format and Minari-layout files for tests (import as ``from d4rl_files import ...``).

The data follow a simple deterministic dynamics, ``s[t+1] = s[t] + 0.1 * a[t]`` (actions
zero-padded/truncated to ``obs_dim``), so that a test can tell a true next observation
from the first observation of the next episode.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np


def _episode_lengths(n_episodes: int, ep_len: int | Sequence[int]) -> list[int]:
    if isinstance(ep_len, int):
        return [ep_len] * n_episodes
    lengths = [int(n) for n in ep_len]
    if len(lengths) != n_episodes:
        raise ValueError(f"ep_len has {len(lengths)} entries for {n_episodes} episodes")
    return lengths


def _rollout(
    rng: np.random.Generator, length: int, obs_dim: int, act_dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """States ``(length + 1, obs_dim)`` and actions ``(length, act_dim)`` of one episode."""
    act = rng.uniform(-1.0, 1.0, size=(length, act_dim))
    push = np.zeros((length, obs_dim))
    k = min(obs_dim, act_dim)
    push[:, :k] = act[:, :k]
    states = np.empty((length + 1, obs_dim))
    states[0] = rng.normal(size=obs_dim)
    states[1:] = states[0] + np.cumsum(0.1 * push, axis=0)
    return states, act


def make_d4rl_arrays(
    *,
    n_episodes: int = 3,
    ep_len: int | Sequence[int] = 10,
    obs_dim: int = 3,
    act_dim: int = 2,
    terminal_every: int | None = None,
    partial_tail: int = 0,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """D4RL arrays (``observations``, ``actions``, ``rewards``, ``terminals``,
    ``timeouts``, ``next_observations``, ``infos/qpos``, ``infos/qvel``).

    Episode ``k`` (0-based) ends with a terminal when ``terminal_every`` divides ``k + 1``,
    otherwise with a timeout; then ``partial_tail`` rows with neither flag follow.
    """
    rng = np.random.default_rng(seed)
    lengths = _episode_lengths(n_episodes, ep_len)
    obs, next_obs, acts, terms, touts = [], [], [], [], []
    for k, length in enumerate([*lengths, partial_tail]):
        if length == 0:
            continue
        states, act = _rollout(rng, length, obs_dim, act_dim)
        obs.append(states[:-1])
        next_obs.append(states[1:])
        acts.append(act)
        term = np.zeros(length, dtype=bool)
        tout = np.zeros(length, dtype=bool)
        if k < n_episodes:  # the tail (k == n_episodes) has no flag
            if terminal_every is not None and (k + 1) % terminal_every == 0:
                term[-1] = True
            else:
                tout[-1] = True
        terms.append(term)
        touts.append(tout)
    observations = np.concatenate(obs).astype(np.float32)
    n = observations.shape[0]
    return {
        "observations": observations,
        "next_observations": np.concatenate(next_obs).astype(np.float32),
        "actions": np.concatenate(acts).astype(np.float32),
        "rewards": np.asarray(rng.normal(size=n), dtype=np.float32),
        "terminals": np.concatenate(terms),
        "timeouts": np.concatenate(touts),
        "infos/qpos": (2.0 * observations).astype(np.float64),
        "infos/qvel": rng.normal(size=(n, 2)),
    }


def write_arrays(
    path: str | Path,
    arrays: Mapping[str, np.ndarray],
    *,
    metadata: Mapping[str, Any] | None = None,
    compression: str | None = "gzip",
) -> Path:
    """Write arrays under their (possibly nested, ``infos/qpos``) keys, plus
    ``metadata/<key>`` datasets, to an HDF5 file, with no validation."""
    path = Path(path)
    with h5py.File(path, "w") as f:
        for key, arr in arrays.items():
            arr = np.asarray(arr)
            f.create_dataset(key, data=arr, compression=compression if arr.ndim else None)
        for key, value in (metadata or {}).items():
            if isinstance(value, str):
                f.create_dataset(f"metadata/{key}", data=value, dtype=h5py.string_dtype())
            else:
                f.create_dataset(f"metadata/{key}", data=np.asarray(value))
    return path


def write_d4rl_file(
    path: str | Path,
    *,
    n_episodes: int = 3,
    ep_len: int | Sequence[int] = 10,
    obs_dim: int = 3,
    act_dim: int = 2,
    with_next_obs: bool = True,
    terminal_every: int | None = None,
    partial_tail: int = 0,
    metadata: Mapping[str, Any] | None = None,
    policy_weights: bool = False,
    seed: int = 0,
) -> Path:
    """Write a small D4RL-format HDF5 file (gzip, d4rl key names) and return its path.

    See :func:`make_d4rl_arrays` for the episode layout. ``policy_weights`` adds a
    ``metadata/policy/fc0/weight (64, 64)`` dataset like D4RL's policy metadata.
    """
    arrays = make_d4rl_arrays(
        n_episodes=n_episodes,
        ep_len=ep_len,
        obs_dim=obs_dim,
        act_dim=act_dim,
        terminal_every=terminal_every,
        partial_tail=partial_tail,
        seed=seed,
    )
    if not with_next_obs:
        del arrays["next_observations"]
    meta: dict[str, Any] = dict(metadata or {})
    if policy_weights:
        meta["policy/fc0/weight"] = np.ones((64, 64), dtype=np.float32)
    return write_arrays(path, arrays, metadata=meta)


def write_minari_dataset(
    root: str | Path,
    dataset_id: str,
    *,
    n_episodes: int = 3,
    ep_len: int | Sequence[int] = 10,
    obs_dim: int = 3,
    act_dim: int = 2,
    terminal_every: int | None = None,
    last_unflagged: bool = False,
    env_id: str = "Hopper-v5",
    metadata: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """Write ``root/<dataset_id>/data/{main_data.hdf5, metadata.json}`` in Minari's HDF5
    layout (one ``episode_<i>`` group each, ``T + 1`` observations) and return the
    dataset folder. Episodes end like :func:`make_d4rl_arrays`'s; with
    ``last_unflagged`` the last episode has neither flag (collection stopped)."""
    rng = np.random.default_rng(seed)
    lengths = _episode_lengths(n_episodes, ep_len)
    data = Path(root) / dataset_id / "data"
    data.mkdir(parents=True, exist_ok=True)
    with h5py.File(data / "main_data.hdf5", "w") as f:
        for k, length in enumerate(lengths):
            states, act = _rollout(rng, length, obs_dim, act_dim)
            g = f.create_group(f"episode_{k}")
            g.attrs["id"] = k
            g.attrs["total_steps"] = length
            g.create_dataset("observations", data=states.astype(np.float32))
            g.create_dataset("actions", data=act.astype(np.float32))
            g.create_dataset("rewards", data=rng.normal(size=length))
            term = np.zeros(length, dtype=bool)
            trunc = np.zeros(length, dtype=bool)
            if not (last_unflagged and k == len(lengths) - 1):
                if terminal_every is not None and (k + 1) % terminal_every == 0:
                    term[-1] = True
                else:
                    trunc[-1] = True
            g.create_dataset("terminations", data=term)
            g.create_dataset("truncations", data=trunc)
            infos = g.create_group("infos")
            infos.create_dataset("qpos", data=3.0 * states)  # T + 1 rows, as Minari stores
    meta = {
        "dataset_id": dataset_id,
        "total_episodes": len(lengths),
        "total_steps": int(sum(lengths)),
        "data_format": "hdf5",
        "env_spec": json.dumps({"id": env_id, "max_episode_steps": 1000}),
        "observation_space": "{...}",
        "action_space": "{...}",
        "minari_version": "0.5.1",
        **(metadata or {}),
    }
    (data / "metadata.json").write_text(json.dumps(meta))
    return data.parent
