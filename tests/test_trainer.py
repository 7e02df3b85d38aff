"""Model trainer: split, per-member snapshots, early stopping, elites, NaN, resume, learning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from mbrl.errors import MbrlError
from mbrl.models.ensemble import EnsembleConfig, ProbabilisticEnsemble
from mbrl.models.trainer import FitResult, ModelTrainer, TrainerConfig, holdout_split
from mbrl.types import TransitionBatch

torch.set_num_threads(1)

OBS, ACT = 3, 1


def small_model(members: int = 3, elites: int = 2, hidden: int = 16, seed: int = 0):
    torch.manual_seed(seed)
    cfg = EnsembleConfig(
        num_members=members,
        num_elites=elites,
        hidden_size=hidden,
        num_layers=2,
        weight_decays=(2.5e-5, 5e-5, 1e-4),
    )
    return ProbabilisticEnsemble(OBS, ACT, cfg)


def toy_data(n: int, seed: int = 0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, OBS, generator=g)
    act = torch.rand(n, ACT, generator=g) * 2 - 1
    next_obs = obs + 0.1 * torch.sin(2 * obs) + 0.2 * act
    rew = -(obs[:, 0] ** 2) + 0.1 * act[:, 0]
    return {"obs": obs, "act": act, "rew": rew, "next_obs": next_obs}


def params(model: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def script_holdout(monkeypatch: pytest.MonkeyPatch, model: Any, table: list[list[float]]) -> None:
    """Replace the model's holdout MSE by ``table[epoch - 1]`` (last row repeated)."""
    calls: list[int] = []

    def fake_mse(obs: Tensor, act: Tensor, targets: Tensor) -> Tensor:
        calls.append(1)
        return torch.tensor(table[min(len(calls), len(table)) - 1])

    monkeypatch.setattr(model, "mse", fake_mse)


# -- holdout split --------------------------------------------------------------------------
def test_holdout_split_sizes_and_cap() -> None:
    g = torch.Generator().manual_seed(0)
    train, hold = holdout_split(1000, 0.2, 5000, g)
    assert (train.numel(), hold.numel()) == (800, 200)
    assert torch.equal(torch.sort(torch.cat([train, hold])).values, torch.arange(1000))
    train, hold = holdout_split(40_000, 0.2, 5000, g)
    assert (train.numel(), hold.numel()) == (35_000, 5000)  # capped, as in the MBPO code
    train, hold = holdout_split(10, 0.0, 5000, g)
    assert (train.numel(), hold.numel()) == (10, 0)
    with pytest.raises(MbrlError, match="at least one training transition"):
        holdout_split(1, 0.5, 5000, g)


def test_fit_uses_capped_holdout_and_fits_normalizer_on_train_split() -> None:
    data = toy_data(30_000)
    model = small_model()
    trainer = ModelTrainer(model, TrainerConfig(max_grad_steps=1))
    res = trainer.fit(**data, progress=False)
    assert (res.num_train, res.num_holdout) == (25_000, 5000)
    assert res.grad_steps == 1 and res.stop_reason == "max_grad_steps"
    state = trainer.state_dict()
    train_idx = state["train_idx"]
    assert not set(train_idx.tolist()) & set(state["holdout_idx"].tolist())
    x = torch.cat([data["obs"], data["act"]], dim=1)[train_idx]
    torch.testing.assert_close(model.input_normalizer.mean, x.mean(0))
    torch.testing.assert_close(model.input_normalizer.std, x.std(0, unbiased=False))


# -- minibatching ---------------------------------------------------------------------------
def _record_batches(monkeypatch: pytest.MonkeyPatch, model: Any) -> list[Tensor]:
    seen: list[Tensor] = []
    real_loss = model.loss

    def loss(obs: Tensor, act: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        seen.append(obs[..., 0].detach().clone())  # obs[:, 0] holds the row id
        return real_loss(obs, act, targets)

    monkeypatch.setattr(model, "loss", loss)
    return seen


@pytest.mark.parametrize("bootstrap", [True, False])
def test_each_member_gets_its_own_sample(monkeypatch: pytest.MonkeyPatch, bootstrap: bool) -> None:
    n = 500
    data = toy_data(n)
    data["obs"][:, 0] = torch.arange(n, dtype=torch.float32)  # row ids
    model = small_model(members=3)
    seen = _record_batches(monkeypatch, model)
    trainer = ModelTrainer(model, TrainerConfig(max_epochs=1, batch_size=64, bootstrap=bootstrap))
    res = trainer.fit(**data, progress=False)
    assert res.grad_steps == 7  # ceil(400 / 64): the last batch is smaller
    assert [s.shape for s in seen] == [(3, 64)] * 6 + [(3, 16)]
    per_member = torch.cat(seen, dim=1).long()  # (E, n_train) row ids, in training order
    train_ids = torch.sort(trainer.state_dict()["train_idx"]).values
    for i in range(3):
        for j in range(i):
            assert not torch.equal(per_member[i], per_member[j])
    boot = trainer.state_dict()["bootstrap_idx"]
    if bootstrap:
        assert boot.shape == (3, 400)
        for i in range(3):
            # member i sees exactly its bootstrap resample (with repeats) of the train rows
            expected = torch.sort(trainer.state_dict()["train_idx"][boot[i]]).values
            assert torch.equal(torch.sort(per_member[i]).values, expected)
            assert per_member[i].unique().numel() < 330  # ~63% unique in expectation
        assert not torch.equal(boot[0], boot[1])
    else:
        assert boot is None
        for i in range(3):  # a permutation of the training split
            assert torch.equal(torch.sort(per_member[i]).values, train_ids)


# -- snapshots, early stopping, elites --------------------------------------------------------
def test_each_member_restored_to_its_own_best_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    model = small_model(members=3)
    table = [
        [1.0, 1.0, 1.0],
        [0.5, 0.9, 0.995],  # member 2: 0.5% is not an improvement
        [0.6, 0.8, 0.9],
        [0.7, 0.4, 0.95],
        [0.8, 0.5, 0.97],
        [0.9, 0.6, 0.98],
    ]
    script_holdout(monkeypatch, model, table)
    states: list[dict[str, Any]] = []
    trainer = ModelTrainer(model, TrainerConfig(max_epochs=6, patience=100, batch_size=32))
    res = trainer.fit(**toy_data(300), progress=False, checkpoint_fn=states.append)
    assert res.best_epochs == [2, 4, 3]
    assert res.holdout_mse_per_member == pytest.approx([0.5, 0.4, 0.9])
    final = model.state_dict()
    for i, best_epoch in enumerate(res.best_epochs):
        snap = states[best_epoch - 1]["model"]  # weights at the end of that epoch
        for name, _ in model.named_parameters():
            assert torch.equal(final[name][i], snap[name][i]), (i, name)
    # not a whole-ensemble snapshot: no single epoch's weights match all members
    for state in states:
        assert not all(torch.equal(final[k], state["model"][k]) for k in ("weights.0",))


def test_early_stopping_after_patience_without_1pct_improvement(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = small_model(members=2, elites=1)
    # 3 improving epochs, then drops below 1% relative to the best (0.25) forever
    table = [[1.0, 1.0], [0.5, 0.5], [0.25, 0.25], [0.249, 0.2499], [0.2481, 0.248]]
    script_holdout(monkeypatch, model, table)
    logs: list[tuple[int, dict[str, float]]] = []
    cfg = TrainerConfig(patience=5, batch_size=64)
    res = ModelTrainer(model, cfg).fit(
        **toy_data(200), progress=False, log_fn=lambda s, m: logs.append((s, m))
    )
    assert res.stopped_early and res.stop_reason == "patience"
    assert res.epochs == 3 + 5
    assert [s for s, _ in logs] == list(range(1, 9))
    assert [m["model/epochs_since_improvement"] for _, m in logs] == [0, 0, 0, 1, 2, 3, 4, 5]
    assert logs[0][1]["model/holdout_mse_member_1"] == 1.0

    # one member improving by 2% at epoch 6 resets the count
    model = small_model(members=2, elites=1)
    table = [[1.0, 1.0], [0.5, 0.5], [0.25, 0.25], [0.25, 0.25], [0.25, 0.25], [0.245, 0.25]]
    script_holdout(monkeypatch, model, table)
    res = ModelTrainer(model, cfg).fit(**toy_data(200), progress=False)
    assert res.epochs == 6 + 5 and res.best_epochs == [6, 3]


def test_elites_are_lowest_holdout_members(monkeypatch: pytest.MonkeyPatch) -> None:
    model = small_model(members=4, elites=2)
    script_holdout(monkeypatch, model, [[0.3, 0.1, 0.5, 0.2]])
    res = ModelTrainer(model, TrainerConfig(max_epochs=2)).fit(**toy_data(200), progress=False)
    assert res.elite_idx == [1, 3]
    assert model.elite_idx.tolist() == [1, 3]


def test_restored_weights_reproduce_reported_holdout_mse() -> None:
    """Unscripted: after the fit each member's weights give exactly its reported best
    holdout MSE, and the elites are the lowest of those."""
    data = toy_data(1500)
    model = small_model(members=4, elites=2)
    trainer = ModelTrainer(model, TrainerConfig(max_epochs=25, batch_size=64))
    res = trainer.fit(TransitionBatch(**data, terminated=torch.zeros(1500, dtype=torch.bool),
                                      truncated=torch.zeros(1500, dtype=torch.bool)),
                      progress=False)  # fmt: skip
    hold = trainer.state_dict()["holdout_idx"]
    targets = model.make_targets(data["obs"], data["act"], data["rew"], data["next_obs"])
    mse = model.mse(data["obs"][hold], data["act"][hold], targets[hold])
    torch.testing.assert_close(mse, torch.tensor(res.holdout_mse_per_member), rtol=1e-5, atol=0)
    assert res.elite_idx == torch.argsort(mse)[:2].tolist()


# -- failures -------------------------------------------------------------------------------
def test_nan_loss_raises_and_keeps_last_good_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    data = toy_data(400)
    cfg = TrainerConfig(max_epochs=1, batch_size=64, patience=100)
    reference = small_model()
    ModelTrainer(reference, cfg).fit(**data, progress=False)
    after_epoch_1 = params(reference)

    model = small_model()  # same init, same seed: identical first epoch
    real_loss = model.loss
    calls: list[int] = []

    def loss(obs: Tensor, act: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        calls.append(1)
        total, per_member = real_loss(obs, act, targets)
        if len(calls) == 5 + 3:  # epoch 2 (5 batches per epoch), batch 3
            total = total * float("nan")
        return total, per_member

    monkeypatch.setattr(model, "loss", loss)
    cfg.max_epochs = 4
    with pytest.raises(MbrlError, match=r"loss became NaN at epoch 2, batch 3.*lower lr"):
        ModelTrainer(model, cfg).fit(**data, progress=False)
    now = params(model)
    for name in after_epoch_1:
        assert torch.equal(now[name], after_epoch_1[name]), name


def test_bad_data_is_reported() -> None:
    data = toy_data(100)
    data["next_obs"][7, 1] = float("inf")
    with pytest.raises(MbrlError, match=r"'next_obs' has NaN/inf in 1 rows \(first rows: \[7\]\)"):
        ModelTrainer(small_model()).fit(**data, progress=False)
    data = toy_data(100)
    data["act"] = torch.zeros(100, 2)
    with pytest.raises(MbrlError, match=r"'act' has shape \(100, 2\), expected \(100, 1\)"):
        ModelTrainer(small_model()).fit(**data, progress=False)
    with pytest.raises(MbrlError, match="patience"):
        ModelTrainer(small_model(), TrainerConfig(patience=0))


# -- resume ---------------------------------------------------------------------------------
def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("interrupt", [False, True])
def test_resume_equals_uninterrupted(tmp_path: Path, interrupt: bool) -> None:
    data = toy_data(600)
    cfg = TrainerConfig(max_epochs=6, batch_size=64, patience=100, seed=3)

    full = small_model()
    res_full = ModelTrainer(full, cfg).fit(**data, progress=False)

    path = tmp_path / "trainer.pt"
    part = small_model()
    if interrupt:
        calls: list[int] = []

        def checkpoint(state: dict[str, Any]) -> None:
            calls.append(state["epoch"])
            torch.save(state, path)
            if state["epoch"] == 3 and len(calls) == 3:
                raise KeyboardInterrupt  # as if Ctrl-C arrived during epoch 4

        with pytest.raises(KeyboardInterrupt):
            ModelTrainer(part, cfg).fit(**data, progress=False, checkpoint_fn=checkpoint)
        assert calls == [1, 2, 3, 3]  # saved once more on the way out
        assert all(torch.isfinite(p).all() for p in part.parameters())
    else:
        cfg3 = TrainerConfig(**{**cfg.__dict__, "max_epochs": 3})
        ModelTrainer(part, cfg3).fit(
            **data, progress=False, checkpoint_fn=lambda s: torch.save(s, path)
        )

    state = torch.load(path, weights_only=True)  # plain tensors and containers only
    assert state["epoch"] == 3
    resumed = small_model(seed=123)  # different init: the state carries the weights
    trainer = ModelTrainer(resumed, cfg)
    res = trainer.fit(**data, progress=False, resume_state=state)
    assert res.epochs == 6 and res.grad_steps == res_full.grad_steps
    _assert_same_weights(full, resumed)
    assert res.holdout_mse_per_member == res_full.holdout_mse_per_member
    assert res.elite_idx == res_full.elite_idx

    with pytest.raises(MbrlError, match="same data"):
        ModelTrainer(small_model(), cfg).fit(**toy_data(500), progress=False, resume_state=state)


def test_progress_bar_and_budget(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = TrainerConfig(max_epochs=50, max_grad_steps=12, batch_size=64)
    res: FitResult = ModelTrainer(small_model(), cfg).fit(**toy_data(400), progress=True)
    assert res.stop_reason == "max_grad_steps" and res.grad_steps == 12
    assert res.epochs == 3  # 5 steps per epoch: the third epoch is cut after 2 steps
    err = capsys.readouterr().err
    assert "model fit" in err and "holdout_mse=" in err and "since_best=" in err


# -- learning -------------------------------------------------------------------------------
def pendulum(n: int, rng: np.random.Generator) -> dict[str, Any]:
    """Gym-like pendulum transitions from uniformly drawn states: obs (cos θ, sin θ, ω)."""
    theta = rng.uniform(-np.pi, np.pi, n)
    omega = rng.uniform(-8, 8, n)
    u = rng.uniform(-2, 2, n)
    dt, g = 0.05, 10.0
    new_omega = np.clip(omega + (1.5 * g * np.sin(theta) + 3.0 * u) * dt, -8, 8)
    new_theta = theta + new_omega * dt
    rew = -(theta**2 + 0.1 * omega**2 + 0.001 * u**2)

    def obs_of(th: np.ndarray, om: np.ndarray) -> np.ndarray:
        return np.stack([np.cos(th), np.sin(th), om], axis=1).astype(np.float32)

    return {
        "obs": obs_of(theta, omega),
        "act": u[:, None].astype(np.float32),
        "rew": rew.astype(np.float32),
        "next_obs": obs_of(new_theta, new_omega),
    }


def test_ensemble_beats_linear_baseline_on_pendulum() -> None:
    rng = np.random.default_rng(0)
    train, test = pendulum(4000, rng), pendulum(2000, rng)
    torch.manual_seed(0)
    # target normalization: the reward (std ~4) dwarfs Δobs (std ~0.1); without it the
    # raw-unit holdout MSE is still reward-dominated when early stopping ends the fit
    cfg = EnsembleConfig(
        num_members=3,
        num_elites=2,
        hidden_size=64,
        num_layers=3,
        weight_decays=(2.5e-5, 5e-5, 7.5e-5, 1e-4),
        normalize_targets=True,
    )
    model = ProbabilisticEnsemble(3, 1, cfg)
    res = ModelTrainer(model, TrainerConfig(max_epochs=60)).fit(**train, progress=False)
    assert res.epochs >= 5

    def targets(d: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([d["next_obs"] - d["obs"], d["rew"][:, None]], axis=1)

    def features(d: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([d["obs"], d["act"], np.ones((len(d["obs"]), 1))], axis=1)

    coef, *_ = np.linalg.lstsq(features(train), targets(train), rcond=None)
    linear_mse = float(np.mean((features(test) @ coef - targets(test)) ** 2))

    mean, _ = model.predict(torch.as_tensor(test["obs"]), torch.as_tensor(test["act"]))
    pred = mean[model.elite_idx].mean(0).numpy()
    model_mse = float(np.mean((pred - targets(test)) ** 2))
    # measured: ~0.015 vs ~1.1
    assert model_mse < 0.1 * linear_mse, (model_mse, linear_mse)


def test_finished_fit_state_is_not_resumed_on_new_data() -> None:
    """An agent checkpoint taken between refits: the next fit (on more data) starts a new
    fit but keeps Adam's moments."""
    cfg = TrainerConfig(max_epochs=2, batch_size=64)
    first = ModelTrainer(small_model(), cfg)
    first.fit(**toy_data(300), progress=False)
    state = first.state_dict()
    assert state["stop_reason"] == "max_epochs"

    trainer = ModelTrainer(small_model(), cfg)
    trainer.load_state_dict(state)
    exp_avg = trainer.optimizer.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(exp_avg, first.optimizer.state_dict()["state"][0]["exp_avg"])
    res = trainer.fit(**toy_data(500, seed=1), progress=False)
    assert res.epochs == 2 and res.num_train + res.num_holdout == 500
    assert trainer.total_epochs == 4

    # explicitly resuming the finished fit with a larger max_epochs extends it
    longer = ModelTrainer(small_model(), TrainerConfig(max_epochs=3, batch_size=64))
    res = longer.fit(**toy_data(300), progress=False, resume_state=state)
    assert res.epochs == 3 and res.grad_steps == 3 * 4
