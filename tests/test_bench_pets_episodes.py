"""benchmarks/bench_pets_episodes.py: stops PETS after N episodes and reports them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_scripts import load_benchmark

ROOT = Path(__file__).resolve().parent.parent


bench = load_benchmark("bench_pets_episodes")


def test_parse_set_nests_and_parses_values() -> None:
    got = bench.parse_set(["agent.num_particles=20", "agent.icem.population_size=50", "run.env=X"])
    assert got == {
        "agent": {"num_particles": 20, "icem": {"population_size": 50}},
        "run": {"env": "X"},
    }
    with pytest.raises(SystemExit, match="FIELD=VALUE"):
        bench.parse_set(["agent.horizon"])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_stops_after_the_requested_episodes(tmp_path: Path) -> None:
    """Two tiny point-mass episodes: the run stops at the end of the second, before its
    refit; the returns agree with the run's own metrics and the report says so."""
    out = tmp_path / "eps"
    report = bench.main(
        ["--preset", "point_mass", "--seeds", "0", "--episodes", "2", "--solved", "1e9",
         "--max-episode-steps", "30", "--set", "agent.cem.population_size=20",
         "agent.cem.num_iterations=1", "agent.num_particles=2", "agent.horizon=3",
         "agent.trainer.max_epochs=2", "--root", str(tmp_path / "runs"), "--out", str(out)]
    )  # fmt: skip
    (run,) = report["runs"]
    assert len(run["episode_returns"]) == 2 and run["solved_episode"] is None
    assert run["env_steps"] == 60  # two 30-step point-mass episodes
    assert all(r <= 0 for r in run["episode_returns"])  # −0.001·pos² per step
    text = out.with_suffix(".md").read_text()
    assert "| 0 |" in text and "not solved" in text and "0 of 1 seeds" in text
    assert json.loads(out.with_suffix(".json").read_text())["runs"][0]["env_steps"] == 60
    # a threshold the first episode meets stops the run there
    again = bench.main(
        ["--preset", "point_mass", "--seeds", "0", "--episodes", "5", "--solved=-1e9",
         "--max-episode-steps", "30", "--set", "agent.trainer.max_epochs=2",
         "--root", str(tmp_path / "runs2")]
    )  # fmt: skip
    (run2,) = again["runs"]
    assert run2["solved_episode"] == 1 and len(run2["episode_returns"]) == 1
    assert run2["episode_returns"][0] == run["episode_returns"][0]  # same seed, same start
