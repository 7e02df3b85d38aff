"""``mbrl table``: collect run directories into one results table.

Per (task, algorithm): the number of seeds, mean ± sample standard deviation
(``ddof=1``) over seeds of the final evaluation return (``summary.json``: the last
evaluation, not the best), the normalized score where the run knows reference scores,
and the return at fixed step budgets (the evaluation at the largest step <= the budget,
from ``metrics.csv``; env steps for online runs, gradient updates for offline ones).
Aggregate rows per algorithm: mean, median and IQM of normalized scores with 95%
stratified-bootstrap CIs, and optionally the probability that one algorithm improves on
another (see :mod:`mbrl.results.stats`).

Only finished runs (with ``summary.json``) are counted. Runs of one (agent, task)
with different configs become separately labelled rows, or an error with
``mixed="error"`` — never one average.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mbrl.config import write_atomic
from mbrl.errors import MbrlError
from mbrl.results import stats
from mbrl.results.runs import Run, load_runs
from mbrl.rundir import provenance

FORMATS = ("md", "csv", "tex")


@dataclass
class Comparison:
    """``P(a > b)`` over the tasks both algorithms were run on."""

    a: str
    b: str
    tasks: list[str]
    estimate: float
    low: float
    high: float


@dataclass
class ResultsTable:
    per_task: pd.DataFrame
    aggregate: pd.DataFrame
    comparison: Comparison | None
    budgets: list[int]
    reps: int
    ci: float
    skipped: list[Path] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)


def budget_label(budget: int) -> str:
    """``100000`` -> ``100k``, ``1000000`` -> ``1M``."""
    for div, suffix in ((1_000_000, "M"), (1_000, "k")):
        if budget >= div and budget % (div // 10) == 0:
            return f"{budget / div:g}{suffix}"
    return str(budget)


def _mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan, 0
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else math.nan, int(x.size)


def per_task_table(runs: Sequence[Run], budgets: Sequence[int] = ()) -> pd.DataFrame:
    """One row per (task, algorithm): seeds, final return, normalized score, budgets."""
    rows: list[dict[str, Any]] = []
    df = pd.DataFrame({"run": list(runs)})
    df["task"] = [r.task for r in runs]
    df["algorithm"] = [r.algorithm for r in runs]
    for (task, algorithm), group in df.groupby(["task", "algorithm"], sort=True):
        group_runs: list[Run] = list(group["run"])
        mean, std, n = _mean_std([r.final_return for r in group_runs])
        nmean, nstd, nn = _mean_std([r.normalized_score for r in group_runs])
        row: dict[str, Any] = {
            "task": task,
            "algorithm": algorithm,
            "agent": group_runs[0].agent,
            "variant": group_runs[0].variant,
            "seeds": n,
            "return_mean": mean,
            "return_std": std,
            "normalized_mean": nmean,
            "normalized_std": nstd,
            "normalized_n": nn,
        }
        for b in budgets:
            bm, bs, bn = _mean_std([r.at_budget(b) for r in group_runs])
            row |= {f"return@{b}_mean": bm, f"return@{b}_std": bs, f"return@{b}_n": bn}
        rows.append(row)
    return pd.DataFrame(rows)


def _normalized_per_task(runs: Sequence[Run], algorithm: str) -> dict[str, np.ndarray]:
    by_task: dict[str, list[float]] = {}
    for r in runs:
        if r.algorithm == algorithm and not math.isnan(r.normalized_score):
            by_task.setdefault(r.task, []).append(r.normalized_score)
    return {t: np.asarray(v) for t, v in sorted(by_task.items())}


def aggregate_table(
    runs: Sequence[Run], reps: int = 10_000, ci: float = 0.95, seed: int = 0
) -> pd.DataFrame:
    """Per algorithm: mean, median and IQM of normalized scores over its tasks, with
    stratified-bootstrap CIs. Algorithms without normalized scores are left out."""
    rows = []
    for algorithm in sorted({r.algorithm for r in runs}):
        per_task = _normalized_per_task(runs, algorithm)
        if not per_task:
            continue
        scores = list(per_task.values())
        row: dict[str, Any] = {
            "algorithm": algorithm,
            "tasks": len(scores),
            "runs": sum(len(s) for s in scores),
        }
        for stat in stats.STATISTICS:
            lo, hi = stats.bootstrap_ci(scores, stat, reps=reps, ci=ci, seed=seed)
            row |= {stat: stats.aggregate(scores, stat), f"{stat}_low": lo, f"{stat}_high": hi}
        rows.append(row)
    return pd.DataFrame(rows)


def compare(
    runs: Sequence[Run], a: str, b: str, reps: int = 10_000, ci: float = 0.95, seed: int = 0
) -> Comparison:
    """``P(a > b)`` on final returns over the tasks both were run on."""
    known = sorted({r.algorithm for r in runs})
    for name in (a, b):
        if name not in known:
            from mbrl.errors import did_you_mean

            raise MbrlError(
                f"--compare: no finished runs of '{name}'.{did_you_mean(name, known)} "
                f"Algorithms in these runs: {', '.join(known)}."
            )

    def returns(name: str) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for r in runs:
            if r.algorithm == name and not math.isnan(r.final_return):
                out.setdefault(r.task, []).append(r.final_return)
        return out

    ra, rb = returns(a), returns(b)
    tasks = sorted(set(ra) & set(rb))
    if not tasks:
        raise MbrlError(f"--compare: '{a}' and '{b}' share no task; nothing to compare.")
    est, lo, hi = stats.probability_of_improvement(
        [np.asarray(ra[t]) for t in tasks],
        [np.asarray(rb[t]) for t in tasks],
        reps=reps,
        ci=ci,
        seed=seed,
    )
    return Comparison(a, b, tasks, est, lo, hi)


def build_table(
    paths: Sequence[Path],
    budgets: Sequence[int] = (),
    compare_pair: tuple[str, str] | None = None,
    mixed: str = "split",
    reps: int = 10_000,
    ci: float = 0.95,
    seed: int = 0,
) -> ResultsTable:
    """Read the runs below ``paths`` and compute every part of the table."""
    if not 0 < ci < 1:
        raise MbrlError(f"--ci {ci}: the confidence level must be between 0 and 1, e.g. 0.95.")
    if reps < 1:
        raise MbrlError(f"--reps {reps}: need at least one bootstrap replicate.")
    if any(b <= 0 for b in budgets):
        raise MbrlError(f"--budgets {list(budgets)}: step budgets must be positive.")
    runs, skipped = load_runs(paths, mixed=mixed, finished_only=True)
    comparison = compare(runs, *compare_pair, reps=reps, ci=ci, seed=seed) if compare_pair else None
    return ResultsTable(
        per_task=per_task_table(runs, budgets),
        aggregate=aggregate_table(runs, reps=reps, ci=ci, seed=seed),
        comparison=comparison,
        budgets=list(budgets),
        reps=reps,
        ci=ci,
        skipped=[r.path for r in skipped],
        provenance=provenance(),
    )


# -- rendering ---------------------------------------------------------------------
def fmt(x: float) -> str:
    if x is None or math.isnan(x):
        return "–"
    return f"{x:.1f}" if abs(x) >= 100 else f"{x:.3g}" if abs(x) < 0.01 else f"{x:.3f}"


def _pm(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "–"
    return fmt(mean) if math.isnan(std) else f"{fmt(mean)} ± {fmt(std)}"


def _ci(est: float, lo: float, hi: float) -> str:
    return f"{fmt(est)} [{fmt(lo)}, {fmt(hi)}]"


def display_frames(t: ResultsTable) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The per-task and aggregate tables as strings, ready to print."""
    per = pd.DataFrame(
        {
            "task": t.per_task["task"],
            "algorithm": t.per_task["algorithm"],
            "seeds": t.per_task["seeds"].astype(str),
            "final return": [
                _pm(m, s)
                for m, s in zip(t.per_task["return_mean"], t.per_task["return_std"], strict=True)
            ],
        }
    )
    if t.per_task["normalized_n"].sum() > 0:
        per["normalized"] = [
            _pm(m, s)
            for m, s in zip(
                t.per_task["normalized_mean"], t.per_task["normalized_std"], strict=True
            )
        ]
    for b in t.budgets:
        per[f"return @ {budget_label(b)}"] = [
            _pm(m, s)
            for m, s in zip(
                t.per_task[f"return@{b}_mean"], t.per_task[f"return@{b}_std"], strict=True
            )
        ]
    level = f"{100 * t.ci:g}% CI"
    agg = pd.DataFrame()
    if len(t.aggregate):
        agg = pd.DataFrame(
            {
                "algorithm": t.aggregate["algorithm"],
                "tasks": t.aggregate["tasks"].astype(str),
                "runs": t.aggregate["runs"].astype(str),
                **{
                    f"{'IQM' if s == 'iqm' else s} [{level}]": [
                        _ci(e, lo, hi)
                        for e, lo, hi in zip(
                            t.aggregate[s],
                            t.aggregate[f"{s}_low"],
                            t.aggregate[f"{s}_high"],
                            strict=True,
                        )
                    ]
                    for s in stats.STATISTICS
                },
            }
        )
    return per, agg


def _notes(t: ResultsTable) -> list[str]:
    notes = [
        "Final return: the last evaluation of each run (not the best), mean ± sample std "
        "(ddof=1) over seeds.",
    ]
    if t.budgets:
        notes.append(
            "Return @ N: the evaluation at the largest step <= N (env steps online, gradient "
            "updates offline), runs whose budget reaches N."
        )
    if len(t.aggregate):
        notes.append(
            "Normalized score: 100 (R - random) / (expert - random). Aggregates over tasks "
            f"(Agarwal et al. 2021): {100 * t.ci:g}% percentile CIs of a stratified bootstrap "
            f"({t.reps} replicates); IQM pools all runs of all tasks."
        )
    else:
        notes.append("No run has reference scores, so there are no normalized aggregates.")
    if t.comparison is not None:
        c = t.comparison
        notes.append(
            f"P({c.a} > {c.b}) = {_ci(c.estimate, c.low, c.high)} over {len(c.tasks)} task(s) "
            f"({', '.join(c.tasks)}), probability of improvement on final returns."
        )
    if t.skipped:
        notes.append(f"{len(t.skipped)} unfinished run(s) left out (no summary.json).")
    return notes


def _provenance_lines(t: ResultsTable) -> list[str]:
    p = t.provenance
    return [
        f"Command: `{p.get('command')}`",
        f"Commit: {p.get('commit')}",
        f"Date: {p.get('date')}",
        f"Machine: {p.get('machine')}",
    ]


def markdown_table(df: pd.DataFrame) -> str:
    """A pipe table; text columns left-aligned, the others right-aligned."""
    cols = list(df.columns)
    left = {"task", "algorithm"}
    lines = [
        "| " + " | ".join(cols) + " |",
        "|" + "|".join(":---" if c in left else "---:" for c in cols) + "|",
    ]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(str(row[c]).replace("|", "\\|") for c in cols) + " |")
    return "\n".join(lines)


def to_markdown(t: ResultsTable, provenance_footer: bool = True) -> str:
    per, agg = display_frames(t)
    parts = [markdown_table(per)]
    if len(agg):
        parts += ["", "Aggregate normalized scores:", "", markdown_table(agg)]
    parts += ["", *[f"* {n}" for n in _notes(t)]]
    if provenance_footer:
        parts += ["", "  \n".join(_provenance_lines(t))]
    return "\n".join(parts) + "\n"


_TEX_ESCAPE = str.maketrans({c: f"\\{c}" for c in "&%$#_{}"} | {"~": r"\~{}", "^": r"\^{}"})


def latex_table(df: pd.DataFrame) -> str:
    """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``)."""
    cols = list(df.columns)
    spec = "".join("l" if c in {"task", "algorithm"} else "r" for c in cols)

    def cell(x: Any) -> str:
        return str(x).translate(_TEX_ESCAPE).replace("±", r"$\pm$").replace("–", "--")

    lines = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(map(cell, cols)) + r" \\"]
    lines.append(r"\midrule")
    lines += [" & ".join(cell(row[c]) for c in cols) + r" \\" for _, row in df.iterrows()]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


def to_latex(t: ResultsTable) -> str:
    per, agg = display_frames(t)
    parts = [f"% {line}" for line in _provenance_lines(t)]
    parts += [f"% {n}" for n in _notes(t)]
    parts.append(latex_table(per))
    if len(agg):
        parts += ["", latex_table(agg)]
    return "\n".join(parts) + "\n"


def write_table(t: ResultsTable, out: Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write ``out.md`` / ``out.csv`` (+ ``out.aggregate.csv``) / ``out.tex`` and the
    provenance beside them in ``out.provenance.json``, each atomically."""
    bad = sorted(set(formats) - set(FORMATS))
    if bad:
        raise MbrlError(f"unknown table format(s) {', '.join(bad)}; use {', '.join(FORMATS)}.")
    out = Path(out)
    if out.suffix in {".md", ".csv", ".tex"}:
        out = out.with_suffix("")
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []

    def put(path: Path, text: str) -> None:
        write_atomic(path, text)
        written.append(path)

    if "md" in formats:
        put(out.with_name(out.name + ".md"), to_markdown(t))
    if "csv" in formats:
        put(out.with_name(out.name + ".csv"), t.per_task.to_csv(index=False))
        if len(t.aggregate):
            put(out.with_name(out.name + ".aggregate.csv"), t.aggregate.to_csv(index=False))
    if "tex" in formats:
        put(out.with_name(out.name + ".tex"), to_latex(t))
    meta = {
        **t.provenance,
        "bootstrap_reps": t.reps,
        "ci": t.ci,
        "budgets": t.budgets,
        "skipped_unfinished": [str(p) for p in t.skipped],
        "files": [p.name for p in written],
    }
    if t.comparison is not None:
        meta["comparison"] = {
            "a": t.comparison.a,
            "b": t.comparison.b,
            "tasks": t.comparison.tasks,
            "probability_of_improvement": t.comparison.estimate,
            "ci": [t.comparison.low, t.comparison.high],
        }
    put(out.with_name(out.name + ".provenance.json"), json.dumps(meta, indent=2) + "\n")
    return written
