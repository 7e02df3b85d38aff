"""Run directories and metric logging.

Layout of one run::

    runs/<env>/<agent>/<seed>-<timestamp>[-<name>]/
        config.yaml      fully resolved config (+ the command line that made it)
        metrics.csv      long format: step, wall_time, key, value
        events.out.*     TensorBoard scalars (same keys as metrics.csv)
        checkpoints/     atomic checkpoints (see mbrl.checkpoint)
        summary.json     written at the end: final evaluation, normalized score,
                         wall time, commit, versions
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mbrl.config import save_yaml, write_atomic
from mbrl.errors import MbrlError

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoints"
METRICS_HEADER = ("step", "wall_time", "key", "value")


def _safe(part: str) -> str:
    """Path-safe version of an env/agent/dataset name (``d4rl:hopper-medium-v2`` ok)."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", part).strip("_") or "_"


class RunDir:
    """One run's directory: paths, config, summary."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, root: Path, env: str, agent: str, seed: int, name: str | None = None) -> RunDir:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        leaf = f"{seed}-{stamp}" + (f"-{_safe(name)}" if name else "")
        path = Path(root) / _safe(env) / _safe(agent) / leaf
        n = 1
        while path.exists():  # two runs started in the same second
            n += 1
            path = path.with_name(f"{leaf}.{n}")
        path.mkdir(parents=True)
        return cls(path)

    @classmethod
    def open(cls, path: Path | str) -> RunDir:
        """An existing run directory (for ``--resume`` or ``mbrl eval``)."""
        path = Path(path)
        if not (path / CONFIG_FILE).is_file():
            raise MbrlError(
                f"'{path}' is not a run directory (no {CONFIG_FILE}); pass the folder "
                "that holds config.yaml, e.g. runs/HalfCheetah-v5/pets/0-20260101-120000."
            )
        return cls(path)

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY_FILE

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    def save_config(self, cfg: Any) -> None:
        header = "# Resolved config of this run.\n# command: " + shlex.join(
            [Path(sys.argv[0]).name, *sys.argv[1:]]
        )
        save_yaml(cfg, self.config_path, header=header)

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_atomic(self.summary_path, json.dumps(summary, indent=2, default=_json_default) + "\n")

    def read_summary(self) -> dict[str, Any] | None:
        if not self.summary_path.is_file():
            return None
        data: dict[str, Any] = json.loads(self.summary_path.read_text())
        return data

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


class MetricsLogger:
    """Appends scalars to ``metrics.csv`` (long format) and TensorBoard.

    Keys are stable names such as ``eval/return``, ``train/critic_loss``,
    ``model/holdout_mse``, ``time/sps``. On resume the CSV is appended to and the
    wall clock continues from its last row.
    """

    def __init__(self, run_dir: RunDir, tensorboard: bool = True) -> None:
        self.path = run_dir.metrics_path
        self._offset = 0.0
        # an empty file is new too: a run killed before its first row left only that
        new = not self.path.exists() or self.path.stat().st_size == 0
        if not new:
            self._offset = _last_wall_time(self.path)
        self._file = self.path.open("a", newline="")
        self._csv = csv.writer(self._file)
        if new:
            self._csv.writerow(METRICS_HEADER)
            self._file.flush()  # on disk now, whether or not a row ever follows
        self._start = time.perf_counter()
        self._tb: Any = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir.path))

    @property
    def wall_time(self) -> float:
        return self._offset + time.perf_counter() - self._start

    def log(self, step: int, metrics: dict[str, float]) -> None:
        wall = round(self.wall_time, 3)
        for key, value in metrics.items():
            value = float(value)
            self._csv.writerow((step, wall, key, repr(value) if math.isfinite(value) else value))
            if self._tb is not None:
                self._tb.add_scalar(key, value, step)
        self._file.flush()

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _last_wall_time(path: Path) -> float:
    last = 0.0
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            try:
                last = max(last, float(row["wall_time"]))
            except (KeyError, TypeError, ValueError):
                continue
    return last


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``metrics.csv`` as dicts with typed values."""
    with Path(path).open(newline="") as f:
        return [
            {
                "step": int(r["step"]),
                "wall_time": float(r["wall_time"]),
                "key": r["key"],
                "value": float(r["value"]),
            }
            for r in csv.DictReader(f)
        ]


# -- provenance --------------------------------------------------------------------
def git_commit(paths: Sequence[str] = ()) -> str | None:
    """Commit of the source tree this package runs from, ``+dirty`` if it is modified
    (only ``paths`` count when given, e.g. the files a benchmark measures)."""
    src = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--", *paths],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "") if commit else None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), for benchmark reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU model"


def script_command(script: str, argv: Sequence[str] | None = None) -> str:
    """How a script was run, as typed from the repository root (for results files)."""
    args = sys.argv[1:] if argv is None else list(argv)
    return shlex.join([os.path.relpath(sys.executable), os.path.relpath(script), *args])


def versions() -> dict[str, str]:
    """Versions of Python and the libraries that shape results."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("mbrl-framework", "torch", "numpy", "gymnasium", "mujoco", "stable-baselines3"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def machine() -> str:
    return f"{platform.machine()} {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"


def provenance() -> dict[str, Any]:
    return {
        "commit": git_commit(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
