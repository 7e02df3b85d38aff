"""Helpers shared by the scripts in ``benchmarks/``: timing and report files.

Benchmarks print JSON and a markdown table and, with ``--out PREFIX``, write
``PREFIX.json`` and ``PREFIX.md``; speeds are compared side by side in one run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mbrl.train import TrainConfig


def timeit(fn: Callable[[], object], min_time: float, sync: Callable[[], None]) -> float:
    """Seconds per call, averaged over a block of calls lasting at least ``min_time``.

    ``sync`` runs after every call (``torch.cuda.synchronize`` on a GPU, a no-op on CPU)
    so that asynchronous kernels are counted.
    """
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        sync()
        elapsed = time.perf_counter() - t0
        if elapsed >= min_time:
            return elapsed / n


@dataclass
class StoppedRun:
    """A training run that a benchmark's agent may end early by raising an exception."""

    stopped: bool  # ended by the stop exception (else: its step budget)
    wall_s: float
    run_dir: Path
    rows: list[dict[str, Any]]  # its metrics.csv rows


def train_until_stopped(
    agent_name: str, cfg: TrainConfig[Any], stop: type[Exception]
) -> StoppedRun:
    """Run ``mbrl.train.train(agent_name, cfg)``, where the (benchmark's own registered)
    agent may raise ``stop`` to end the run early, e.g. at the end of a chosen episode;
    returns how it ended, the wall time, the run directory and its metrics."""
    from mbrl.rundir import read_metrics
    from mbrl.train import train

    t0 = time.perf_counter()
    stopped = False
    try:
        train(agent_name, cfg)
    except stop:
        stopped = True
    wall = time.perf_counter() - t0
    root, seed = Path(cfg.run.run_root), cfg.run.seed
    run_dir = sorted(root.glob(f"*/{agent_name}/{seed}-*"))[-1]
    return StoppedRun(stopped, wall, run_dir, read_metrics(run_dir / "metrics.csv"))


def _write_files(report: dict[str, Any], md: str, out: str | Path) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(report, indent=2) + "\n")
    Path(f"{out}.md").write_text(md)


def write_report(report: dict[str, Any], md: str, out: str | Path | None) -> None:
    """Print ``report`` as JSON and ``md``; with ``out``, also write OUT.json and OUT.md."""
    print(json.dumps(report, indent=2))
    print(md)
    if out:
        _write_files(report, md, out)


def append_run(
    report: dict[str, Any],
    run: dict[str, Any],
    render: Callable[[dict[str, Any]], str],
    out: str | Path | None,
) -> None:
    """Add one finished run to ``report["runs"]``, print it as a JSON line, and with
    ``out`` rewrite OUT.json and OUT.md (``render(report)``) so that partial results
    survive an interrupted benchmark."""
    print(json.dumps(run), flush=True)
    report["runs"].append(run)
    if out:
        _write_files(report, render(report), out)


__all__ = ["StoppedRun", "append_run", "timeit", "train_until_stopped", "write_report"]
