"""`mbrl sweep`: a 2x2 grid of tiny real SAC runs on the point mass, on the local pool and
on a local Ray instance; re-running skips finished runs and resumes unfinished ones; a
crashing run is reported and does not stop the others."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from mbrl.cli import main
from mbrl.errors import MbrlError
from mbrl.results.runs import find_run_dirs
from mbrl.results.sweep import SweepOptions, build_sweep, load_spec, plan
from mbrl.results.table import build_table

# A SAC run of 60 env steps with 16-unit nets: a few seconds, mostly start-up.
TINY = """
name: tiny
agents: [sac]
envs: [PointMass1D-v0]
seeds: [0, 1]
overrides:
  run.total_steps: 60
  run.eval_every: 30
  run.eval_episodes: 1
  run.checkpoint_every: 30
  run.tensorboard: false
  agent: {learning_starts: 30, batch_size: 16, hidden_sizes: [16, 16]}
grid:
  agent.learning_rate: [0.001, 0.003]
resources: {torch_threads: 1, workers: 2}
"""


def sweep_file(tmp_path: Path, text: str = TINY) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(text)
    return path


def report(root: Path) -> list[dict[str, str]]:
    data = json.loads((root / ".sweep" / "last_sweep.json").read_text())
    assert {"commit", "date", "machine", "command"} <= set(data)
    return list(data["results"])


def test_spec_expands_to_cells_with_stable_run_names(tmp_path: Path) -> None:
    opts = SweepOptions(file=sweep_file(tmp_path), run_root=tmp_path / "runs")
    sweep = build_sweep(load_spec(opts))
    assert len(sweep.cells) == 4 and sweep.workers == 2
    names = {c.run_name for c in sweep.cells}
    assert len(names) == 2  # one per grid value; seeds share it
    again = build_sweep(load_spec(opts))
    assert [c.run_name for c in again.cells] == [c.run_name for c in sweep.cells]
    cell = sweep.cells[0]
    assert cell.config["agent"] == {
        "learning_starts": 30,
        "batch_size": 16,
        "hidden_sizes": [16, 16],
        "learning_rate": 0.001,
    }
    assert cell.config["run"]["env"] == "PointMass1D-v0" and cell.config["run"]["progress"] is False
    assert plan(cell) == "start"
    # flags replace the file's lists
    flagged = build_sweep(load_spec(SweepOptions(file=opts.file, seeds=(5,), workers=1)))
    assert {c.seed for c in flagged.cells} == {5} and flagged.workers == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("agents: [sac]\nenvs: [X]\nsedes: [0]\n", "Did you mean 'seeds'"),
        ("agents: [sca]\nenvs: [PointMass1D-v0]\n", "Did you mean 'sac'"),
        ("agents: [sac]\n", "needs tasks"),
        ("agents: [sac]\nenvs: [E]\noverrides: {run.seed: 3}\n", "run.seed are set by the sweep"),
        ("agents: [sac]\nenvs: [E]\noverrides: {batch_size: 3}\n", "must start with 'agent.'"),
        ("agents: [sac]\nenvs: [E]\nseeds: [0, 0]\n", "repeat a seed"),
    ],
)
def test_bad_sweep_files_give_clear_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(MbrlError, match=message):
        build_sweep(load_spec(SweepOptions(file=sweep_file(tmp_path, text))))


def test_local_pool_runs_grid_skips_on_rerun_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "runs"
    args = ["sweep", str(sweep_file(tmp_path)), "--run-root", str(root)]
    assert main(args) == 0
    results = report(root)
    assert sorted(r["status"] for r in results) == ["finished"] * 4
    dirs = find_run_dirs([root])
    assert len(dirs) == 4 and all((d / "summary.json").is_file() for d in dirs)
    t = build_table([root], reps=100).per_task
    # the two learning rates are separate rows of 2 seeds each, never one average
    assert sorted(t["algorithm"]) == ["sac [learning_rate=0.001]", "sac [learning_rate=0.003]"]
    assert list(t["seeds"]) == [2, 2]

    # re-run: nothing is trained again
    mtimes = {d: (d / "summary.json").stat().st_mtime_ns for d in dirs}
    assert main(args) == 0
    assert sorted(r["status"] for r in report(root)) == ["skipped"] * 4
    assert {d: (d / "summary.json").stat().st_mtime_ns for d in dirs} == mtimes

    # an interrupted run (no summary.json) is resumed in its own directory
    victim = dirs[0]
    (victim / "summary.json").unlink()
    assert main(args) == 0
    statuses = sorted(r["status"] for r in report(root))
    assert statuses == ["resumed", "skipped", "skipped", "skipped"]
    assert (victim / "summary.json").is_file() and find_run_dirs([root]) == dirs
    assert "4/4 runs finished" in " ".join(capsys.readouterr().out.split())


def test_a_crashing_run_is_reported_and_the_others_finish(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = TINY.replace(
        "agents: [sac]",
        "agents: [sac, {agent: sac, label: broken, overrides: {agent.batch_size: 0}}]",
    )
    text = text.replace("seeds: [0, 1]", "seeds: [0]").replace("[0.001, 0.003]", "[0.001]")
    root = tmp_path / "runs"
    assert main(["sweep", str(sweep_file(tmp_path, text)), "--run-root", str(root)]) == 1
    results = {r["label"].split()[0]: r for r in report(root)}
    assert results["sac"]["status"] == "finished"
    broken = results["broken"]
    assert broken["status"] == "failed" and "batch_size=0 must be > 0" in broken["error"]
    assert Path(broken["log"]).is_file()
    out = " ".join(capsys.readouterr().out.split())
    assert "failed" in out and "1/2 runs finished" in out


def test_dry_run_runs_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "runs"
    code = main(
        [
            "sweep",
            "--agents",
            "sac",
            "pets:point_mass",
            "--envs",
            "PointMass1D-v0",
            "--seeds",
            "0",
            "1",
            "2",
            "--run-root",
            str(root),
            "--dry-run",
        ]
    )
    assert code == 0 and not root.exists()
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long paths
    assert "6 runs" in out and "6 to start" in out


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="Ray is not installed (pip install 'mbrl-framework[ray]'); the dev extra has it",
)
def test_ray_backend_runs_the_same_grid_on_a_local_ray(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    args = [
        "sweep",
        str(sweep_file(tmp_path)),
        "--run-root",
        str(root),
        "--backend",
        "ray",
        "--workers",
        "2",
        "--num-cpus",
        "1",
    ]
    assert main(args) == 0
    assert sorted(r["status"] for r in report(root)) == ["finished"] * 4
    dirs = find_run_dirs([root])
    assert len(dirs) == 4 and all((d / "summary.json").is_file() for d in dirs)
    assert main(args) == 0
    assert sorted(r["status"] for r in report(root)) == ["skipped"] * 4
