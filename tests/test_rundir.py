"""Run directories and the long-format metrics log."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from mbrl.errors import MbrlError
from mbrl.rundir import MetricsLogger, RunDir, git_commit, read_metrics, versions


def test_create_layout_and_unique_names(tmp_path: Path) -> None:
    a = RunDir.create(tmp_path, "d4rl:hopper-medium-v2", "ravl", 3, name="try 1")
    b = RunDir.create(tmp_path, "d4rl:hopper-medium-v2", "ravl", 3, name="try 1")
    assert a.path.parent == tmp_path / "d4rl_hopper-medium-v2" / "ravl"
    assert a.path.name.startswith("3-") and a.path.name.endswith("-try_1")
    assert a.path != b.path and a.path.is_dir() and b.path.is_dir()


def test_open_requires_config(tmp_path: Path) -> None:
    with pytest.raises(MbrlError, match="not a run directory"):
        RunDir.open(tmp_path)
    run = RunDir.create(tmp_path, "env", "agent", 0)
    run.save_config({"agent_name": "agent", "run": {"seed": 0}})
    assert RunDir.open(run.path).config_path.is_file()


def test_metrics_long_format_and_resume(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "env", "agent", 0)
    with MetricsLogger(run, tensorboard=False) as log:
        log.log(10, {"eval/return": 1.5, "train/loss": float("nan")})
        log.log(20, {"eval/return": 2.5})
    rows = read_metrics(run.metrics_path)
    assert [(r["step"], r["key"]) for r in rows] == [
        (10, "eval/return"),
        (10, "train/loss"),
        (20, "eval/return"),
    ]
    assert rows[0]["value"] == 1.5 and math.isnan(rows[1]["value"])
    last_wall = rows[-1]["wall_time"]
    with MetricsLogger(run, tensorboard=False) as log:  # resumed: appends, clock continues
        log.log(30, {"eval/return": 3.5})
    rows = read_metrics(run.metrics_path)
    assert len(rows) == 4 and rows[-1]["step"] == 30
    assert rows[-1]["wall_time"] >= last_wall
    assert run.metrics_path.read_text().count("step,wall_time,key,value") == 1


def test_a_run_killed_before_its_first_row_resumes_with_a_header(tmp_path: Path) -> None:
    """The header is on disk at once, and an empty file left by older versions gets one."""
    run = RunDir.create(tmp_path, "env", "agent", 0)
    log = MetricsLogger(run, tensorboard=False)  # killed before logging anything
    assert run.metrics_path.read_text().strip() == "step,wall_time,key,value"
    log.close()
    run.metrics_path.write_text("")  # what a kill before the first flush used to leave
    with MetricsLogger(run, tensorboard=False) as log:
        log.log(5, {"eval/return": 1.0})
    assert [(r["step"], r["value"]) for r in read_metrics(run.metrics_path)] == [(5, 1.0)]


def test_summary_round_trip(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "env", "agent", 0)
    assert run.read_summary() is None
    run.write_summary({"final": {"eval/return": 1.0}, "path": tmp_path})
    assert run.read_summary() == {"final": {"eval/return": 1.0}, "path": str(tmp_path)}


def test_provenance() -> None:
    v = versions()
    assert "python" in v and "torch" in v
    commit = git_commit()
    assert commit is None or len(commit.split("+")[0]) >= 7
