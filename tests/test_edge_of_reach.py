"""The edge-of-reach benchmark's helpers (benchmarks/bench_edge_of_reach.py).

The true-return helper is checked against an independent path (the oracle's batched
``mujoco.rollout`` stepping), on terminations and on a diverged policy; the aggregation
and verdict on hand-made runs; the whole script end to end on a tiny generated dataset.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from bench_scripts import load_benchmark
from d4rl_files import write_d4rl_file

from mbrl.envs import get_env_spec
from mbrl.errors import MbrlError
from mbrl.models.oracle import OracleDynamics

torch.set_num_threads(1)
warnings.filterwarnings("ignore", message=".*out of date.*")

ROOT = Path(__file__).resolve().parent.parent


bench = load_benchmark("bench_edge_of_reach")


def halfcheetah_states(n: int, seed: int = 0) -> np.ndarray:
    """``(n, 17)`` HalfCheetah observations reached by a few random steps."""
    oracle = OracleDynamics("HalfCheetah-v4", nthread=1)
    rng = np.random.default_rng(seed)
    obs = torch.as_tensor(rng.normal(scale=0.1, size=(n, 17)))
    for _ in range(3):
        obs, _, _ = oracle.step(obs, torch.as_tensor(rng.uniform(-1, 1, (n, 6))))
    oracle.close()
    return obs.numpy()


def linear_policy(seed: int = 1) -> Any:
    w = np.random.default_rng(seed).normal(scale=0.3, size=(17, 6))
    return lambda obs: np.tanh(obs @ w)


def test_true_returns_match_oracle_stepping() -> None:
    """Σ γ^t r_t from the env's own step equals the same sum along the oracle's batched
    mujoco.rollout path (an independent implementation of the same dynamics)."""
    start = halfcheetah_states(3)
    policy = linear_policy()
    gamma, horizon = 0.9, 25
    result = bench.discounted_returns(get_env_spec("HalfCheetah-v4"), policy, start, gamma, horizon)
    oracle = OracleDynamics("HalfCheetah-v4", nthread=1)
    obs, expected = torch.as_tensor(start), np.zeros(3)
    for t in range(horizon):
        act = torch.as_tensor(policy(obs.numpy().astype(np.float32)), dtype=torch.float64)
        obs, rew, _ = oracle.step(obs, act)
        expected += gamma**t * rew.numpy()
    oracle.close()
    assert result.start_error < 1e-12
    assert result.steps.tolist() == [horizon] * 3
    assert not result.terminated.any()
    np.testing.assert_allclose(result.returns, expected, rtol=1e-6, atol=1e-6)
    # gamma = 0: only the first reward counts
    first = bench.discounted_returns(get_env_spec("HalfCheetah-v4"), policy, start, 0.0, 5)
    oracle = OracleDynamics("HalfCheetah-v4", nthread=1)
    act0 = torch.as_tensor(policy(start.astype(np.float32)), dtype=torch.float64)
    _, rew0, _ = oracle.step(torch.as_tensor(start), act0)
    oracle.close()
    np.testing.assert_allclose(first.returns, rew0.numpy(), rtol=1e-6, atol=1e-6)


def test_true_returns_stop_at_termination_and_flag_nan_actions() -> None:
    spec = get_env_spec("Hopper-v4")
    env = spec.make()
    healthy, _ = env.reset(seed=0)
    env.close()
    fallen = healthy.copy()
    fallen[0] = 0.5  # height below 0.7: Hopper-v4 terminates after the first step
    start = np.stack([healthy, fallen])
    zero = lambda obs: np.zeros((len(obs), 3))  # noqa: E731
    result = bench.discounted_returns(spec, zero, start, 0.99, 10)
    assert result.terminated.tolist() == [False, True]
    assert result.steps.tolist() == [10, 1]
    oracle = OracleDynamics("Hopper-v4", nthread=1)
    _, rew, term = oracle.step(
        torch.as_tensor(fallen[None]), torch.zeros(1, 3, dtype=torch.float64)
    )
    oracle.close()
    assert bool(term[0])
    assert result.returns[1] == pytest.approx(float(rew[0]), abs=1e-9)

    # a policy that emits NaN on the second row: that row's return is undefined
    def half_nan(obs: np.ndarray) -> np.ndarray:
        act = np.zeros((len(obs), 3))
        act[1:] = math.nan  # the second row while it runs
        return act

    nan_result = bench.discounted_returns(spec, half_nan, start[:1].repeat(2, 0), 0.99, 5)
    assert math.isfinite(nan_result.returns[0]) and math.isnan(nan_result.returns[1])
    assert nan_result.steps.tolist() == [5, 0]


def test_true_returns_refuse_bad_input() -> None:
    spec = get_env_spec("HalfCheetah-v4")
    with bench.TrueReturns(spec, 2) as tr:
        with pytest.raises(MbrlError, match="0 < P <= 2"):
            tr(linear_policy(), halfcheetah_states(3), 0.99, 5)
        with pytest.raises(MbrlError, match="gamma"):
            tr(linear_policy(), halfcheetah_states(1), 1.5, 5)


def _run(q: list[float], g: list[float], seed: int = 0) -> dict[str, Any]:
    points = [
        {
            "step": 100 * i,
            "q_min": qi,
            "true_return": gi,
            "alpha": 0.1,
            "q_policy_logged": qi,
            "eval_return": 10.0,
        }
        for i, (qi, gi) in enumerate(zip(q, g, strict=True))
    ]
    return {
        "run_dir": f"/x/{seed}",
        "seed": seed,
        "env": "HalfCheetah-v4",
        "points": points,
        "curve": {
            "q_policy_logged": [(p["step"], p["q_min"]) for p in points],
            "q_data_logged": [],
        },
        "final_eval_return": -50.0 - seed,
        "final_normalized_score": 1.0 + seed,
        "ms_per_update": 20.0,
        "wall_time_s": 1.0,
    }


def test_aggregate_and_finding() -> None:
    arms = bench.make_arms(10, 1.0)
    runs = {
        "sac2": [_run([0.0, 50.0, 1e6], [40.0, 30.0, -20.0], s) for s in (0, 1)],
        "ravl": [_run([0.0, 20.0, 60.0], [40.0, 50.0, 80.0], s) for s in (0, 1)],
    }
    agg = bench.aggregate(arms, runs)
    sac_final = agg["sac2"]["final"]
    assert sac_final["q_min"] == pytest.approx(1e6)
    assert sac_final["overestimation"] == pytest.approx((1e6 + 20.0) / 20.0)
    assert sac_final["eval_return"] == pytest.approx(-50.5)
    assert sac_final["eval_return_std"] == pytest.approx(math.sqrt(0.5))
    assert agg["ravl"]["final"]["overestimation"] == pytest.approx((60.0 - 80.0) / 80.0)
    # |G| < 1 is measured against 1, not divided by a tiny number
    assert bench.overestimation(5.0, 0.5) == pytest.approx(4.5)
    verdict = bench.finding(agg)
    assert verdict["reproduced"] is True
    runs["ravl"] = [_run([0.0, 20.0, 400.0], [40.0, 50.0, 80.0])]
    assert bench.finding(bench.aggregate(arms, runs))["reproduced"] is False
    assert bench.finding(bench.aggregate(arms[:1], runs))["reproduced"] is None


def test_train_argv_differs_only_in_the_critic_ensemble() -> None:
    args = bench.parse_args(["--dataset", "d.hdf5", "--updates", "100", "--every", "50"])
    sac, ravl = (bench.train_argv(args, arm, 3) for arm in bench.make_arms(10, 1.0))
    diff = [(a, b) for a, b in zip(sac, ravl, strict=True) if a != b]
    assert diff == [("2", "10"), ("0.0", "1.0")]
    i = sac.index("--agent.dynamics")
    assert sac[i + 1] == "oracle"
    assert sac[sac.index("--run.keep-checkpoints") + 1] == "4"  # 0, 50 and 100 all kept
    assert bench.deviations(args) == ["100 updates per run instead of 3M (CPU budget)"]
    small = bench.parse_args(["--dataset", "d", "--hidden-sizes", "64,64"])
    assert any("64, 64" in d for d in bench.deviations(small))
    with pytest.raises(SystemExit):
        bench.parse_args(["--dataset", "d", "--every", "10", "--updates", "5"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--dataset", "d", "--arms", "sac2,mopo"])


@pytest.mark.slow
def test_end_to_end_tiny(tmp_path: Path) -> None:
    """Both arms train through `mbrl train`, every checkpoint is measured, the JSON,
    markdown and PNG are written; a rerun reuses the runs and the cached measurements."""
    data = write_d4rl_file(
        tmp_path / "halfcheetah_medium-v2.hdf5", n_episodes=4, ep_len=50, obs_dim=17, act_dim=6
    )
    out = tmp_path / "report"
    argv = [
        "--dataset", str(data), "--updates", "20", "--every", "10", "--log-every", "10",
        "--num-critics", "3", "--hidden-sizes", "16,16", "--rollout-batch-size", "20",
        "--mc-starts", "3", "--mc-horizon", "20", "--eval-episodes", "1",
        "--runs-root", str(tmp_path / "runs"), "--out", str(out),
    ]  # fmt: skip
    assert bench.main(argv) == 0
    report = json.loads(Path(f"{out}.json").read_text())
    assert Path(f"{out}.png").stat().st_size > 10_000
    assert "RAVL, 3 critics" in Path(f"{out}.md").read_text()
    for key in ("sac2", "ravl"):
        (run,) = report["runs"][key]
        assert [p["step"] for p in run["points"]] == [0, 10, 20]
        assert all(
            math.isfinite(p["q_min"]) and math.isfinite(p["true_return"]) for p in run["points"]
        )
        assert run["points"][-1]["q_policy_logged"] is not None
        assert run["final_eval_return"] is not None
        ckpts = sorted((Path(run["run_dir"]) / "checkpoints").glob("step_*.pt"))
        assert [c.name for c in ckpts] == ["step_000020.pt"]  # measured ones pruned
    assert report["config"]["hidden_sizes"] == [16, 16]
    first = {k: [p["q_min"] for p in report["runs"][k][0]["points"]] for k in ("sac2", "ravl")}
    assert bench.main(argv) == 0  # reuses runs and cached measurements
    again = json.loads(Path(f"{out}.json").read_text())
    assert {k: [p["q_min"] for p in again["runs"][k][0]["points"]] for k in first} == first
    # another configuration in the same runs root is refused
    assert bench.main([*argv[:-2], "--out", str(out), "--updates", "30"]) == 2
