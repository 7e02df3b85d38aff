"""Probabilistic ensemble: shapes, loss maths, bounds, normalization, fast inference path."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mbrl.errors import MbrlError
from mbrl.models.ensemble import EnsembleConfig, ProbabilisticEnsemble
from mbrl.registry import MODELS

torch.set_num_threads(1)

O, A = 4, 2


def make(**kw: object) -> ProbabilisticEnsemble:
    torch.manual_seed(0)
    base: dict[str, object] = {"num_members": 4, "num_elites": 3, "hidden_size": 16}
    base.update(kw)
    return ProbabilisticEnsemble(O, A, EnsembleConfig(**base))  # type: ignore[arg-type]


def batch(E: int, B: int, seed: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(E, B, O, generator=g) * 3 + 1
    act = torch.randn(E, B, A, generator=g)
    rew = torch.randn(E, B, generator=g)
    next_obs = obs + 0.1 * torch.randn(E, B, O, generator=g)
    term = torch.rand(E, B, generator=g) < 0.3
    return obs, act, rew, next_obs, term


def test_registered() -> None:
    entry = MODELS.get("ensemble")
    assert entry.obj is ProbabilisticEnsemble
    assert entry.config is EnsembleConfig


def test_defaults_follow_mbpo() -> None:
    m = ProbabilisticEnsemble(17, 6)
    assert m.num_members == 7 and m.num_elites == 5
    assert [tuple(w.shape) for w in m.weights] == [
        (7, 23, 200),
        (7, 200, 200),
        (7, 200, 200),
        (7, 200, 200),
        (7, 200, 36),
    ]
    assert m.in_dim == 23 and m.out_dim == 18
    assert m.elite_idx.tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "kw, has_logvar, out_dim",
    [
        ({}, True, O + 1),
        ({"deterministic": True}, False, O + 1),
        ({"learned_termination": True}, True, O + 2),
        ({"num_members": 1, "num_elites": 1}, True, O + 1),
    ],
)
def test_forward_shapes(kw: dict[str, object], has_logvar: bool, out_dim: int) -> None:
    m = make(**kw)
    E = m.num_members
    obs, act, *_ = batch(E, 5)
    mean, logvar = m(obs, act)
    assert mean.shape == (E, 5, out_dim) and m.out_dim == out_dim
    assert (logvar is not None) == has_logvar
    if logvar is not None:
        assert logvar.shape == (E, 5, out_dim)
    # (B, O) inputs are shared by every member
    mean2, _ = m(obs[0], act[0])
    mean3, _ = m(obs[0].expand(E, -1, -1), act[0].expand(E, -1, -1))
    torch.testing.assert_close(mean2, mean3)


def test_members_are_independent() -> None:
    m = make()
    obs, act, *_ = batch(4, 6)
    mean, _ = m(obs, act)
    obs2 = obs.clone()
    obs2[1] += 5.0  # only member 1's rows change
    mean2, _ = m(obs2, act)
    torch.testing.assert_close(mean2[[0, 2, 3]], mean[[0, 2, 3]])
    assert not torch.allclose(mean2[1], mean[1])


def test_logvar_soft_bounds_respected() -> None:
    m = make()
    with torch.no_grad():
        m.weights[-1].mul_(1e4)  # drive raw log-variances far outside the bounds
    obs, act, *_ = batch(4, 256)
    _, logvar = m(obs, act)
    assert logvar is not None
    mx, mn = 0.5, -10.0
    slack = math.log1p(math.exp(mn - mx))  # the second softplus can exceed max by this
    assert logvar.max() <= mx + slack + 1e-6
    assert logvar.min() >= mn - 1e-6
    assert logvar.max() > mx - 0.1 and logvar.min() < mn + 0.1  # both bounds are reached


def test_loss_matches_hand_computation() -> None:
    m = make()
    obs, act, rew, next_obs, _ = batch(4, 8)
    targets = m.make_targets(obs, act, rew, next_obs)
    torch.testing.assert_close(targets[..., :O], next_obs - obs)
    torch.testing.assert_close(targets[..., O], rew)
    m.fit_normalizer(obs, act)
    loss, per_member = m.loss(obs, act, targets)
    mean, logvar = m(obs, act)
    assert logvar is not None
    nll = ((mean - targets) ** 2 * torch.exp(-logvar) + logvar).mean(dim=(1, 2))
    assert m.max_logvar is not None and m.min_logvar is not None
    bound = 0.01 * (m.max_logvar.sum() - m.min_logvar.sum())
    decays = (2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4)
    decay = sum(d * 0.5 * (w**2).sum() for d, w in zip(decays, m.weights, strict=True))
    torch.testing.assert_close(per_member, nll.detach())
    torch.testing.assert_close(loss, nll.sum() + bound + decay)
    loss.backward()
    assert m.max_logvar.grad is not None and m.max_logvar.grad.abs().sum() > 0
    assert m.min_logvar.grad is not None and m.min_logvar.grad.abs().sum() > 0


def test_deterministic_loss_is_mse() -> None:
    m = make(deterministic=True, weight_decays=(0.0,) * 5)
    obs, act, rew, next_obs, _ = batch(4, 8)
    targets = m.make_targets(obs, act, rew, next_obs)
    loss, per_member = m.loss(obs, act, targets)
    mean, logvar = m(obs, act)
    assert logvar is None and m.max_logvar is None
    mse = ((mean - targets) ** 2).mean(dim=(1, 2))
    torch.testing.assert_close(per_member, mse.detach())
    torch.testing.assert_close(loss, mse.sum())


def test_learned_termination_adds_bce() -> None:
    m = make(learned_termination=True, weight_decays=(0.0,) * 5, logvar_bound_coef=0.0)
    obs, act, rew, next_obs, term = batch(4, 8)
    with pytest.raises(MbrlError, match="terminated"):
        m.make_targets(obs, act, rew, next_obs)
    targets = m.make_targets(obs, act, rew, next_obs, term)
    assert targets.shape[-1] == O + 2
    torch.testing.assert_close(targets[..., -1], term.float())
    loss, per_member = m.loss(obs, act, targets)
    mean, logvar = m(obs, act)
    assert logvar is not None
    assert torch.all(logvar[..., -1] == 0)  # unused column
    g = O + 1
    nll = (mean[..., :g] - targets[..., :g]) ** 2 * torch.exp(-logvar[..., :g]) + logvar[..., :g]
    bce = F.binary_cross_entropy_with_logits(mean[..., -1], targets[..., -1], reduction="none")
    expected = nll.mean(dim=(1, 2)) + bce.mean(dim=1)
    torch.testing.assert_close(per_member, expected.detach())
    torch.testing.assert_close(loss, expected.sum())


def test_weight_decay_term() -> None:
    m = make(weight_decays=(1.0, 0.0, 0.0, 0.0, 2.0))
    expected = 0.5 * (m.weights[0] ** 2).sum() + 2.0 * 0.5 * (m.weights[-1] ** 2).sum()
    torch.testing.assert_close(m.weight_decay_loss(), expected)


def test_fit_normalizer_standardizes_and_handles_constant_features() -> None:
    m = make()
    obs, act, *_ = batch(1, 500)
    obs[..., 2] = 7.0  # constant feature
    m.fit_normalizer(obs, act)
    x = torch.cat([obs[0], act[0]], dim=-1)
    z = m.input_normalizer.normalize(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(O + A), atol=1e-5, rtol=0)
    std = z.std(0, unbiased=False)
    torch.testing.assert_close(std[[0, 1, 3, 4, 5]], torch.ones(5), atol=1e-4, rtol=0)
    assert m.input_normalizer.std[2] == 1.0 and z[:, 2].abs().max() == 0


def test_target_normalization_predicts_raw_units() -> None:
    m = make(normalize_targets=True)
    obs, act, rew, next_obs, _ = batch(4, 64)
    targets = m.make_targets(obs, act, rew, next_obs) * 50 + 3
    m.fit_normalizer(obs, act, targets)
    tn = m.target_normalizer
    assert torch.all(tn.std > 1.0)  # fitted on the scaled targets
    mean_n, logvar_n = m(obs, act)
    mean, logvar = m.predict(obs, act)
    assert logvar is not None and logvar_n is not None
    torch.testing.assert_close(mean, mean_n * tn.std + tn.mean)
    torch.testing.assert_close(logvar, logvar_n + 2 * tn.std.log())
    # holdout MSE is in raw units
    expected = ((mean - targets) ** 2).mean(dim=(1, 2))
    torch.testing.assert_close(m.mse(obs, act, targets), expected)
    # the NLL compares in normalized units
    _, per_member = m.loss(obs, act, targets)
    y = tn.normalize(targets)
    nll = ((mean_n - y) ** 2 * torch.exp(-logvar_n) + logvar_n).mean(dim=(1, 2))
    torch.testing.assert_close(per_member, nll)


def test_mse_broadcasts_shared_rows() -> None:
    m = make()
    obs, act, rew, next_obs, _ = batch(1, 32)
    t = m.make_targets(obs[0], act[0], rew[0], next_obs[0])
    mse = m.mse(obs[0], act[0], t)
    mean, _ = m.predict(obs[0], act[0])
    assert mse.shape == (4,)
    torch.testing.assert_close(mse, ((mean - t) ** 2).mean(dim=(1, 2)))


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"deterministic": True},
        {"learned_termination": True, "normalize_targets": True},
        {"num_members": 1, "num_elites": 1},
        {"activation": "relu"},
        {"prior_scale": 0.7, "normalize_targets": True},
        {"prior_scale": 0.7, "normalize_targets": True, "deterministic": True},
    ],
)
@pytest.mark.parametrize("chunk_rows", [5, 1024])
def test_fast_path_equals_full_forward(kw: dict[str, object], chunk_rows: int) -> None:
    m = make(chunk_rows=chunk_rows, **kw)
    obs, act, rew, next_obs, term = batch(1, 203)
    obs, act = obs[0], act[0]
    targets = m.make_targets(obs, act, rew[0], next_obs[0], term[0])
    m.fit_normalizer(obs, act, targets * 4)  # non-trivial input and target statistics
    g = torch.Generator().manual_seed(3)
    member = torch.randint(m.num_members, (203,), generator=g)
    mean, logvar = m.predict_assigned(obs, act, member)
    full_mean, full_logvar = m.predict(obs, act)
    rows = torch.arange(203)
    torch.testing.assert_close(mean, full_mean[member, rows], atol=1e-5, rtol=1e-5)
    if full_logvar is None:
        assert logvar is None
    else:
        assert logvar is not None
        torch.testing.assert_close(logvar, full_logvar[member, rows], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("normalize_targets,prior_scale", [(False, 0.0), (True, 0.0), (True, 2.0)])
def test_fast_path_fused_sampling(normalize_targets: bool, prior_scale: float) -> None:
    """With noise (in grouped order) the first k columns are mean + std·noise."""
    m = make(chunk_rows=16, normalize_targets=normalize_targets, prior_scale=prior_scale)
    obs, act, rew, next_obs, _ = batch(1, 101)
    obs, act = obs[0], act[0]
    m.fit_normalizer(obs, act, m.make_targets(obs, act, rew[0], next_obs[0]) * 3)
    g = torch.Generator().manual_seed(0)
    member = torch.randint(4, (101,), generator=g)
    order = torch.argsort(member, stable=True)
    counts = torch.bincount(member, minlength=4).tolist()
    noise = torch.randn(101, O, generator=g)
    sample, logvar = m.predict_grouped(obs, act, counts, order, noise)
    assert logvar is None
    mean, full_logvar = m.predict(obs, act)
    assert full_logvar is not None
    rows = torch.arange(101)
    eps = torch.empty_like(noise).index_copy_(0, order, noise)  # back to input row order
    expected = mean[member, rows].clone()
    expected[:, :O] += full_logvar[member, rows, :O].mul(0.5).exp() * eps
    torch.testing.assert_close(sample, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(MbrlError, match="noise"):
        m.predict_grouped(obs, act, counts, order, torch.zeros(101, O + 2))


def test_predict_grouped_contiguous_and_empty_groups() -> None:
    m = make(chunk_rows=4)
    obs, act, *_ = batch(1, 10)
    counts = [0, 7, 0, 3]  # rows 0..6 -> member 1, rows 7..9 -> member 3
    mean, _ = m.predict_grouped(obs[0], act[0], counts)
    full, _ = m.predict(obs[0], act[0])
    torch.testing.assert_close(mean[:7], full[1, :7], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mean[7:], full[3, 7:], atol=1e-5, rtol=1e-5)
    with pytest.raises(MbrlError, match="counts"):
        m.predict_grouped(obs[0], act[0], [5, 5])


def test_member_state_round_trip() -> None:
    m = make()
    obs, act, *_ = batch(1, 6)
    before, _ = m.predict(obs[0], act[0])
    snap = m.member_state(0)
    assert set(snap) == {n for n, _ in m.named_parameters()}
    with torch.no_grad():
        m.weights[0][0].add_(1.0)  # snapshot is a copy, not a view
    m.load_member_state(2, snap)
    after, _ = m.predict(obs[0], act[0])
    torch.testing.assert_close(after[2], before[0])
    torch.testing.assert_close(after[[1, 3]], before[[1, 3]])
    with pytest.raises(MbrlError, match="keys"):
        m.load_member_state(1, {"nope": torch.zeros(1)})


def test_set_elites() -> None:
    m = make()
    m.set_elites([3, 1])
    assert m.elite_idx.tolist() == [3, 1] and m.num_elites == 2
    m.set_elites(torch.tensor([0]))
    assert m.elite_idx.tolist() == [0]
    for bad in ([], [4], [1, 1]):
        with pytest.raises(MbrlError):
            m.set_elites(bad)


def test_config_errors_name_the_field() -> None:
    with pytest.raises(MbrlError, match="weight_decays"):
        ProbabilisticEnsemble(O, A, EnsembleConfig(num_layers=2))
    with pytest.raises(MbrlError, match="Did you mean 'silu'"):
        ProbabilisticEnsemble(O, A, EnsembleConfig(activation="sillu"))
    with pytest.raises(MbrlError, match="num_elites"):
        ProbabilisticEnsemble(O, A, EnsembleConfig(num_members=3, num_elites=5))


def test_training_fits_simple_dynamics() -> None:
    """A few hundred Adam steps learn a linear system and a calibrated noise level."""
    torch.manual_seed(0)
    m = ProbabilisticEnsemble(
        2, 1, EnsembleConfig(num_members=3, num_elites=2, hidden_size=32, num_layers=2,
                             weight_decays=(0.0, 0.0, 0.0))
    )  # fmt: skip
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(2000, 2, generator=g)
    act = torch.randn(2000, 1, generator=g)
    noise = 0.05 * torch.randn(2000, 2, generator=g)
    next_obs = obs + torch.cat([0.5 * act, -0.3 * obs[:, :1]], dim=1) + noise
    rew = obs[:, 0] - act[:, 0]
    targets = m.make_targets(obs, act, rew, next_obs)
    m.fit_normalizer(obs, act)
    before = m.mse(obs, act, targets)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(300):
        idx = torch.randint(2000, (3, 128), generator=g)
        loss, _ = m.loss(obs[idx], act[idx], targets[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = m.mse(obs, act, targets)
    assert torch.all(after < 0.05 * before)
    _, logvar = m.predict(obs[:500], act[:500])
    assert logvar is not None
    # learned std of Δobs approaches the true 0.05 noise (within a factor of ~2)
    std = logvar[..., :2].mul(0.5).exp().mean()
    assert 0.02 < float(std) < 0.12


def _fit(m: ProbabilisticEnsemble, obs: torch.Tensor, act: torch.Tensor, y: torch.Tensor) -> None:
    targets = m.make_targets(obs, act, y[:, 0], obs + y[:, 1:])
    m.fit_normalizer(obs, act, targets)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(400):
        idx = torch.randint(obs.shape[0], (m.num_members, 64), generator=g)
        loss, _ = m.loss(obs[idx], act[idx], targets[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_randomized_prior_is_fixed_and_keeps_members_apart_off_data() -> None:
    """Osband et al. 2018: only f_e trains; off the data the members disagree more."""
    g = torch.Generator().manual_seed(0)
    obs = torch.rand(400, 2, generator=g) * 0.2  # data only near the origin
    act = torch.rand(400, 1, generator=g) * 0.2
    y = torch.cat([obs.sum(1, keepdim=True), 0.1 * act.repeat(1, 2)], 1)  # rew, Δobs
    far_obs, far_act = torch.full((50, 2), 3.0), torch.full((50, 1), -3.0)

    def spread(prior_scale: float) -> tuple[float, float]:
        torch.manual_seed(0)
        cfg = EnsembleConfig(num_members=5, num_elites=5, hidden_size=32, num_layers=2,
                             weight_decays=(0.0, 0.0, 0.0), normalize_targets=True,
                             prior_scale=prior_scale)  # fmt: skip
        m = ProbabilisticEnsemble(2, 1, cfg)
        _fit(m, obs, act, y)
        near, _ = m.predict(obs[:50], act[:50])
        far, _ = m.predict(far_obs, far_act)
        return float(near.std(0).mean()), float(far.std(0).mean())

    near0, far0 = spread(0.0)
    near1, far1 = spread(3.0)
    # on the data both fit (small spread); off it, the prior keeps members apart
    assert near0 < 0.2 * far0 and near1 < 0.2 * far1
    assert far1 > 2.0 * far0


def test_randomized_prior_buffers_untouched_by_training_and_saved() -> None:
    torch.manual_seed(0)
    cfg = EnsembleConfig(num_members=3, num_elites=3, hidden_size=16, num_layers=1,
                         weight_decays=(0.0, 0.0), normalize_targets=True,
                         prior_scale=1.0)  # fmt: skip
    m = ProbabilisticEnsemble(2, 1, cfg)
    before = {n: b.clone() for n, b in m.named_buffers() if n.startswith("prior_")}
    assert set(before) == {"prior_weight_0", "prior_bias_0", "prior_weight_1", "prior_bias_1"}
    g = torch.Generator().manual_seed(0)
    obs, act = torch.randn(200, 2, generator=g), torch.randn(200, 1, generator=g)
    _fit(m, obs, act, torch.randn(200, 3, generator=g))
    for n, b in m.named_buffers():
        if n in before:
            assert torch.equal(b, before[n])
    # a fresh ensemble loading the state predicts the same (the prior is in the state)
    torch.manual_seed(1)
    m2 = ProbabilisticEnsemble(2, 1, cfg)
    m2.load_state_dict(m.state_dict())
    torch.testing.assert_close(m2.predict(obs, act)[0], m.predict(obs, act)[0])
    with pytest.raises(MbrlError, match="normalize_targets"):
        ProbabilisticEnsemble(2, 1, EnsembleConfig(prior_scale=1.0))
