"""Fitting a sequence dynamics model (an ensemble of members) on trajectory windows.

:class:`~mbrl.models.trainer.ModelTrainer` trains on single transitions; sequence models
(:class:`~mbrl.models.koopman.KoopmanModel`,
:class:`~mbrl.models.transformer.TransformerModel`) train on windows of ``L`` consecutive
steps of one episode. This trainer follows the same recipe as the
transition trainer where it carries over (MBPO/PETS, see :mod:`mbrl.models.trainer`):

    * a holdout set (20% of the windows, at most ``max_holdout``; or windows cut from
      held-out trajectories, passed in by the caller);
    * normalizer statistics fitted on the training windows only;
    * Adam (lr 1e-3), ``batch_size`` windows per member per step, every member on its own
      bootstrap resample of the training windows (``bootstrap=False``: its own
      permutation each epoch);
    * after each epoch every member's holdout error (the model's ``sequence_mse``) is
      measured; a member improves when it drops by more than ``improvement_threshold``
      (relative) and then its weights are snapshotted per member; training stops after
      ``patience`` epochs in which no member improved; each member is restored to its
      best snapshot; the ``num_elites`` best members become the elites.

Deviations and limits:
    * Windows cut from the same trajectory overlap, so a *random* window holdout shares
      steps with the training windows and is optimistic; pass ``holdout=`` windows cut
      from held-out trajectories for an honest one.
    * A fit is resumable: with ``checkpoint_fn`` its state after every epoch is handed
      out, and ``resume_state`` continues from it with the same result as an
      uninterrupted fit (on CPU). A non-finite loss stops the fit with
      :class:`MbrlError` after restoring the best snapshots.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from mbrl.data.buffer import ReplayBuffer, SequenceBatch
from mbrl.errors import MbrlError
from mbrl.models.trainer import budget_reached, clone_state

LogFn = Callable[[int, dict[str, float]], None]
CheckpointFn = Callable[[dict[str, Any]], None]
SEQ_STATE_VERSION = 1
_FIELDS = ("obs", "act", "rew", "next_obs", "terminated", "truncated")


class TrainableSequenceModel(Protocol):
    """What :class:`SequenceTrainer` needs from a model (see ``mbrl.models.koopman``)."""

    num_members: int

    @property
    def num_elites(self) -> int: ...
    def parameters(self) -> Any: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> Any: ...
    def fit_normalizer(self, obs: Tensor, act: Tensor, rew: Tensor) -> None: ...
    def sequence_loss(
        self, obs: Tensor, act: Tensor, rew: Tensor, next_obs: Tensor
    ) -> tuple[Tensor, Tensor]: ...
    def sequence_mse(self, obs: Tensor, act: Tensor, rew: Tensor, next_obs: Tensor) -> Tensor: ...
    def member_state(self, i: int) -> dict[str, Tensor]: ...
    def load_member_state(self, i: int, state: dict[str, Tensor]) -> None: ...
    def set_elites(self, idx: Tensor | list[int]) -> None: ...


@dataclass
class SequenceTrainerConfig:
    """Hyperparameters of :class:`SequenceTrainer`."""

    lr: float = 1e-3
    weight_decay: float = 0.0  # Adam's L2 term
    batch_size: int = 64  # windows per member per gradient step
    holdout_ratio: float = 0.2
    max_holdout: int = 2000  # windows
    patience: int = 5
    improvement_threshold: float = 0.01
    max_epochs: int | None = None
    max_grad_steps: int | None = None
    max_train_seconds: float | None = None
    bootstrap: bool = True
    grad_clip_norm: float | None = None
    seed: int = 0


@dataclass
class SequenceFitResult:
    """Summary of one :meth:`SequenceTrainer.fit` (fields as in ``trainer.FitResult``)."""

    epochs: int
    train_loss: float
    first_train_loss: float
    holdout_mse_per_member: list[float]
    elite_idx: list[int]
    stop_reason: str
    wall_time: float
    grad_steps: int = 0
    num_train: int = 0
    num_holdout: int = 0
    train_losses: list[float] = field(default_factory=list)  # per epoch


def windows_from_trajectories(trajs: Iterable[Any], length: int, stride: int = 1) -> SequenceBatch:
    """Every window of ``length`` consecutive steps (start every ``stride`` steps) of
    each trajectory, as a :class:`~mbrl.data.buffer.SequenceBatch` of ``(N, L, ...)``.

    Args:
        trajs: items with ``obs (T, O)``, ``act (T, A)``, ``rew (T,)``, ``next_obs (T, O)``
            and optionally ``terminated``/``truncated`` ``(T,)`` (dicts or objects,
            numpy or torch; e.g. :func:`mbrl.data.d4rl.trajectories`). Shorter ones are
            skipped.
    """
    if length < 1 or stride < 1:
        raise MbrlError(f"window length and stride must be >= 1, got {length}, {stride}.")
    parts: dict[str, list[Tensor]] = {name: [] for name in _FIELDS}
    for traj in trajs:
        get = traj.get if isinstance(traj, dict) else lambda n, t=traj: getattr(t, n, None)
        obs = get("obs")
        if obs is None:
            raise MbrlError("windows_from_trajectories: a trajectory has no 'obs'.")
        T = int(obs.shape[0])
        if length > T:
            continue
        for name in _FIELDS:
            value = get(name)
            if value is None:
                if name in ("terminated", "truncated"):
                    value = np.zeros(T, dtype=bool)
                else:
                    raise MbrlError(f"windows_from_trajectories: a trajectory has no '{name}'.")
            x = torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value)
            x = x if name in ("terminated", "truncated") else x.float()
            # (T, ...) -> (num_windows, L, ...)
            w = x.unfold(0, length, stride)
            parts[name].append(w.movedim(-1, 1) if w.ndim > 2 else w)
    if not parts["obs"]:
        raise MbrlError(
            f"windows_from_trajectories: no trajectory has {length} steps; use a shorter "
            "window (the model's horizon) or longer episodes."
        )
    return SequenceBatch(**{name: torch.cat(v) for name, v in parts.items()})


def windows_from_buffer(buffer: ReplayBuffer, length: int, num_windows: int) -> SequenceBatch:
    """``num_windows`` uniformly drawn valid windows of a replay buffer (with replacement)."""
    return buffer.sample_sequences(num_windows, length)


class SequenceTrainer:
    """Trains a :class:`TrainableSequenceModel` in place on windows ``(N, L, ...)``.

    Args:
        model: the model (e.g. :class:`~mbrl.models.koopman.KoopmanModel`).
        cfg: hyperparameters (``None``: defaults).
    """

    def __init__(self, model: TrainableSequenceModel, cfg: SequenceTrainerConfig | None = None):
        self.model = model
        self.cfg = cfg = cfg if cfg is not None else SequenceTrainerConfig()
        if cfg.lr <= 0 or cfg.batch_size < 1 or cfg.patience < 1 or cfg.max_holdout < 1:
            raise MbrlError(
                "SequenceTrainerConfig needs lr > 0, batch_size >= 1, patience >= 1 and "
                f"max_holdout >= 1; got lr={cfg.lr}, batch_size={cfg.batch_size}, "
                f"patience={cfg.patience}, max_holdout={cfg.max_holdout}."
            )
        if not 0.0 <= cfg.holdout_ratio < 1.0:
            raise MbrlError(
                f"SequenceTrainerConfig.holdout_ratio must be in [0, 1), got {cfg.holdout_ratio}."
            )
        self.optimizer = torch.optim.Adam(
            model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        self.generator = torch.Generator().manual_seed(cfg.seed)
        # the state after the last finished epoch of a checkpointed fit (see fit)
        self.last_fit_state: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        """Adam's state and the sampling generator (for an exact resume between fits)."""
        return {"optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])

    def fit(
        self,
        data: SequenceBatch,
        holdout: SequenceBatch | None = None,
        *,
        log_fn: LogFn | None = None,
        progress: bool = False,
        checkpoint_fn: CheckpointFn | None = None,
        resume_state: dict[str, Any] | None = None,
    ) -> SequenceFitResult:
        """Fit on windows ``data`` (``(N, L, ...)``), early-stopping on ``holdout`` (or a
        random split of ``data`` when ``None``).

        Args:
            checkpoint_fn: called after every epoch with the fit's state (``torch.save``-
                able: the model, Adam, the split, the member snapshots, counters); the
                same state is kept as :attr:`last_fit_state` (e.g. to save on Ctrl-C).
            resume_state: such a state from a fit on the same windows: the fit continues
                after its last finished epoch, with the same result as an uninterrupted
                fit (on CPU). ``max_epochs`` and the budgets are checked anew, so a fit
                stopped by them can be extended; one stopped by patience just returns.

        Raises:
            MbrlError: no windows, a resume state from other data, or a non-finite loss.
        """
        cfg, model = self.cfg, self.model
        dev = next(iter(model.parameters())).device
        n = len(data)
        if n == 0:
            raise MbrlError("SequenceTrainer.fit got no windows; collect longer episodes.")
        shape = [n, int(data.obs.shape[1]), len(holdout) if holdout is not None else 0]
        if resume_state is not None:
            if resume_state.get("version") != SEQ_STATE_VERSION:
                raise MbrlError(
                    f"sequence-model fit state has version {resume_state.get('version')!r}, "
                    f"this mbrl reads version {SEQ_STATE_VERSION}; start the fit afresh."
                )
            if list(resume_state["shape"]) != shape:
                raise MbrlError(
                    "cannot resume the sequence-model fit: its checkpoint was made on "
                    f"(windows, length, holdout windows) = {tuple(resume_state['shape'])}, "
                    f"this fit got {tuple(shape)}; resume on the same data or start afresh."
                )
            model.load_state_dict(resume_state["model"])  # normalizers included
            self.load_state_dict(resume_state)
            train_idx, hold_idx = resume_state["train_idx"], resume_state["hold_idx"]
        elif holdout is None:
            perm = torch.randperm(n, generator=self.generator)
            n_hold = (
                0
                if cfg.holdout_ratio == 0
                else max(1, min(int(n * cfg.holdout_ratio), cfg.max_holdout))
            )
            if n - n_hold < 1:
                raise MbrlError(
                    f"only {n} windows: none left for training after the holdout split."
                )
            train_idx = perm[n_hold:]
            hold_idx = perm[:n_hold] if n_hold else perm[: cfg.max_holdout]
        else:
            train_idx = torch.arange(n)
            k = min(len(holdout), cfg.max_holdout)
            hold_idx = torch.randperm(len(holdout), generator=self.generator)[:k]
        train = _take(data, train_idx, dev)
        hold = _take(data if holdout is None else holdout, hold_idx, dev)
        N = len(train)
        E, B = model.num_members, cfg.batch_size
        if resume_state is None:
            model.fit_normalizer(train.obs, train.act, train.rew)
            boot = (
                torch.randint(0, N, (E, N), generator=self.generator)
                if cfg.bootstrap
                else torch.arange(N).expand(E, N)
            )
            best = model.sequence_mse(hold.obs, hold.act, hold.rew, hold.next_obs).cpu()
            snapshots = [model.member_state(i) for i in range(E)]
            steps, epoch, since_improved, elapsed = 0, 0, 0, 0.0
            losses: list[float] = []
            stop = ""
        else:
            r = resume_state
            boot, best, snapshots = r["boot"], r["best"].clone(), list(r["snapshots"])
            steps, epoch = int(r["steps"]), int(r["epoch"])
            since_improved, elapsed = int(r["since_improved"]), float(r["elapsed"])
            losses = list(r["losses"])
            stop = "patience" if r["stop_reason"] == "patience" else ""

        def make_state() -> dict[str, Any]:
            return {
                "version": SEQ_STATE_VERSION,
                "shape": shape,
                "train_idx": train_idx,
                "hold_idx": hold_idx,
                "boot": boot,
                "model": clone_state(model.state_dict()),
                "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                "generator": self.generator.get_state(),
                "best": best.clone(),
                "snapshots": list(snapshots),  # a member's snapshot is never mutated
                "steps": steps,
                "epoch": epoch,
                "since_improved": since_improved,
                "elapsed": elapsed,
                "losses": list(losses),
                "stop_reason": stop,
            }

        self.last_fit_state = make_state() if checkpoint_fn is not None else None
        t0 = time.perf_counter() - elapsed  # wall time counts every resumed part
        bar = tqdm(desc="sequence model fit", disable=not progress, unit="epoch", initial=epoch)
        while not stop:
            stop = budget_reached(cfg, epoch, steps, time.perf_counter() - t0)
            if stop:
                break
            order = torch.stack(
                [boot[e, torch.randperm(N, generator=self.generator)] for e in range(E)]
            ).to(dev)
            total, count, budget = 0.0, 0, ""
            for s in range(0, N, B):
                idx = order[:, s : s + B]  # (E, b)
                loss, _ = model.sequence_loss(
                    train.obs[idx], train.act[idx], train.rew[idx], train.next_obs[idx]
                )
                if not torch.isfinite(loss):
                    self._restore(snapshots)
                    raise MbrlError(
                        f"sequence model loss became {float(loss)} at gradient step {steps}; "
                        "lower SequenceTrainerConfig.lr or set grad_clip_norm."
                    )
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip_norm is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip_norm)
                self.optimizer.step()
                total += float(loss.detach()) / E
                count += 1
                steps += 1
                budget = budget_reached(cfg, None, steps, time.perf_counter() - t0)
                if budget:
                    break
            epoch += 1
            losses.append(total / max(count, 1))
            mse = model.sequence_mse(hold.obs, hold.act, hold.rew, hold.next_obs).cpu()
            improved = mse < best * (1.0 - cfg.improvement_threshold)
            for i in torch.nonzero(improved).flatten().tolist():
                best[i] = mse[i]
                snapshots[i] = model.member_state(i)
            since_improved = 0 if bool(improved.any()) else since_improved + 1
            if log_fn is not None:
                log_fn(
                    steps, {"model/train_loss": losses[-1], "model/holdout_mse": float(mse.mean())}
                )
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4g}", holdout=f"{float(mse.mean()):.4g}")
            if budget:
                stop = budget
            elif since_improved >= cfg.patience:
                stop = "patience"
            elapsed = time.perf_counter() - t0
            if checkpoint_fn is not None:
                self.last_fit_state = make_state()
                checkpoint_fn(self.last_fit_state)
        bar.close()
        self._restore(snapshots)
        final = model.sequence_mse(hold.obs, hold.act, hold.rew, hold.next_obs).cpu()
        elites = torch.argsort(final)[: model.num_elites].tolist()
        model.set_elites(elites)
        return SequenceFitResult(
            epochs=epoch,
            train_loss=losses[-1] if losses else math.nan,
            first_train_loss=losses[0] if losses else math.nan,
            holdout_mse_per_member=final.tolist(),
            elite_idx=elites,
            stop_reason=stop,
            wall_time=time.perf_counter() - t0,
            grad_steps=steps,
            num_train=N,
            num_holdout=len(hold),
            train_losses=losses,
        )

    def _restore(self, snapshots: list[dict[str, Tensor]]) -> None:
        for i, state in enumerate(snapshots):
            self.model.load_member_state(i, copy.copy(state))


def _take(data: SequenceBatch, idx: Tensor, device: torch.device) -> SequenceBatch:
    return SequenceBatch(**{name: getattr(data, name)[idx].to(device) for name in _FIELDS})


__all__ = [
    "SequenceFitResult",
    "SequenceTrainer",
    "SequenceTrainerConfig",
    "TrainableSequenceModel",
    "windows_from_buffer",
    "windows_from_trajectories",
]
