"""Diffuser: the DDPM's closed forms, windows that respect episodes, inpainting, value
guidance, learning on a tiny dataset, action bounds, and the CLI with exact resume."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch
from test_offline import ENV, collect, only_run
from torch import Tensor, nn

from mbrl.agents.diffuser import (
    DiffuserAgent,
    DiffuserConfig,
    DiffusionSchedule,
    Normalizer,
    build_windows,
    cosine_beta_schedule,
    loss_weights,
    sample_plans,
    sampling_steps,
)
from mbrl.checkpoint import find_latest, load_checkpoint
from mbrl.cli import main
from mbrl.config import RunConfig
from mbrl.data.d4rl import D4RLDataset, save_d4rl
from mbrl.errors import MbrlError
from mbrl.models.diffusion import TemporalUNet, ValueNet
from mbrl.rundir import MetricsLogger, RunDir, read_metrics
from mbrl.train import NullLogger, RunContext, TrainConfig

torch.set_num_threads(1)

TINY = dict(horizon=8, dim=16, dim_mults=(1, 4), n_diffusion_steps=10, plan_batch=8)


@pytest.fixture(scope="module")
def pm_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600 uniform-random PointMass1D steps (20 episodes of 30)."""
    path = tmp_path_factory.mktemp("diffuser") / "pm_random.hdf5"
    return save_d4rl(collect(ENV, 600, None), path)


def make_agent(data: Path, tmp: Path, **agent: Any) -> DiffuserAgent:
    cfg = TrainConfig(
        agent=DiffuserConfig(**{**TINY, "batch_size": 16, **agent}),
        run=RunConfig(dataset=str(data), seed=0),
    )
    ctx = RunContext(
        run_dir=RunDir(tmp), logger=cast(MetricsLogger, NullLogger()), device=torch.device("cpu")
    )
    return DiffuserAgent(cfg, ctx)


# -- the maths on small tensors ------------------------------------------------------------
def test_cosine_schedule_and_forward_noising_match_closed_forms() -> None:
    N, s = 5, 0.008

    def f(n: float) -> float:
        return math.cos((n / (N + 1) + s) / (1 + s) * math.pi / 2) ** 2

    # the reference spaces the N + 1 grid points over [0, N + 1]: ᾱ(n) = f(n·(N+1)/N)/f(0)
    grid = [k * (N + 1) / N for k in range(N + 1)]
    want_betas = [min(1 - f(grid[k + 1]) / f(grid[k]), 0.999) for k in range(N)]
    torch.testing.assert_close(cosine_beta_schedule(N), torch.tensor(want_betas))
    sched = DiffusionSchedule(N)
    abar = np.cumprod([1 - b for b in want_betas])
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 2, generator=gen)
    eps = torch.randn(3, 4, 2, generator=gen)
    n = torch.tensor([0, 2, 4])
    xn = sched.q_sample(x0, n, eps)
    for i, k in enumerate(n.tolist()):
        want = math.sqrt(abar[k]) * x0[i] + math.sqrt(1 - abar[k]) * eps[i]
        torch.testing.assert_close(xn[i], want)
    # x̂0 from the true noise recovers x0, and ε̂ from the true x0 recovers the noise
    torch.testing.assert_close(sched.x0_from_eps(xn, n, eps), x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sched.eps_from_x0(xn, n, x0), eps, atol=1e-4, rtol=1e-4)


def test_ddpm_posterior_matches_bayes_rule() -> None:
    """q(x_{n−1}|x_n, x_0) ∝ q(x_n|x_{n−1}) q(x_{n−1}|x_0): product of two Gaussians."""
    sched = DiffusionSchedule(6)
    betas = sched.betas.double()
    abar = torch.cumprod(1 - betas, 0)
    gen = torch.Generator().manual_seed(1)
    x0, xn = torch.randn(4, 3, 2, generator=gen), torch.randn(4, 3, 2, generator=gen)
    n = torch.tensor([1, 2, 3, 5])
    mean, var, logvar = sched.q_posterior(x0, xn, n)
    for i, k in enumerate(n.tolist()):
        a_prev, beta = abar[k - 1], betas[k]
        precision = 1 / (1 - a_prev) + (1 - beta) / beta
        want_var = 1 / precision
        want_mean = want_var * (
            a_prev.sqrt() * x0[i].double() / (1 - a_prev)
            + (1 - beta).sqrt() * xn[i].double() / beta
        )
        torch.testing.assert_close(var[i].squeeze().double(), want_var, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(
            logvar[i].squeeze().double(), want_var.log(), rtol=1e-4, atol=1e-6
        )
        torch.testing.assert_close(mean[i].double(), want_mean, rtol=1e-4, atol=1e-5)
    # step 0 (ᾱ_{−1} = 1): the posterior is a point mass at x0
    mean0, var0, _ = sched.q_posterior(x0, xn, torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(mean0, x0)
    assert float(var0.abs().max()) == 0.0


def test_loss_weights_stress_the_first_action_and_skip_the_inpainted_state() -> None:
    w = loss_weights(3, act_dim=1, obs_dim=2, action_weight=10.0, discount=1.0)
    torch.testing.assert_close(w, torch.tensor([[10.0, 0, 0], [1, 1, 1], [1, 1, 1]]))
    w = loss_weights(2, act_dim=1, obs_dim=1, action_weight=10.0, discount=0.5)
    torch.testing.assert_close(w, torch.tensor([[10.0, 0.0], [2 / 3, 2 / 3]]))  # 0.5/0.75


def test_ddim_steps_are_an_evenly_spaced_subsequence() -> None:
    assert sampling_steps(20, None) == list(range(19, -1, -1))
    assert sampling_steps(20, 5) == [19, 14, 10, 5, 0]
    assert sampling_steps(20, 1) == [19]
    with pytest.raises(MbrlError, match="sampler"):
        DiffuserConfig(sample_steps=5)  # DDPM always takes all steps
    with pytest.raises(MbrlError, match="multiple of"):
        DiffuserConfig(horizon=6)  # 3 down-samplings need a multiple of 8
    with pytest.raises(MbrlError, match="2 channels per GroupNorm group"):
        DiffuserConfig(horizon=8, dim=16, dim_mults=(1, 2))


# -- windows -------------------------------------------------------------------------------
def test_windows_respect_episodes_pad_and_penalize_terminations() -> None:
    """Two episodes (lengths 5 and 3, the second terminates); H = 4."""
    obs = np.arange(16, dtype=np.float32).reshape(8, 2) + 1.0
    act = np.full((8, 1), 0.5, dtype=np.float32)
    act[5:] = -0.5
    arrays = {
        "observations": obs,
        "actions": act,
        "rewards": np.ones(8, dtype=np.float32),
        "terminals": np.array([0, 0, 0, 0, 0, 0, 0, 1], dtype=bool),
        "timeouts": np.array([0, 0, 0, 0, 1, 0, 0, 0], dtype=bool),
    }
    ds = D4RLDataset.from_arrays(arrays, where="test")
    cfg = DiffuserConfig(horizon=4, dim_mults=(1, 2), value_discount=0.5, termination_penalty=-10)
    act_norm, obs_norm = Normalizer(ds.actions, "gaussian"), Normalizer(ds.observations, "gaussian")
    w = build_windows(ds, cfg, act_norm, obs_norm, torch.device("cpu"), "test")
    # episode lengths 5 and 3: min(L − 1, P − H) windows each = 4 + 2
    assert len(w) == 6
    x = w.windows(torch.arange(6))
    pad = torch.as_tensor(
        np.concatenate([act_norm.normalize(np.zeros(1)), obs_norm.normalize(np.zeros(2))])
    )
    unnorm_obs = x[..., 1:] * torch.as_tensor(obs_norm.scale) + torch.as_tensor(obs_norm.shift)
    torch.testing.assert_close(unnorm_obs[0], torch.as_tensor(obs[0:4]))
    # window 3 of episode 1 starts at its row 3: rows 3, 4, then padding (not episode 2)
    torch.testing.assert_close(unnorm_obs[3, :2], torch.as_tensor(obs[3:5]))
    torch.testing.assert_close(x[3, 2:], pad.expand(2, 3).float())
    torch.testing.assert_close(unnorm_obs[4, :3], torch.as_tensor(obs[5:8]))
    torch.testing.assert_close(x[4, 3], pad.float())
    # value targets: discounted return-to-go (γ = 0.5); episode 2 ends in −10 + 1
    want = [1 + 0.5 + 0.25 + 0.125 + 0.0625, 1 + 0.5 + 0.25 + 0.125, 1 + 0.5 + 0.25, 1 + 0.5]
    want += [1 + 0.5 * (1 + 0.5 * -9), 1 + 0.5 * -9]
    torch.testing.assert_close(w.values, torch.tensor(want))
    no_pad = build_windows(
        ds,
        DiffuserConfig(horizon=4, dim_mults=(1, 2), use_padding=False),
        act_norm,
        obs_norm,
        torch.device("cpu"),
        "test",
    )
    assert len(no_pad) == 1  # the reference's range(min(L − 1, L − H)): only episode 1, t = 0


# -- sampling ------------------------------------------------------------------------------
class GaussianDenoiser(nn.Module):
    """The exact ``E[τ_0 | τ_n] = √ᾱ_n τ_n`` of standard-normal data (an ideal x0-model)."""

    def __init__(self, sched: DiffusionSchedule) -> None:
        super().__init__()
        self.sched = sched

    def forward(self, x: Tensor, n: Tensor) -> Tensor:
        return self.sched.abar[n].sqrt()[:, None, None] * x


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_inpainting_leaves_the_current_state_exactly_unchanged(sampler: str) -> None:
    A, O, H = 2, 3, 8
    torch.manual_seed(0)
    net = TemporalUNet(A + O, 16, (1, 4))
    value = ValueNet(H, A + O, 16, (1, 4))
    obs = torch.randn(6, O) * 3
    plans, values = sample_plans(
        net,
        DiffusionSchedule(10),
        obs,
        H,
        A,
        value_fn=lambda x, n: value(x, n) + 100 * x[:, 0, A:].sum(-1),  # pulls on s_0 too
        guide_scale=1.0,
        n_guide_steps=2,
        t_stopgrad=0,
        sampler=sampler,
        sample_steps=4 if sampler == "ddim" else None,
        generator=torch.Generator().manual_seed(0),
    )
    assert plans.shape == (6, H, A + O) and values.shape == (6,)
    assert torch.equal(plans[:, 0, A:], obs)
    assert not torch.equal(plans[:, 1, A:], obs)  # the other steps are sampled


def test_ddim_with_all_steps_and_eta_1_is_ddpm() -> None:
    """σ² = β̃_n and consecutive steps: DDIM's update is the DDPM posterior sample."""
    A, O, H = 1, 2, 8
    sched = DiffusionSchedule(10)
    torch.manual_seed(0)
    net = TemporalUNet(A + O, 16, (1, 4))
    obs = torch.randn(4, O)
    common: dict[str, Any] = dict(horizon=H, act_dim=A)
    ddpm, _ = sample_plans(net, sched, obs, generator=torch.Generator().manual_seed(5), **common)
    ddim, _ = sample_plans(
        net,
        sched,
        obs,
        sampler="ddim",
        sample_steps=10,
        ddim_eta=1.0,
        generator=torch.Generator().manual_seed(5),
        **common,
    )
    torch.testing.assert_close(ddim, ddpm, atol=1e-4, rtol=1e-4)
    fast, _ = sample_plans(
        net, sched, obs, sampler="ddim", sample_steps=3, generator=torch.Generator(), **common
    )
    assert fast.shape == ddpm.shape and torch.isfinite(fast).all()


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_value_guidance_moves_samples_towards_higher_value(sampler: str) -> None:
    """J(τ) = ±Σ_h s_h[0] pushes state coordinate 0 up (down); other coordinates stay."""
    A, O, H = 1, 2, 8
    sched = DiffusionSchedule(20)
    obs = torch.zeros(256, O)

    def run(sign: float, scale: float) -> Tensor:
        plans, _ = sample_plans(
            GaussianDenoiser(sched),
            sched,
            obs,
            H,
            A,
            value_fn=lambda x, n: sign * x[:, :, A].sum(1),
            guide_scale=scale,
            n_guide_steps=2,
            t_stopgrad=2,
            scale_grad_by_std=True,
            sampler=sampler,
            sample_steps=10 if sampler == "ddim" else None,
            ddim_eta=1.0,
            generator=torch.Generator().manual_seed(3),
        )
        return plans[:, 1:, :]  # the sampled steps

    plain, up, down = run(1.0, 0.0), run(1.0, 1.0), run(-1.0, 1.0)
    shift_up = (up[..., A] - plain[..., A]).mean().item()
    shift_down = (down[..., A] - plain[..., A]).mean().item()
    assert shift_up > 0.02 and shift_down < -0.02, (shift_up, shift_down)
    torch.testing.assert_close(up[..., A + 1], plain[..., A + 1])  # J ignores coordinate 1
    torch.testing.assert_close(up[..., :A], plain[..., :A])


# -- learning ------------------------------------------------------------------------------
def test_training_losses_fall_on_a_tiny_dataset(pm_data: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    agent = make_agent(pm_data, tmp_path, learning_rate=1e-3, grad_accumulate=1, ema_start=50)
    history = [agent.update(step) for step in range(1, 201)]
    diff = [m["train/diffusion_loss"] for m in history]
    val = [m["train/value_loss"] for m in history]
    first, last = np.mean(diff[:20]), np.mean(diff[-20:])
    assert last < 0.6 * first, (first, last)  # random actions: a high floor
    assert np.mean(val[-20:]) < 0.5 * np.mean(val[:20]), (val[:20], val[-20:])
    # the trained planner's actions lie within the bounds, whatever the state
    states = np.array([[9.0, 0.0], [-8.0, 2.0], [40.0, -25.0], [0.0, 0.0]], dtype=np.float32)
    acts = agent.act(states)
    assert acts.shape == (4, 1) and np.all(np.abs(acts) <= 1.0)
    assert agent.act(states[0]).shape == (1,)
    agent.dcfg.plan_batch = 1  # a single candidate (GroupNorm must not see single numbers)
    assert np.abs(agent.act(states[0])).max() <= 1.0
    # and the bound is enforced: a plan whose first action lies far outside is clipped
    agent.act_shift = agent.act_shift + 50.0
    assert np.all(agent.act(states) == 1.0)


def test_act_executes_the_first_action_of_the_highest_value_plan(
    pm_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = make_agent(pm_data, tmp_path)
    K, H = agent.dcfg.plan_batch, agent.dcfg.horizon
    plans = torch.zeros(1, K, H, 3)  # [act, pos, vel], normalised
    plans[0, :, 0, 0] = torch.linspace(-0.5, 0.5, K)  # first actions
    plans[0, :, 1, 0] = 9.0  # later actions are never executed
    values = torch.zeros(1, K)
    values[0, 2] = 5.0
    monkeypatch.setattr(agent, "plan", lambda obs, sample_steps=None: (plans, values))
    act = agent.act(np.array([8.0, 0.0], dtype=np.float32))
    want = plans[0, 2, 0, 0] * agent.act_scale + agent.act_shift
    np.testing.assert_allclose(act, want.numpy(), rtol=1e-6)


def test_value_training_stops_and_ema_follows_the_schedule(pm_data: Path, tmp_path: Path) -> None:
    """value_updates = 2; EMA every update, a plain copy before update ema_start + 1 = 3."""
    agent = make_agent(pm_data, tmp_path, value_updates=2, ema_every=1, ema_start=2)

    def weights(net: nn.Module) -> dict[str, Tensor]:
        return {k: v.clone() for k, v in net.state_dict().items()}

    value0 = weights(agent.value)
    for step in (1, 2):
        assert "train/value_loss" in agent.update(step)
        assert all(
            torch.equal(v, agent.net.state_dict()[k]) for k, v in weights(agent.ema_net).items()
        )
    value2, net2 = weights(agent.value), weights(agent.net)
    assert any(not torch.equal(value0[k], value2[k]) for k in value0)
    assert "train/value_loss" not in agent.update(3)
    assert all(torch.equal(value2[k], v) for k, v in agent.value.state_dict().items())
    assert all(torch.equal(value2[k], v) for k, v in agent.ema_value.state_dict().items())
    net3 = agent.net.state_dict()
    for k, v in agent.ema_net.state_dict().items():  # θ̄ = 0.995·θ₂ + 0.005·θ₃
        torch.testing.assert_close(v, 0.995 * net2[k] + 0.005 * net3[k])
    assert any(not torch.equal(net2[k], net3[k]) for k in net2)


# -- the CLI -------------------------------------------------------------------------------
def cli_args(data: Path, root: Path, steps: int, *extra: str) -> list[str]:
    return [
        "train", "diffuser", "--dataset", str(data), "--run.total-steps", str(steps),
        "--run.eval-every", "10", "--run.eval-episodes", "1", "--run.checkpoint-every", "10",
        "--run.keep-checkpoints", "10", "--run.run-root", str(root), "--run.no-progress",
        "--run.no-tensorboard", "--run.seed", "3", "--agent.horizon", "8", "--agent.dim", "16",
        "--agent.dim-mults", "1", "4", "--agent.n-diffusion-steps", "5",
        "--agent.plan-batch", "4", "--agent.batch-size", "8", "--agent.log-every", "5",
        "--agent.sampler", "ddim", "--agent.sample-steps", "2", *extra,
    ]  # fmt: skip


def test_cli_trains_checkpoints_and_resumes_exactly(
    pm_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full_root = tmp_path / "full"
    assert main(cli_args(pm_data, full_root, 20)) == 0
    full = only_run(full_root, "diffuser")
    keys = {r["key"] for r in read_metrics(full / "metrics.csv")}
    assert {"train/diffusion_loss", "train/value_loss", "eval/return"} <= keys
    summary = json.loads((full / "summary.json").read_text())
    assert summary["final"]["eval/length"] == 30.0
    update = DiffuserAgent.update

    def killed(self: DiffuserAgent, step: int) -> dict[str, float]:
        if step == 15:
            raise KeyboardInterrupt
        return update(self, step)

    monkeypatch.setattr(DiffuserAgent, "update", killed)
    root = tmp_path / "killed"
    assert main(cli_args(pm_data, root, 20)) == 130
    run_dir = only_run(root, "diffuser")
    latest = find_latest(run_dir)
    assert latest is not None and load_checkpoint(latest)["step"] == 10
    monkeypatch.setattr(DiffuserAgent, "update", update)
    assert main(["train", "--resume", str(run_dir)]) == 0
    got = json.loads((run_dir / "summary.json").read_text())["final"]
    assert got == summary["final"]
    a = load_checkpoint(find_latest(full))["agent"]  # type: ignore[arg-type]
    b = load_checkpoint(find_latest(run_dir))["agent"]  # type: ignore[arg-type]
    for part in ("net", "ema_net", "value", "ema_value"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), (part, key)
    # and `mbrl eval` re-plans from the final checkpoint
    assert main(["eval", str(run_dir), "--episodes", "1"]) == 0
