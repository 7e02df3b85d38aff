"""``mbrl plot``: learning curves, aggregate IQM curves and performance profiles.

Three figures, each as PNG and SVG (or PDF), plus ``curves.csv`` with every plotted
value and ``provenance.json``:

* ``learning_curves``: one panel per task, one line per algorithm: the mean over seeds
  of the evaluation return at each evaluation step, with a percentile-bootstrap band
  over seeds. Runs that evaluated at different steps are linearly interpolated onto
  the union of their steps, each only inside its own range.
* ``aggregate_iqm``: per algorithm, the IQM of normalized scores over all runs of all
  tasks at each step (up to the shortest task's last evaluation), with a
  stratified-bootstrap band (Agarwal et al. 2021, arXiv:2108.13264).
* ``performance_profile``: per algorithm, the fraction of runs whose final normalized
  score exceeds tau (averaged over tasks), with a stratified-bootstrap band.

The last two need reference scores (``ref_scores`` in ``summary.json``); without them
only the learning curves are drawn. TensorBoard stays the tool for watching live runs.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mbrl.config import write_atomic
from mbrl.errors import MbrlError
from mbrl.results import stats
from mbrl.results.runs import RETURN_KEY, Run, load_runs
from mbrl.rundir import provenance

# Okabe & Ito's colour-blind-safe palette.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]

PAPER_STYLE: dict[Any, Any] = {
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "legend.fontsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.5,
    "legend.frameon": False,
    "savefig.dpi": 200,
    "savefig.bbox": "tight",
    "svg.fonttype": "none",  # text stays text in SVG
}


def _interp(series: pd.Series, steps: np.ndarray) -> np.ndarray:
    """A run's evaluations at ``steps`` (linear inside its range, NaN outside)."""
    x, y = series.index.to_numpy(dtype=np.float64), series.to_numpy(dtype=np.float64)
    out = np.interp(steps, x, y)
    out[(steps < x[0]) | (steps > x[-1])] = np.nan
    return out


def _seed_band(
    values: np.ndarray, reps: int, ci: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean over runs (rows) of ``values`` ``(runs, steps)`` with a bootstrap band over
    runs; NaNs (a run not reaching a step) are left out. Returns mean, low, high, n."""
    n = np.sum(~np.isnan(values), axis=0)
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(np.where(n > 0, values, 0.0), axis=0)
    mean[n == 0] = np.nan
    idx = rng.integers(0, values.shape[0], size=(reps, values.shape[0]))
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "Mean of empty slice": no run there
        boot = np.nanmean(values[idx], axis=1)  # (reps, steps)
        lo, hi = np.nanpercentile(boot, [50 * (1 - ci), 50 * (1 + ci)], axis=0)
    return mean, lo, hi, n


def learning_curves(
    runs: Sequence[Run], metric: str = RETURN_KEY, reps: int = 2000, ci: float = 0.95, seed: int = 0
) -> pd.DataFrame:
    """Tidy curves: task, algorithm, x (step), mean, low, high, n."""
    rng = np.random.default_rng(seed)
    frames = []
    groups: dict[tuple[str, str], list[pd.Series]] = {}
    for r in runs:
        series = r.evals(metric)
        if len(series):
            groups.setdefault((r.task, r.algorithm), []).append(series)
    for (task, algorithm), series_list in sorted(groups.items()):
        steps = np.unique(np.concatenate([s.index.to_numpy() for s in series_list]))
        values = np.stack([_interp(s, steps.astype(np.float64)) for s in series_list])
        mean, lo, hi, n = _seed_band(values, reps, ci, rng)
        frames.append(
            pd.DataFrame(
                {
                    "kind": "learning_curve",
                    "task": task,
                    "algorithm": algorithm,
                    "x": steps,
                    "mean": mean,
                    "low": lo,
                    "high": hi,
                    "n": n,
                }
            )
        )
    if not frames:
        raise MbrlError(f"no '{metric}' rows in the metrics.csv of these runs; nothing to plot.")
    return pd.concat(frames, ignore_index=True)


def iqm_curves(
    runs: Sequence[Run], metric: str = RETURN_KEY, reps: int = 2000, ci: float = 0.95, seed: int = 0
) -> pd.DataFrame:
    """Per algorithm, IQM of normalized scores over runs and tasks at each step."""
    frames = []
    for algorithm in sorted({r.algorithm for r in runs}):
        by_task: dict[str, list[tuple[pd.Series, Run]]] = {}
        for r in runs:
            if r.algorithm == algorithm and r.ref_scores is not None and len(r.evals(metric)):
                by_task.setdefault(r.task, []).append((r.evals(metric), r))
        if not by_task:
            continue
        last = min(max(s.index.max() for s, _ in lst) for lst in by_task.values())
        steps = np.unique(
            np.concatenate([s.index.to_numpy() for lst in by_task.values() for s, _ in lst])
        )
        steps = steps[steps <= last]
        per_step: dict[int, list[np.ndarray]] = {}
        for lst in by_task.values():
            vals = np.stack(
                [np.asarray(r.normalize(_interp(s, steps.astype(np.float64)))) for s, r in lst]
            )
            for j, step in enumerate(steps):
                col = vals[:, j]
                per_step.setdefault(int(step), []).append(col[~np.isnan(col)])
        rows = []
        for step, per_task in per_step.items():
            if any(a.size == 0 for a in per_task):
                continue  # some task has no run evaluated by then
            lo, hi = stats.bootstrap_ci(per_task, "iqm", reps=reps, ci=ci, seed=seed)
            rows.append(
                (step, stats.aggregate(per_task, "iqm"), lo, hi, sum(a.size for a in per_task))
            )
        if rows:
            df = pd.DataFrame(rows, columns=["x", "mean", "low", "high", "n"])
            df.insert(0, "algorithm", algorithm)
            df.insert(0, "task", f"{len(by_task)} tasks")
            df.insert(0, "kind", "iqm_curve")
            frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def performance_profiles(
    runs: Sequence[Run], reps: int = 2000, ci: float = 0.95, seed: int = 0, points: int = 101
) -> pd.DataFrame:
    """Per algorithm, fraction of runs with final normalized score > tau."""
    finals: dict[str, dict[str, list[float]]] = {}
    for r in runs:
        if not math.isnan(r.normalized_score):
            finals.setdefault(r.algorithm, {}).setdefault(r.task, []).append(r.normalized_score)
    if not finals:
        return pd.DataFrame()
    every = [x for per in finals.values() for xs in per.values() for x in xs]
    lo_t, hi_t = min(every), max(every)
    pad = 0.05 * (hi_t - lo_t or 1.0)
    taus = np.linspace(lo_t - pad, hi_t + pad, points)
    frames = []
    for algorithm, per_task in sorted(finals.items()):
        scores = [np.asarray(v) for _, v in sorted(per_task.items())]
        prof, lo, hi = stats.performance_profile(scores, taus, reps=reps, ci=ci, seed=seed)
        frames.append(
            pd.DataFrame(
                {
                    "kind": "performance_profile",
                    "task": f"{len(scores)} tasks",
                    "algorithm": algorithm,
                    "x": taus,
                    "mean": prof,
                    "low": lo,
                    "high": hi,
                    "n": sum(s.size for s in scores),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _colors(algorithms: Sequence[str]) -> dict[str, str]:
    return {a: PALETTE[i % len(PALETTE)] for i, a in enumerate(sorted(algorithms))}


def _draw(ax: Any, df: pd.DataFrame, colors: dict[str, str], step_plot: bool = False) -> None:
    for algorithm, g in df.groupby("algorithm", sort=True):
        c = colors[str(algorithm)]
        if step_plot:
            ax.step(g["x"], g["mean"], where="post", color=c, label=algorithm)
            ax.fill_between(g["x"], g["low"], g["high"], step="post", color=c, alpha=0.2, lw=0)
        else:
            ax.plot(g["x"], g["mean"], color=c, label=algorithm)
            ax.fill_between(g["x"], g["low"], g["high"], color=c, alpha=0.2, lw=0)


def _legend(fig: Figure, ax: Any, n: int) -> None:
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(n, 4), bbox_to_anchor=(0.5, -0.02))


def _save(fig: Figure, out: Path, name: str, formats: Sequence[str]) -> list[Path]:
    paths = []
    for ext in formats:
        path = out / f"{name}.{ext}"
        tmp = path.with_name(f".{path.name}.tmp")
        fig.savefig(tmp, format=ext)
        tmp.replace(path)  # atomic: a reader never sees half an image
        paths.append(path)
    plt.close(fig)
    return paths


def _x_label(runs: Sequence[Run]) -> str:
    offline = {r.offline for r in runs}
    return "gradient steps" if offline == {True} else "env steps" if offline == {False} else "steps"


def plot_runs(
    paths: Sequence[Path],
    out: Path,
    formats: Sequence[str] = ("png", "svg"),
    metric: str = RETURN_KEY,
    mixed: str = "split",
    reps: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
) -> list[Path]:
    """Draw every figure for the runs below ``paths`` into ``out``; returns the files."""
    if not 0 < ci < 1:
        raise MbrlError(f"--ci {ci}: the confidence level must be between 0 and 1, e.g. 0.95.")
    runs, _ = load_runs(paths, mixed=mixed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    curves = learning_curves(runs, metric, reps, ci, seed)
    iqm = iqm_curves(runs, metric, reps, ci, seed) if metric == RETURN_KEY else pd.DataFrame()
    profiles = (
        performance_profiles(runs, reps, ci, seed) if metric == RETURN_KEY else pd.DataFrame()
    )
    colors = _colors(sorted({r.algorithm for r in runs}))
    written: list[Path] = []
    with plt.rc_context(PAPER_STYLE):
        tasks = sorted(curves["task"].unique())
        ncols = min(3, len(tasks))
        nrows = math.ceil(len(tasks) / ncols)
        fig, axes = plt.subplots(
            nrows, ncols, figsize=(2.4 * ncols + 0.4, 1.9 * nrows + 0.5), squeeze=False
        )
        for ax, task in zip(axes.flat, tasks, strict=False):
            _draw(ax, curves[curves["task"] == task], colors)
            ax.set_title(task)
            ax.set_xlabel(_x_label(runs))
            ax.set_ylabel(metric)
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4), useMathText=True)
        for ax in list(axes.flat)[len(tasks) :]:
            ax.set_visible(False)
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        _legend(fig, axes.flat[0], len(colors))
        written += _save(fig, out, "learning_curves", formats)
        if len(iqm):
            fig, ax = plt.subplots(figsize=(3.4, 2.4))
            _draw(ax, iqm, colors)
            ax.set_xlabel(_x_label(runs))
            ax.set_ylabel("IQM normalized score")
            ax.set_title(f"IQM over {iqm['task'].iloc[0]} ({100 * ci:g}% CI)")
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4), useMathText=True)
            ax.legend()
            written += _save(fig, out, "aggregate_iqm", formats)
        if len(profiles):
            fig, ax = plt.subplots(figsize=(3.4, 2.4))
            _draw(ax, profiles, colors, step_plot=True)
            ax.set_xlabel(r"normalized score $\tau$")
            ax.set_ylabel(r"fraction of runs with score $> \tau$")
            ax.set_ylim(-0.02, 1.02)
            ax.legend()
            written += _save(fig, out, "performance_profile", formats)
    data = pd.concat([curves, iqm, profiles], ignore_index=True)
    csv_path = out / "curves.csv"
    write_atomic(csv_path, data.to_csv(index=False))
    prov_path = out / "provenance.json"
    meta = {**provenance(), "runs": len(runs), "reps": reps, "ci": ci, "metric": metric}
    write_atomic(prov_path, json.dumps(meta, indent=2) + "\n")
    return [*written, csv_path, prov_path]
