"""D4RL-format offline datasets: loading, validation, Q-learning and trajectory views.

File format (Fu et al. 2020, "D4RL: Datasets for Deep Data-Driven Reinforcement
Learning"; the d4rl package's ``get_dataset``): one HDF5 file with flat keys

- ``observations (N, O)``, ``actions (N, A)``, ``rewards (N,)`` (``(N, 1)`` accepted),
- ``terminals (N,)``: true termination after row ``i`` (no bootstrapping),
- ``timeouts (N,)``: episode cut by the time limit after row ``i`` (bootstrap through it),
- optional ``next_observations (N, O)`` (v1/v2 files), ``infos/*`` (e.g. ``infos/qpos``,
  ``infos/qvel``: the simulator state *before* the step), ``metadata/*`` (algorithm,
  iteration, policy weights of the behaviour policy, ...).

Files are opened read-only (``h5py.File(path, "r")``) and never modified.

Q-learning view semantics (:func:`qlearning_view`), and how they differ from d4rl's
``qlearning_dataset``:

- **With** ``next_observations`` in the file: every row is one transition, with the
  file's ``next_observations``; ``terminated = terminals``, ``truncated = timeouts``.
  d4rl instead uses ``observations[i + 1]`` as next_obs, which on a terminal row is the
  first observation of the *next* episode, and drops timeout rows; we keep timeout rows
  because with a stored next observation they are valid transitions (``truncated=True``:
  the critic bootstraps through them).
- **Without** ``next_observations``: ``next_obs = observations[i + 1]``, and, as in d4rl,
  rows with ``timeouts[i]`` set and the final row are dropped (their next row belongs to
  another episode). Terminal rows are kept, as in d4rl, because the termination signal
  matters to every critic, but unlike d4rl their next_obs is not taken from the next
  episode: it is a copy of ``observations[i]`` and ``next_obs_known`` is ``False``.
  A critic masks it out (``terminated=True``); a dynamics model must train on
  ``view.subset(view.next_obs_known)`` only.

Trajectory view (:func:`trajectories`): episodes split after every row with
``terminals | timeouts`` (as d4rl's ``sequence_dataset``); rows after the last flag
form a trailing partial episode (neither terminated nor truncated).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from mbrl.atomic import atomic_path
from mbrl.data.scores import FAMILY_GYM_ID, env_family
from mbrl.errors import MbrlError
from mbrl.types import TransitionBatch

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")
MAIN_KEYS = (*REQUIRED_KEYS, "next_observations")
# Metadata datasets larger than this (e.g. behaviour-policy weights) are listed, not read.
_MAX_METADATA_ELEMENTS = 64
# Metadata keys that may name the environment a dataset was collected in.
_ENV_METADATA_KEYS = ("env_id", "env_name", "env", "gym_id", "environment")

_FORMAT_HELP = (
    "A D4RL file has the keys observations (N,obs_dim), actions (N,act_dim), rewards (N,), "
    "terminals (N,), timeouts (N,) and optionally next_observations (N,obs_dim)."
)


@dataclass
class D4RLDataset:
    """A D4RL-format dataset in memory (numpy).

    Attributes:
        observations: ``(N, O)`` float32.
        actions: ``(N, A)`` float32.
        rewards: ``(N,)`` float32.
        terminals: ``(N,)`` bool, the episode terminated after this row.
        timeouts: ``(N,)`` bool, the episode was cut (time limit) after this row.
        next_observations: ``(N, O)`` float32, or ``None`` when the file has none.
        infos: ``infos/*`` arrays with ``N`` rows, keyed without the ``infos/`` prefix.
        metadata: scalar and string metadata (``metadata/*`` datasets and attributes,
            root attributes), keyed without the ``metadata/`` prefix.
        metadata_skipped: large metadata datasets that were not read: key -> shape.
        path: the file it came from.
        env_id: best guess of the gymnasium id (metadata, then file name), or ``None``.
        keys: every dataset key present in the source file.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    next_observations: np.ndarray | None = None
    infos: dict[str, np.ndarray] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    metadata_skipped: dict[str, tuple[int, ...]] = field(default_factory=dict)
    path: Path | None = None
    env_id: str | None = None
    keys: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.observations.shape[0])

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def has_next_observations(self) -> bool:
        return self.next_observations is not None

    @classmethod
    def from_arrays(
        cls,
        arrays: Mapping[str, np.ndarray],
        *,
        where: str,
        infos: Mapping[str, np.ndarray] | None = None,
        metadata: Mapping[str, Any] | None = None,
        metadata_skipped: Mapping[str, tuple[int, ...]] | None = None,
        path: Path | None = None,
        env_id: str | None = None,
        keys: list[str] | None = None,
    ) -> D4RLDataset:
        """Validate raw arrays (D4RL key names) and build a dataset with canonical dtypes.

        ``where`` names the source (a file path) in error messages. Raises
        :class:`MbrlError` for a missing key, wrong ndim, unequal lengths or NaN/inf.
        """
        missing = [k for k in REQUIRED_KEYS if k not in arrays]
        if missing:
            present = ", ".join(sorted(arrays)) or "(none)"
            raise MbrlError(
                f"{where}: missing required key(s) {', '.join(missing)} (present: {present}). "
                f"{_FORMAT_HELP} Regenerate or convert the file so it has them."
            )
        want_ndim = {
            "observations": 2,
            "actions": 2,
            "next_observations": 2,
            "rewards": 1,
            "terminals": 1,
            "timeouts": 1,
        }
        out: dict[str, np.ndarray] = {}
        for key, ndim in want_ndim.items():
            if key not in arrays:
                continue
            arr = np.asarray(arrays[key])
            # d4rl squeezes (N, 1) rewards; accept the same for the flags.
            if ndim == 1 and arr.ndim == 2 and arr.shape[1] == 1:
                arr = arr[:, 0]
            if arr.ndim != ndim:
                raise MbrlError(
                    f"{where}: key '{key}' has shape {arr.shape} ({arr.ndim}-D) but must be "
                    f"{ndim}-D ({'(N, dim)' if ndim == 2 else '(N,)'}). {_FORMAT_HELP}"
                )
            out[key] = arr
        lengths = {k: int(v.shape[0]) for k, v in out.items()}
        if len(set(lengths.values())) > 1:
            listing = ", ".join(f"{k}={n}" for k, n in lengths.items())
            raise MbrlError(
                f"{where}: arrays have unequal lengths ({listing}); every key must have one "
                "row per transition. The file is inconsistent: regenerate or re-download it."
            )
        n = lengths["observations"]
        if (
            "next_observations" in out
            and out["next_observations"].shape[1] != out["observations"].shape[1]
        ):
            raise MbrlError(
                f"{where}: next_observations has {out['next_observations'].shape[1]} columns "
                f"but observations has {out['observations'].shape[1]}; they must match."
            )
        for key in ("observations", "actions", "rewards", "next_observations", "terminals"):
            if key in out:
                _check_finite(out[key], key, where)
        info_arrays: dict[str, np.ndarray] = {}
        for key, arr in (infos or {}).items():
            arr = np.asarray(arr)
            if arr.ndim == 0 or arr.shape[0] != n:
                raise MbrlError(
                    f"{where}: key 'infos/{key}' has shape {arr.shape} but must have "
                    f"{n} rows like observations. Drop or fix that key."
                )
            info_arrays[key] = arr
        next_obs = out.get("next_observations")
        return cls(
            observations=np.ascontiguousarray(out["observations"], dtype=np.float32),
            actions=np.ascontiguousarray(out["actions"], dtype=np.float32),
            rewards=np.ascontiguousarray(out["rewards"], dtype=np.float32),
            terminals=out["terminals"].astype(bool),
            timeouts=out["timeouts"].astype(bool),
            next_observations=None
            if next_obs is None
            else np.ascontiguousarray(next_obs, dtype=np.float32),
            infos=info_arrays,
            metadata=dict(metadata or {}),
            metadata_skipped=dict(metadata_skipped or {}),
            path=path,
            env_id=env_id,
            keys=list(keys) if keys is not None else sorted(arrays),
        )


def _check_finite(arr: np.ndarray, key: str, where: str) -> None:
    if not np.issubdtype(arr.dtype, np.floating):
        return
    finite_rows = np.isfinite(arr).reshape(arr.shape[0], -1).all(axis=1)
    if not finite_rows.all():
        row = int(np.flatnonzero(~finite_rows)[0])
        count = int((~finite_rows).sum())
        raise MbrlError(
            f"{where}: key '{key}' has NaN/inf values (first bad row {row}, {count} bad rows "
            f"in all): {arr[row].tolist()}. Remove those rows or regenerate the dataset."
        )


# -- reading -----------------------------------------------------------------------------
def load_d4rl(
    path: str | os.PathLike[str],
    *,
    load_infos: bool = True,
    max_episode_steps: int | None = None,
) -> D4RLDataset:
    """Load and validate a D4RL-format HDF5 file (opened read-only).

    Args:
        path: the ``.hdf5`` file. A Minari ``main_data.hdf5`` is recognised and read with
            :func:`mbrl.data.minari.load_minari`.
        load_infos: read the ``infos/*`` arrays (``qpos``, ``qvel``, ...) into memory.
        max_episode_steps: only for files without ``timeouts`` (d4rl v0): rebuild them as
            d4rl does, a timeout every ``max_episode_steps`` steps of an episode.
    """
    path = Path(path).expanduser()
    _check_readable_hdf5(path)
    try:
        with h5py.File(path, "r") as f:
            if "observations" not in f and any(k.startswith("episode_") for k in f):
                from mbrl.data.minari import load_minari

                return load_minari(path)
            return _read_d4rl(f, path, load_infos=load_infos, max_episode_steps=max_episode_steps)
    except (OSError, RuntimeError) as exc:
        raise MbrlError(
            f"cannot read '{path}' as HDF5: {exc}. The file is probably truncated or corrupt "
            "(e.g. an interrupted download): delete it and download or regenerate it."
        ) from exc


def _check_readable_hdf5(path: Path) -> None:
    if not path.exists():
        raise MbrlError(f"dataset file '{path}' does not exist; check the path.")
    if not path.is_file():
        raise MbrlError(f"'{path}' is not a file; give the path of a D4RL .hdf5 file.")
    try:
        ok = h5py.is_hdf5(path)
    except OSError as exc:
        raise MbrlError(f"cannot read '{path}': {exc}. Check its permissions.") from exc
    if not ok:
        raise MbrlError(
            f"'{path}' is not an HDF5 file ({path.stat().st_size} bytes, no HDF5 signature). "
            "A D4RL dataset is an .hdf5 file; if this one was downloaded, the download is "
            "incomplete or an error page: delete it and download it again."
        )


def _dataset_keys(group: h5py.Group) -> list[str]:
    keys: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            keys.append(name)

    group.visititems(visit)
    return sorted(keys)


def _read_d4rl(
    f: h5py.File, path: Path, *, load_infos: bool, max_episode_steps: int | None
) -> D4RLDataset:
    where = f"dataset '{path}'"
    keys = _dataset_keys(f)
    arrays: dict[str, np.ndarray] = {}
    for key in MAIN_KEYS:
        if key not in f:
            continue
        obj = f[key]
        if not isinstance(obj, h5py.Dataset):
            raise MbrlError(f"{where}: '{key}' is an HDF5 group, not an array. {_FORMAT_HELP}")
        arrays[key] = obj[()]
    if "timeouts" not in arrays and "terminals" in arrays:
        if max_episode_steps is None:
            raise MbrlError(
                f"{where}: missing required key timeouts. Files without it (d4rl v0) need "
                "the env's time limit: pass max_episode_steps (e.g. 1000) to rebuild the "
                "timeouts as d4rl does."
            )
        arrays["timeouts"] = rebuild_timeouts(np.asarray(arrays["terminals"]), max_episode_steps)

    infos: dict[str, np.ndarray] = {}
    if load_infos and "infos" in f and isinstance(f["infos"], h5py.Group):
        for key in _dataset_keys(f["infos"]):
            infos[key] = f["infos"][key][()]
    metadata, skipped = _read_metadata(f)
    return D4RLDataset.from_arrays(
        arrays,
        where=where,
        infos=infos,
        metadata=metadata,
        metadata_skipped=skipped,
        path=path,
        env_id=guess_env_id(metadata, path),
        keys=keys,
    )


def rebuild_timeouts(terminals: np.ndarray, max_episode_steps: int) -> np.ndarray:
    """Timeout flags for a file without them: ``(N,)`` bool, true every
    ``max_episode_steps`` steps counted from each episode start (file start or the row
    after a terminal). d4rl does the same count (with an off-by-one after terminals)."""
    terminals = np.asarray(terminals).astype(bool).reshape(-1)
    n = terminals.shape[0]
    starts = np.zeros(n, dtype=bool)
    if n:
        starts[0] = True
        starts[1:] = terminals[:-1]
    idx = np.arange(n)
    seg_start = np.maximum.accumulate(np.where(starts, idx, 0))
    step = idx - seg_start
    return (step % max_episode_steps == max_episode_steps - 1) & ~terminals


def _to_python(value: Any) -> Any:
    """HDF5 scalar/array/bytes -> plain Python (str, int, float, bool, list)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            return _to_python(value[()])
        return [_to_python(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list):
        return [_to_python(v) for v in value]
    return value


def _is_small(shape: tuple[int, ...] | None) -> bool:
    return shape is not None and math.prod(shape) <= _MAX_METADATA_ELEMENTS


def _read_metadata(f: h5py.File) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """Scalars and strings from root attributes and ``metadata/*`` (datasets and
    attributes); large datasets (policy weights) are listed with their shape, not read."""
    metadata: dict[str, Any] = {}
    skipped: dict[str, tuple[int, ...]] = {}

    def take_attrs(attrs: h5py.AttributeManager, prefix: str) -> None:
        for key in attrs:
            value = attrs[key]
            if _is_small(np.shape(value)):
                metadata[prefix + key] = _to_python(value)
            else:
                skipped[prefix + key] = tuple(np.shape(value))

    take_attrs(f.attrs, "")
    group = f.get("metadata")
    if isinstance(group, h5py.Group):
        take_attrs(group.attrs, "")

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                if _is_small(obj.shape):
                    metadata[name] = _to_python(obj[()])
                else:
                    skipped[name] = tuple(obj.shape or ())
            elif isinstance(obj, h5py.Group):
                take_attrs(obj.attrs, name + "/")

        group.visititems(visit)
    return metadata, skipped


def guess_env_id(metadata: Mapping[str, Any], path: Path | None) -> str | None:
    """The gymnasium id a dataset belongs to: a metadata env name, else the env family in
    the file name (``hopper_medium-v2.hdf5`` -> ``Hopper-v4``), else ``None``."""
    for key in _ENV_METADATA_KEYS:
        value = metadata.get(key)
        if isinstance(value, str) and value:
            family = env_family(value)
            # A D4RL-style env name ("hopper-medium-v2") maps to its gymnasium id;
            # anything else ("Hopper-v5", "MyTask-v0") is taken as given.
            if (
                family is not None
                and value.lower().startswith(family + "-")
                and value.count("-") >= 2
            ):
                return FAMILY_GYM_ID[family]
            return value
    if path is not None:
        family = env_family(path.name)
        if family is not None:
            return FAMILY_GYM_ID[family]
    return None


def check_dims(dataset: D4RLDataset, obs_dim: int, act_dim: int, env_id: str) -> None:
    """Raise :class:`MbrlError` unless the dataset's obs/act dims equal the env's."""
    if dataset.obs_dim == obs_dim and dataset.act_dim == act_dim:
        return
    src = f"'{dataset.path}'" if dataset.path is not None else "the dataset"
    hint = ""
    if env_family(env_id) == "ant" and dataset.obs_dim == 111:
        hint = (
            " D4RL's Ant data has 111-dim observations: make Ant-v4 with use_contact_forces=True."
        )
    raise MbrlError(
        f"dataset {src} has obs_dim={dataset.obs_dim}, act_dim={dataset.act_dim} but env "
        f"'{env_id}' has obs_dim={obs_dim}, act_dim={act_dim}; use the env the data was "
        f"collected in (dataset env guess: {dataset.env_id or 'unknown'}) or another dataset."
        + hint
    )


# -- Q-learning view ---------------------------------------------------------------------
@dataclass
class QLearningView:
    """Transitions for off-policy learning (semantics in the module docstring).

    Attributes:
        obs, next_obs: ``(M, O)`` float32.
        act: ``(M, A)`` float32.
        rew: ``(M,)`` float32.
        terminated: ``(M,)`` bool.
        truncated: ``(M,)`` bool.
        next_obs_known: ``(M,)`` bool; false only on terminal rows of a file without
            ``next_observations`` (their next_obs is a placeholder copy of obs).
        index: ``(M,)`` int64 row of each transition in the source file.
    """

    obs: np.ndarray
    act: np.ndarray
    rew: np.ndarray
    next_obs: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    next_obs_known: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return int(self.obs.shape[0])

    def subset(self, rows: np.ndarray) -> QLearningView:
        """Rows selected by a boolean mask or an index array."""
        return QLearningView(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})


def qlearning_view(ds: D4RLDataset) -> QLearningView:
    """Transitions of ``ds`` as ``obs, act, rew, next_obs, terminated, truncated``."""
    n = len(ds)
    if ds.next_observations is not None:
        keep = np.arange(n)
        next_obs = ds.next_observations
        known = np.ones(n, dtype=bool)
    else:
        # next row is the next state unless the row ends an episode.
        crosses = ds.timeouts.copy()
        if n:
            crosses[-1] = True
        keep = np.flatnonzero(ds.terminals | ~crosses)
        following = np.minimum(keep + 1, max(n - 1, 0))
        known = ~ds.terminals[keep]
        next_obs_rows = np.where(known, following, keep)
        next_obs = ds.observations[next_obs_rows]
        return QLearningView(
            obs=ds.observations[keep],
            act=ds.actions[keep],
            rew=ds.rewards[keep],
            next_obs=next_obs,
            terminated=ds.terminals[keep],
            # a kept non-terminal row never carries a timeout here (those were dropped)
            truncated=ds.timeouts[keep],
            next_obs_known=known,
            index=keep.astype(np.int64),
        )
    return QLearningView(
        obs=ds.observations[keep],
        act=ds.actions[keep],
        rew=ds.rewards[keep],
        next_obs=next_obs[keep],
        terminated=ds.terminals[keep],
        truncated=ds.timeouts[keep],
        next_obs_known=known,
        index=keep.astype(np.int64),
    )


def to_transition_batch(view: QLearningView, device: torch.device | str = "cpu") -> TransitionBatch:
    """The view as a :class:`mbrl.types.TransitionBatch` of tensors on ``device`` (on the
    CPU they share memory with the view's arrays)."""
    return TransitionBatch(
        obs=torch.as_tensor(view.obs, dtype=torch.float32, device=device),
        act=torch.as_tensor(view.act, dtype=torch.float32, device=device),
        rew=torch.as_tensor(view.rew, dtype=torch.float32, device=device),
        next_obs=torch.as_tensor(view.next_obs, dtype=torch.float32, device=device),
        terminated=torch.as_tensor(view.terminated, dtype=torch.bool, device=device),
        truncated=torch.as_tensor(view.truncated, dtype=torch.bool, device=device),
    )


# -- trajectory view ---------------------------------------------------------------------
@dataclass
class Episode:
    """One episode of a dataset.

    Attributes:
        obs, next_obs: ``(T, O)`` float32.
        act: ``(T, A)`` float32.
        rew: ``(T,)`` float32.
        terminated, truncated: ``(T,)`` bool per step (only the last step can be set,
            except for files whose rows carry both flags).
        start: row of the first step in the source file.
        next_obs_known: false when the file has no ``next_observations``: the last step's
            next_obs (in the next episode or absent) is then a copy of its obs.
    """

    obs: np.ndarray
    act: np.ndarray
    rew: np.ndarray
    next_obs: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    start: int
    next_obs_known: bool

    def __len__(self) -> int:
        return int(self.obs.shape[0])

    @property
    def ret(self) -> float:
        """Undiscounted return (float64 sum)."""
        return float(self.rew.sum(dtype=np.float64))

    @property
    def is_terminal(self) -> bool:
        return bool(self.terminated[-1])

    @property
    def is_timeout(self) -> bool:
        return bool(self.truncated[-1]) and not self.is_terminal

    @property
    def complete(self) -> bool:
        """Ends in a termination or timeout (the trailing partial episode does not)."""
        return bool(self.terminated[-1] or self.truncated[-1])


def episode_bounds(terminals: np.ndarray, timeouts: np.ndarray) -> np.ndarray:
    """``(E, 2)`` int64 ``[start, end)`` row ranges, split after each terminal or timeout;
    rows after the last flag form a final partial episode."""
    flags = np.asarray(terminals, dtype=bool) | np.asarray(timeouts, dtype=bool)
    n = flags.shape[0]
    ends = np.flatnonzero(flags) + 1
    if n and (ends.size == 0 or ends[-1] != n):
        ends = np.append(ends, n)
    starts = np.concatenate([[0], ends[:-1]]) if ends.size else np.zeros(0, dtype=np.int64)
    return np.stack([starts, ends], axis=1).astype(np.int64).reshape(-1, 2)


def trajectories(ds: D4RLDataset) -> list[Episode]:
    """The dataset split into episodes (see :func:`episode_bounds`), in file order."""
    episodes: list[Episode] = []
    has_next = ds.next_observations is not None
    for start, end in episode_bounds(ds.terminals, ds.timeouts).tolist():
        if ds.next_observations is not None:
            next_obs = ds.next_observations[start:end]
        else:
            # within the episode the next state is the next row; the last one is unknown
            next_obs = np.concatenate(
                [ds.observations[start + 1 : end], ds.observations[end - 1 : end]]
            )
        episodes.append(
            Episode(
                obs=ds.observations[start:end],
                act=ds.actions[start:end],
                rew=ds.rewards[start:end],
                next_obs=next_obs,
                terminated=ds.terminals[start:end],
                truncated=ds.timeouts[start:end],
                start=start,
                next_obs_known=has_next,
            )
        )
    return episodes


@dataclass(frozen=True)
class EpisodeStats:
    """Episode counts and statistics.

    Counts cover all episodes; an episode whose last row is both terminal and timeout
    counts as terminal. Lengths and returns are over complete episodes (``None`` when
    there are none), because the trailing partial episode's return is not comparable.
    """

    n_episodes: int
    n_terminal: int
    n_timeout: int
    n_partial: int
    length_min: int | None
    length_mean: float | None
    length_max: int | None
    return_min: float | None
    return_mean: float | None
    return_max: float | None
    return_std: float | None
    returns: np.ndarray = field(repr=False, compare=False)  # (E_complete,) float64


def episode_stats(ds: D4RLDataset) -> EpisodeStats:
    """Counts, lengths and returns of the episodes of ``ds`` (see :class:`EpisodeStats`)."""
    bounds = episode_bounds(ds.terminals, ds.timeouts)
    if bounds.shape[0] == 0:
        return EpisodeStats(0, 0, 0, 0, None, None, None, None, None, None, None, np.zeros(0))
    last = bounds[:, 1] - 1
    terminal = ds.terminals[last]
    timeout = ds.timeouts[last] & ~terminal
    complete = terminal | timeout
    returns_all = np.add.reduceat(ds.rewards.astype(np.float64), bounds[:, 0])
    lengths = (bounds[:, 1] - bounds[:, 0])[complete]
    returns = returns_all[complete]
    has = returns.size > 0
    return EpisodeStats(
        n_episodes=int(bounds.shape[0]),
        n_terminal=int(terminal.sum()),
        n_timeout=int(timeout.sum()),
        n_partial=int((~complete).sum()),
        length_min=int(lengths.min()) if has else None,
        length_mean=float(lengths.mean()) if has else None,
        length_max=int(lengths.max()) if has else None,
        return_min=float(returns.min()) if has else None,
        return_mean=float(returns.mean()) if has else None,
        return_max=float(returns.max()) if has else None,
        return_std=float(returns.std()) if has else None,
        returns=returns,
    )


# -- writing -----------------------------------------------------------------------------
def atomic_write(dst: Path, write: Callable[[Path], None], *, overwrite: bool = False) -> Path:
    """Run ``write(tmp)`` on a temp file next to ``dst``, then rename it onto ``dst``, so
    ``dst`` is never left half-written. Refuses an existing ``dst`` unless ``overwrite``."""
    dst = Path(dst).expanduser()
    if dst.exists() and not overwrite:
        raise MbrlError(
            f"'{dst}' already exists; pass overwrite=True (--overwrite) or choose another name."
        )
    with atomic_path(dst) as tmp:
        write(tmp)
    return dst


def _metadata_value(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    if isinstance(value, str):
        return np.asarray(value)
    arr = np.asarray(value)
    if arr.dtype == object:
        return np.asarray(str(value))
    return arr


def save_d4rl(
    ds: D4RLDataset,
    dst: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    compression: str | None = "gzip",
) -> Path:
    """Write ``ds`` as a D4RL HDF5 file (gzip datasets, d4rl key names), atomically.

    Metadata scalars and strings become ``metadata/<key>`` datasets; skipped large
    metadata (policy weights) is not carried over.
    """

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            for key, arr in _main_arrays(ds).items():
                f.create_dataset(key, data=arr, compression=compression)
            for key, arr in ds.infos.items():
                f.create_dataset(f"infos/{key}", data=arr, compression=compression)
            for key, value in ds.metadata.items():
                meta = _metadata_value(value)
                if meta is None:
                    continue
                if meta.dtype.kind == "U":  # h5py stores str via its variable-length dtype
                    f.create_dataset(
                        f"metadata/{key}", data=meta.astype(object), dtype=h5py.string_dtype()
                    )
                else:
                    f.create_dataset(f"metadata/{key}", data=meta)

    return atomic_write(Path(dst), write, overwrite=overwrite)


def save_npz(ds: D4RLDataset, dst: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write ``ds`` as a compressed ``.npz`` with the D4RL key names (``infos/<k>``,
    ``metadata/<k>`` for scalars and strings), atomically."""
    arrays: dict[str, np.ndarray] = dict(_main_arrays(ds))
    arrays.update({f"infos/{k}": v for k, v in ds.infos.items()})
    for key, value in ds.metadata.items():
        meta = _metadata_value(value)
        if meta is not None:
            arrays[f"metadata/{key}"] = meta

    def write(tmp: Path) -> None:
        # A file object, so numpy does not append ".npz" to the temp name.
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]

    return atomic_write(Path(dst), write, overwrite=overwrite)


def load_npz(path: str | os.PathLike[str]) -> D4RLDataset:
    """Load a ``.npz`` written by :func:`save_npz` (or any npz with D4RL key names)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MbrlError(f"dataset file '{path}' does not exist; check the path.")
    try:
        with np.load(path, allow_pickle=False) as z:
            raw = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise MbrlError(
            f"cannot read '{path}' as .npz: {exc}. The file is truncated or not an npz "
            "archive: regenerate it."
        ) from exc
    arrays = {k: v for k, v in raw.items() if "/" not in k}
    infos = {k[len("infos/") :]: v for k, v in raw.items() if k.startswith("infos/")}
    metadata = {
        k[len("metadata/") :]: _to_python(v) for k, v in raw.items() if k.startswith("metadata/")
    }
    return D4RLDataset.from_arrays(
        arrays,
        where=f"dataset '{path}'",
        infos=infos,
        metadata=metadata,
        path=path,
        env_id=guess_env_id(metadata, path),
        keys=sorted(raw),
    )


def _main_arrays(ds: D4RLDataset) -> dict[str, np.ndarray]:
    arrays = {
        "observations": ds.observations,
        "actions": ds.actions,
        "rewards": ds.rewards,
        "terminals": ds.terminals,
        "timeouts": ds.timeouts,
    }
    if ds.next_observations is not None:
        arrays["next_observations"] = ds.next_observations
    return arrays


__all__ = [
    "MAIN_KEYS",
    "REQUIRED_KEYS",
    "D4RLDataset",
    "Episode",
    "EpisodeStats",
    "QLearningView",
    "atomic_write",
    "check_dims",
    "episode_bounds",
    "episode_stats",
    "guess_env_id",
    "load_d4rl",
    "load_npz",
    "qlearning_view",
    "rebuild_timeouts",
    "save_d4rl",
    "save_npz",
    "to_transition_batch",
    "trajectories",
]
