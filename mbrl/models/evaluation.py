"""Open-loop (multi-step) prediction error of a dynamics model on held-out trajectories.

From start points inside held-out trajectories the model is fed the *recorded* actions
and its own predicted observations (no correction from the data), and its predicted
observation after ``h`` steps is compared with the recorded one. One-step error says
little about rollouts: compounding error over the horizons a planner or MBPO/MOPO use
(1–25 steps) is what matters (Janner et al. 2019, §4; Lambert et al. 2022, "Investigating
Compounding Prediction Errors in Learned Dynamics Models").

Definitions used here, for a window starting at row ``s`` of a trajectory of ``T``
transitions:

    * ``pred_0 = obs[s]``; ``pred_{j+1}, rew_j = step_fn(pred_j, act[s + j])``;
    * the error at horizon ``h`` compares ``pred_h`` with ``next_obs[s + h - 1]`` (the
      recorded ``next_obs``, right even on a terminal row), and the predicted reward of the
      ``h``-th step with ``rew[s + h - 1]``;
    * a window counts at horizon ``h`` only if ``s + h <= T``: it never crosses the end of
      its trajectory. Longer horizons therefore average over fewer windows
      (``OpenLoopErrors.num_windows``).
    * normalized MSE divides each dimension's squared error by that dimension's variance
      in the given trajectories' ``next_obs`` (or by ``obs_var``), then averages over
      dimensions: 1.0 is as bad as predicting the data mean.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mbrl.errors import MbrlError

StepFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]

DEFAULT_HORIZONS: tuple[int, ...] = (1, 5, 10, 25)


@dataclass
class OpenLoopErrors:
    """Open-loop errors per horizon (``nan`` where no window fits a horizon).

    Attributes:
        mse: horizon -> MSE of the predicted observation, raw units, mean over dims.
        nmse: horizon -> MSE divided per dimension by the data variance, mean over dims.
        mse_per_dim: horizon -> ``(O,)`` MSE of each observation dimension.
        rew_mse: horizon -> MSE of the predicted reward of that step.
        num_windows: horizon -> number of windows averaged.
    """

    mse: dict[int, float] = field(default_factory=dict)
    nmse: dict[int, float] = field(default_factory=dict)
    mse_per_dim: dict[int, np.ndarray] = field(default_factory=dict)
    rew_mse: dict[int, float] = field(default_factory=dict)
    num_windows: dict[int, int] = field(default_factory=dict)


def _field(traj: Any, name: str) -> np.ndarray:
    value = traj.get(name) if isinstance(traj, Mapping) else getattr(traj, name, None)
    if value is None:
        raise MbrlError(
            f"open-loop evaluation: a trajectory has no '{name}'; trajectories need obs, "
            "act, rew and next_obs arrays (dicts or objects with those attributes)."
        )
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def open_loop_errors_detailed(
    step_fn: StepFn,
    trajectories: Iterable[Any],
    horizons: Sequence[int] = DEFAULT_HORIZONS,
    max_starts: int | None = 2000,
    *,
    seed: int = 0,
    obs_var: np.ndarray | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> OpenLoopErrors:
    """Open-loop errors of ``step_fn`` on ``trajectories`` (see the module docstring).

    Args:
        step_fn: ``(obs (B, O), act (B, A)) -> (next_obs (B, O), rew (B,))`` on tensors;
            called ``max(horizons)`` times, each time on all windows at once.
        trajectories: items with ``obs (T, O)``, ``act (T, A)``, ``rew (T,)`` and
            ``next_obs (T, O)`` arrays (dicts or objects, numpy or torch).
        horizons: the horizons ``h >= 1`` to report.
        max_starts: at most this many start rows, drawn uniformly without replacement
            from all rows of all trajectories (``None``: every row).
        seed: for that draw.
        obs_var: ``(O,)`` per-dimension variance for the normalized MSE (default: the
            variance of the trajectories' ``next_obs``).
        device, dtype: where and in which precision ``step_fn`` is called.
    """
    horizons = sorted({int(h) for h in horizons})
    if not horizons or horizons[0] < 1:
        raise MbrlError(f"open-loop horizons must be integers >= 1, got {list(horizons)}.")
    obs_l, act_l, rew_l, nobs_l, lengths = [], [], [], [], []
    for k, traj in enumerate(trajectories):
        o, a = _field(traj, "obs"), _field(traj, "act")
        r, no = _field(traj, "rew"), _field(traj, "next_obs")
        T = o.shape[0]
        if a.shape[0] != T or r.shape[0] != T or no.shape != o.shape:
            raise MbrlError(
                f"open-loop evaluation: trajectory {k} has obs {o.shape}, act {a.shape}, "
                f"rew {r.shape}, next_obs {no.shape}; they need the same length T and "
                "next_obs the shape of obs."
            )
        if T == 0:
            continue
        obs_l.append(o.reshape(T, -1))
        act_l.append(a.reshape(T, -1))
        rew_l.append(r.reshape(T))
        nobs_l.append(no.reshape(T, -1))
        lengths.append(T)
    if not lengths:
        raise MbrlError("open-loop evaluation got no (non-empty) trajectories.")
    obs_all = np.concatenate(obs_l)
    act_all = np.concatenate(act_l)
    rew_all = np.concatenate(rew_l)
    nobs_all = np.concatenate(nobs_l)
    # for every row: the (global, exclusive) end of its trajectory
    ends = np.repeat(np.cumsum(lengths), lengths)
    n_rows = obs_all.shape[0]

    starts = np.arange(n_rows)
    if max_starts is not None and n_rows > max_starts:
        rng = np.random.default_rng(seed)
        starts = np.sort(rng.choice(n_rows, size=max_starts, replace=False))
    start_ends = ends[starts]

    var = np.var(nobs_all, axis=0) if obs_var is None else np.asarray(obs_var, dtype=np.float64)
    var = np.maximum(var, 1e-12)  # constant dimensions: no division by zero

    def t(x: np.ndarray) -> Tensor:
        return torch.as_tensor(x, device=device, dtype=dtype)

    act_t, rew_t, nobs_t = t(act_all), t(rew_all), t(nobs_all)
    starts_t = torch.as_tensor(starts, device=device)
    last_row = torch.as_tensor(start_ends - 1, device=device)
    pred = t(obs_all[starts])
    result = OpenLoopErrors()
    wanted = set(horizons)
    with torch.no_grad():
        for j in range(horizons[-1]):
            # past its trajectory's end a window is masked out below; clamp only keeps the
            # gather in range
            rows = torch.minimum(starts_t + j, last_row)
            pred, rew_pred = step_fn(pred, act_t[rows])
            h = j + 1
            if h not in wanted:
                continue
            valid = torch.as_tensor(starts + h <= start_ends, device=device)
            count = int(valid.sum())
            result.num_windows[h] = count
            if count == 0:
                nan = float("nan")
                result.mse[h] = result.nmse[h] = result.rew_mse[h] = nan
                result.mse_per_dim[h] = np.full(obs_all.shape[1], np.nan)
                continue
            err = (pred[valid] - nobs_t[rows[valid]]).double().square().mean(dim=0)
            per_dim = err.cpu().numpy()
            rew_err = (rew_pred.reshape(-1)[valid] - rew_t[rows[valid]]).double().square()
            result.mse_per_dim[h] = per_dim
            result.mse[h] = float(per_dim.mean())
            result.nmse[h] = float((per_dim / var).mean())
            result.rew_mse[h] = float(rew_err.mean())
    return result


def open_loop_errors(
    step_fn: StepFn,
    trajectories: Iterable[Any],
    horizons: Sequence[int] = DEFAULT_HORIZONS,
    max_starts: int | None = 2000,
    *,
    normalized: bool = False,
    seed: int = 0,
    obs_var: np.ndarray | None = None,
    device: torch.device | str = "cpu",
) -> dict[int, float]:
    """Horizon -> open-loop observation MSE (``normalized``: divided by the data variance).

    Shorthand for :func:`open_loop_errors_detailed`, which also gives per-dimension and
    reward errors and the number of windows per horizon.
    """
    res = open_loop_errors_detailed(
        step_fn, trajectories, horizons, max_starts, seed=seed, obs_var=obs_var, device=device
    )
    return dict(res.nmse if normalized else res.mse)


def ensemble_mean_step_fn(model: Any) -> StepFn:
    """Deterministic step of an ensemble: the mean over elites of each elite's mean.

    ``model`` is a :class:`~mbrl.models.ensemble.ProbabilisticEnsemble` (``predict``
    returns ``(E, B, out_dim)`` means of ``(Δobs, rew, ...)`` in raw units).
    """
    obs_dim = int(model.obs_dim)

    @torch.no_grad()
    def step(obs: Tensor, act: Tensor) -> tuple[Tensor, Tensor]:
        mean, _ = model.predict(obs, act)  # (E, B, out_dim): every member on every row
        elite = mean.index_select(0, model.elite_idx.to(mean.device)).mean(dim=0)
        return obs + elite[:, :obs_dim].to(obs.dtype), elite[:, obs_dim].to(obs.dtype)

    return step


def format_table(
    results: Mapping[str, Mapping[int, float]], *, title: str = "model", digits: int = 4
) -> str:
    """Markdown table: one row per model, one column per horizon (``h=1``, ``h=5``, ...)."""
    horizons = sorted({h for errs in results.values() for h in errs})
    lines = [
        "| " + " | ".join([title] + [f"h={h}" for h in horizons]) + " |",
        "|" + "---|" * (len(horizons) + 1),
    ]
    for name, errs in results.items():
        cells = [f"{errs[h]:.{digits}g}" if h in errs else "–" for h in horizons]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines) + "\n"


def plot_open_loop(
    results: Mapping[str, Mapping[int, float]],
    path: str | Path,
    *,
    ylabel: str = "open-loop observation MSE",
    title: str | None = None,
) -> Path:
    """Line plot of error vs horizon per model, log-scale y; saved to ``path`` (png/pdf/svg)."""
    # Figure + Agg canvas directly: no pyplot global state, no display needed
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, errs in results.items():
        hs = sorted(h for h in errs if np.isfinite(errs[h]) and errs[h] > 0)
        ax.plot(hs, [errs[h] for h in hs], marker="o", label=name)
    ax.set_yscale("log")
    ax.set_xlabel("horizon (model steps)")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


__all__ = [
    "DEFAULT_HORIZONS",
    "OpenLoopErrors",
    "StepFn",
    "ensemble_mean_step_fn",
    "format_table",
    "open_loop_errors",
    "open_loop_errors_detailed",
    "plot_open_loop",
]
