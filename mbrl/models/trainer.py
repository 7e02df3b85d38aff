"""Fitting a dynamics ensemble: holdout split, per-member early stopping, elites, resume.

Follows the model-training recipe of MBPO (Janner et al. 2019, "When to Trust Your
Model: Model-Based Policy Optimization") and its reference code, which inherits it from
PETS (Chua et al. 2018):

    * a holdout split of 20% of the data, capped at 5,000 transitions (MBPO code);
    * input normalization fitted on the training split only;
    * each member trains on its own bootstrap resample of the training split, drawn once
      per fit and reshuffled every epoch (``bootstrap=False``: each member gets its own
      independent permutation every epoch instead);
    * Adam, lr 1e-3, 256 transitions per member per step, ``ceil(N_train / 256)`` steps
      per epoch (the last one smaller); the loss (Gaussian NLL + log-variance bound
      penalty + per-layer weight decay) is the model's own :meth:`loss`;
    * after every epoch each member's holdout MSE is measured; a member *improves* when
      it drops by more than 1% relative to its best so far, and then its weights are
      snapshotted **per member**; training stops after ``patience`` epochs in which no
      member improved; each member is restored to its own best snapshot; the
      ``num_elites`` members with the lowest holdout MSE become the elites.

Deviations and choices:
    * MBPO's code stops when the count of non-improving epochs *exceeds* 5 (so after 6);
      here training stops when it *reaches* ``patience`` (after 5 by default).
    * mbrl-lib snapshots the whole ensemble whenever any member improves (and never caps
      the holdout); here, as in the MBPO code, every member keeps its own best weights.
    * With ``holdout_ratio=0`` the "holdout" metric is measured on (up to
      ``max_holdout`` rows of) the training split, as mbrl-lib does without validation
      data.
    * A non-finite training loss stops the fit with :class:`~mbrl.errors.MbrlError`
      (instead of silently training on), after restoring each member's best snapshot.

Resuming: :meth:`ModelTrainer.state_dict` is the complete state at the end of the last
finished epoch (model weights, optimizer, split and bootstrap indices, best snapshots and
losses, patience counter, random generator, budget counters), so a fit that is killed
after epoch ``k`` and resumed from it ends, on CPU, with exactly the same weights as one
that ran through.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from mbrl.errors import MbrlError
from mbrl.types import TransitionBatch

ArrayLike = Tensor | np.ndarray
LogFn = Callable[[int, dict[str, float]], None]
CheckpointFn = Callable[[dict[str, Any]], None]

STATE_VERSION = 1
# rows per holdout evaluation call: bounds the (E, rows, hidden) activations
_EVAL_CHUNK = 8192


class TrainableEnsemble(Protocol):
    """What :class:`ModelTrainer` needs from a model (see ``mbrl.models.ensemble``)."""

    obs_dim: int
    act_dim: int
    num_members: int
    elite_idx: Tensor

    def parameters(self) -> Any: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> Any: ...
    def fit_normalizer(self, obs: Tensor, act: Tensor, targets: Tensor | None = None) -> None: ...
    def make_targets(
        self,
        obs: Tensor,
        act: Tensor,
        rew: Tensor,
        next_obs: Tensor,
        terminated: Tensor | None = None,
    ) -> Tensor: ...
    def loss(self, obs: Tensor, act: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]: ...
    def mse(self, obs: Tensor, act: Tensor, targets: Tensor) -> Tensor: ...
    def member_state(self, i: int) -> dict[str, Tensor]: ...
    def load_member_state(self, i: int, state: dict[str, Tensor]) -> None: ...
    def set_elites(self, idx: Tensor | list[int]) -> None: ...


@dataclass
class TrainerConfig:
    """Hyperparameters of :class:`ModelTrainer` (defaults: MBPO/PETS)."""

    lr: float = 1e-3  # Adam
    batch_size: int = 256  # transitions per member per gradient step
    holdout_ratio: float = 0.2
    max_holdout: int = 5000  # MBPO code caps the holdout set
    patience: int = 5  # epochs with no member improving before stopping
    improvement_threshold: float = 0.01  # relative holdout-MSE drop that counts as improving
    max_epochs: int | None = None  # None: until early stopping
    bootstrap: bool = True  # per-member bootstrap resample; False: per-member permutations
    max_train_seconds: float | None = None  # wall-clock budget of one fit
    max_grad_steps: int | None = None  # gradient-step budget of one fit
    seed: int = 0


@dataclass
class FitResult:
    """Summary of one :meth:`ModelTrainer.fit`.

    Attributes:
        epochs: epochs run in this fit (a budget-cut last epoch counts).
        train_loss: mean training loss of the last epoch.
        holdout_mse_per_member: ``E`` holdout MSEs of the restored (best) weights.
        elite_idx: the chosen elites, best first.
        stopped_early: stopped by ``patience`` (not by a budget or ``max_epochs``).
        wall_time: seconds spent in this fit (all resumed parts together).
        stop_reason: ``"patience"``, ``"max_epochs"``, ``"max_grad_steps"`` or
            ``"max_train_seconds"``.
        best_epochs: for each member, the epoch (1-based) of its restored snapshot.
        grad_steps: gradient steps taken.
        num_train, num_holdout: sizes of the two splits.
    """

    epochs: int
    train_loss: float
    holdout_mse_per_member: list[float]
    elite_idx: list[int]
    stopped_early: bool
    wall_time: float
    stop_reason: str = ""
    best_epochs: list[int] = field(default_factory=list)
    grad_steps: int = 0
    num_train: int = 0
    num_holdout: int = 0


def holdout_split(
    n: int, holdout_ratio: float, max_holdout: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Random disjoint ``(train_idx, holdout_idx)`` over ``range(n)``.

    The holdout has ``min(int(n * holdout_ratio), max_holdout)`` rows (at least one when
    ``holdout_ratio > 0``); with ``holdout_ratio == 0`` it is empty.
    """
    if not 0.0 <= holdout_ratio < 1.0:
        raise MbrlError(f"TrainerConfig.holdout_ratio must be in [0, 1), got {holdout_ratio}.")
    perm = torch.randperm(n, generator=generator)
    n_holdout = 0
    if holdout_ratio > 0:
        n_holdout = max(1, min(int(n * holdout_ratio), max_holdout))
    if n - n_holdout < 1:
        raise MbrlError(
            f"model fit needs at least one training transition after the holdout split, "
            f"got {n} transitions with holdout_ratio={holdout_ratio}; collect more data."
        )
    return perm[n_holdout:], perm[:n_holdout]


def _check_config(cfg: TrainerConfig) -> None:
    def positive(value: float | None, minimum: float, strict: bool = False) -> bool:
        return value is None or (value > minimum if strict else value >= minimum)

    rules = {
        "lr": (positive(cfg.lr, 0, strict=True), "> 0"),
        "batch_size": (positive(cfg.batch_size, 1), ">= 1"),
        "max_holdout": (positive(cfg.max_holdout, 1), ">= 1"),
        "patience": (positive(cfg.patience, 1), ">= 1"),
        "improvement_threshold": (positive(cfg.improvement_threshold, 0), ">= 0"),
        "max_epochs": (positive(cfg.max_epochs, 0), ">= 0 or None"),
        "max_grad_steps": (positive(cfg.max_grad_steps, 1), ">= 1 or None"),
        "max_train_seconds": (positive(cfg.max_train_seconds, 0, strict=True), "> 0 or None"),
    }
    for name, (ok, rule) in rules.items():
        if not ok:
            raise MbrlError(f"TrainerConfig.{name} must be {rule}, got {getattr(cfg, name)}.")


def budget_reached(cfg: Any, epoch: int | None, grad_steps: int, seconds: float) -> str:
    """The first used-up budget of a fit config with ``max_epochs``, ``max_grad_steps``
    and ``max_train_seconds`` (``epoch=None``: mid-epoch, epochs not checked), or ``""``."""
    if epoch is not None and cfg.max_epochs is not None and epoch >= cfg.max_epochs:
        return "max_epochs"
    if cfg.max_grad_steps is not None and grad_steps >= cfg.max_grad_steps:
        return "max_grad_steps"
    if cfg.max_train_seconds is not None and seconds >= cfg.max_train_seconds:
        return "max_train_seconds"
    return ""


def clone_state(state: dict[str, Any]) -> dict[str, Any]:
    """A state dict with every tensor detached and copied (for snapshots and checkpoints)."""
    return {k: v.detach().clone() if isinstance(v, Tensor) else v for k, v in state.items()}


class ModelTrainer:
    """Trains a :class:`~mbrl.models.ensemble.ProbabilisticEnsemble` (or any model with
    the same ``loss / mse / member_state`` interface) on a set of transitions.

    The Adam optimizer lives as long as the trainer, so repeated fits (MBPO refits every
    250 env steps) continue from the previous moments, as in the reference code.

    Args:
        model: the ensemble; it is trained in place.
        cfg: hyperparameters (``None``: defaults).
        device: where the training data are put (default: the model's device); move the
            model there first.
    """

    def __init__(
        self,
        model: TrainableEnsemble,
        cfg: TrainerConfig | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.cfg = cfg if cfg is not None else TrainerConfig()
        _check_config(self.cfg)
        self.model = model
        if device is None:
            device = next(iter(model.parameters())).device
        self.device = torch.device(device)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=self.cfg.lr)
        self.total_epochs = 0  # over all fits of this trainer: the step given to log_fn
        self._state: dict[str, Any] | None = None  # end of the last finished epoch
        self._pending_resume: dict[str, Any] | None = None

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The trainer's state at the end of the last finished epoch (``torch.save``-able).

        Keys: ``model`` (weights then), ``optimizer``, ``train_idx``, ``holdout_idx``,
        ``bootstrap_idx``, ``epoch``, ``best_losses``, ``best_epochs``, ``snapshots``,
        ``epochs_since_improvement``, ``generator``, ``grad_steps``, ``elapsed``,
        ``stop_reason`` (``""`` while the fit would go on), ...
        """
        if self._state is not None:
            return self._state
        # never fitted: only the optimizer and the epoch counter are meaningful
        return {
            "version": STATE_VERSION,
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "total_epochs": self.total_epochs,
            "in_fit": False,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`: the optimizer and epoch counter now; a fit that was
        still running (interrupted) resumes at the next :meth:`fit` call."""
        if state.get("version") != STATE_VERSION:
            raise MbrlError(
                f"model trainer state has version {state.get('version')!r}, this mbrl reads "
                f"version {STATE_VERSION}; start the model fit afresh."
            )
        self.optimizer.load_state_dict(state["optimizer"])
        self.total_epochs = int(state["total_epochs"])
        in_fit = bool(state.get("in_fit"))
        self._state = state if in_fit else None
        # a finished fit is not resumed: the next fit (e.g. on more data) starts afresh,
        # keeping only the optimizer's moments, as an uninterrupted trainer would
        self._pending_resume = state if in_fit and not state.get("stop_reason") else None

    # -- fitting -------------------------------------------------------------------------
    def fit(
        self,
        obs: ArrayLike | TransitionBatch,
        act: ArrayLike | None = None,
        rew: ArrayLike | None = None,
        next_obs: ArrayLike | None = None,
        terminated: ArrayLike | None = None,
        *,
        log_fn: LogFn | None = None,
        progress: bool = True,
        checkpoint_fn: CheckpointFn | None = None,
        resume_state: dict[str, Any] | None = None,
    ) -> FitResult:
        """Fit the model on ``N`` transitions (or one :class:`~mbrl.types.TransitionBatch`).

        Args:
            obs: ``(N, O)``; act: ``(N, A)``; rew: ``(N,)``; next_obs: ``(N, O)``;
                terminated: ``(N,)`` (used only by models that learn termination).
            log_fn: called after every epoch as ``log_fn(step, metrics)`` with ``step`` the
                trainer's cumulative epoch count and metrics ``model/train_loss``,
                ``model/holdout_mse``, ``model/holdout_mse_member_{i}``, ...
            progress: show a progress bar (epoch, train loss, holdout MSE, epochs since
                the last improvement).
            checkpoint_fn: called with :meth:`state_dict` after every epoch, and on
                KeyboardInterrupt (after restoring the best snapshots, before re-raising).
            resume_state: a :meth:`state_dict` of a fit on the same data, continued from
                its last finished epoch (``max_epochs`` and budgets are checked anew, so a
                fit stopped by them can be extended; one stopped by patience just
                returns). Same as :meth:`load_state_dict` before ``fit``.

        Raises:
            MbrlError: bad shapes, non-finite data, or a loss that became NaN/inf.
        """
        if isinstance(obs, TransitionBatch):
            batch = obs
            obs, act, rew, next_obs = batch.obs, batch.act, batch.rew, batch.next_obs
            terminated = batch.terminated if terminated is None else terminated
        if act is None or rew is None or next_obs is None:
            raise MbrlError("ModelTrainer.fit needs obs, act, rew and next_obs (or a batch).")
        o = self._as_tensor(obs, "obs")
        a = self._as_tensor(act, "act")
        r = self._as_tensor(rew, "rew")
        no = self._as_tensor(next_obs, "next_obs")
        term = None if terminated is None else self._as_tensor(terminated, "terminated")
        self._check_shapes(o, a, r, no, term)
        if not getattr(self.model, "learned_termination", False):
            term = None
        targets = self.model.make_targets(o, a, r, no, term)
        # one (N, O + A + D) table, so each minibatch is a single gather
        data = torch.cat([o, a, targets], dim=-1)
        del o, a, r, no, term, targets

        resume = self._pending_resume
        if resume_state is not None:  # explicit: resume even a finished fit (e.g. more epochs)
            self.load_state_dict(resume_state)
            resume = resume_state if resume_state.get("in_fit") else None
        self._pending_resume = None
        return self._run(data, resume, log_fn, progress, checkpoint_fn)

    def _as_tensor(self, x: ArrayLike, name: str) -> Tensor:
        t = torch.as_tensor(x, device=self.device)
        t = t.to(torch.float32)
        if not torch.isfinite(t).all():
            bad = (~torch.isfinite(t)).reshape(t.shape[0], -1).any(dim=1).nonzero().flatten()
            raise MbrlError(
                f"model fit: '{name}' has NaN/inf in {bad.numel()} rows (first rows: "
                f"{bad[:5].tolist()}); drop or fix those transitions before fitting."
            )
        return t

    def _check_shapes(
        self, o: Tensor, a: Tensor, r: Tensor, no: Tensor, term: Tensor | None
    ) -> None:
        n = o.shape[0]
        od, ad = self.model.obs_dim, self.model.act_dim
        expected = {"obs": (n, od), "act": (n, ad), "rew": (n,), "next_obs": (n, od)}
        got = {"obs": o, "act": a, "rew": r, "next_obs": no}
        if term is not None:
            expected["terminated"], got["terminated"] = (n,), term
        for name, shape in expected.items():
            if tuple(got[name].shape) != shape:
                raise MbrlError(
                    f"model fit: '{name}' has shape {tuple(got[name].shape)}, expected "
                    f"{shape} (N={n} transitions, obs_dim={od}, act_dim={ad}); check the "
                    "dataset or the model's obs/act dims."
                )

    def _run(
        self,
        data: Tensor,
        resume: dict[str, Any] | None,
        log_fn: LogFn | None,
        progress: bool,
        checkpoint_fn: CheckpointFn | None,
    ) -> FitResult:
        cfg, model = self.cfg, self.model
        E = model.num_members
        O, A = model.obs_dim, model.act_dim
        n = data.shape[0]
        gen = torch.Generator().manual_seed(cfg.seed)

        if resume is not None:
            if int(resume["num_samples"]) != n:
                raise MbrlError(
                    f"cannot resume the model fit: its checkpoint was made on "
                    f"{resume['num_samples']} transitions, this fit got {n}; resume on the "
                    "same data or start the fit afresh."
                )
            train_idx = resume["train_idx"]
            holdout_idx = resume["holdout_idx"]
            boot_idx = resume["bootstrap_idx"]
            model.load_state_dict(resume["model"])
            gen.set_state(resume["generator"])
            epoch = int(resume["epoch"])
            grad_steps = int(resume["grad_steps"])
            elapsed = float(resume["elapsed"])
            best = list(resume["best_losses"])
            best_epochs = list(resume["best_epochs"])
            snapshots = list(resume["snapshots"])
            since_improved = int(resume["epochs_since_improvement"])
            train_loss = float(resume["train_loss"])
            # budgets and max_epochs are re-checked below (they may have been raised)
            stop_reason = "patience" if resume["stop_reason"] == "patience" else ""
        else:
            train_idx, holdout_idx = holdout_split(n, cfg.holdout_ratio, cfg.max_holdout, gen)
            n_train = train_idx.numel()
            if cfg.bootstrap:  # drawn once per fit; reshuffled every epoch (MBPO code)
                boot_idx = torch.randint(n_train, (E, n_train), generator=gen)
            else:
                boot_idx = None
            epoch, grad_steps, elapsed = 0, 0, 0.0
            best = [math.inf] * E
            best_epochs = [0] * E
            snapshots = [None] * E
            since_improved = 0
            train_loss = math.nan
            stop_reason = ""

        train_data = data[train_idx.to(self.device)]
        if resume is None:  # statistics of the training split only
            model.fit_normalizer(
                train_data[:, :O], train_data[:, O : O + A], train_data[:, O + A :]
            )
        if holdout_idx.numel() > 0:
            holdout_data = data[holdout_idx.to(self.device)]
        else:  # no holdout: measure on (a capped part of) the training split
            holdout_data = train_data[: cfg.max_holdout]
        del data
        n_train = train_data.shape[0]
        boot_dev = None if boot_idx is None else boot_idx.to(self.device)
        num_batches = math.ceil(n_train / cfg.batch_size)

        # weights before this fit's first step: the fallback for members never snapshotted
        start_members = [model.member_state(i) for i in range(E)] if resume is None else None

        def restore_best() -> list[int]:
            """Each member back to its own best snapshot; elites = lowest best MSE first."""
            for i in range(E):
                snap = snapshots[i]
                if snap is None and start_members is not None:
                    snap = start_members[i]
                if snap is not None:
                    model.load_member_state(i, snap)
            elites = sorted(range(E), key=lambda i: best[i])[: model.elite_idx.numel()]
            if any(s is not None for s in snapshots):
                model.set_elites(elites)
            return elites

        def make_state() -> dict[str, Any]:
            return {
                "version": STATE_VERSION,
                "in_fit": True,
                "num_samples": n,
                "train_idx": train_idx,
                "holdout_idx": holdout_idx,
                "bootstrap_idx": boot_idx,
                "model": clone_state(model.state_dict()),
                "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                "generator": gen.get_state(),
                "epoch": epoch,
                "total_epochs": self.total_epochs,
                "grad_steps": grad_steps,
                "elapsed": elapsed,
                "best_losses": list(best),
                "best_epochs": list(best_epochs),
                "snapshots": list(snapshots),  # member snapshots are never mutated
                "epochs_since_improvement": since_improved,
                "train_loss": train_loss,
                "stop_reason": stop_reason,
            }

        bar = tqdm(
            total=cfg.max_epochs,
            initial=epoch,
            desc="model fit",
            unit="epoch",
            disable=not progress,
            dynamic_ncols=True,
        )
        if resume is None:  # an interrupt during the first epoch resumes from here
            self._state = make_state()
        t_start = time.perf_counter() - elapsed
        try:
            while not stop_reason:
                stop_reason = budget_reached(cfg, epoch, grad_steps, elapsed)
                if stop_reason:
                    break
                t_epoch = time.perf_counter()
                # one (E, n_train) index table per epoch; minibatches are column slices
                order = torch.argsort(torch.rand(E, n_train, generator=gen), dim=1)
                epoch_idx = order if boot_dev is None else boot_dev.gather(1, order.to(self.device))
                epoch_idx = epoch_idx.to(self.device)
                loss_sum, member_sum, batches_done = 0.0, torch.zeros(E), 0
                for b in range(num_batches):
                    rows = train_data[epoch_idx[:, b * cfg.batch_size : (b + 1) * cfg.batch_size]]
                    loss, per_member = model.loss(
                        rows[..., :O], rows[..., O : O + A], rows[..., O + A :]
                    )
                    loss_value = float(loss.item())
                    if not math.isfinite(loss_value):
                        restore_best()
                        raise MbrlError(
                            f"model loss became {'NaN' if math.isnan(loss_value) else 'inf'} "
                            f"at epoch {epoch + 1}, batch {b + 1}; "
                            "kept the last good weights (each member's best holdout snapshot); "
                            f"try a lower lr (now {cfg.lr}) or check the data for NaN/inf."
                        )
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self.optimizer.step()
                    grad_steps += 1
                    batches_done += 1
                    loss_sum += loss_value
                    member_sum += per_member.float().cpu()
                    stop_reason = budget_reached(
                        cfg, None, grad_steps, time.perf_counter() - t_start
                    )
                    if stop_reason:
                        break
                train_seconds = time.perf_counter() - t_epoch
                epoch += 1
                self.total_epochs += 1
                train_loss = loss_sum / batches_done

                holdout = self._holdout_mse(holdout_data, O, A)
                improved = False
                for i in range(E):
                    h = float(holdout[i])
                    # relative drop > threshold; written so that best = inf always improves
                    if h < best[i] * (1.0 - cfg.improvement_threshold):
                        best[i], best_epochs[i] = h, epoch
                        snapshots[i] = model.member_state(i)
                        improved = True
                since_improved = 0 if improved else since_improved + 1
                if not stop_reason and since_improved >= cfg.patience:
                    stop_reason = "patience"
                elapsed = time.perf_counter() - t_start

                metrics = {
                    "model/train_loss": train_loss,
                    "model/train_member_loss": float(member_sum.mean()) / batches_done,
                    "model/holdout_mse": float(holdout.mean()),
                    "model/holdout_mse_best": float(min(best)),
                    "model/epochs_since_improvement": float(since_improved),
                    "model/epoch": float(epoch),
                    "model/grad_steps": float(grad_steps),
                    "model/epoch_seconds": train_seconds,
                    "model/holdout_seconds": time.perf_counter() - t_epoch - train_seconds,
                }
                for i in range(E):
                    metrics[f"model/holdout_mse_member_{i}"] = float(holdout[i])
                if log_fn is not None:
                    log_fn(self.total_epochs, metrics)
                bar.set_postfix(
                    loss=f"{train_loss:.4g}",
                    holdout_mse=f"{float(holdout.mean()):.4g}",
                    since_best=since_improved,
                    refresh=False,
                )
                bar.update(1)
                self._state = make_state()
                if checkpoint_fn is not None:
                    checkpoint_fn(self._state)
        except KeyboardInterrupt:
            bar.close()
            restore_best()
            if checkpoint_fn is not None:
                checkpoint_fn(self.state_dict())
            raise
        except BaseException:
            bar.close()
            raise
        bar.close()
        # the final state records why the fit stopped (a copy: checkpoint_fn got the other)
        assert self._state is not None and self._state["epoch"] == epoch
        self._state = {**self._state, "stop_reason": stop_reason}

        elites = restore_best()
        return FitResult(
            epochs=epoch,
            train_loss=train_loss,
            holdout_mse_per_member=list(best),
            elite_idx=elites,
            stopped_early=stop_reason == "patience",
            wall_time=time.perf_counter() - t_start,
            stop_reason=stop_reason,
            best_epochs=list(best_epochs),
            grad_steps=grad_steps,
            num_train=n_train,
            num_holdout=int(holdout_idx.numel()),
        )

    @torch.no_grad()
    def _holdout_mse(self, holdout: Tensor, O: int, A: int) -> Tensor:
        """Per-member MSE ``(E,)`` on ``holdout (M, O + A + D)``, in chunks of rows."""
        total: Tensor | None = None
        for c0 in range(0, holdout.shape[0], _EVAL_CHUNK):
            rows = holdout[c0 : c0 + _EVAL_CHUNK]
            mse = self.model.mse(rows[:, :O], rows[:, O : O + A], rows[:, O + A :]) * rows.shape[0]
            total = mse if total is None else total + mse
        assert total is not None
        return (total / holdout.shape[0]).float().cpu()


__all__ = ["FitResult", "ModelTrainer", "TrainerConfig", "holdout_split"]
