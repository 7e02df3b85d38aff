"""Open-loop prediction error: exact values on a known linear system."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from mbrl.errors import MbrlError
from mbrl.models.ensemble import EnsembleConfig, ProbabilisticEnsemble
from mbrl.models.evaluation import (
    ensemble_mean_step_fn,
    format_table,
    open_loop_errors,
    open_loop_errors_detailed,
    plot_open_loop,
)

DT = 0.1
# double integrator: position += dt * velocity, velocity += dt * action
A_MAT = np.array([[1.0, DT], [0.0, 1.0]])
B_MAT = np.array([[0.0], [DT]])


def simulate(x0: np.ndarray, T: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A length-``T`` trajectory of the double integrator (float64)."""
    act = rng.uniform(-1, 1, size=(T, 1))
    obs = np.empty((T, 2))
    next_obs = np.empty((T, 2))
    x = x0.astype(np.float64)
    for t in range(T):
        obs[t] = x
        x = A_MAT @ x + B_MAT @ act[t]
        next_obs[t] = x
    return {"obs": obs, "act": act, "rew": -(obs[:, 0] ** 2), "next_obs": next_obs}


def linear_step_fn(bias: float = 0.0):
    A = torch.tensor(A_MAT, dtype=torch.float64)
    B = torch.tensor(B_MAT, dtype=torch.float64)
    b = torch.tensor([0.0, bias], dtype=torch.float64)

    def step(obs: Tensor, act: Tensor) -> tuple[Tensor, Tensor]:
        next_obs = (A.to(obs.dtype) @ obs.T + B.to(obs.dtype) @ act.T).T + b.to(obs.dtype)
        return next_obs, -(obs[:, 0] ** 2)

    return step


def test_perfect_model_has_zero_error() -> None:
    rng = np.random.default_rng(0)
    trajs = [simulate(rng.normal(size=2), 40, rng) for _ in range(3)]
    res = open_loop_errors_detailed(
        linear_step_fn(), trajs, horizons=(1, 5, 10, 25), dtype=torch.float64
    )
    for h in (1, 5, 10, 25):
        assert res.mse[h] < 1e-24
        assert res.nmse[h] < 1e-22
        assert res.rew_mse[h] < 1e-24
        assert res.num_windows[h] == 3 * (40 - h + 1)


def test_biased_model_error_grows_as_hand_computed() -> None:
    """With next = A x + B u + (0, c) the error after h steps is sum_{k<h} A^k (0, c)
    = (dt c h(h-1)/2, c h) for every window, whatever the state and actions."""
    c = 0.05
    rng = np.random.default_rng(1)
    trajs = [simulate(rng.normal(size=2), 60, rng) for _ in range(2)]
    horizons = (1, 2, 5, 10, 25)
    res = open_loop_errors_detailed(linear_step_fn(c), trajs, horizons, dtype=torch.float64)
    var = np.var(np.concatenate([t["next_obs"] for t in trajs]), axis=0)
    previous = 0.0
    for h in horizons:
        e = np.array([DT * c * h * (h - 1) / 2, c * h])
        assert res.mse_per_dim[h] == pytest.approx(e**2, rel=1e-9, abs=1e-15)
        assert res.mse[h] == pytest.approx(float(np.mean(e**2)), rel=1e-9)
        assert res.nmse[h] == pytest.approx(float(np.mean(e**2 / var)), rel=1e-9)
        assert res.mse[h] > previous
        previous = res.mse[h]
    # the shorthand returns the same numbers
    plain = open_loop_errors(linear_step_fn(c), trajs, horizons)
    assert plain[25] == pytest.approx(res.mse[25], rel=1e-5)  # float32 there
    norm = open_loop_errors(linear_step_fn(c), trajs, horizons, normalized=True)
    assert norm[10] == pytest.approx(res.nmse[10], rel=1e-5)


def test_windows_never_cross_trajectory_ends() -> None:
    """Trajectories far apart in state space: a window running into the next trajectory
    would show a huge error with the perfect model; counts follow T - h + 1 per trajectory."""
    rng = np.random.default_rng(2)
    lengths = [3, 10, 30]
    trajs = [simulate(np.array([1000.0 * k, -50.0 * k]), T, rng) for k, T in enumerate(lengths)]
    res = open_loop_errors_detailed(linear_step_fn(), trajs, (1, 5, 10, 25, 31), max_starts=None)
    for h in (1, 5, 10, 25):
        assert res.num_windows[h] == sum(max(0, T - h + 1) for T in lengths)
        assert res.mse[h] < 1e-6  # float32 round-off only
    assert res.num_windows[31] == 0 and math.isnan(res.mse[31])

    # a model that records what it is fed: every window starts on a recorded obs
    seen: list[Tensor] = []

    def recording(obs: Tensor, act: Tensor) -> tuple[Tensor, Tensor]:
        seen.append(obs.clone())
        return linear_step_fn()(obs, act)

    open_loop_errors(recording, trajs, horizons=(1,), max_starts=None)
    all_obs = np.concatenate([t["obs"] for t in trajs])
    np.testing.assert_allclose(seen[0].numpy(), all_obs, rtol=1e-6)


def test_max_starts_subsamples_and_errors_on_bad_input() -> None:
    rng = np.random.default_rng(3)
    trajs = [simulate(rng.normal(size=2), 100, rng) for _ in range(5)]
    res = open_loop_errors_detailed(linear_step_fn(), trajs, (1, 10), max_starts=50, seed=7)
    assert res.num_windows[1] == 50
    assert res.num_windows[10] <= 50
    with pytest.raises(MbrlError, match="horizons"):
        open_loop_errors(linear_step_fn(), trajs, horizons=(0, 5))
    with pytest.raises(MbrlError, match="next_obs"):
        open_loop_errors(linear_step_fn(), [{"obs": np.zeros((3, 2)), "act": np.zeros((3, 1))}])
    with pytest.raises(MbrlError, match="same length"):
        bad = dict(trajs[0], act=np.zeros((99, 1)))
        open_loop_errors(linear_step_fn(), [bad])


def test_ensemble_mean_step_fn_averages_elite_means() -> None:
    torch.manual_seed(0)
    cfg = EnsembleConfig(num_members=4, num_elites=2, hidden_size=8, num_layers=1,
                         weight_decays=(0.0, 0.0))  # fmt: skip
    model = ProbabilisticEnsemble(3, 2, cfg)
    model.set_elites([3, 1])
    step = ensemble_mean_step_fn(model)
    obs, act = torch.randn(5, 3), torch.randn(5, 2)
    next_obs, rew = step(obs, act)
    mean, _ = model(obs.expand(4, -1, -1), act.expand(4, -1, -1))
    expected = (mean[3] + mean[1]) / 2
    torch.testing.assert_close(next_obs, obs + expected[:, :3])
    torch.testing.assert_close(rew, expected[:, 3])
    assert next_obs.shape == (5, 3) and rew.shape == (5,)


def test_format_table_and_plot(tmp_path: Path) -> None:
    results = {"ensemble": {1: 0.001, 5: 0.01, 25: 0.3}, "linear": {1: 0.002, 5: 0.05}}
    table = format_table(results)
    lines = table.strip().splitlines()
    assert lines[0] == "| model | h=1 | h=5 | h=25 |"
    assert lines[2] == "| ensemble | 0.001 | 0.01 | 0.3 |"
    assert lines[3] == "| linear | 0.002 | 0.05 | – |"
    path = plot_open_loop(results, tmp_path / "plots" / "open_loop.png")
    assert path.exists() and path.stat().st_size > 1000
