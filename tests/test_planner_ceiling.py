"""benchmarks/bench_planner_ceiling.py: true-dynamics returns and one short MPC episode."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from bench_scripts import load_benchmark

from mbrl.models.oracle import OracleDynamics

ROOT = Path(__file__).resolve().parent.parent
ENV = "InvertedPendulum-v5"


bench = load_benchmark("bench_planner_ceiling")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_true_returns_count_steps_until_the_true_termination() -> None:
    oracle = OracleDynamics(ENV, nthread=1)
    # [cart pos, pole angle, cart vel, pole ang. vel]: upright and still vs already
    # tipping fast (|angle| passes 0.2 on the first step: v5 pays 0 on that step)
    starts = {"upright": [0.0, 0.0, 0.0, 0.0], "falling": [0.0, 0.19, 0.0, 5.0]}
    zeros = torch.zeros(2, 4, 1)  # 2 candidates, H = 4, no force
    got = {
        k: bench.true_returns(oracle, torch.tensor([v]), zeros).tolist() for k, v in starts.items()
    }
    oracle.close()
    assert got["upright"] == [4.0, 4.0]  # balanced for all 4 steps: +1 each
    assert got["falling"] == [0.0, 0.0]  # terminated at once; nothing after counts

    # the planning reward: alive · exp(−d²/0.6²), d the pole tip's distance from its goal
    from mbrl.envs import get_env_spec

    shaped = get_env_spec(ENV).planning_reward_fn
    oracle = OracleDynamics(ENV, nthread=1)
    off = torch.tensor([[0.5, 0.0, 0.0, 0.0]])  # half-way to the rail, upright, still
    got_off = bench.true_returns(oracle, off, torch.zeros(1, 2, 1), shaped)
    oracle.close()
    # two steps; the pole barely moves from upright in 0.08 s: d ≈ 0.5, each ≈ exp(−0.25/0.36)
    one = math.exp(-0.25 / 0.36)
    assert got_off.shape == (1,) and 2 * (one - 0.01) < float(got_off[0]) < 2 * (one + 0.01)


def test_a_short_episode_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ceiling"
    report = bench.main(
        ["--planners", "cem", "--horizons", "3", "--steps", "5", "--population", "8",
         "--iterations", "1", "--out", str(out)]
    )  # fmt: skip
    (run,) = report["runs"]
    assert run["planner"] == "cem" and run["horizon"] == 3
    assert 1 <= run["steps"] <= 5 and run["return"] <= run["steps"]
    assert json.loads(out.with_suffix(".json").read_text())["runs"][0]["steps"] == run["steps"]
    assert "| cem | 3 | 0 |" in out.with_suffix(".md").read_text()
    shaped = bench.main(
        ["--planners", "cem", "--horizons", "3", "--steps", "5", "--population", "8",
         "--iterations", "1", "--reward", "planning"]
    )  # fmt: skip
    assert shaped["reward"] == "planning" and shaped["runs"][0]["reward"] == "planning"
    assert shaped["runs"][0]["return"] == shaped["runs"][0]["steps"] - int(
        shaped["runs"][0]["terminated"]
    )  # the reported return is the task's own (+1 per step, 0 on the terminating one)
