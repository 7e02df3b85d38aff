"""Transformer dynamics model: KV-cached rollouts, causality, tokenizations, members,
fitting, ModelEnv/PETS integration, persistence, registration, config errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from point_mass_data import point_mass_episodes

from mbrl.envs import get_env_spec
from mbrl.errors import MbrlError
from mbrl.models.evaluation import open_loop_errors_detailed
from mbrl.models.model_env import ModelEnv
from mbrl.models.seq_trainer import (
    SequenceTrainer,
    SequenceTrainerConfig,
    windows_from_trajectories,
)
from mbrl.models.transformer import (
    TransformerConfig,
    TransformerModel,
    TransformerRollout,
    transformer_step_fn,
)
from mbrl.registry import MODELS

torch.set_num_threads(1)

O, A = 3, 2
SMALL = TransformerConfig(
    num_members=3, d_model=16, num_layers=2, num_heads=2, context=5, context_keep=2, num_bins=32
)
TOKENIZATIONS = ["per_step", "per_dim"]


def small_model(
    tokenization: str = "per_step", dtype: torch.dtype = torch.float32, **kw: object
) -> TransformerModel:
    torch.manual_seed(0)
    cfg = dataclasses.replace(SMALL, tokenization=tokenization, **kw)  # type: ignore[arg-type]
    model = TransformerModel(O, A, cfg)
    g = torch.Generator().manual_seed(1)
    obs = torch.randn(20, 4, O, generator=g) * torch.tensor([1.0, 3.0, 0.5]) + 1.0
    model.fit_normalizer(obs, torch.rand(20, 4, A, generator=g) * 2 - 1, torch.randn(20, 4))
    return model.to(dtype)


def random_window(E: int | None, B: int, L: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    lead = (B, L) if E is None else (E, B, L)
    obs = torch.randn(*lead, O, generator=g)
    act = torch.rand(*lead, A, generator=g) * 2 - 1
    rew = torch.randn(*lead, generator=g)
    next_obs = obs + 0.3 * torch.randn(*lead, O, generator=g)
    return obs, act, rew, next_obs


# -- KV cache ------------------------------------------------------------------------------
@pytest.mark.parametrize("tokenization", TOKENIZATIONS)
@pytest.mark.parametrize("H", [1, 5, 13])
def test_kv_cached_rollout_equals_full_recompute(tokenization: str, H: int) -> None:
    """H=13 with context 5 / keep 2 restarts the window three times."""
    model = small_model(tokenization)
    g = torch.Generator().manual_seed(H)
    obs0 = torch.randn(4, O, generator=g) * 2
    act = torch.rand(4, H, A, generator=g) * 2 - 1
    cached = model.predict_sequence(obs0, act)
    full = model.predict_sequence(obs0, act, use_cache=False)
    assert cached[0].shape == (3, 4, H, O) and cached[1].shape == (3, 4, H)
    torch.testing.assert_close(cached[0], full[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cached[1], full[1], rtol=1e-5, atol=1e-5)
    # the one-member path (ModelEnv's grouped rollouts) gives each row its member's rollout
    member = torch.tensor([2, 0, 2, 1])
    order = torch.argsort(member, stable=True)
    counts = torch.bincount(member, minlength=3).tolist()
    grouped = model.predict_sequence_grouped(obs0, act, counts, order)
    rows = torch.arange(4)
    torch.testing.assert_close(grouped[0], cached[0][member, rows], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grouped[1], cached[1][member, rows], rtol=1e-5, atol=1e-5)
    one = model.predict_sequence_grouped(obs0, act, [0, 0, 4])  # one member: its own path
    torch.testing.assert_close(one[0], cached[0][2], rtol=1e-5, atol=1e-5)


def test_window_restart_rule_and_cache_capacity() -> None:
    """Context 5, keep 2: steps 0-4 in one window; at step 5 the window restarts from
    step 4 (steps 4-5), at step 9 from step 8 (every context - keep + 1 = 4 steps);
    the cache never holds more than ``context`` steps of tokens."""
    model = small_model("per_dim")
    roll = TransformerRollout(model, torch.randn(3, 2, O))
    starts = []
    for _ in range(12):
        roll.step(torch.zeros(3, 2, A))
        starts.append(roll.start)
        assert roll.caches is not None
        length = roll.caches[0].length
        assert length == (len(roll.act_hist) - roll.start) * (O + A) + O
        assert length <= SMALL.context * (O + A) + O
    assert starts == [0, 0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8]


@pytest.mark.parametrize("tokenization", TOKENIZATIONS)
def test_training_layout_matches_the_rollout(tokenization: str) -> None:
    """Teacher forcing on the rollout's own predictions reproduces them: the training
    token layout and targets are exactly those the rollout uses."""
    model = small_model(tokenization, torch.float64)
    g = torch.Generator().manual_seed(0)
    obs0 = torch.randn(4, O, generator=g, dtype=torch.float64)
    act = torch.rand(4, 5, A, generator=g, dtype=torch.float64) * 2 - 1
    pred, rew = model.predict_sequence(obs0, act)  # (E, 4, 5, O)
    obs = torch.cat([obs0.expand(3, 4, O)[:, :, None], pred[:, :, :-1]], dim=2)
    obs_out, rew_out = model._teacher_forced(obs, act.expand(3, 4, 5, A), pred)
    if tokenization == "per_dim":
        obs_out = torch.softmax(obs_out, -1) @ model.centers
    delta = model.delta_normalizer.denormalize(obs_out)
    torch.testing.assert_close(obs + delta, pred)
    torch.testing.assert_close(model.rew_normalizer.denormalize(rew_out[..., None])[..., 0], rew)


# -- causality -------------------------------------------------------------------------------
@pytest.mark.parametrize("tokenization", TOKENIZATIONS)
def test_later_inputs_never_change_earlier_outputs(tokenization: str) -> None:
    """A different trajectory from step ``t0`` on (action ``a_t0`` and every later
    observation) leaves the outputs of the steps before ``t0`` bit-identical."""
    model = small_model(tokenization, torch.float64)
    obs, act, _, _ = (x.double() for x in random_window(3, 2, 6))
    obs, next_obs, act = obs[:, :, :5], obs[:, :, 1:], act[:, :, :5]  # consistent steps
    base = model._teacher_forced(obs, act, next_obs)
    t0 = 2
    obs2, act2, next2 = obs.clone(), act.clone(), next_obs.clone()
    act2[:, :, t0] -= 0.7
    obs2[:, :, t0 + 1 :] += 1.0
    next2[:, :, t0:] += 1.0
    out = model._teacher_forced(obs2, act2, next2)
    for b, o in zip(base, out, strict=True):
        torch.testing.assert_close(o[:, :, :t0], b[:, :, :t0], rtol=0, atol=0)
        assert float((o[:, :, t0:] - b[:, :, t0:]).detach().abs().max()) > 1e-3
    # rollouts: a changed action at t0 leaves the predictions of steps < t0 untouched
    p1, r1 = model.predict_sequence(obs[0, :, 0], act[0])
    p2, r2 = model.predict_sequence(obs[0, :, 0], act2[0])
    torch.testing.assert_close(p1[:, :, :t0], p2[:, :, :t0], rtol=0, atol=0)
    torch.testing.assert_close(r1[:, :, :t0], r2[:, :, :t0], rtol=0, atol=0)
    assert float((p1[:, :, t0] - p2[:, :, t0]).abs().max()) > 1e-4


def test_per_dim_predicts_observation_dimensions_autoregressively() -> None:
    """per_dim: next-obs dimension j may see dimensions < j of the same next observation
    (the paper's autoregressive order), never dimension j itself or later ones."""
    model = small_model("per_dim", torch.float64)
    obs, act, _, next_obs = (x.double() for x in random_window(3, 2, 4))
    logits, rew = model._teacher_forced(obs, act, next_obs)  # (E, B, L, O, nb), (E, B, L)
    t = 1
    for j in range(O):
        nxt = next_obs.clone()
        nxt[:, :, t, j] += 2.0  # token s_{t+1}[j] (also obs[t+1][j] as an input token)
        obs2 = obs.clone()
        obs2[:, :, t + 1, j] += 2.0
        lg2, rew2 = model._teacher_forced(obs2, act, nxt)
        torch.testing.assert_close(lg2[:, :, : t + 1, : j + 1], logits[:, :, : t + 1, : j + 1])
        if j + 1 < O:  # the next dimension of the same observation does see it
            assert float((lg2[:, :, t, j + 1] - logits[:, :, t, j + 1]).detach().abs().max()) > 1e-4
        assert (
            float((rew2[:, :, t] - rew[:, :, t]).detach().abs().max()) > 1e-4
        )  # reward sees s_{t+1}
        torch.testing.assert_close(rew2[:, :, :t], rew[:, :, :t])


# -- members and shapes ---------------------------------------------------------------------------
@pytest.mark.parametrize("tokenization", TOKENIZATIONS)
def test_shapes_one_step_interface_and_grouping(tokenization: str) -> None:
    model = small_model(tokenization)
    assert model.out_dim == O + 1 and model.deterministic and not model.learned_termination
    obs, act = torch.randn(10, O), torch.rand(10, A) * 2 - 1
    full, logvar = model.predict(obs, act)  # one-step context
    assert full.shape == (3, 10, O + 1) and logvar is None
    seq, rew = model.predict_sequence(obs, act[:, None])
    torch.testing.assert_close(obs + full[..., :O], seq[:, :, 0])
    torch.testing.assert_close(full[..., O], rew[:, :, 0])
    member = torch.tensor([2, 0, 1, 2, 2, 0, 1, 1, 0, 2])
    order = torch.argsort(member, stable=True)
    counts = torch.bincount(member, minlength=3).tolist()
    mean, lv = model.predict_grouped(obs, act, counts, order, noise=torch.randn(10, O))
    assert lv is None
    torch.testing.assert_close(mean, full[member, torch.arange(10)], rtol=1e-5, atol=1e-5)
    mean2, _ = model.predict_grouped(obs, act, [4, 0, 6])
    torch.testing.assert_close(mean2, torch.cat([full[0, :4], full[2, 4:]]), rtol=1e-5, atol=1e-5)
    with pytest.raises(MbrlError, match="counts"):
        model.predict_grouped(obs, act, [5, 5])
    with pytest.raises(MbrlError, match="E="):
        model.predict_sequence(torch.randn(4, 2, O), torch.randn(2, 3, A))
    with pytest.raises(MbrlError, match="context"):
        model.sequence_loss(*random_window(None, 2, SMALL.context + 1))
    loss, per_member = model.sequence_loss(*random_window(None, 2, 4))
    assert loss.ndim == 0 and per_member.shape == (3,) and bool((per_member > 0).all())


@pytest.mark.parametrize("tokenization", TOKENIZATIONS)
def test_members_are_independent(tokenization: str) -> None:
    model = small_model(tokenization)
    obs, act, _, next_obs = random_window(3, 2, 4)
    obs_out, rew_out = model._teacher_forced(obs, act, next_obs)
    (obs_out[0].square().sum() + rew_out[0].square().sum()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert float(p.grad[1:].abs().max()) == 0.0, name
        assert float(p.grad[0].abs().max()) > 0.0, name


# -- fitting ------------------------------------------------------------------------------------
@pytest.mark.parametrize("tokenization", TOKENIZATIONS)
def test_overfits_a_tiny_dataset(tokenization: str) -> None:
    """16 windows of a linear system: the training loss falls by more than 10x."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(
        SMALL, tokenization=tokenization, d_model=32, num_heads=4, context=4, num_members=2
    )
    model = TransformerModel(O, A, cfg)
    g = torch.Generator().manual_seed(0)
    trajs = []
    for _ in range(4):
        o = torch.randn(O, generator=g)
        rows: dict[str, list[torch.Tensor]] = {"obs": [], "act": [], "rew": [], "next_obs": []}
        for _ in range(7):
            a = torch.rand(A, generator=g) * 2 - 1
            o2 = 0.9 * o + 0.5 * torch.cat([a, a[:1]])
            for k, v in zip(rows, (o, a, -o2.square().sum(), o2), strict=True):
                rows[k].append(v)
            o = o2
        trajs.append({k: torch.stack(v) for k, v in rows.items()})
    data = windows_from_trajectories(trajs, 4)
    assert len(data) == 16
    model.fit_normalizer(data.obs, data.act, data.rew)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(200):
        loss, _ = model.sequence_loss(data.obs, data.act, data.rew, data.next_obs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    # measured: per_step ~1000x, per_dim ~400x
    assert losses[0] > 10 * losses[-1], (losses[0], losses[-1])


@pytest.fixture(scope="module")
def fitted() -> tuple[TransformerModel, object, object]:
    cfg = TransformerConfig(num_members=2, d_model=32, context=10)
    torch.manual_seed(0)
    model = TransformerModel(2, 1, cfg)
    train = windows_from_trajectories(point_mass_episodes(60, 1), 10)
    held = windows_from_trajectories(point_mass_episodes(10, 2), 10)
    trainer = SequenceTrainer(
        model, SequenceTrainerConfig(lr=2e-3, batch_size=32, max_grad_steps=250, patience=100)
    )
    return model, trainer.fit(train, held), held


def test_fit_predicts_point_mass_open_loop(fitted: tuple) -> None:
    model, fit, held = fitted
    assert fit.stop_reason == "max_grad_steps" and sorted(fit.elite_idx) == [0, 1]
    assert fit.first_train_loss > 10 * fit.train_loss  # measured ~25x
    obs0, act, target = held.obs[:, 0], held.act, held.next_obs
    pred, rew = model.predict_sequence(obs0, act)  # (E, N, 10, 2)
    var = target.reshape(-1, 2).var(0)
    nmse = ((pred.mean(0) - target).square() / var).mean(dim=(0, 2))
    base = ((obs0[:, None] - target).square() / var).mean(dim=(0, 2))  # "no change"
    # measured (h = 1 / 5 / 10): model 1.2e-4 / 7.2e-4 / 1.9e-3, no change 0.041 / 0.22 / 0.47
    for h in (1, 5, 10):
        assert nmse[h - 1] < base[h - 1] / 10, (h, nmse.tolist(), base.tolist())
    assert (rew.mean(0) - held.rew).square().mean() < 0.1 * held.rew.var()  # measured 4.5%
    # the stateful step_fn runs the same cached rollout as predict_sequence
    errs = open_loop_errors_detailed(
        transformer_step_fn(model),
        [{"obs": held.obs[i], "act": act[i], "rew": held.rew[i], "next_obs": target[i]}
         for i in range(5)],
        horizons=(1, 10),
        max_starts=None,
    )  # fmt: skip
    direct = (pred.mean(0)[:5, 9] - target[:5, 9]).square().mean()
    assert errs.mse[10] == pytest.approx(float(direct), rel=1e-4)


def test_model_env_with_transformer(fitted: tuple) -> None:
    model = fitted[0]
    spec = get_env_spec("PointMass1D-v0")
    start = torch.tensor([[8.0, 0.0], [-9.0, 0.5], [7.5, -1.0], [0.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    for propagation in ("random_elite", "fixed_member", "mean"):
        env = ModelEnv(model, spec, propagation=propagation, reward_source="model")
        batch = env.rollout(lambda o: -torch.ones(o.shape[0], 1), start, horizon=6, generator=g)
        assert batch.obs.shape == (24, 2) and torch.isfinite(batch.next_obs).all()
    # the MPC objective: grouped per-member rollouts equal picking each particle's member
    # out of the all-members rollout
    env = ModelEnv(model, spec, propagation="fixed_member", reward_source="model")
    actions = torch.rand(6, 8, 1, generator=g) * 2 - 1
    got = env.evaluate_action_sequences(actions, start[0], 3, torch.Generator().manual_seed(1))
    member = env.last_member
    _, rew = model.predict_sequence(start[0].expand(18, 2), actions.repeat_interleave(3, 0))
    want = rew[member, torch.arange(18)].sum(-1).view(6, 3).mean(-1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# -- persistence, registration, config errors -----------------------------------------------------
@pytest.mark.parametrize("tokenization", TOKENIZATIONS)
def test_state_dict_round_trip(tokenization: str) -> None:
    model = small_model(tokenization)
    model.set_elites([2, 0])
    obs0, act = torch.randn(4, O), torch.rand(4, 6, A) * 2 - 1
    expected = model.predict_sequence(obs0, act)
    torch.manual_seed(123)
    other = TransformerModel(O, A, dataclasses.replace(SMALL, tokenization=tokenization))
    other.load_state_dict(model.state_dict())
    assert other.elite_idx.tolist() == [2, 0]
    got = other.predict_sequence(obs0, act)
    torch.testing.assert_close(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1])
    other.load_member_state(0, model.member_state(1))
    torch.testing.assert_close(other.pos_emb[0], model.pos_emb[1])
    with pytest.raises(MbrlError, match="distinct"):
        model.set_elites([1, 1])


def test_registered_and_listed(capsys: pytest.CaptureFixture[str]) -> None:
    entry = MODELS.get("transformer")
    assert entry.obj is TransformerModel and entry.config is TransformerConfig
    from mbrl.cli import main

    assert main(["model", "list"]) == 0
    assert "transformer" in capsys.readouterr().out
    model = entry.obj(O, A, entry.config(tokenization="per_dim"))
    assert model.num_members == 5 and model.num_elites == 5 and model.tokens_per_step == O + A


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"num_elites": 4}, "num_elites"),
        ({"tokenization": "per_token"}, "tokenization"),
        ({"d_model": 15}, "divisible"),
        ({"context": 0}, "context"),
        ({"context_keep": 6}, "context_keep"),
        ({"num_bins": 1}, "num_bins"),
        ({"bin_range": 0.0}, "bin_range"),
        ({"reward_coef": -1.0}, "reward_coef"),
    ],
)
def test_bad_config_is_a_clear_error(change: dict, match: str) -> None:
    with pytest.raises(MbrlError, match=match):
        TransformerModel(O, A, dataclasses.replace(SMALL, **change))


# -- agents and the model comparison ------------------------------------------------------------
def test_model_eval_compares_transformer_with_the_ensemble(tmp_path: Path) -> None:
    from mbrl.cli import main

    args = [
        "model", "eval", "--run.env", "PointMass1D-v0", "--eval.collect-steps", "1500",
        "--eval.models", "ensemble", "transformer", "--eval.horizons", "1", "10",
        "--eval.ensemble.num-members", "2", "--eval.ensemble.num-elites", "2",
        "--eval.ensemble.hidden-size", "32", "--eval.trainer.max-epochs", "30",
        "--eval.transformer.num-members", "2", "--eval.transformer.d-model", "32",
        "--eval.transformer.context", "8", "--eval.seq-trainer.max-grad-steps", "150",
        "--eval.seq-trainer.lr", "0.002",
        "--run.run-root", str(tmp_path), "--run.no-progress", "--run.no-tensorboard",
    ]  # fmt: skip
    assert main(args) == 0
    (run_dir,) = list((tmp_path / "PointMass1D-v0" / "model-eval").iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    nmse = {k: {int(h): v for h, v in r["nmse"].items()} for k, r in summary["open_loop"].items()}
    assert set(nmse) == {"copy-obs", "linear", "ensemble", "transformer"}
    for h in (1, 10):  # measured: ~0.004x and ~0.008x of "no change"
        assert nmse["transformer"][h] < 0.2 * nmse["copy-obs"][h], nmse
    assert summary["fit"]["transformer"]["windows"] > 0


def test_transformer_plugs_into_pets_and_resumes(tmp_path: Path) -> None:
    """``model=transformer``: fitted on episode windows, plans through ModelEnv's grouped
    sequence path, and a state round trip reproduces the next action."""
    from test_pets import make_agent, random_buffer, small_config

    from mbrl.agents.pets import PETSAgent

    transformer = {"num_members": 2, "d_model": 16, "num_heads": 2, "context": 8}
    cfg = small_config(
        cem={"num_iterations": 2, "population_size": 30}, horizon=8, model="transformer",
        transformer=transformer, seq_trainer={"max_grad_steps": 100},
    )  # fmt: skip
    agent = make_agent(tmp_path / "a", PETSAgent, cfg, seed=3)
    assert isinstance(agent.model, TransformerModel)
    buffer = random_buffer(agent)  # three 30-step episodes
    w = windows_from_trajectories(list(buffer.episodes()), 8)
    before = agent.model.sequence_mse(w.obs, w.act, w.rew, w.next_obs).mean()
    metrics = agent.fit_model(90, buffer)
    after = agent.model.sequence_mse(w.obs, w.act, w.rew, w.next_obs).mean()
    assert float(after) < 0.5 * float(before) and metrics["model/holdout_mse"] > 0
    obs = np.array([-7.5, 0.5], dtype=np.float32)
    act = agent.act(obs)
    assert act.shape == (1,) and -1 <= float(act[0]) <= 1
    other = make_agent(tmp_path / "b", PETSAgent, cfg, seed=4)
    other.load_state_dict(agent.state_dict())
    np.testing.assert_array_equal(agent.act(obs), other.act(obs))


@pytest.mark.slow
def test_pets_with_transformer_solves_point_mass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--agent.model transformer`` through the CLI: a step reward above -0.02 within 5
    episodes (the PETS learning check of tests/test_pets.py), refits every episode."""
    from test_pets import episode_max_rewards, run_cli

    from mbrl.rundir import read_metrics

    maxes = episode_max_rewards(monkeypatch)
    args = ["--agent.model", "transformer", *PETS_TRANSFORMER_ARGS]
    run_dir = run_cli("pets", tmp_path, 0, 150, args)
    assert len(maxes) == 5 and maxes[0] < -0.02
    assert max(maxes) > -0.02, maxes
    rows = read_metrics(run_dir / "metrics.csv")
    fits = [r["step"] for r in rows if r["key"] == "model/holdout_mse"]
    assert fits == [30, 60, 90, 120, 150]


# smaller than the transformer defaults and the preset's planner, so the run takes about
# a minute on a CPU: 3 members of d_model 32, CEM population 100, 3 particles, at most
# 300 gradient steps per refit. Measured: seed 0 reaches the goal in episode 2 (~66 s).
PETS_TRANSFORMER_ARGS = [
    "--agent.transformer.num-members", "3", "--agent.transformer.d-model", "32",
    "--agent.cem.population-size", "100", "--agent.num-particles", "3",
    "--agent.seq-trainer.max-grad-steps", "300",
]  # fmt: skip
