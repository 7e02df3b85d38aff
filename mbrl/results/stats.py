"""Aggregate statistics over runs and tasks, with stratified-bootstrap confidence intervals.

Follows Agarwal et al. (2021), "Deep Reinforcement Learning at the Edge of the
Statistical Precipice" (arXiv:2108.13264), whose ``rliable`` library defines these
estimators. We implement them with numpy instead of calling ``rliable`` because
rliable 1.2 pins ``arch<8`` and arch 7 fails to import next to pandas 3 (checked on
Python 3.11, November 2026); the definitions below match rliable's:

* scores are given per task, one array of per-run (per-seed) scores for each task;
  tasks may have different numbers of runs;
* ``mean``: mean over tasks of the per-task mean score;
* ``median``: median over tasks of the per-task mean score;
* ``iqm``: interquartile mean of all runs of all tasks pooled — the mean of the
  middle 50% after cutting ``floor(0.25 n)`` scores from each end (as
  ``scipy.stats.trim_mean(x, 0.25)``);
* stratified bootstrap: every replicate resamples the runs of each task with
  replacement, independently per task (tasks are the strata, never resampled);
  the CI is the percentile interval of the statistic over replicates;
* probability of improvement ``P(X > Y)``: per task, the Mann–Whitney statistic
  (``1`` when a run of X beats a run of Y, ``1/2`` on a tie), averaged over tasks;
* performance profile: per task, the fraction of runs with score ``> tau``,
  averaged over tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from mbrl.errors import MbrlError

PerTask = Sequence[np.ndarray]  # one 1-D array of per-run scores per task
Batched = list[np.ndarray]  # one (reps, n_runs_of_task) array per task

STATISTICS = ("mean", "median", "iqm")


def _check(per_task: PerTask) -> list[np.ndarray]:
    arrays = [np.asarray(x, dtype=np.float64).ravel() for x in per_task]
    if not arrays or any(a.size == 0 for a in arrays):
        raise MbrlError("aggregate statistics need at least one run for every task.")
    if any(not np.all(np.isfinite(a)) for a in arrays):
        raise MbrlError("aggregate statistics got a non-finite score (NaN/inf).")
    return arrays


def trimmed_mean(x: np.ndarray, cut: float = 0.25, axis: int = -1) -> np.ndarray:
    """Mean after dropping ``floor(cut * n)`` values from each end along ``axis``."""
    x = np.sort(np.asarray(x, dtype=np.float64), axis=axis)
    n = x.shape[axis]
    lo = int(cut * n)
    kept = np.take(x, np.arange(lo, n - lo), axis=axis)
    return np.asarray(kept.mean(axis=axis))


def _batched_stat(name: str) -> Callable[[Batched], np.ndarray]:
    """The statistic ``name`` on replicates: per-task ``(reps, n_t)`` -> ``(reps,)``."""
    if name == "mean":
        return lambda xs: np.stack([x.mean(axis=1) for x in xs], axis=1).mean(axis=1)
    if name == "median":
        return lambda xs: np.median(np.stack([x.mean(axis=1) for x in xs], axis=1), axis=1)
    if name == "iqm":
        return lambda xs: trimmed_mean(np.concatenate(xs, axis=1), 0.25, axis=1)
    raise MbrlError(f"unknown statistic '{name}'; use one of {', '.join(STATISTICS)}.")


def aggregate(per_task: PerTask, stat: str) -> float:
    """Point estimate of ``stat`` (mean, median, iqm) over the per-task run scores."""
    arrays = _check(per_task)
    return float(_batched_stat(stat)([a[None, :] for a in arrays])[0])


def iqm(per_task: PerTask) -> float:
    return aggregate(per_task, "iqm")


def _resample(arrays: list[np.ndarray], reps: int, rng: np.random.Generator) -> Batched:
    """Stratified bootstrap replicates: per task ``(reps, n_t)`` drawn with replacement."""
    return [a[rng.integers(0, a.size, size=(reps, a.size))] for a in arrays]


def _interval(values: np.ndarray, ci: float) -> tuple[float, float]:
    lo, hi = np.percentile(values, [50 * (1 - ci), 50 * (1 + ci)], axis=0)
    return float(lo), float(hi)


def bootstrap_ci(
    per_task: PerTask, stat: str, reps: int = 10_000, ci: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile ``ci`` interval of ``stat`` under the stratified bootstrap."""
    arrays = _check(per_task)
    values = _batched_stat(stat)(_resample(arrays, reps, np.random.default_rng(seed)))
    return _interval(values, ci)


def _poi(xs: Batched, ys: Batched) -> np.ndarray:
    """P(X > Y) on replicates: per task ``(reps, n)`` and ``(reps, m)`` -> ``(reps,)``."""
    per_task = []
    for x, y in zip(xs, ys, strict=True):
        diff = x[:, :, None] - y[:, None, :]  # (reps, n, m)
        per_task.append(((diff > 0) + 0.5 * (diff == 0)).mean(axis=(1, 2)))
    return np.stack(per_task, axis=1).mean(axis=1)


def probability_of_improvement(
    x_per_task: PerTask,
    y_per_task: PerTask,
    reps: int = 10_000,
    ci: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``P(X > Y)`` over the tasks both were run on and its stratified-bootstrap CI.

    Per task only the ordering of scores matters, so raw returns and normalized scores
    give the same value. Returns ``(estimate, low, high)``.
    """
    xs, ys = _check(x_per_task), _check(y_per_task)
    if len(xs) != len(ys):
        raise MbrlError("probability of improvement needs the same tasks for both algorithms.")
    point = float(_poi([a[None, :] for a in xs], [b[None, :] for b in ys])[0])
    rng = np.random.default_rng(seed)
    values = _poi(_resample(xs, reps, rng), _resample(ys, reps, rng))
    return (point, *_interval(values, ci))


def _profile(xs: Batched, taus: np.ndarray) -> np.ndarray:
    """Run-score distribution on replicates: per task ``(reps, n_t)`` -> ``(reps, len(taus))``."""
    return np.stack([(x[:, :, None] > taus).mean(axis=1) for x in xs], axis=0).mean(axis=0)


def performance_profile(
    per_task: PerTask,
    taus: np.ndarray,
    reps: int = 2_000,
    ci: float = 0.95,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fraction of runs scoring above each ``tau`` (averaged over tasks), with CI bands.

    Returns ``(profile, low, high)``, each of shape ``(len(taus),)``.
    """
    arrays = _check(per_task)
    taus = np.asarray(taus, dtype=np.float64)
    point = _profile([a[None, :] for a in arrays], taus)[0]
    values = _profile(_resample(arrays, reps, np.random.default_rng(seed)), taus)
    lo, hi = np.percentile(values, [50 * (1 - ci), 50 * (1 + ci)], axis=0)
    return point, lo, hi
