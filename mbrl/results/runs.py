"""Reading run directories for tables and plots.

A run directory (see :mod:`mbrl.rundir`) holds ``config.yaml``, ``metrics.csv`` and,
once finished, ``summary.json``. :func:`load_runs` finds every run under the given
paths; :func:`label_variants` names the algorithm of each run, splitting runs of one
(agent, task) whose configs differ in a semantic field into separately labelled
variants (or refusing them), so that different configs are never averaged together.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from mbrl.errors import MbrlError
from mbrl.rundir import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE

RETURN_KEY = "eval/return"

# Config fields that do not change what a run computes or measures: where it is
# written, how it is displayed, how many threads or which device runs it, how often
# it is checkpointed or logs training scalars, which run's fitted model it reused. Runs
# differing only in these (and in the seed) are seeds of one configuration; any other
# difference makes a variant.
NON_SEMANTIC_FIELDS: frozenset[str] = frozenset(
    {
        "run.seed",
        "run.run_root",
        "run.run_name",
        "run.progress",
        "run.torch_threads",
        "run.device",
        "run.tensorboard",
        "run.checkpoint_every",
        "run.keep_checkpoints",
        "agent.log_every",
        # which run's fitted model was reused (a path per seed) is provenance: the model
        # recipe itself is in the agent's model_* fields, which must match to load it
        "agent.load_dynamics",
    }
)


def _semantic(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without the :data:`NON_SEMANTIC_FIELDS`."""
    return {k: v for k, v in config.items() if k not in NON_SEMANTIC_FIELDS}


@dataclass
class Run:
    """One run directory, read."""

    path: Path
    agent: str
    task: str  # the dataset for offline runs, otherwise the env
    offline: bool
    seed: int
    total_steps: int
    config: dict[str, Any]  # flattened: {"agent.batch_size": 256, "run.seed": 0, ...}
    summary: dict[str, Any] | None  # None while the run is unfinished
    algorithm: str = ""  # agent, plus the variant label when configs differ
    variant: str = ""
    _evals: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def finished(self) -> bool:
        return self.summary is not None

    @property
    def final_return(self) -> float:
        """The final evaluation's mean return (``summary.json``; NaN if unfinished)."""
        if self.summary is None:
            return math.nan
        return float(self.summary.get("final", {}).get(RETURN_KEY, math.nan))

    @property
    def normalized_score(self) -> float:
        if self.summary is None or "normalized_score" not in self.summary:
            return math.nan
        return float(self.summary["normalized_score"])

    @property
    def ref_scores(self) -> tuple[float, float] | None:
        refs = (self.summary or {}).get("ref_scores")
        if not refs or len(refs) != 2:
            return None
        return float(refs[0]), float(refs[1])

    def normalize(self, value: float | np.ndarray) -> float | np.ndarray:
        """D4RL-style ``100 (x - min) / (max - min)`` with this run's reference scores."""
        refs = self.ref_scores
        if refs is None:
            return np.nan * np.asarray(value) if isinstance(value, np.ndarray) else math.nan
        lo, hi = refs
        return 100.0 * (value - lo) / (hi - lo)

    def evals(self, key: str = RETURN_KEY) -> pd.Series:
        """Evaluations over training: ``key`` indexed by step (the last row per step wins,
        since a resumed run logs the steps after its last checkpoint twice)."""
        if self._evals is None:
            self._evals = read_eval_rows(self.path / METRICS_FILE)
        rows = self._evals[self._evals["key"] == key]
        series = rows.groupby("step")["value"].last().sort_index()
        series.name = key
        return series

    def at_budget(self, budget: int, key: str = RETURN_KEY) -> float:
        """The evaluation at the largest step <= ``budget`` (NaN if the run's budget is
        smaller or it has not evaluated by then). Steps are env steps for online runs and
        gradient updates for offline ones."""
        if self.total_steps < budget:
            return math.nan
        series = self.evals(key)
        series = series[series.index <= budget]
        return float(series.iloc[-1]) if len(series) else math.nan


def read_eval_rows(path: Path) -> pd.DataFrame:
    """The ``eval/*`` rows of a ``metrics.csv`` (columns step, key, value)."""
    if not path.is_file():
        return pd.DataFrame({"step": [], "key": [], "value": []})
    try:
        df = pd.read_csv(path, usecols=["step", "key", "value"])
    except (ValueError, pd.errors.ParserError) as exc:
        raise MbrlError(f"{path}: not a metrics file written by mbrl ({exc}).") from None
    df = df[df["key"].astype(str).str.startswith("eval/")]
    return df.astype({"step": "int64", "value": "float64"})


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"agent": {"a": 1}}`` -> ``{"agent.a": 1}``; lists become tuples (hashable)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, list):
            out[name] = tuple(value)
        else:
            out[name] = value
    return out


def read_run(path: Path) -> Run:
    """Read one run directory (``path`` holds ``config.yaml``)."""
    cfg_path = path / CONFIG_FILE
    try:
        data = yaml.safe_load(cfg_path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise MbrlError(f"{cfg_path}: cannot read the run's config ({exc}).") from None
    if not isinstance(data, dict) or "agent_name" not in data or "run" not in data:
        raise MbrlError(f"{cfg_path}: not a config written by 'mbrl train' (no agent_name/run).")
    run_cfg = data["run"]
    summary = None
    if (path / SUMMARY_FILE).is_file():
        try:
            summary = json.loads((path / SUMMARY_FILE).read_text())
        except json.JSONDecodeError as exc:
            raise MbrlError(f"{path / SUMMARY_FILE}: invalid JSON ({exc}).") from None
    dataset = run_cfg.get("dataset")
    return Run(
        path=path,
        agent=str(data["agent_name"]),
        task=str(dataset or run_cfg.get("env")),
        offline=dataset is not None,
        seed=int(run_cfg.get("seed", 0)),
        total_steps=int(run_cfg.get("total_steps", 0)),
        config=flatten({"agent": data.get("agent", {}), "run": run_cfg}),
        summary=summary,
    )


def find_run_dirs(paths: Iterable[Path]) -> list[Path]:
    """Every run directory at or below ``paths`` (folders holding config.yaml and
    metrics.csv or summary.json; a sweep's own ``.sweep`` folder is skipped).

    Symlinked folders are followed (runs gathered into a results folder by links), and a
    run reached by several paths counts once.
    """
    found: dict[str, Path] = {}
    visited: set[str] = set()
    for root in paths:
        root = Path(root)
        if not root.exists():
            raise MbrlError(f"'{root}' does not exist; pass run directories or folders of runs.")
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in visited or ".sweep" in Path(dirpath).parts:
                dirnames[:] = []  # a link cycle, a folder seen before, or a sweep's own files
                continue
            visited.add(real)
            d = Path(dirpath)
            if CONFIG_FILE in filenames and (
                (d / METRICS_FILE).is_file() or (d / SUMMARY_FILE).is_file()
            ):
                found.setdefault(real, d)
    return sorted(found.values())


def _is_training_run(path: Path) -> bool:
    try:
        data = yaml.safe_load((path / CONFIG_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return True  # let read_run report the broken file
    return not isinstance(data, dict) or "agent_name" in data


def load_runs(
    paths: Sequence[Path], mixed: str = "split", finished_only: bool = False
) -> tuple[list[Run], list[Run]]:
    """Runs below ``paths`` with their algorithm labels (see :func:`label_variants`).

    Returns ``(runs, skipped)``: with ``finished_only`` unfinished runs (no
    ``summary.json``) are left out of ``runs`` and returned in ``skipped``.
    """
    dirs = find_run_dirs(paths)
    if not dirs:
        raise MbrlError(
            f"no run directories under {', '.join(map(str, paths))} (a run directory "
            "holds config.yaml and metrics.csv, as written by 'mbrl train')."
        )
    # other commands' run directories (e.g. 'mbrl model eval') have no agent_name
    runs = [read_run(d) for d in dirs if _is_training_run(d)]
    if not runs:
        raise MbrlError(
            f"no training runs under {', '.join(map(str, paths))} (their config.yaml has no "
            "agent_name, so 'mbrl train' did not write them)."
        )
    skipped = [r for r in runs if finished_only and not r.finished]
    runs = [r for r in runs if not (finished_only and not r.finished)]
    if not runs:
        raise MbrlError(
            f"none of the {len(skipped)} runs under {', '.join(map(str, paths))} has finished "
            "(no summary.json); continue them with 'mbrl train --resume RUN_DIR'."
        )
    label_variants(runs, mixed=mixed)
    return runs, skipped


def _short(key: str) -> str:
    return key.split(".", 1)[1] if key.startswith(("agent.", "run.")) else key


def label_variants(runs: list[Run], mixed: str = "split") -> None:
    """Set ``run.variant`` and ``run.algorithm`` in place.

    Runs of one (agent, task) whose configs differ in a field outside
    :data:`NON_SEMANTIC_FIELDS` are variants: with ``mixed="split"`` each variant is
    labelled by the differing fields (``sac [batch_size=512]``); with ``"error"`` a
    :class:`MbrlError` lists the differences. Seeds repeated within one variant are
    also refused (two runs of one seed would count twice).
    """
    if mixed not in {"split", "error"}:
        raise MbrlError(f"mixed='{mixed}': use 'split' or 'error'.")
    groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in runs:
        groups[(run.agent, run.task)].append(run)
    for (agent, task), group in groups.items():
        semantic = [_semantic(r.config) for r in group]
        keys = sorted(set().union(*semantic))
        differing = [k for k in keys if len({repr(s.get(k)) for s in semantic}) > 1]
        if differing and mixed == "error":
            lines = [
                f"  {k}: " + ", ".join(sorted({repr(s.get(k)) for s in semantic}))
                for k in differing
            ]
            raise MbrlError(
                f"runs of {agent} on {task} have different configs, so they are not seeds "
                "of one experiment:\n" + "\n".join(lines) + "\nPass only runs of one config, "
                "or use --mixed split to show each config as its own row."
            )
        seen: dict[tuple[str, int], Path] = {}
        for run, sem in zip(group, semantic, strict=True):
            run.variant = ", ".join(f"{_short(k)}={_fmt(sem.get(k))}" for k in differing)
            run.algorithm = f"{agent} [{run.variant}]" if run.variant else agent
            other = seen.setdefault((run.variant, run.seed), run.path)
            if other != run.path:
                raise MbrlError(
                    f"two runs of {run.algorithm} on {task} with seed {run.seed}: {other} and "
                    f"{run.path}. Remove or move one so each seed counts once."
                )


def _fmt(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ",".join(_fmt(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
