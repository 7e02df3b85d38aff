"""Native SAC: the update against hand-written maths, batched critics, hooks, learning."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from mbrl.agents.sac import SAC, BatchedLinear, CriticEnsemble, SACConfig
from mbrl.cli import main
from mbrl.envs import get_env_spec
from mbrl.evaluation import evaluate_policy
from mbrl.types import TransitionBatch

torch.set_num_threads(1)

LOW = np.array([-2.0, -1.0], dtype=np.float32)
HIGH = np.array([2.0, 1.0], dtype=np.float32)


def tiny_sac(cls: type[SAC] = SAC, **overrides: object) -> SAC:
    torch.manual_seed(0)
    kwargs: dict[str, object] = {
        "hidden_sizes": (5,),
        "num_critics": 2,
        "batch_size": 6,
        "init_alpha": 0.5,
        "learning_rate": 1e-2,
        "tau": 0.1,
    }
    kwargs.update(overrides)
    return cls(3, 2, SACConfig(**kwargs), LOW, HIGH)


def tiny_batch(b: int = 6) -> TransitionBatch:
    g = torch.Generator().manual_seed(1)
    terminated = torch.zeros(b, dtype=torch.bool)
    truncated = torch.zeros(b, dtype=torch.bool)
    terminated[0] = True
    truncated[1] = True
    return TransitionBatch(
        obs=torch.randn(b, 3, generator=g),
        act=torch.rand(b, 2, generator=g) * torch.as_tensor(HIGH - LOW) + torch.as_tensor(LOW),
        rew=torch.randn(b, generator=g),
        next_obs=torch.randn(b, 3, generator=g),
        terminated=terminated,
        truncated=truncated,
    )


# -- independent re-implementation, written out with explicit tensor maths -------------
def hand_actor(p: list[Tensor], obs: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """p = [W1 (H,O), b1, W2 (2A,H), b2]; returns (act, logp) for noise eps."""
    h = torch.relu(obs @ p[0].T + p[1])
    out = h @ p[2].T + p[3]
    mean, log_std = out[:, :2], out[:, 2:].clamp(-20.0, 2.0)
    u = mean + log_std.exp() * eps
    scale = torch.as_tensor((HIGH - LOW) / 2)
    center = torch.as_tensor((HIGH + LOW) / 2)
    normal = torch.distributions.Normal(mean, log_std.exp())
    logp = normal.log_prob(u).sum(1) - torch.log(scale * (1 - torch.tanh(u) ** 2)).sum(1)
    return center + scale * torch.tanh(u), logp


def hand_critic(p: list[Tensor], obs: Tensor, act: Tensor) -> Tensor:
    """p = [W1 (N,in,H), b1 (N,1,H), W2 (N,H,1), b2 (N,1,1)]; returns (N, B), member by member."""
    x = torch.cat([obs, act], 1)
    qs = []
    for i in range(p[0].shape[0]):
        h = torch.relu(x @ p[0][i] + p[1][i])
        qs.append((h @ p[2][i] + p[3][i]).squeeze(1))
    return torch.stack(qs)


def adam_first_step(params: list[Tensor], grads: tuple[Tensor, ...], lr: float) -> list[Tensor]:
    """Adam's first step: m̂ = g and v̂ = g² after bias correction, so Δ = −lr g/(|g| + ε)."""
    return [p - lr * g / (g.abs() + 1e-8) for p, g in zip(params, grads, strict=True)]


def leaves(tensors: list[Tensor]) -> list[Tensor]:
    return [t.detach().clone().requires_grad_(True) for t in tensors]


def test_update_matches_hand_computed_losses() -> None:
    sac = tiny_sac()
    batch = tiny_batch()
    lr, gamma, tau, alpha = 1e-2, 0.99, 0.1, 0.5
    actor_p = leaves([sac.actor.net[0].weight, sac.actor.net[0].bias])
    actor_p += leaves([sac.actor.net[2].weight, sac.actor.net[2].bias])
    critic_p = leaves([t for layer in sac.critic.layers for t in (layer.weight, layer.bias)])
    target_p = [t.detach().clone() for t in sac.target_critic.parameters()]

    torch.manual_seed(123)
    out = sac.update(batch)
    torch.manual_seed(123)  # the update draws next-state noise first, then state noise
    eps_next, eps = torch.randn(6, 2), torch.randn(6, 2)

    # Critic: y = r + γ(1 − terminated)(min_i Q̄_i(s', a') − α log π(a'|s')).
    next_act, next_logp = hand_actor([p.detach() for p in actor_p], batch.next_obs, eps_next)
    next_q = hand_critic(target_p, batch.next_obs, next_act).min(0).values
    y = batch.rew + gamma * (1 - batch.terminated.float()) * (next_q - alpha * next_logp)
    q = hand_critic(critic_p, batch.obs, batch.act)
    critic_loss = sum(((q[i] - y) ** 2).mean() for i in range(2))
    assert isinstance(critic_loss, Tensor)
    assert out["train/critic_loss"] == pytest.approx(critic_loss.item(), abs=1e-5)
    assert out["train/q_mean"] == pytest.approx(q.mean().item(), abs=1e-5)
    new_critic = adam_first_step(critic_p, torch.autograd.grad(critic_loss, critic_p), lr)

    # Actor, against the updated critics: mean(α log π(ã|s) − min_i Q_i(s, ã)).
    act, logp = hand_actor(actor_p, batch.obs, eps)
    q_pi = hand_critic([p.detach() for p in new_critic], batch.obs, act).min(0).values
    actor_loss = (alpha * logp - q_pi).mean()
    assert out["train/actor_loss"] == pytest.approx(actor_loss.item(), abs=1e-5)
    assert out["train/entropy"] == pytest.approx(-logp.mean().item(), abs=1e-5)
    new_actor = adam_first_step(actor_p, torch.autograd.grad(actor_loss, actor_p), lr)

    # Temperature: −mean(log α (log π + H̄)), H̄ = −|A| = −2.
    log_alpha = torch.tensor(math.log(alpha), requires_grad=True)
    alpha_loss = -(log_alpha * (logp.detach() - 2.0)).mean()
    assert out["train/alpha_loss"] == pytest.approx(alpha_loss.item(), abs=1e-5)
    assert out["train/alpha"] == pytest.approx(alpha, abs=1e-7)
    (new_log_alpha,) = adam_first_step([log_alpha], torch.autograd.grad(alpha_loss, log_alpha), lr)

    # Parameters after the step, and Polyak-averaged targets.
    got_critic = [t for layer in sac.critic.layers for t in (layer.weight, layer.bias)]
    for got, want in zip(got_critic, new_critic, strict=True):
        torch.testing.assert_close(got, want.detach(), atol=1e-6, rtol=1e-5)
    got_actor = [sac.actor.net[0].weight, sac.actor.net[0].bias]
    got_actor += [sac.actor.net[2].weight, sac.actor.net[2].bias]
    for got, want in zip(got_actor, new_actor, strict=True):
        torch.testing.assert_close(got, want.detach(), atol=1e-6, rtol=1e-5)
    assert sac.log_alpha.item() == pytest.approx(new_log_alpha.item(), abs=1e-6)
    for got, old, new in zip(sac.target_critic.parameters(), target_p, new_critic, strict=True):
        torch.testing.assert_close(got, old + tau * (new.detach() - old), atol=1e-6, rtol=1e-5)


def test_batched_critics_equal_separate_mlps() -> None:
    torch.manual_seed(0)
    critics = CriticEnsemble(obs_dim=4, act_dim=2, hidden_sizes=(8, 7), n=3)
    obs, act = torch.randn(10, 4), torch.randn(10, 2)
    batched = critics(obs, act)
    assert batched.shape == (3, 10)
    for i in range(3):
        linears = [nn.Linear(6, 8), nn.Linear(8, 7), nn.Linear(7, 1)]
        mlp = nn.Sequential(linears[0], nn.ReLU(), linears[1], nn.ReLU(), linears[2])
        with torch.no_grad():
            for linear, layer in zip(linears, critics.layers, strict=True):
                assert isinstance(layer, BatchedLinear)
                linear.weight.copy_(layer.weight[i].T)
                linear.bias.copy_(layer.bias[i, 0])
        torch.testing.assert_close(batched[i], mlp(torch.cat([obs, act], 1)).squeeze(1))
    # Members differ: they are independent networks, not copies.
    assert not torch.allclose(batched[0], batched[1])


def test_truncated_rows_bootstrap_and_terminated_rows_do_not() -> None:
    sac = tiny_sac()
    batch = tiny_batch()  # row 0 terminated, row 1 truncated, the rest neither
    next_act = torch.zeros(6, 2)
    next_logp = torch.full((6,), -0.3)
    with torch.no_grad():
        target = sac.critic_target(batch, next_act, next_logp)
        soft_v = sac.target_critic(batch.next_obs, next_act).min(0).values + 0.5 * 0.3
    assert target[0] == batch.rew[0]  # terminated: no bootstrap at all
    torch.testing.assert_close(target[1:], batch.rew[1:] + 0.99 * soft_v[1:])
    assert abs(target[1] - batch.rew[1]) > 1e-3  # truncated: bootstraps like any other row


class Recording(SAC):
    """Overrides every hook: records the arguments and adds known amounts."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.calls: dict[str, tuple[int, ...]] = {}

    def extra_critic_loss(self, batch: TransitionBatch, q_values: Tensor) -> Tensor:
        self.calls["critic"] = tuple(q_values.shape)
        return q_values.new_tensor(7.0)

    def extra_actor_loss(
        self, batch: TransitionBatch, act: Tensor, logp: Tensor, q: Tensor
    ) -> Tensor:
        self.calls["actor"] = (*act.shape, *logp.shape, *q.shape)
        return 2.0 * logp.mean()


def test_hooks_are_called_and_change_the_losses() -> None:
    batch = tiny_batch()
    base, hooked = tiny_sac(), tiny_sac(Recording)
    torch.manual_seed(5)
    want = base.update(batch)
    torch.manual_seed(5)
    got = hooked.update(batch)
    assert isinstance(hooked, Recording)
    assert hooked.calls == {"critic": (2, 6), "actor": (6, 2, 6, 2, 6)}
    assert got["train/critic_loss"] == pytest.approx(want["train/critic_loss"] + 7.0, abs=1e-5)
    # The constant does not change the critic's gradient, so the actor sees the same critic;
    # 2·mean(log π) = −2·entropy.
    assert got["train/actor_loss"] == pytest.approx(
        want["train/actor_loss"] - 2.0 * want["train/entropy"], abs=1e-5
    )


def test_critic_target_hook_replaces_the_target() -> None:
    class ZeroTarget(SAC):
        def critic_target(
            self, batch: TransitionBatch, next_act: Tensor, next_logp: Tensor
        ) -> Tensor:
            assert next_act.shape == (6, 2) and next_logp.shape == (6,)
            return torch.zeros_like(batch.rew)

    sac = tiny_sac(ZeroTarget)
    batch = tiny_batch()
    with torch.no_grad():
        q = sac.critic(batch.obs, batch.act)
    out = sac.update(batch)
    assert out["train/critic_loss"] == pytest.approx(q.square().mean(1).sum().item(), abs=1e-6)


def test_state_dict_round_trip_continues_identically() -> None:
    a, batch = tiny_sac(), tiny_batch()
    a.update(batch)
    b = tiny_sac(init_alpha=0.9)  # different temperature, fresh optimizers
    b.load_state_dict(a.state_dict())
    torch.manual_seed(9)
    out_a = a.update(batch)
    torch.manual_seed(9)
    out_b = b.update(batch)
    assert out_a == out_b
    for p, q in zip(a.actor.parameters(), b.actor.parameters(), strict=True):
        assert torch.equal(p, q)


def test_actions_stay_in_bounds_and_deterministic_is_repeatable() -> None:
    sac = tiny_sac()
    obs = np.random.default_rng(0).normal(size=(500, 3)).astype(np.float32) * 10
    act = sac.act(obs)
    assert act.shape == (500, 2) and act.dtype == np.float32
    assert (act >= LOW).all() and (act <= HIGH).all()
    assert np.array_equal(sac.act(obs[0], deterministic=True), sac.act(obs[0], deterministic=True))
    assert sac.act(obs[0]).shape == (2,)


def test_config_errors_name_the_field() -> None:
    from mbrl.errors import MbrlError

    with pytest.raises(MbrlError, match="num_critics"):
        SACConfig(num_critics=0)
    with pytest.raises(MbrlError, match="log_std_min"):
        SACConfig(log_std_min=3.0)


def test_sac_learns_point_mass(tmp_path: Path) -> None:
    """2,500 steps on PointMass1D-v0 beat the uniform-random policy clearly (~15 s here).

    The reward is ~1/20 of the usual scale, so α starts at 0.01 instead of 1 and the nets
    are small; seeded, so the check is repeatable. The optimum is about −0.82 and random
    actions get about −1.9 on the evaluation seeds.
    """
    root = tmp_path / "runs"
    args = [
        "train", "sac", "--run.env", "PointMass1D-v0", "--run.total-steps", "2500",
        "--run.seed", "0", "--run.eval-every", "0", "--run.eval-episodes", "10",
        "--run.checkpoint-every", "0", "--run.run-root", str(root), "--run.no-progress",
        "--run.no-tensorboard", "--agent.learning-starts", "300", "--agent.hidden-sizes",
        "64", "64", "--agent.batch-size", "64", "--agent.learning-rate", "0.001",
        "--agent.init-alpha", "0.01", "--agent.log-every", "500",
    ]  # fmt: skip
    assert main(args) == 0
    (run_dir,) = (root / "PointMass1D-v0" / "sac").iterdir()
    learned = json.loads((run_dir / "summary.json").read_text())["final"]["eval/return"]

    rng = np.random.default_rng(0)
    random_return = evaluate_policy(
        get_env_spec("PointMass1D-v0"),
        lambda obs: rng.uniform(-1, 1, size=1).astype(np.float32),
        episodes=10,
        seed=0,
    )["eval/return"]
    assert random_return < -1.5
    assert learned > random_return + 0.4, (learned, random_return)


def test_sac_config_from_flat_takes_sacs_fields_by_name() -> None:
    from mbrl.agents.mbpo import MBPOConfig
    from mbrl.agents.ravl import RAVLConfig

    mbpo = MBPOConfig(num_critics=3, hidden_sizes=[64, 64], updates_per_step=7)
    sac = mbpo.sac_config()
    assert (sac.num_critics, sac.hidden_sizes, sac.updates_per_step) == (3, (64, 64), 7)
    assert sac.learning_starts == mbpo.learning_starts and sac.gamma == mbpo.gamma
    ravl = RAVLConfig(num_critics=5, log_std_min=-4.0).sac_config()
    # offline: no warm-up, and fields SAC does not share (eta, rollout_length) are ignored
    assert (ravl.num_critics, ravl.log_std_min, ravl.learning_starts) == (5, -4.0, 0)
    assert ravl.updates_per_step == SACConfig().updates_per_step
