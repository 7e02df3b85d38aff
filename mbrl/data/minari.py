"""Read local Minari datasets into the D4RL format, without the ``minari`` package.

Minari (Farama's maintained successor of D4RL) keeps each dataset in
``$MINARI_DATASETS_PATH/<dataset_id>/data/`` (default root ``~/.minari/datasets``; ids may
be namespaced, ``mujoco/hopper/medium-v0``): ``metadata.json`` plus ``main_data.hdf5``
with one group per episode, ``episode_<i>``, holding

- ``observations (T + 1, ...)``: the reset observation and the one after every step,
- ``actions (T, ...)``, ``rewards (T,)``, ``terminations (T,)``, ``truncations (T,)``,
- optional ``infos`` (a group of arrays with ``T + 1`` rows in Minari's HDF5 storage).

Older Minari versions stored the dataset metadata as attributes of ``main_data.hdf5``;
both places are read. Conversion to D4RL rows: ``observations[:-1] -> observations``,
``observations[1:] -> next_observations``, ``terminations -> terminals``,
``truncations -> timeouts``, ``infos[k][:-1] -> infos/k`` (the state before each step,
as D4RL's ``infos/qpos``). Deviation: an episode whose last step has neither flag (the
collector stopped it) gets ``timeouts = True`` on that step, because the flat format
marks episode boundaries only by flags; it was cut, not terminated, so bootstrapping
through it is right. Only flat Box observation/action spaces are supported.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mbrl.data.d4rl import D4RLDataset, _dataset_keys, _is_small, _to_python
from mbrl.errors import MbrlError

MAIN_FILE = "main_data.hdf5"
METADATA_FILE = "metadata.json"
_EPISODE = re.compile(r"^episode_(\d+)$")
# Long serialized values in Minari metadata, not useful as dataset metadata scalars.
_SKIP_METADATA = {"observation_space", "action_space", "env_spec", "eval_env_spec"}


def minari_root() -> Path:
    """Minari's local datasets directory: ``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``."""
    return Path(os.environ.get("MINARI_DATASETS_PATH", "~/.minari/datasets")).expanduser()


def minari_dataset_path(dataset_id: str, root: str | os.PathLike[str] | None = None) -> Path:
    """``main_data.hdf5`` of a local Minari dataset. Without a ``-v<N>`` suffix the highest
    local version is used. Raises :class:`MbrlError` if it is not there."""
    base_root = Path(root).expanduser() if root is not None else minari_root()
    base = base_root / dataset_id
    if not base.exists() and not re.search(r"-v\d+$", dataset_id) and base.parent.is_dir():
        versions = sorted(
            (p for p in base.parent.glob(f"{base.name}-v*") if re.search(r"-v\d+$", p.name)),
            key=lambda p: int(p.name.rsplit("-v", 1)[1]),
        )
        if versions:
            base = versions[-1]
    main = base / "data" / MAIN_FILE
    if not main.is_file():
        raise MbrlError(
            f"Minari dataset '{dataset_id}' is not available locally (looked for {main}). "
            f"Download it with `pip install minari && minari download {dataset_id}`, or set "
            "MINARI_DATASETS_PATH to the directory that holds it."
        )
    return main


def _main_file(source: str | os.PathLike[str]) -> Path:
    """Accept ``main_data.hdf5``, its ``data/`` directory, or the dataset directory."""
    path = Path(source).expanduser()
    for candidate in (path, path / MAIN_FILE, path / "data" / MAIN_FILE):
        if candidate.is_file():
            return candidate
    raise MbrlError(
        f"no Minari dataset at '{path}' (expected {MAIN_FILE} in it or in its data/ folder)."
    )


def _read_json_metadata(main: Path) -> dict[str, Any]:
    meta_path = main.parent / METADATA_FILE
    if not meta_path.is_file():
        return {}
    try:
        with open(meta_path) as fh:
            loaded = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise MbrlError(f"cannot read Minari metadata '{meta_path}': {exc}.") from exc
    return loaded if isinstance(loaded, dict) else {}


def _env_id_from_spec(spec: Any) -> str | None:
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError:
            return None
    if isinstance(spec, dict) and isinstance(spec.get("id"), str):
        return str(spec["id"])
    return None


def _flat(arr: np.ndarray, rows: int) -> np.ndarray:
    """``(rows, ...)`` -> ``(rows, D)``; a 1-D array (e.g. discrete actions) -> ``(rows, 1)``."""
    return arr.reshape(rows, -1)


def load_minari(source: str | os.PathLike[str]) -> D4RLDataset:
    """Load a local Minari dataset as a :class:`D4RLDataset` (read-only).

    Args:
        source: the dataset's ``main_data.hdf5``, its ``data/`` folder or its folder.
    """
    main = _main_file(source)
    where = f"Minari dataset '{main}'"
    raw_meta = _read_json_metadata(main)
    obs_parts: list[np.ndarray] = []
    next_parts: list[np.ndarray] = []
    act_parts: list[np.ndarray] = []
    rew_parts: list[np.ndarray] = []
    term_parts: list[np.ndarray] = []
    trunc_parts: list[np.ndarray] = []
    info_parts: dict[str, list[np.ndarray]] = {}
    try:
        with h5py.File(main, "r") as f:
            for key in f.attrs:
                raw_meta.setdefault(key, _to_python(f.attrs[key]))
            episodes = sorted(
                (k for k in f if _EPISODE.match(k)), key=lambda k: int(k.split("_", 1)[1])
            )
            if not episodes:
                raise MbrlError(f"{where}: no episode_<i> groups; it is not a Minari dataset.")
            for name in episodes:
                group = f[name]
                for key in ("observations", "actions", "rewards", "terminations", "truncations"):
                    if key not in group:
                        raise MbrlError(f"{where}: '{name}/{key}' is missing.")
                    if not isinstance(group[key], h5py.Dataset):
                        raise MbrlError(
                            f"{where}: '{name}/{key}' is a group (a Dict/Tuple space); only "
                            "flat Box observation and action spaces convert to D4RL format."
                        )
                rew = np.asarray(group["rewards"][()]).reshape(-1)
                steps = rew.shape[0]
                if steps == 0:
                    continue
                obs = np.asarray(group["observations"][()])
                if obs.shape[0] != steps + 1:
                    raise MbrlError(
                        f"{where}: '{name}/observations' has {obs.shape[0]} rows but "
                        f"'{name}/rewards' has {steps}; Minari stores T + 1 observations."
                    )
                obs = _flat(obs, steps + 1)
                obs_parts.append(obs[:-1])
                next_parts.append(obs[1:])
                act = np.asarray(group["actions"][()])
                term = np.asarray(group["terminations"][()]).reshape(-1).astype(bool)
                trunc = np.asarray(group["truncations"][()]).reshape(-1).astype(bool)
                for key, arr in (("actions", act), ("terminations", term), ("truncations", trunc)):
                    if arr.shape[0] != steps:
                        raise MbrlError(
                            f"{where}: '{name}/{key}' has {arr.shape[0]} rows but "
                            f"'{name}/rewards' has {steps}; they must be equal."
                        )
                act_parts.append(_flat(act, steps))
                rew_parts.append(rew)
                trunc[-1] |= not term[-1]  # keep the episode boundary (module docstring)
                term_parts.append(term)
                trunc_parts.append(trunc)
                infos = group.get("infos")
                if isinstance(infos, h5py.Group):
                    for key in _dataset_keys(infos):
                        arr = np.asarray(infos[key][()])
                        if arr.ndim >= 1 and arr.shape[0] in (steps, steps + 1):
                            info_parts.setdefault(key, []).append(arr[:steps])
    except (OSError, RuntimeError) as exc:
        raise MbrlError(
            f"cannot read {where}: {exc}. The file is truncated or corrupt: download it again."
        ) from exc
    if not rew_parts:
        raise MbrlError(f"{where}: every episode is empty.")

    n_eps = len(rew_parts)
    infos_out = {k: np.concatenate(v) for k, v in info_parts.items() if len(v) == n_eps}
    metadata: dict[str, Any] = {}
    for key, value in raw_meta.items():
        if key in _SKIP_METADATA:
            continue
        if isinstance(value, (str, int, float, bool)) or (
            isinstance(value, list) and _is_small((len(value),))
        ):
            metadata[key] = value
    env_id = _env_id_from_spec(raw_meta.get("env_spec"))
    if env_id is not None:
        metadata["env_id"] = env_id
    try:
        arrays = {
            "observations": np.concatenate(obs_parts),
            "next_observations": np.concatenate(next_parts),
            "actions": np.concatenate(act_parts),
            "rewards": np.concatenate(rew_parts),
            "terminals": np.concatenate(term_parts),
            "timeouts": np.concatenate(trunc_parts),
        }
    except ValueError as exc:  # episodes with different widths
        raise MbrlError(f"{where}: episodes disagree on array widths: {exc}.") from exc
    return D4RLDataset.from_arrays(
        arrays,
        where=where,
        infos=infos_out,
        metadata=metadata,
        path=main,
        env_id=env_id,
        keys=sorted(arrays) + [f"infos/{k}" for k in sorted(infos_out)],
    )


__all__ = ["MAIN_FILE", "load_minari", "minari_dataset_path", "minari_root"]
