"""ModelEnv: propagation modes, TS1 statistics, masking, planning objective, rollouts."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from torch import Tensor

from mbrl.envs import EnvSpec
from mbrl.errors import MbrlError
from mbrl.models.ensemble import EnsembleConfig, ProbabilisticEnsemble
from mbrl.models.model_env import PROPAGATIONS, ModelEnv

torch.set_num_threads(1)

O, A = 3, 2


class TagModel:
    """A fake ensemble whose member ``e`` predicts Δobs = 0.1·(e+1) and reward = e.

    Makes the member behind every prediction observable in the outputs.
    """

    obs_dim, act_dim, out_dim, learned_termination = O, A, O + 1, False

    def __init__(self, num_members: int = 5, elites: Sequence[int] | None = None) -> None:
        self.num_members = num_members
        self.elite_idx = torch.tensor(list(elites) if elites is not None else range(num_members))

    def predict_grouped(
        self,
        obs: Tensor,
        act: Tensor,
        counts: Sequence[int],
        order: Tensor | None = None,
        noise: Tensor | None = None,
        out: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        ids = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
        member = ids if order is None else torch.empty_like(ids).index_copy_(0, order, ids)
        mean = torch.cat([0.1 * (member[:, None] + 1.0).expand(-1, O), member[:, None]], 1)
        return mean.float(), None


def ensemble(**kw: object) -> ProbabilisticEnsemble:
    torch.manual_seed(0)
    base: dict[str, object] = {"num_members": 5, "num_elites": 3, "hidden_size": 16}
    base.update(kw)
    m = ProbabilisticEnsemble(O, A, EnsembleConfig(**base))  # type: ignore[arg-type]
    with torch.no_grad():  # make the members clearly different and noisy
        for w in m.weights:
            w.mul_(3.0)
    return m


def reward_fn(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    return next_obs[:, 0] - 0.1 * act.square().sum(1)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def run(env: ModelEnv, seed: int, steps: int = 3, B: int = 11) -> list[Tensor]:
    start = torch.randn(B, O, generator=gen(100))
    acts = torch.randn(steps, B, A, generator=gen(101))
    env.reset(start, generator=gen(seed))
    out = []
    for t in range(steps):
        st = env.step(acts[t])
        out += [st.next_obs, st.rew, st.terminated]
    return out


@pytest.mark.parametrize("propagation", PROPAGATIONS)
def test_shapes_and_seeded_determinism(propagation: str) -> None:
    env = ModelEnv(ensemble(), propagation=propagation, reward_fn=reward_fn)
    a, b, c = run(env, 0), run(env, 0), run(env, 1)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert a[0].shape == (11, O) and a[1].shape == (11,) and a[2].dtype == torch.bool
    if propagation != "mean":  # stochastic: another seed gives other samples
        assert not torch.equal(a[0], c[0])
    else:  # deterministic mean of the elites' means
        for x, y in zip(a, c, strict=True):
            assert torch.equal(x, y)


def test_fixed_member_keeps_members_and_matches_that_members_prediction() -> None:
    m = ensemble()
    env = ModelEnv(m, propagation="fixed_member", deterministic=True)
    obs = env.reset(torch.randn(40, O, generator=gen(0)), generator=gen(1))
    member = env.last_member.clone()
    assert set(member.tolist()) <= set(m.elite_idx.tolist())
    assert len(set(member.tolist())) > 1
    for t in range(4):
        act = torch.randn(40, A, generator=gen(10 + t))
        st = env.step(act)
        assert torch.equal(env.last_member, member)
        full, _ = m.predict(obs, act)
        expected = obs + full[member, torch.arange(40), :O]
        torch.testing.assert_close(st.next_obs, expected, atol=1e-5, rtol=1e-5)
        obs = st.next_obs


def test_episode_member_uses_one_member_until_resampled() -> None:
    env = ModelEnv(TagModel(5), propagation="episode_member")
    env.reset(torch.zeros(9, O), generator=gen(0))
    first = env.member
    assert first is not None
    for _ in range(3):
        st = env.step(torch.zeros(9, A))
        assert torch.all(st.rew == first)
    env.reset(torch.zeros(9, O))  # reset keeps the member (one model per episode)
    assert env.member == first
    env.set_member(2)
    assert torch.all(env.step(torch.zeros(9, A)).rew == 2)
    seen = {env.resample_member() for _ in range(40)}
    assert seen == {0, 1, 2, 3, 4}
    with pytest.raises(MbrlError, match="member"):
        env.set_member(5)


def test_random_elite_is_uniform_and_independent_per_step() -> None:
    """TS1: each sample draws an elite uniformly, independently at every step."""
    elites = [0, 2, 3, 5, 6]  # non-contiguous; members 1 and 4 are not elites
    model = TagModel(7, elites)
    B, K = 20_003, len(elites)  # not divisible by 7 or 5
    env = ModelEnv(model, propagation="random_elite")
    env.reset(torch.zeros(B, O), generator=gen(0))
    choices = []
    for _ in range(3):
        st = env.step(torch.zeros(B, A))
        assert torch.equal(st.rew.long(), env.last_member)  # the tag equals the member
        choices.append(st.rew.long())
    pos = {e: i for i, e in enumerate(elites)}
    for c in choices:
        counts = torch.bincount(c, minlength=7)
        assert counts[1] == 0 and counts[4] == 0
        expected = B / K
        chi2 = float(((counts[elites] - expected) ** 2 / expected).sum())
        assert chi2 < 25.0  # 4 dof; p < 1e-4
    # independence of consecutive choices: K×K contingency table, 16 dof
    a = torch.tensor([pos[int(x)] for x in choices[0]])
    b = torch.tensor([pos[int(x)] for x in choices[1]])
    table = torch.zeros(K, K)
    table.index_put_((a, b), torch.ones(B), accumulate=True)
    exp = table.sum(1, keepdim=True) * table.sum(0, keepdim=True) / B
    chi2 = float(((table - exp) ** 2 / exp).sum())
    assert chi2 < 50.0  # 16 dof; p < 1e-4
    # choices are per sample: not the same member for all, not constant across steps
    assert float((choices[0] == choices[1]).float().mean()) == pytest.approx(1 / K, abs=0.02)


def test_random_elite_counts_vary_like_a_multinomial() -> None:
    """Independent choices give multinomial counts (chi² ≈ 4 on average for 5 elites),
    unlike a balanced split (every member exactly B/K rows, chi² ≈ 0)."""
    env = ModelEnv(TagModel(5), propagation="random_elite")
    B = 1000
    env.reset(torch.zeros(B, O), generator=gen(7))
    stats = []
    for _ in range(40):
        counts = torch.bincount(env.step(torch.zeros(B, A)).rew.long(), minlength=5).float()
        stats.append(float(((counts - B / 5) ** 2 / (B / 5)).sum()))
    assert 2.0 < sum(stats) / len(stats) < 7.0


def test_random_elite_fast_path_equals_all_members_path() -> None:
    """The one-member-per-sample path gives the same samples as running every elite."""
    m = ensemble()
    env = ModelEnv(m, propagation="random_elite", reward_fn=reward_fn)
    start = torch.randn(37, O, generator=gen(0))
    act = torch.randn(37, A, generator=gen(1))
    env.reset(start, generator=gen(2))
    fast = env.step(act)
    member = env.last_member
    env.reset(start, generator=gen(2))
    slow = env.step(act, with_uncertainty=True)
    assert torch.equal(env.last_member, member)
    torch.testing.assert_close(fast.next_obs, slow.next_obs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.rew, slow.rew, atol=1e-5, rtol=1e-5)
    # and the fast path's sample is mean + std·ε of the chosen member
    full_mean, full_logvar = m.predict(start, act)
    assert full_logvar is not None
    rows = torch.arange(37)
    mu, std = full_mean[member, rows, :O], full_logvar[member, rows, :O].mul(0.5).exp()
    z = (fast.next_obs - start - mu) / std
    assert z.abs().max() < 6 and 0.5 < float(z.std()) < 1.5


def test_uncertainty_matches_hand_computation() -> None:
    m = ensemble()
    m.set_elites([0, 2, 4])
    env = ModelEnv(m, propagation="random_elite")
    obs = torch.randn(6, O, generator=gen(0))
    act = torch.randn(6, A, generator=gen(1))
    env.reset(obs, generator=gen(2))
    st = env.step(act, with_uncertainty=True)
    mean, logvar = m.predict(obs, act)
    assert logvar is not None
    mean, std = mean[[0, 2, 4]], logvar[[0, 2, 4]].mul(0.5).exp()
    aleatoric = torch.stack([std[k].norm(dim=1) for k in range(3)]).max(0).values
    avg = mean.mean(0)
    epistemic = torch.stack([(mean[k] - avg).norm(dim=1) for k in range(3)]).max(0).values
    assert st.aleatoric is not None and st.epistemic is not None
    torch.testing.assert_close(st.aleatoric, aleatoric, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(st.epistemic, epistemic, atol=1e-5, rtol=1e-5)
    assert env.step(act).aleatoric is None  # only when asked


def test_mean_mode_averages_elite_means() -> None:
    m = ensemble()
    env = ModelEnv(m, propagation="mean")
    obs = torch.randn(8, O, generator=gen(0))
    act = torch.randn(8, A, generator=gen(1))
    env.reset(obs)
    st = env.step(act)
    mean, _ = m.predict(obs, act)
    expected = mean[m.elite_idx].mean(0)
    torch.testing.assert_close(st.next_obs, obs + expected[:, :O], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(st.rew, expected[:, O], atol=1e-5, rtol=1e-5)  # model reward


def test_termination_masks_rest_of_rollout() -> None:
    def term(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
        return next_obs[:, 0] > 0.45

    spec = EnvSpec(id="test", termination_fn=term)
    env = ModelEnv(TagModel(5), spec, propagation="fixed_member")
    env.reset(torch.zeros(50, O), generator=gen(0))
    member = env.last_member
    steps_to_end = torch.floor(0.45 / (0.1 * (member + 1)) + 1e-6).long() + 1
    for t in range(1, 7):
        st = env.step(torch.zeros(50, A))
        ended = steps_to_end <= t
        assert torch.equal(st.terminated, ended)
        # a sample earns its reward up to and including the terminating step
        live = steps_to_end >= t
        torch.testing.assert_close(st.rew, torch.where(live, member.float(), 0.0))
        # a terminated sample's observation stays where it ended
        final = 0.1 * (member + 1) * torch.minimum(steps_to_end, torch.tensor(t))
        torch.testing.assert_close(st.next_obs[:, 0], final.float())


def test_never_terminates_spec_and_learned_termination() -> None:
    spec = EnvSpec(id="test", termination_fn=lambda o, a, n: torch.ones(len(o), dtype=torch.bool),
                   never_terminates=True)  # fmt: skip
    env = ModelEnv(TagModel(3), spec)
    env.reset(torch.zeros(4, O))
    assert not env.step(torch.zeros(4, A)).terminated.any()

    m = ensemble(learned_termination=True)
    with torch.no_grad():  # termination logit: +/- depending on the first obs feature
        m.weights[-1].zero_()
        m.biases[-1].zero_()
        m.weights[0].zero_()
        m.biases[0].fill_(1.0)
        m.weights[-1][:, :, m.out_dim - 1] = 1.0
        m.biases[-1][:, :, m.out_dim - 1] = -100.0  # never terminates ...
    env = ModelEnv(m, deterministic=True)
    env.reset(torch.zeros(4, O))
    assert not env.step(torch.zeros(4, A)).terminated.any()
    with torch.no_grad():
        m.biases[-1][:, :, m.out_dim - 1] = 100.0  # ... always terminates
    env.reset(torch.zeros(4, O))
    assert env.step(torch.zeros(4, A)).terminated.all()


def test_reward_source() -> None:
    spec = EnvSpec(id="test", reward_fn=lambda o, a, n: torch.full((len(o),), 7.0))
    env = ModelEnv(TagModel(3), spec, propagation="episode_member")
    env.reset(torch.zeros(4, O))
    env.set_member(1)
    assert torch.all(env.step(torch.zeros(4, A)).rew == 7.0)
    env = ModelEnv(TagModel(3), spec, propagation="episode_member", reward_source="model")
    env.reset(torch.zeros(4, O))
    env.set_member(1)
    assert torch.all(env.step(torch.zeros(4, A)).rew == 1.0)
    with pytest.raises(MbrlError, match="Did you mean 'model'"):
        ModelEnv(TagModel(3), reward_source="modle")
    # "planning": the spec's shaped planning reward, and a clear error without one
    shaped = EnvSpec(
        id="test",
        reward_fn=lambda o, a, n: torch.full((len(o),), 7.0),
        planning_reward_fn=lambda o, a, n: torch.full((len(o),), 0.5),
    )
    env = ModelEnv(TagModel(3), shaped, propagation="episode_member", reward_source="planning")
    env.reset(torch.zeros(4, O))
    env.set_member(1)
    assert torch.all(env.step(torch.zeros(4, A)).rew == 0.5)
    with pytest.raises(MbrlError, match="env 'test' registers none"):
        ModelEnv(TagModel(3), spec, reward_source="planning")


def reference_returns(
    m: ProbabilisticEnsemble, actions: Tensor, start: Tensor, member: int, term_at: float
) -> Tensor:
    """Slow loop: one sequence at a time, full forward, pick ``member``'s mean."""
    P, H, _ = actions.shape
    out = torch.zeros(P)
    for p in range(P):
        obs = start.clone()[None]
        for t in range(H):
            act = actions[p, t][None]
            mean, _ = m.predict(obs, act)
            next_obs = obs + mean[member, :, :O]
            out[p] += reward_fn(obs, act, next_obs)[0]
            if next_obs[0, 0] > term_at:
                break
            obs = next_obs
    return out


def test_evaluate_action_sequences_matches_reference_loop() -> None:
    m = ensemble()
    spec = EnvSpec(id="test", termination_fn=lambda o, a, n: n[:, 0] > 1.0, reward_fn=reward_fn)
    env = ModelEnv(m, spec, propagation="episode_member", deterministic=True)
    env.set_member(2)
    actions = torch.randn(6, 5, A, generator=gen(0))
    start = torch.randn(O, generator=gen(1))
    ret = env.evaluate_action_sequences(actions, start, num_particles=3)
    ref = reference_returns(m, actions, start, 2, term_at=1.0)
    assert ret.shape == (6,)
    torch.testing.assert_close(ret, ref, atol=1e-4, rtol=1e-5)
    # batched over start states: (S, P, H, A) equals one call per start state
    starts = torch.randn(2, O, generator=gen(2))
    acts = torch.randn(2, 6, 5, A, generator=gen(3))
    both = env.evaluate_action_sequences(acts, starts, num_particles=2)
    assert both.shape == (2, 6)
    for s in range(2):
        one = env.evaluate_action_sequences(acts[s], starts[s], num_particles=2)
        torch.testing.assert_close(both[s], one, atol=1e-5, rtol=1e-5)


def test_evaluate_action_sequences_particles_average_members() -> None:
    """TS∞ with the tag model: each particle's return is 5 steps × its member id."""
    env = ModelEnv(TagModel(4), propagation="fixed_member")
    actions = torch.zeros(3, 5, A)
    ret = env.evaluate_action_sequences(actions, torch.zeros(O), num_particles=2000,
                                        generator=gen(0))  # fmt: skip
    # mean member id over 4 uniformly chosen members is 1.5 -> mean return 7.5
    torch.testing.assert_close(ret, torch.full((3,), 7.5), atol=0.25, rtol=0)
    with pytest.raises(MbrlError, match="start_obs"):
        env.evaluate_action_sequences(actions, torch.zeros(2, O), 2)


def test_rollout_drops_rows_after_termination() -> None:
    def term(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
        return next_obs[:, 0] > 0.25

    batch_sizes: list[int] = []

    def policy(obs: Tensor) -> Tensor:
        batch_sizes.append(obs.shape[0])
        return torch.ones(obs.shape[0], A)

    env = ModelEnv(TagModel(5), EnvSpec(id="test", termination_fn=term), propagation="fixed_member")
    tb = env.rollout(policy, torch.zeros(100, O), horizon=4, generator=gen(0))
    # member e moves 0.1·(e+1) per step: ends after ceil(0.25 / (0.1(e+1)))+... steps
    env.reset(torch.zeros(100, O), generator=gen(0))
    member = env.last_member
    life = torch.tensor([3, 2, 1, 1, 1])[member].clamp(max=4)  # steps until obs > 0.25
    assert len(tb) == int(life.sum())
    assert batch_sizes[0] == 100 and batch_sizes == sorted(batch_sizes, reverse=True)
    assert int(tb.terminated.sum()) == 100  # every sample terminates within 4 steps
    assert not tb.truncated.any()
    torch.testing.assert_close(tb.next_obs - tb.obs, 0.1 * (tb.rew[:, None] + 1).expand(-1, O))
    assert torch.all(tb.act == 1.0)


def test_rollout_truncates_at_horizon_and_real_ensemble() -> None:
    m = ensemble(num_members=1, num_elites=1)  # E = 1 works
    env = ModelEnv(m, propagation="random_elite", reward_fn=reward_fn)
    tb = env.rollout(lambda o: torch.zeros(len(o), A), torch.randn(16, O, generator=gen(0)), 3)
    assert len(tb) == 48
    assert int(tb.truncated.sum()) == 16 and bool(tb.truncated[-16:].all())
    assert not tb.terminated.any()
    torch.testing.assert_close(tb.obs[16:32], tb.next_obs[:16])  # steps chain


def test_deterministic_ensemble_has_no_noise() -> None:
    m = ensemble(deterministic=True)
    env = ModelEnv(m, propagation="random_elite")
    obs = torch.randn(10, O, generator=gen(0))
    act = torch.randn(10, A, generator=gen(1))
    env.reset(obs, generator=gen(2))
    st = env.step(act)
    mean, logvar = m.predict(obs, act)
    assert logvar is None
    expected = obs + mean[env.last_member, torch.arange(10), :O]
    torch.testing.assert_close(st.next_obs, expected, atol=1e-5, rtol=1e-5)
    assert st.aleatoric is None
    st2 = env.step(act, with_uncertainty=True)
    assert st2.aleatoric is not None and torch.all(st2.aleatoric == 0)


def test_errors() -> None:
    with pytest.raises(MbrlError, match="Did you mean 'random_elite'"):
        ModelEnv(TagModel(3), propagation="random_elit")
    env = ModelEnv(TagModel(3))
    with pytest.raises(MbrlError, match="before reset"):
        env.step(torch.zeros(2, A))
    with pytest.raises(MbrlError, match="start_obs"):
        env.reset(torch.zeros(2, O + 1))
    env.reset(torch.zeros(2, O))
    with pytest.raises(MbrlError, match="act of shape"):
        env.step(torch.zeros(3, A))
