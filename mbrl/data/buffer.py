"""A FIFO ring replay buffer of preallocated tensors, with trajectory bookkeeping.

All storage lives on one device (``"cpu"`` or ``"cuda"``) so a sampled batch goes
straight into an update without a host round trip. Shapes: ``C`` capacity, ``O``
observation dim, ``A`` action dim, ``B`` batch, ``L`` sequence length.

Trajectory boundaries: an episode ends *after* a step with ``terminated`` or
``truncated`` set. Every stored step carries an episode id that only ever grows in
insertion order, so "steps ``i..j`` (oldest-first) are one contiguous piece of one
episode" is just ``id[i] == id[j]``. Once the ring wraps, the oldest episode may have
lost its first steps to overwriting; what remains of it is still contiguous and is
treated as a (shorter) trajectory.

Determinism: all sampling draws from a ``torch.Generator`` owned by the buffer, and
:meth:`ReplayBuffer.state_dict` stores its state, so a buffer restored from a
checkpoint continues the exact same sample sequence as one that never stopped.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from itertools import pairwise
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mbrl.errors import MbrlError
from mbrl.types import TransitionBatch

# lists too: torch.as_tensor takes them (e.g. add([0.5], [1.0], ...))
ArrayLike = Tensor | np.ndarray | Sequence[float] | float | int | bool

_FIELDS = ("obs", "act", "rew", "next_obs", "terminated", "truncated")


@dataclass
class SequenceBatch:
    """A batch of contiguous, within-episode windows of steps.

    Every window is fully valid (no padding, so no mask): all ``L`` steps belong to
    one episode, are consecutive in time and are still present in the buffer. Only
    the last step of a window can have ``terminated`` or ``truncated`` set.

    Attributes:
        obs: ``(B, L, O)``.
        act: ``(B, L, A)``.
        rew: ``(B, L)``.
        next_obs: ``(B, L, O)``.
        terminated: ``(B, L)`` bool.
        truncated: ``(B, L)`` bool.
    """

    obs: Tensor
    act: Tensor
    rew: Tensor
    next_obs: Tensor
    terminated: Tensor
    truncated: Tensor

    def __len__(self) -> int:
        return int(self.obs.shape[0])

    def to(self, device: torch.device | str) -> SequenceBatch:
        return SequenceBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


class ReplayBuffer:
    """Uniform FIFO replay buffer on a device.

    Args:
        capacity: maximum number of transitions ``C``; the oldest are overwritten.
        obs_dim: observation size ``O``.
        act_dim: action size ``A``.
        device: where storage lives and samples are returned.
        dtype: floating dtype of ``obs, act, rew, next_obs``.
        seed: seed of the buffer's sampling generator. ``None`` draws one from torch's
            global generator, so ``torch.manual_seed`` alone makes a run reproducible
            while two buffers in one run still sample independently.

    Example::

        buf = ReplayBuffer(100_000, obs_dim=17, act_dim=6, seed=0)
        buf.add(obs, act, rew, next_obs, terminated, truncated)
        batch = buf.sample(256)  # TransitionBatch, obs (256, 17)
    """

    def __init__(
        self,
        capacity: int,
        obs_dim: int,
        act_dim: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int | None = None,
    ) -> None:
        if int(capacity) < 1:
            raise MbrlError(f"ReplayBuffer capacity must be a positive integer, got {capacity}.")
        if int(obs_dim) < 1 or int(act_dim) < 1:
            raise MbrlError(
                f"ReplayBuffer needs obs_dim >= 1 and act_dim >= 1, got obs_dim={obs_dim}, "
                f"act_dim={act_dim}."
            )
        self._capacity = int(capacity)
        self.obs_dim = int(obs_dim)
        self.act_dim = int(act_dim)
        self.device = torch.device(device)
        self.dtype = dtype
        c = self._capacity
        kw: dict[str, Any] = {"device": self.device}
        self.obs = torch.zeros(c, self.obs_dim, dtype=dtype, **kw)
        self.act = torch.zeros(c, self.act_dim, dtype=dtype, **kw)
        self.rew = torch.zeros(c, dtype=dtype, **kw)
        self.next_obs = torch.zeros(c, self.obs_dim, dtype=dtype, **kw)
        self.terminated = torch.zeros(c, dtype=torch.bool, **kw)
        self.truncated = torch.zeros(c, dtype=torch.bool, **kw)
        # Episode id of every slot; nondecreasing in insertion order.
        self.episode_id = torch.zeros(c, dtype=torch.int64, **kw)
        # Id the next added step gets. Kept on the device so adds never sync.
        self._next_episode_id = torch.zeros((), dtype=torch.int64, **kw)
        self._ptr = 0  # next slot to write
        self._size = 0
        self._generator = torch.Generator(device=self.device)
        if seed is None:
            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64).item())
        self._generator.manual_seed(int(seed))
        # Valid window starts per sequence length; cleared whenever the data change.
        self._starts_cache: dict[int, Tensor] = {}

    # -- size ----------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def is_full(self) -> bool:
        return self._size == self._capacity

    def __len__(self) -> int:
        return self._size

    @property
    def last_index(self) -> int:
        """Row of the most recently added transition (``-1`` while empty)."""
        return (self._ptr - 1) % self._capacity if self._size else -1

    @property
    def generator(self) -> torch.Generator:
        """The generator behind :meth:`sample` and :meth:`sample_sequences`."""
        return self._generator

    # -- adding --------------------------------------------------------------------
    def _as_tensor(self, name: str, x: ArrayLike, shape: tuple[int, ...]) -> Tensor:
        dtype = torch.bool if name in ("terminated", "truncated") else self.dtype
        t = torch.as_tensor(x, dtype=dtype, device=self.device)
        if tuple(t.shape) != shape:
            raise MbrlError(
                f"ReplayBuffer.add: field '{name}' has shape {tuple(t.shape)}, expected "
                f"{shape} (obs_dim={self.obs_dim}, act_dim={self.act_dim}). Pass one "
                "transition to add() and a (B, ...) batch to add_batch()."
            )
        return t

    def add(
        self,
        obs: ArrayLike,
        act: ArrayLike,
        rew: ArrayLike,
        next_obs: ArrayLike,
        terminated: ArrayLike,
        truncated: ArrayLike,
    ) -> None:
        """Add one transition: ``obs (O,)``, ``act (A,)``, scalar ``rew``,
        ``next_obs (O,)``, scalar bools ``terminated`` and ``truncated``.

        Accepts numpy arrays, torch tensors (any device) or Python scalars.
        """
        o, a = (self.obs_dim,), (self.act_dim,)
        obs_t = self._as_tensor("obs", obs, o)
        act_t = self._as_tensor("act", act, a)
        rew_t = self._as_tensor("rew", rew, ())
        next_obs_t = self._as_tensor("next_obs", next_obs, o)
        term_t = self._as_tensor("terminated", terminated, ())
        trunc_t = self._as_tensor("truncated", truncated, ())
        i = self._ptr
        self.obs[i] = obs_t
        self.act[i] = act_t
        self.rew[i] = rew_t
        self.next_obs[i] = next_obs_t
        self.terminated[i] = term_t
        self.truncated[i] = trunc_t
        self.episode_id[i] = self._next_episode_id
        self._next_episode_id += (term_t | trunc_t).to(torch.int64)
        self._ptr = (i + 1) % self._capacity
        self._size = min(self._size + 1, self._capacity)
        self._starts_cache.clear()

    def add_batch(
        self,
        obs: ArrayLike,
        act: ArrayLike,
        rew: ArrayLike,
        next_obs: ArrayLike,
        terminated: ArrayLike,
        truncated: ArrayLike,
    ) -> None:
        """Add ``B`` consecutive transitions in time order.

        Shapes: ``obs (B, O)``, ``act (B, A)``, ``rew (B,)``, ``next_obs (B, O)``,
        ``terminated (B,)``, ``truncated (B,)``. Episodes continue across calls: the
        first row extends the episode of the last added step unless that one ended.
        If ``B > capacity`` only the last ``capacity`` rows are kept (FIFO).
        """
        obs_t = torch.as_tensor(obs, dtype=self.dtype, device=self.device)
        if obs_t.ndim != 2:
            raise MbrlError(
                f"ReplayBuffer.add_batch: field 'obs' has shape {tuple(obs_t.shape)}, expected "
                f"(B, {self.obs_dim}). Use add() for a single transition."
            )
        n = int(obs_t.shape[0])
        o, a = (n, self.obs_dim), (n, self.act_dim)
        obs_t = self._as_tensor("obs", obs_t, o)
        act_t = self._as_tensor("act", act, a)
        rew_t = self._as_tensor("rew", rew, (n,))
        next_obs_t = self._as_tensor("next_obs", next_obs, o)
        term_t = self._as_tensor("terminated", terminated, (n,))
        trunc_t = self._as_tensor("truncated", truncated, (n,))
        if n == 0:
            return
        # Episode ids: exclusive cumulative count of episode ends before each row.
        ends = (term_t | trunc_t).to(torch.int64)
        ids = self._next_episode_id + torch.cumsum(ends, 0) - ends
        self._next_episode_id += ends.sum()
        keep = min(n, self._capacity)
        skip = n - keep  # rows that would be overwritten within this very batch
        ptr = (self._ptr + skip) % self._capacity
        idx = (ptr + torch.arange(keep, device=self.device)) % self._capacity
        for name, t in zip(
            (*_FIELDS, "episode_id"),
            (obs_t, act_t, rew_t, next_obs_t, term_t, trunc_t, ids),
            strict=True,
        ):
            getattr(self, name)[idx] = t[skip:]
        self._ptr = (ptr + keep) % self._capacity
        self._size = min(self._size + n, self._capacity)
        self._starts_cache.clear()

    @classmethod
    def from_transitions(
        cls,
        batch: TransitionBatch,
        capacity: int | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int | None = None,
    ) -> ReplayBuffer:
        """Build a buffer holding ``batch`` (e.g. a D4RL q-learning view, in file order).

        ``capacity`` defaults to ``len(batch)``; a larger one leaves room for more data
        (offline-to-online), a smaller one keeps only the last ``capacity`` rows.
        """
        if batch.obs.ndim != 2 or batch.act.ndim != 2:
            raise MbrlError(
                "ReplayBuffer.from_transitions: expected obs (N, O) and act (N, A), got "
                f"obs {tuple(batch.obs.shape)} and act {tuple(batch.act.shape)}."
            )
        n = len(batch)
        buf = cls(
            capacity=max(n, 1) if capacity is None else capacity,
            obs_dim=int(batch.obs.shape[1]),
            act_dim=int(batch.act.shape[1]),
            device=device,
            dtype=dtype,
            seed=seed,
        )
        buf.add_batch(
            batch.obs, batch.act, batch.rew, batch.next_obs, batch.terminated, batch.truncated
        )
        return buf

    # -- reading -------------------------------------------------------------------
    def _oldest(self) -> int:
        """Physical slot of the oldest stored step."""
        return (self._ptr - self._size) % self._capacity

    def chronological_indices(self) -> Tensor:
        """Physical slots of the stored steps, oldest first: ``(len(self),)`` int64."""
        ar = torch.arange(self._size, device=self.device)
        return (self._oldest() + ar) % self._capacity

    def _gather(self, idx: Tensor) -> TransitionBatch:
        return TransitionBatch(**{name: getattr(self, name)[idx] for name in _FIELDS})

    def _check_nonempty(self, what: str) -> None:
        if self._size == 0:
            raise MbrlError(
                f"ReplayBuffer.{what}: the buffer is empty. Add transitions (add, add_batch "
                "or from_transitions) before sampling."
            )

    def sample(self, batch_size: int) -> TransitionBatch:
        """Uniformly sample ``batch_size`` transitions with replacement.

        Returns a :class:`~mbrl.types.TransitionBatch` with ``obs (B, O)`` etc. on the
        buffer's device. No host synchronisation: the size is tracked on the host.
        """
        self._check_nonempty("sample")
        # Slots [0, size) are exactly the filled ones: before wrapping ptr == size,
        # after wrapping every slot is filled.
        idx = torch.randint(
            0, self._size, (int(batch_size),), generator=self._generator, device=self.device
        )
        return self._gather(idx)

    def transitions(self) -> TransitionBatch:
        """All stored transitions, oldest first: ``(len(self), ...)`` tensors (a copy)."""
        return self._gather(self.chronological_indices())

    def trajectory_ids(self) -> Tensor:
        """Episode id of every stored step, oldest first: ``(len(self),)`` int64.

        Ids are nondecreasing; equal ids mean the same episode. They are unique over
        the buffer's lifetime (not renumbered when old episodes are overwritten).
        """
        return self.episode_id[self.chronological_indices()]

    def episode_starts(self) -> Tensor:
        """Oldest-first positions (into :meth:`transitions`) where a trajectory starts.

        ``(num_trajectories,)`` int64, always starting with 0 when the buffer is not
        empty. The oldest trajectory may be the surviving tail of an overwritten one, and
        the newest may still be running (its last step neither terminated nor truncated).
        """
        ids = self.trajectory_ids()
        if ids.numel() == 0:
            return torch.zeros(0, dtype=torch.int64, device=self.device)
        change = torch.nonzero(ids[1:] != ids[:-1]).squeeze(1) + 1
        return torch.cat([torch.zeros(1, dtype=torch.int64, device=self.device), change])

    def episodes(self) -> Iterator[TransitionBatch]:
        """Yield each stored trajectory, oldest first, as a ``(T_i, ...)`` batch."""
        chron = self.chronological_indices()
        starts = self.episode_starts().tolist()
        bounds = [*starts, self._size]
        for s, e in pairwise(bounds):
            yield self._gather(chron[s:e])

    # -- sequences -----------------------------------------------------------------
    def valid_sequence_starts(self, length: int) -> Tensor:
        """Oldest-first positions ``s`` where steps ``s..s+length-1`` form one valid window.

        A window is valid when all its steps share an episode id (ids only grow, so
        comparing its first and last step suffices). Positions are relative to the
        oldest stored step, so no window can run past the write pointer into
        overwritten data. Computed vectorised and cached until the data change.
        Returns ``(num_valid,)`` int64.
        """
        length = int(length)
        if length < 1:
            raise MbrlError(f"sequence length must be >= 1, got {length}.")
        cached = self._starts_cache.get(length)
        if cached is not None:
            return cached
        if length > self._size:
            starts = torch.zeros(0, dtype=torch.int64, device=self.device)
        else:
            ids = self.trajectory_ids()
            same = ids[: self._size - length + 1] == ids[length - 1 :]
            starts = torch.nonzero(same).squeeze(1)
        self._starts_cache[length] = starts
        return starts

    def sample_sequences(self, batch_size: int, length: int) -> SequenceBatch:
        """Uniformly sample ``batch_size`` windows of ``length`` contiguous steps.

        Windows never cross a trajectory boundary nor the ring's write position; only
        fully valid windows are drawn (no padding, no mask), uniformly over all valid
        start positions, with replacement. Returns a :class:`SequenceBatch` of
        ``(B, L, ...)`` tensors.

        Cost: finding the valid starts is one vectorised pass plus one host sync, done
        once after each change of the data and cached per ``length``; a draw on
        unchanged data is sync-free.
        """
        self._check_nonempty("sample_sequences")
        starts = self.valid_sequence_starts(length)
        n_valid = int(starts.shape[0])
        if n_valid == 0:
            raise MbrlError(
                f"ReplayBuffer.sample_sequences: no trajectory piece of length {length} is "
                f"stored ({self._size} steps in the buffer). Use a shorter length or collect "
                "longer episodes."
            )
        k = torch.randint(
            0, n_valid, (int(batch_size),), generator=self._generator, device=self.device
        )
        pos = starts[k].unsqueeze(1) + torch.arange(int(length), device=self.device)
        idx = (self._oldest() + pos) % self._capacity  # (B, L) physical slots
        return SequenceBatch(**{name: getattr(self, name)[idx] for name in _FIELDS})

    # -- state ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Data, pointer, size, episode bookkeeping and generator state.

        Only the filled slots ``[0, len)`` are stored (copies, so ``torch.save`` does not
        write the whole preallocated storage).
        """
        n = self._size
        state: dict[str, Any] = {
            name: getattr(self, name)[:n].clone() for name in (*_FIELDS, "episode_id")
        }
        state.update(
            capacity=self._capacity,
            obs_dim=self.obs_dim,
            act_dim=self.act_dim,
            ptr=self._ptr,
            size=n,
            next_episode_id=int(self._next_episode_id.item()),
            generator_state=self._generator.get_state(),
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; dims must match this buffer, and its capacity
        must be at least the saved one (a larger buffer takes the saved rows oldest first,
        e.g. when a run's budget is raised on resume)."""
        saved_capacity = int(state.get("capacity", -1))
        grow = 0 < saved_capacity < self._capacity
        capacity = saved_capacity if grow else self._capacity
        expected = {"capacity": capacity, "obs_dim": self.obs_dim, "act_dim": self.act_dim}
        keys = (*_FIELDS, "episode_id", "ptr", "size", "next_episode_id", "generator_state")
        missing = [k for k in (*keys, *expected) if k not in state]
        if missing:
            raise MbrlError(f"ReplayBuffer state is missing keys {missing}; not a buffer state.")
        for key, value in expected.items():
            if int(state[key]) != value:
                raise MbrlError(
                    f"ReplayBuffer state has {key}={state[key]}, this buffer has {key}={value}. "
                    f"Construct the buffer with {key}={state[key]} before loading."
                )
        try:
            self._generator.set_state(state["generator_state"].cpu())
        except RuntimeError as e:
            # CPU (Mersenne Twister) and CUDA (Philox) generator states differ in format.
            raise MbrlError(
                f"ReplayBuffer state's generator does not fit this buffer's device "
                f"'{self.device}' ({e}). Load it into a buffer on the device it was saved from."
            ) from e
        n, ptr = int(state["size"]), int(state["ptr"])
        # into a larger buffer: chronological order (a full ring's oldest row is at ptr)
        rotate = grow and n == saved_capacity and ptr != 0
        order = (torch.arange(n) + ptr) % n if rotate else None
        for name in (*_FIELDS, "episode_id"):
            dst = getattr(self, name)
            dst.zero_()
            src = state[name] if order is None else state[name][order.to(state[name].device)]
            dst[:n] = src.to(device=self.device, dtype=dst.dtype)
        self._ptr = n % self._capacity if grow else ptr
        self._size = n
        self._next_episode_id.fill_(int(state["next_episode_id"]))
        self._starts_cache.clear()
