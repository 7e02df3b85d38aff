"""Synthetic run directories for the table/plot tests (``from synthetic_runs import ...``).

Each is laid out exactly as ``mbrl train`` writes it: ``config.yaml`` (agent_name,
agent, run), a long-format ``metrics.csv`` and, for finished runs, ``summary.json``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml


def write_run(
    root: Path,
    agent: str,
    env: str,
    seed: int,
    curve: Sequence[tuple[int, float]],
    *,
    dataset: str | None = None,
    refs: tuple[float, float] | None = None,
    agent_cfg: dict[str, Any] | None = None,
    run_cfg: dict[str, Any] | None = None,
    finished: bool = True,
    name: str = "",
) -> Path:
    """A run whose evaluations are ``curve`` ((step, return) pairs); the final
    evaluation is the last pair. Returns the run directory."""
    task = dataset or env
    path = root / task.replace(":", "_") / agent / f"{seed}-20260101-000000{name}"
    path.mkdir(parents=True)
    total = curve[-1][0]
    run = {
        "env": env,
        "dataset": dataset,
        "seed": seed,
        "device": "cpu",
        "total_steps": total,
        "eval_every": curve[0][0],
        "eval_episodes": 5,
        "run_root": str(root),
        "run_name": None,
        "torch_threads": 1,
        "progress": False,
        "tensorboard": False,
    } | (run_cfg or {})
    config = {"agent_name": agent, "agent": agent_cfg or {"lr": 0.001}, "run": run}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    with (path / "metrics.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("step", "wall_time", "key", "value"))
        for i, (step, ret) in enumerate(curve):
            w.writerow((step, float(i), "train/loss", 1.0))
            w.writerow((step, float(i), "eval/return", repr(float(ret))))
            w.writerow((step, float(i), "eval/return_std", 0.0))
    if finished:
        final_ret = float(curve[-1][1])
        summary: dict[str, Any] = {
            "agent": agent,
            "env": env,
            "dataset": dataset,
            "seed": seed,
            "total_steps": total,
            "final": {"eval/return": final_ret, "eval/return_std": 0.0},
            "wall_time_s": 1.0,
        }
        if refs is not None:
            summary["normalized_score"] = 100.0 * (final_ret - refs[0]) / (refs[1] - refs[0])
            summary["ref_scores"] = list(refs)
        (path / "summary.json").write_text(json.dumps(summary))
    return path
