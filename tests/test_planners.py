"""Trajectory optimizers: shapes, bounds, optimum finding, warm start, iCEM/MPPI specifics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from mbrl.errors import MbrlError
from mbrl.planners.base import Planner
from mbrl.planners.cem import CEM, CEMConfig
from mbrl.planners.icem import ICEM, ICEMConfig, colored_noise
from mbrl.planners.mppi import MPPI, MPPIConfig, mppi_weights
from mbrl.registry import PLANNERS

torch.set_num_threads(1)

H, A = 5, 2
LOW, HIGH = torch.tensor([-1.0, -0.5]), torch.tensor([1.0, 0.5])

PLANNER_CASES: dict[str, tuple[type[Planner], Any]] = {
    "cem": (CEM, CEMConfig()),
    "cem-clipped": (CEM, CEMConfig(sampling="clipped")),
    "icem": (ICEM, ICEMConfig()),
    "mppi": (MPPI, MPPIConfig()),
}


def make(name: str, seed: int = 0, horizon: int = H, low: Tensor = LOW, high: Tensor = HIGH):
    cls, cfg = PLANNER_CASES[name]
    return cls(low, high, horizon, cfg, generator=torch.Generator().manual_seed(seed))


def quadratic(targets: Tensor):
    """``−Σ (a − target_s)²`` over time and action dims; targets ``(S, H, A)``."""

    def objective(actions: Tensor) -> Tensor:
        return -((actions - targets[:, None]) ** 2).sum((-1, -2))

    return objective


class Recorder:
    """Wraps an objective, keeping every population and its scores."""

    def __init__(self, objective) -> None:
        self.objective = objective
        self.actions: list[Tensor] = []
        self.scores: list[Tensor] = []

    def __call__(self, actions: Tensor) -> Tensor:
        scores = self.objective(actions)
        self.actions.append(actions.clone())
        self.scores.append(scores.clone())
        return scores


def random_targets(seed: int, S: int = 3) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    # strictly inside the box, different per env
    return LOW + (HIGH - LOW) * (0.1 + 0.8 * torch.rand(S, H, A, generator=g))


def double_integrator(pos0: Tensor):
    """1-D double integrator from ``pos0 (S,)`` at rest: return ``−Σ_t pos² + 0.01·vel²``."""

    def objective(actions: Tensor) -> Tensor:
        S, P, T, _ = actions.shape
        pos = pos0[:, None].expand(S, P)
        vel = torch.zeros(S, P)
        ret = torch.zeros(S, P)
        for t in range(T):
            vel = vel + 0.1 * actions[:, :, t, 0]
            pos = pos + 0.1 * vel
            ret = ret - pos**2 - 0.01 * vel**2
        return ret

    return objective


# -- shared contract -------------------------------------------------------------------------
def test_registered() -> None:
    assert PLANNERS.get("cem").obj is CEM and PLANNERS.get("cem").config is CEMConfig
    assert PLANNERS.get("icem").obj is ICEM and PLANNERS.get("icem").config is ICEMConfig
    assert PLANNERS.get("mppi").obj is MPPI and PLANNERS.get("mppi").config is MPPIConfig


@pytest.mark.parametrize("name", list(PLANNER_CASES))
def test_shapes_and_bounds(name: str) -> None:
    # Optimum far outside the box: every sample and the plan must still be feasible.
    targets = torch.tensor([3.0, -3.0]).expand(3, H, A)
    rec = Recorder(quadratic(targets))
    planner = make(name)
    plan = planner.plan(rec, num_envs=3)
    assert plan.shape == (3, H, A) and plan.dtype == torch.float32
    act = planner.act(rec, num_envs=3)
    assert act.shape == (3, A)
    for x in [plan, act, *rec.actions]:
        assert bool((x >= LOW).all()) and bool((x <= HIGH).all())
    assert all(a.shape[0] == 3 and a.shape[2:] == (H, A) for a in rec.actions)
    # Receding horizon on a time-invariant objective: a few warm-started calls reach the
    # corner (one call does not: PETS' truncation caps σ at half the distance to a bound,
    # so truncated CEM approaches bounds geometrically; measured 0.72-0.79 of the way).
    for _ in range(3):
        plan = planner.plan(rec, num_envs=3)
    corner = torch.tensor([1.0, -0.5]).expand(3, A)
    assert bool(((plan[:, 0] - corner).abs() < 0.1).all()), plan[:, 0]


# Tolerances (max |plan − target| over all S·H·A coordinates, 10-D per env). CEM and iCEM
# are run with more iterations than their defaults to show they converge; MPPI's fixed σ
# and temperature leave a noise floor, measured at ~0.11–0.17 over 8 seeds.
OPTIMUM_CASES = {
    "cem": (CEM, CEMConfig(num_iterations=10), 0.03),
    "cem-clipped": (CEM, CEMConfig(num_iterations=10, sampling="clipped"), 0.03),
    "icem": (ICEM, ICEMConfig(num_iterations=8), 0.1),
    "mppi": (MPPI, MPPIConfig(num_iterations=5), 0.25),
}


@pytest.mark.parametrize("name", list(OPTIMUM_CASES))
def test_finds_quadratic_optimum_batched_like_alone(name: str) -> None:
    cls, cfg, tol = OPTIMUM_CASES[name]
    targets = random_targets(seed=7)
    batched = cls(LOW, HIGH, H, cfg, generator=torch.Generator().manual_seed(0))
    plan = batched.plan(quadratic(targets), num_envs=3)
    err_batched = (plan - targets).abs().amax(dim=(1, 2))  # (S,)
    assert bool((err_batched < tol).all()), err_batched
    for s in range(3):
        alone = cls(LOW, HIGH, H, cfg, generator=torch.Generator().manual_seed(0))
        plan_s = alone.plan(quadratic(targets[s : s + 1]), num_envs=1)
        err_alone = (plan_s[0] - targets[s]).abs().max()
        assert err_alone < tol
        # Same quality: batching envs neither helps nor hurts beyond sampling noise.
        assert abs(float(err_alone - err_batched[s])) < tol


@pytest.mark.parametrize("name", ["cem", "icem", "mppi"])
def test_beats_random_shooting_on_double_integrator(name: str) -> None:
    pos0 = torch.tensor([1.0, -0.5, 0.7])
    objective = double_integrator(pos0)
    low, high = torch.tensor([-1.0]), torch.tensor([1.0])
    cls, cfg = PLANNER_CASES[name]
    if name == "mppi":
        # λ must match the spread of returns (here ~1): λ = 1 averages almost uniformly.
        cfg = MPPIConfig(temperature=0.05)
    planner = cls(low, high, 15, cfg, generator=torch.Generator().manual_seed(0))
    rec = Recorder(objective)
    plan = planner.plan(rec, num_envs=3)
    budget = sum(a.shape[1] for a in rec.actions)
    g = torch.Generator().manual_seed(123)
    shooting = torch.rand(3, budget, 15, 1, generator=g) * 2 - 1
    best_random = objective(shooting).max(dim=1).values
    planned = objective(plan[:, None])[:, 0]
    assert bool((planned > best_random).all()), (planned, best_random)


@pytest.mark.parametrize(
    "planner_cls,cfg",
    # MPPI with small noise: clipping large noise at the bounds would bias the sample mean.
    [(CEM, CEMConfig()), (MPPI, MPPIConfig(noise_std_fraction=0.05))],
)
def test_warm_start_is_shifted_plan_and_is_used(planner_cls: type[Planner], cfg: Any) -> None:
    targets = random_targets(seed=1)
    planner = planner_cls(LOW, HIGH, H, cfg, generator=torch.Generator().manual_seed(0))
    assert planner.warm_start is None
    plan = planner.plan(quadratic(targets), num_envs=3)
    warm = planner.warm_start
    assert warm is not None and warm.shape == (3, H, A)
    assert torch.equal(warm[:, :-1], plan[:, 1:])
    assert torch.equal(warm[:, -1], ((LOW + HIGH) / 2).expand(3, A))
    # The next call samples its first population around the warm start.
    rec = Recorder(quadratic(targets))
    planner.plan(rec, num_envs=3)
    assert (rec.actions[0].mean(1) - warm).abs().max() < 0.1
    planner.reset(num_envs=3)
    assert planner.warm_start is None


def test_icem_warm_start_is_shifted_final_mean_and_reset_clears_memory() -> None:
    cfg = ICEMConfig(num_iterations=1, population_size=40, num_elites=5, alpha=0.0)
    planner = ICEM(LOW, HIGH, H, cfg, generator=torch.Generator().manual_seed(0))
    rec = Recorder(quadratic(random_targets(seed=2)))
    planner.plan(rec, num_envs=3)
    pop, scores = rec.actions[0], rec.scores[0]
    assert pop.shape[1] == 40 + 1  # samples + the mean (last iteration)
    idx = scores.topk(5, dim=1).indices
    elite_mean = torch.stack([pop[s, idx[s]].mean(0) for s in range(3)])  # α = 0
    warm = planner.warm_start
    assert warm is not None
    assert torch.allclose(warm[:, :-1], elite_mean[:, 1:], atol=1e-6)
    # Kept elites (round(0.3·5) = 2) re-enter the next step's first iteration, shifted.
    rec2 = Recorder(rec.objective)
    planner.plan(rec2, num_envs=3)
    assert rec2.actions[0].shape[1] == 40 + 2 + 1
    kept = rec2.actions[0][:, 40:42]
    best2 = torch.stack([pop[s, idx[s, :2]] for s in range(3)])
    assert torch.equal(kept[:, :, :-1], best2[:, :, 1:])
    planner.reset(num_envs=3)
    assert planner.warm_start is None
    rec3 = Recorder(rec.objective)
    planner.plan(rec3, num_envs=3)
    assert rec3.actions[0].shape[1] == 40 + 1


# -- iCEM ------------------------------------------------------------------------------------
def _loglog_slope(noise: Tensor) -> float:
    power = torch.fft.rfft(noise, dim=-1).abs().square().mean(0)
    f = torch.fft.rfftfreq(noise.shape[-1])
    lf, lp = f[1:-1].log(), power[1:-1].log()  # skip DC and Nyquist
    return float(((lf - lf.mean()) * (lp - lp.mean())).sum() / (lf - lf.mean()).square().sum())


def test_colored_noise_spectrum_and_variance() -> None:
    g = torch.Generator().manual_seed(0)
    brown = colored_noise((4000,), 128, 2.0, g)
    white = colored_noise((4000,), 128, 0.0, g)
    assert brown.shape == (4000, 128)
    assert abs(_loglog_slope(brown) + 2.0) < 0.15
    assert abs(_loglog_slope(white)) < 0.1
    # Unit variance at every time step, for even and odd horizons.
    for x in [brown, white, colored_noise((4000,), 31, 1.0, g)]:
        assert (x.var(0) - 1).abs().max() < 0.1
    # Colored noise is strongly correlated in time, white noise is not.
    lag1 = lambda x: float((x[:, 1:] * x[:, :-1]).mean())  # noqa: E731
    assert lag1(brown) > 0.8 and abs(lag1(white)) < 0.03


def test_icem_population_decay() -> None:
    cfg = ICEMConfig(num_iterations=5, population_size=100, num_elites=25)
    assert cfg.population_sizes() == [100, 80, 64, 51, 50]  # max(round(100/1.25^i), 2·25)
    planner = ICEM(LOW, HIGH, H, cfg, generator=torch.Generator().manual_seed(0))
    rec = Recorder(quadratic(random_targets(seed=3)))
    planner.plan(rec, num_envs=3)
    kept = round(0.3 * 25)
    # first step: no shifted elites yet; then kept elites; the mean on the last iteration
    assert [a.shape[1] for a in rec.actions] == [100, 80 + kept, 64 + kept, 51 + kept, 51 + kept]
    assert ICEMConfig().population_sizes() == [300, 240, 192]


def test_icem_returns_best_sample_not_mean() -> None:
    targets = random_targets(seed=4)
    planner = make("icem")
    rec = Recorder(quadratic(targets))
    plan = planner.plan(rec, num_envs=3)
    for s in range(3):
        scores = torch.cat([sc[s] for sc in rec.scores])
        pop = torch.cat([a[s] for a in rec.actions])
        assert torch.equal(plan[s], pop[scores.argmax()])
    # The mean (appended last to the last population) is generally not what is executed.
    assert not torch.equal(plan, rec.actions[-1][:, -1])


# -- MPPI ------------------------------------------------------------------------------------
def test_mppi_weights_limits() -> None:
    scores = torch.tensor([[1.0, 3.0, 2.0], [-5.0, -7.0, -6.0]])
    assert torch.allclose(mppi_weights(scores, 1e-6), torch.tensor([[0.0, 1, 0], [1, 0, 0]]))
    assert torch.allclose(mppi_weights(scores, 1e9), torch.full((2, 3), 1 / 3))
    w = mppi_weights(scores, 1.0)
    assert torch.allclose(w.sum(1), torch.ones(2))
    assert torch.allclose(w[0, 1] / w[0, 2], torch.exp(torch.tensor(1.0)))


@pytest.mark.parametrize("temperature", [1e-6, 1e9])
def test_mppi_update_best_or_mean(temperature: float) -> None:
    cfg = MPPIConfig(num_iterations=1, population_size=64, temperature=temperature)
    planner = MPPI(LOW, HIGH, H, cfg, generator=torch.Generator().manual_seed(0))
    rec = Recorder(quadratic(random_targets(seed=5)))
    plan = planner.plan(rec, num_envs=3)
    pop, scores = rec.actions[0], rec.scores[0]
    expected = pop[torch.arange(3), scores.argmax(1)] if temperature < 1 else pop.mean(1)
    assert torch.allclose(plan, expected, atol=1e-5)


def test_mppi_noise_is_time_filtered() -> None:
    planner = MPPI(LOW, HIGH, 30, MPPIConfig(filter_beta=0.5), generator=torch.Generator())
    u = planner.filtered_noise(2, 2000)[..., 0]  # (S, P, H) first action dim, σ = 1
    # u_t = β·ε_t + (1−β)·u_{t−1}: stationary lag-1 correlation is (1 − β) = 0.5
    late = u[:, :, 10:]
    corr = (late[..., 1:] * late[..., :-1]).mean() / late.square().mean()
    assert abs(float(corr) - 0.5) < 0.05


# -- reproducibility, checkpoints, validation ------------------------------------------------
@pytest.mark.parametrize("name", list(PLANNER_CASES))
def test_seeded_reproducible_and_state_dict_round_trip(name: str, tmp_path: Path) -> None:
    targets = random_targets(seed=6)
    obj = quadratic(targets)
    a, b = make(name, seed=3), make(name, seed=3)
    first = a.plan(obj, num_envs=3)
    assert torch.equal(first, b.plan(obj, num_envs=3))
    torch.save(a.state_dict(), tmp_path / "planner.pt")
    second = a.plan(obj, num_envs=3)
    third = a.plan(obj, num_envs=3)
    resumed = make(name, seed=99)  # a different seed: everything comes from the checkpoint
    resumed.load_state_dict(torch.load(tmp_path / "planner.pt"))
    assert torch.equal(resumed.plan(obj, num_envs=3), second)
    assert torch.equal(resumed.plan(obj, num_envs=3), third)
    # A different seed gives different samples.
    assert not torch.equal(make(name, seed=4).plan(obj, num_envs=3), first)


def test_invalid_configs_and_objectives_raise() -> None:
    with pytest.raises(MbrlError, match="elite_ratio"):
        CEM(LOW, HIGH, H, CEMConfig(elite_ratio=1.5))
    with pytest.raises(MbrlError, match="sampling"):
        CEM(LOW, HIGH, H, CEMConfig(sampling="uniform"))
    with pytest.raises(MbrlError, match="population_decay"):
        ICEM(LOW, HIGH, H, ICEMConfig(population_decay=0.5))
    with pytest.raises(MbrlError, match="temperature"):
        MPPI(LOW, HIGH, H, MPPIConfig(temperature=0.0))
    with pytest.raises(MbrlError, match="act_low"):
        CEM(HIGH, LOW, H)
    with pytest.raises(MbrlError, match="scores"):
        CEM(LOW, HIGH, H).plan(lambda a: a.sum(-1), num_envs=2)
