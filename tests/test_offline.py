"""Offline RL: MOPO/MOBILE/EDAC maths on hand-computed tensors, the offline loop end to end,
bad datasets, dataset -> env resolution, exact kill-and-resume, and a BC learning check."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from d4rl_files import write_arrays, write_d4rl_file

from mbrl.agents.bc import DeterministicPolicy
from mbrl.agents.mobile import MOBILESAC, mobile_penalty, mobile_target
from mbrl.agents.mopo import MOPOConfig, mopo_uncertainty
from mbrl.agents.ravl import (
    RAVLSAC,
    RAVLAgent,
    RAVLConfig,
    edac_diversity,
    edac_diversity_loss,
)
from mbrl.agents.sac import SAC, CriticEnsemble, SACConfig
from mbrl.checkpoint import find_latest, load_checkpoint
from mbrl.cli import main
from mbrl.data.d4rl import D4RLDataset, save_d4rl
from mbrl.envs import get_env_spec
from mbrl.errors import MbrlError
from mbrl.models.ensemble import EnsembleConfig, ProbabilisticEnsemble
from mbrl.models.oracle import OracleDynamics
from mbrl.models.trainer import ModelTrainer
from mbrl.offline import cosine_lr, resolve_dataset_env
from mbrl.rundir import read_metrics
from mbrl.types import TransitionBatch

torch.set_num_threads(1)

ENV = "PointMass1D-v0"  # obs [pos, vel], act [accel]; 30-step episodes


# -- helpers -------------------------------------------------------------------------------
def collect(
    env_id: str, steps: int, policy: Callable[[np.ndarray], np.ndarray] | None, seed: int = 0
) -> D4RLDataset:
    """``steps`` transitions of ``policy`` (uniform-random if ``None``) in D4RL layout."""
    env = get_env_spec(env_id).make()
    rng = np.random.default_rng(seed)
    low, high = env.action_space.low, env.action_space.high
    keys = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")
    cols: dict[str, list[object]] = {k: [] for k in keys}
    obs, _ = env.reset(seed=seed)
    episode = 0
    for _ in range(steps):
        act = rng.uniform(low, high) if policy is None else policy(obs)
        act = np.asarray(act, dtype=np.float32)
        next_obs, rew, term, trunc, _ = env.step(act)
        row = (obs, act, rew, next_obs, term, trunc and not term)
        for key, value in zip(keys, row, strict=True):
            cols[key].append(value)
        obs = next_obs
        if term or trunc:
            episode += 1
            obs, _ = env.reset(seed=seed + episode)
    env.close()
    arrays = {k: np.asarray(v) for k, v in cols.items()}
    return D4RLDataset.from_arrays(arrays, where="test data", metadata={"env_id": env_id})


@pytest.fixture(scope="module")
def random_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "pm_random.hdf5"
    return save_d4rl(collect(ENV, 300, None), path)


TINY_MODEL = [
    "--agent.num-members", "3", "--agent.num-elites", "2", "--agent.model-hidden-size", "16",
    "--agent.model-num-layers", "2", "--agent.model-weight-decays", "0", "0", "0",
    "--agent.model-max-epochs", "5",
]  # fmt: skip


def offline_args(agent: str, data: Path, root: Path, steps: int, *extra: str) -> list[str]:
    """A tiny offline run: 20-update epochs of 100 rollouts, small nets, 1 eval episode."""
    model = TINY_MODEL if agent != "bc" else []
    loop = ["--agent.rollout-batch-size", "100", "--agent.updates-per-epoch", "20"]
    return [
        "train", agent, "--dataset", str(data), "--run.total-steps", str(steps),
        "--run.eval-every", "20", "--run.eval-episodes", "1", "--run.checkpoint-every", "20",
        "--run.keep-checkpoints", "10", "--run.run-root", str(root), "--run.no-progress",
        "--run.no-tensorboard", "--run.seed", "3", "--agent.hidden-sizes", "32", "32",
        "--agent.batch-size", "32", "--agent.log-every", "10",
        *(model + loop if agent != "bc" else []), *extra,
    ]  # fmt: skip


def only_run(root: Path, agent: str) -> Path:
    (run_dir,) = [p for p in root.glob(f"*/{agent}/*") if p.is_dir()]
    return run_dir


# -- the maths on hand-computed tensors ----------------------------------------------------------
def test_mopo_uncertainty_matches_hand_computed_values() -> None:
    # E = 3 members, B = 2 rows, O = 2 (Δobs) + 1 reward column.
    mean = torch.tensor(
        [
            [[1.0, 0.0, 9.0], [0.0, 0.0, 0.0]],
            [[3.0, 2.0, -9.0], [0.0, 0.0, 0.0]],
            [[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]],
        ]
    )
    std = torch.tensor(
        [
            [[0.3, 0.0, 0.4], [1.0, 0.0, 0.0]],  # norms 0.5 and 1
            [[0.6, 0.0, 0.8], [0.0, 2.0, 0.0]],  # norms 1.0 and 2
            [[0.1, 0.1, 0.1], [0.0, 0.0, 0.5]],
        ]
    )
    logvar = 2 * std.clamp_min(1e-12).log()
    aleatoric = mopo_uncertainty(mean, logvar, 2, "aleatoric")
    torch.testing.assert_close(aleatoric, torch.tensor([1.0, 2.0]))
    # member means of Δobs (1,0), (3,2), (2,1): centre (2,1), deviations √2, √2, 0
    pairwise = mopo_uncertainty(mean, logvar, 2, "pairwise_diff")
    torch.testing.assert_close(pairwise, torch.tensor([math.sqrt(2.0), 0.0]))
    # population variance per dim = 2/3 in both dims -> sqrt(2/3); the reward column is ignored
    ens_std = mopo_uncertainty(mean, logvar, 2, "ensemble_std")
    torch.testing.assert_close(ens_std, torch.tensor([math.sqrt(2 / 3), 0.0]))
    assert torch.equal(mopo_uncertainty(mean, None, 2, "aleatoric"), torch.zeros(2))
    with pytest.raises(MbrlError, match="aleatoric"):
        MOPOConfig(uncertainty="aleatoric_max")


def test_mobile_penalty_matches_hand_computed_value() -> None:
    obs = torch.tensor([[1.0]])  # B = 1, O = 1
    next_mean = torch.tensor([[[0.5]], [[1.5]]])  # K = 2 elites
    next_std = torch.tensor([[[1.0]], [[2.0]]])
    noise = torch.tensor([[[[0.1]], [[-0.2]]], [[[0.3]], [[0.4]]]])  # M = 2 samples per elite
    # s' = 1.6, 1.8 (elite 0) and 2.1, 3.3 (elite 1); π(s') = −s'; Q(s', a') = s'² + a'
    penalty = mobile_penalty(
        obs, next_mean, next_std, noise, lambda s: -s, lambda s, a: (s.square() + a).squeeze(-1)
    )
    elite_means = torch.tensor([(0.96 + 1.44) / 2, (2.31 + 7.59) / 2])  # 1.2, 4.95
    torch.testing.assert_close(penalty, elite_means.std().reshape(1))
    torch.testing.assert_close(penalty, torch.tensor([3.75 / math.sqrt(2)]))


def test_mobile_target_matches_hand_computed_values() -> None:
    rew = torch.tensor([1.0, 0.5, 2.0])
    penalty = torch.tensor([0.0, 1.0, 3.0])
    next_q = torch.tensor([10.0, 4.0, -100.0])
    terminated = torch.tensor([False, True, False])
    clamped = mobile_target(rew, penalty, next_q, terminated, 0.9, 0.5, 0.0)
    torch.testing.assert_close(clamped, torch.tensor([10.0, 0.0, 0.0]))
    raw = mobile_target(rew, penalty, next_q, terminated, 0.9, 0.5, None)
    torch.testing.assert_close(raw, torch.tensor([10.0, 0.0, -89.5]))


def test_mobile_critic_target_leaves_real_rows_unpenalized_and_has_no_entropy() -> None:
    torch.manual_seed(0)
    cfg = SACConfig(hidden_sizes=(16, 16), batch_size=4)
    low, high = np.array([-1.0], np.float32), np.array([1.0], np.float32)
    sac = MOBILESAC(
        2, 1, cfg, low, high, beta=2.0, num_samples=5, deterministic_backup=True, clamp_min=None
    )
    model = ProbabilisticEnsemble(2, 1, EnsembleConfig(num_members=3, num_elites=2, hidden_size=8))
    sac.model, sac.real_rows = model, 1
    g = torch.Generator().manual_seed(1)
    batch = TransitionBatch(
        obs=torch.randn(4, 2, generator=g),
        act=torch.rand(4, 1, generator=g) * 2 - 1,
        rew=torch.randn(4, generator=g),
        next_obs=torch.randn(4, 2, generator=g),
        terminated=torch.tensor([False, False, True, False]),
        truncated=torch.zeros(4, dtype=torch.bool),
    )
    next_act = torch.rand(4, 1, generator=g) * 2 - 1
    next_logp = torch.full((4,), 7.0)  # would change the target if the entropy term were used
    with torch.no_grad():
        torch.manual_seed(5)
        penalty = sac.penalty(batch.obs[1:], batch.act[1:])  # the model rows only
        torch.manual_seed(5)
        target = sac.critic_target(batch, next_act, next_logp)
        next_q = sac.target_critic(batch.next_obs, next_act).min(0).values
    assert (penalty > 0).all()
    penalty = torch.cat([torch.zeros(1), penalty])  # the dataset row: no penalty
    want = batch.rew - 2.0 * penalty + cfg.gamma * (~batch.terminated).float() * next_q
    torch.testing.assert_close(target, want)


def test_edac_diversity_matches_hand_computed_value() -> None:
    # row 0: unit gradients (1,0), (0,1), (0.6,0.8): Σ_{i≠j} = 2·(0 + 0.6 + 0.8) = 2.8 -> /2
    # row 1: three parallel gradients: Σ_{i≠j} = 6 -> /2 = 3
    grads = torch.tensor(
        [[[1.0, 0.0], [1.0, 1.0]], [[0.0, 2.0], [2.0, 2.0]], [[3.0, 4.0], [5.0, 5.0]]]
    )
    torch.testing.assert_close(edac_diversity(grads), torch.tensor((1.4 + 3.0) / 2))


def test_edac_diversity_loss_uses_each_critics_own_action_gradient() -> None:
    torch.manual_seed(0)
    critic = CriticEnsemble(3, 2, (16, 16), n=4)
    obs, act = torch.randn(6, 3), torch.rand(6, 2) * 2 - 1
    loss = edac_diversity_loss(critic, obs, act)
    per_critic = []
    for i in range(4):  # one critic at a time: ∇_a Q_i(s, a)
        a = act.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(critic(obs, a)[i].sum(), a)
        per_critic.append(g)
    torch.testing.assert_close(loss, edac_diversity(torch.stack(per_critic)))
    loss.backward()  # differentiable in the critics' weights (create_graph)
    weights = [p for name, p in critic.named_parameters() if name.endswith("weight")]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in weights)


def test_ravl_critic_step_is_td_loss_plus_eta_times_diversity() -> None:
    """RAVLSAC shares one critic forward between the TD loss and the diversity term; its
    critic step must equal the step on ``Σ_i MSE_i + η·L_div`` computed separately."""
    import copy

    torch.manual_seed(0)
    sac = RAVLSAC(4, 2, SACConfig(num_critics=5, hidden_sizes=(32, 32)), -np.ones(2),
                  np.ones(2), "cpu", eta=0.5)  # fmt: skip
    ref = copy.deepcopy(sac)
    n = 64
    batch = TransitionBatch(
        obs=torch.randn(n, 4), act=torch.rand(n, 2) * 2 - 1, rew=torch.randn(n),
        next_obs=torch.randn(n, 4), terminated=torch.rand(n) < 0.2,
        truncated=torch.zeros(n, dtype=torch.bool),
    )  # fmt: skip
    torch.manual_seed(1)
    with torch.no_grad():
        next_act, next_logp = ref.actor(batch.next_obs)
        target = ref.critic_target(batch, next_act, next_logp)
    q = ref.critic(batch.obs, batch.act)
    loss = (q - target).square().mean(dim=1).sum()
    loss = loss + 0.5 * edac_diversity_loss(ref.critic, batch.obs, batch.act)
    ref.critic_opt.zero_grad()
    loss.backward()
    ref.critic_opt.step()
    torch.manual_seed(1)
    metrics = sac.update(batch)
    assert metrics["train/critic_loss"] == pytest.approx(float(loss.detach()), rel=1e-6)
    for a, b in zip(sac.critic.parameters(), ref.critic.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert sac.last_diversity != 0.0


def test_cosine_actor_lr_follows_cosine_annealing() -> None:
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=7)
    for epoch in range(8):  # the run has exactly T_max epochs
        assert cosine_lr(1e-4, epoch, 7) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12)
        opt.step()
        sched.step()


# -- the loop end to end -------------------------------------------------------------------------
def test_one_offline_epoch_runs_and_logs_metrics(
    random_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches: list[TransitionBatch] = []
    update = SAC.update

    def spy(self: SAC, batch: TransitionBatch) -> dict[str, float]:
        batches.append(batch)
        return update(self, batch)

    monkeypatch.setattr(SAC, "update", spy)
    root = tmp_path / "runs"
    assert main(offline_args("ravl", random_data, root, 20, "--agent.real-ratio", "0.25")) == 0
    run_dir = only_run(root, "ravl")
    assert run_dir.parent.parent.name == "pm_random.hdf5"
    rows = read_metrics(run_dir / "metrics.csv")
    keys = {r["key"] for r in rows}
    assert {
        "eval/return", "eval/length", "model/holdout_mse", "model/rollout_rows",
        "model/buffer_size", "train/critic_loss", "train/edac_diversity", "train/q_mean",
        "train/q_policy_mean", "train/q_batch_mean", "time/updates_per_s",
    } <= keys  # fmt: skip
    assert len(batches) == 20 and all(len(b) == 32 for b in batches)
    # 8 = int(0.25·32) dataset rows first, then model rows (none of which is a dataset row)
    with h5py.File(random_data, "r") as f:
        dataset_obs = {tuple(r) for r in np.asarray(f["observations"]).tolist()}
    first = batches[0]
    assert all(tuple(o) in dataset_obs for o in first.obs[:8].tolist())
    assert not any(tuple(o) in dataset_obs for o in first.next_obs[8:].tolist())
    buffer = {r["step"]: r["value"] for r in rows if r["key"] == "model/buffer_size"}
    assert buffer[10] == 100 * 5  # PointMass never terminates: 100 starts × k = 5 steps
    cfg_text = (run_dir / "config.yaml").read_text()
    assert "env: PointMass1D-v0" in cfg_text  # the env came from the dataset's metadata
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final"]["eval/length"] == 30.0


@pytest.mark.parametrize("agent", ["mopo", "mobile", "bc"])
def test_other_offline_agents_run(agent: str, random_data: Path, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    assert main(offline_args(agent, random_data, root, 20)) == 0
    keys = {r["key"] for r in read_metrics(only_run(root, agent) / "metrics.csv")}
    want = {"mopo": "model/penalty_mean", "mobile": "train/penalty_mean", "bc": "train/bc_loss"}
    assert want[agent] in keys and "eval/return" in keys


def test_ravl_with_the_oracle_rolls_out_the_true_dynamics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The edge-of-reach set-up: no model fit, and model rows are true simulator steps."""
    data = save_d4rl(collect("InvertedPendulum-v5", 200, None), tmp_path / "ip.hdf5")
    batches: list[TransitionBatch] = []
    update, fits = SAC.update, []

    def spy(self: SAC, batch: TransitionBatch) -> dict[str, float]:
        batches.append(batch)
        return update(self, batch)

    monkeypatch.setattr(SAC, "update", spy)
    monkeypatch.setattr(ModelTrainer, "fit", lambda *a, **k: fits.append(1))
    root = tmp_path / "runs"
    extra = ["--agent.dynamics", "oracle", "--agent.num-critics", "2", "--agent.eta", "0"]
    assert main(offline_args("ravl", data, root, 20, *extra)) == 0
    assert not fits
    model_rows = batches[-1][int(0.05 * 32) :]
    oracle = OracleDynamics("InvertedPendulum-v5", nthread=1)
    next_obs, rew, terminated = oracle.step(model_rows.obs, model_rows.act)
    torch.testing.assert_close(model_rows.next_obs, next_obs)
    torch.testing.assert_close(model_rows.rew, rew)
    assert torch.equal(model_rows.terminated, terminated)
    keys = {r["key"] for r in read_metrics(only_run(root, "ravl") / "metrics.csv")}
    assert "model/oracle" in keys and "model/holdout_mse" not in keys


# -- bad data and env resolution ---------------------------------------------------------------
def test_bad_datasets_are_refused_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "runs"
    wrong_dims = write_d4rl_file(
        tmp_path / "wrong.hdf5", obs_dim=3, act_dim=2, metadata={"env_id": ENV}
    )
    assert main(offline_args("ravl", wrong_dims, root, 20)) == 2
    err = capsys.readouterr().err
    assert "obs_dim=3" in err and "PointMass1D-v0" in err and "obs_dim=2" in err

    arrays = collect(ENV, 60, None)
    obs = arrays.observations.copy()
    obs[17, 1] = np.nan
    nan_file = write_arrays(
        tmp_path / "nan.hdf5",
        {
            "observations": obs,
            "actions": arrays.actions,
            "rewards": arrays.rewards,
            "terminals": arrays.terminals,
            "timeouts": arrays.timeouts,
        },
        metadata={"env_id": ENV},
    )
    assert main(offline_args("mopo", nan_file, root, 20)) == 2
    err = capsys.readouterr().err
    assert "NaN" in err and "row 17" in err

    big = collect(ENV, 60, None)
    big.actions *= 3.0
    out_of_bounds = save_d4rl(big, tmp_path / "unnormalized.hdf5")
    assert main(offline_args("bc", out_of_bounds, root, 20)) == 2
    assert "outside the action bounds" in capsys.readouterr().err
    assert not root.exists()  # refused before a run directory was written


def test_d4rl_ids_map_to_gymnasium_v4_envs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    write_d4rl_file(tmp_path / "hopper_medium-v2.hdf5", obs_dim=11, act_dim=3)
    assert resolve_dataset_env("d4rl:hopper-medium-v2", "HalfCheetah-v5") == "Hopper-v4"
    # a file with no env metadata: its name decides
    named = write_d4rl_file(tmp_path / "walker2d_medium_replay.hdf5", obs_dim=17, act_dim=6)
    assert resolve_dataset_env(str(named), "HalfCheetah-v5") == "Walker2d-v4"
    # no name, no metadata, 17/6 dims: ambiguous unless run.env names one of the matches
    anon = write_d4rl_file(tmp_path / "data.hdf5", obs_dim=17, act_dim=6)
    assert resolve_dataset_env(str(anon), "Walker2d-v4") == "Walker2d-v4"
    with pytest.raises(MbrlError, match=r"--run\.env"):
        resolve_dataset_env(str(anon), "Hopper-v4")


# -- exact resume ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def full_run(random_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("full")
    assert main(offline_args("ravl", random_data, root, 60)) == 0
    return only_run(root, "ravl")


def assert_same_run(full: Path, resumed: Path) -> None:
    want = json.loads((full / "summary.json").read_text())["final"]
    got = json.loads((resumed / "summary.json").read_text())["final"]
    assert got == want
    a = load_checkpoint(find_latest(full))["agent"]  # type: ignore[arg-type]
    b = load_checkpoint(find_latest(resumed))["agent"]  # type: ignore[arg-type]
    for key, value in a["sac"]["critic"].items():
        assert torch.equal(value, b["sac"]["critic"][key]), key
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert torch.equal(a["model_buffer"]["obs"], b["model_buffer"]["obs"])


def test_killed_and_resumed_run_ends_identically(
    full_run: Path, random_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    update = RAVLAgent.update

    def killed(self: RAVLAgent, step: int) -> dict[str, float]:
        if step == 47:
            raise KeyboardInterrupt
        return update(self, step)

    monkeypatch.setattr(RAVLAgent, "update", killed)
    root = tmp_path / "killed"
    assert main(offline_args("ravl", random_data, root, 60)) == 130
    run_dir = only_run(root, "ravl")
    latest = find_latest(run_dir)
    assert latest is not None and load_checkpoint(latest)["step"] == 40
    fits: list[int] = []
    fit = ModelTrainer.fit

    def counted_fit(*args: Any, **kwargs: Any) -> Any:
        fits.append(1)
        return fit(*args, **kwargs)

    monkeypatch.setattr(RAVLAgent, "update", update)
    monkeypatch.setattr(ModelTrainer, "fit", counted_fit)
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert not fits  # the fitted model came from the checkpoint
    assert_same_run(full_run, run_dir)


def test_raising_the_budget_on_resume_equals_the_longer_run(
    full_run: Path, random_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "short"
    assert main(offline_args("ravl", random_data, root, 40)) == 0
    run_dir = only_run(root, "ravl")
    assert main(["train", "--resume", str(run_dir), "--run.total-steps", "60"]) == 0
    assert_same_run(full_run, run_dir)  # exactly the 60-update run
    assert (run_dir / "summary-40.json").is_file()
    # MOPO's presets anneal the actor's step size over the budget: refused, with the reason
    mopo_root = tmp_path / "mopo"
    cosine = ("--agent.actor-lr-schedule", "cosine")
    assert main(offline_args("mopo", random_data, mopo_root, 20, *cosine)) == 0
    mopo_run = only_run(mopo_root, "mopo")
    capsys.readouterr()
    assert main(["train", "--resume", str(mopo_run), "--run.total-steps", "40"]) == 2
    assert "cosine schedule" in capsys.readouterr().err
    assert (mopo_run / "summary.json").is_file()  # nothing was changed


def test_run_killed_during_the_model_fit_resumes_the_fit(
    full_run: Path, random_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mbrl.offline.FIT_CHECKPOINT_SECONDS", 0.0)
    prepare = RAVLAgent.prepare

    def killed_prepare(
        self: RAVLAgent, resume: dict[str, Any] | None, checkpoint_fn: Callable[..., None]
    ) -> dict[str, float]:
        epochs: list[int] = []

        def save_then_kill(state: dict[str, Any]) -> None:
            checkpoint_fn(state)
            epochs.append(1)
            if len(epochs) == 3:
                raise KeyboardInterrupt

        return prepare(self, resume, save_then_kill)

    monkeypatch.setattr(RAVLAgent, "prepare", killed_prepare)
    root = tmp_path / "killed"
    assert main(offline_args("ravl", random_data, root, 60)) == 130
    run_dir = only_run(root, "ravl")
    latest = find_latest(run_dir)
    assert latest is not None and load_checkpoint(latest)["phase"] == "prepare"
    monkeypatch.setattr(RAVLAgent, "prepare", prepare)
    resumed_from: list[Any] = []
    fit = ModelTrainer.fit

    def spy_fit(*args: Any, **kwargs: Any) -> Any:
        resumed_from.append(kwargs.get("resume_state"))
        return fit(*args, **kwargs)

    monkeypatch.setattr(ModelTrainer, "fit", spy_fit)
    assert main(["train", "--resume", str(run_dir)]) == 0
    (state,) = resumed_from  # the fit continued from its epoch-3 state, not from scratch
    assert state is not None and state["epoch"] == 3
    assert_same_run(full_run, run_dir)
    # the fit's time counts the part before the kill too
    fit_s = [
        r["value"] for r in read_metrics(run_dir / "metrics.csv") if r["key"] == "time/model_fit_s"
    ]
    assert fit_s and fit_s[0] >= state["elapsed"] > 0


# -- learning check ----------------------------------------------------------------------------
def test_bc_recovers_a_known_linear_policy(tmp_path: Path) -> None:
    """Data from a = clip(−0.05·pos − 0.3·vel); BC's actions on the data's states match it."""
    gain = np.array([-0.05, -0.3], dtype=np.float32)

    def policy(obs: np.ndarray) -> np.ndarray:
        return np.clip(gain @ obs, -1.0, 1.0).reshape(1)

    data = save_d4rl(collect(ENV, 900, policy, seed=1), tmp_path / "linear.hdf5")
    root = tmp_path / "runs"
    args = offline_args("bc", data, root, 1500, "--agent.learning-rate", "1e-3")
    args[args.index("--run.eval-every") + 1] = "0"
    assert main(args) == 0
    run_dir = only_run(root, "bc")
    agent_state = load_checkpoint(find_latest(run_dir))["agent"]  # type: ignore[arg-type]
    states = torch.as_tensor(collect(ENV, 300, policy, seed=7).observations)
    net = DeterministicPolicy(
        torch.zeros(2), torch.ones(2), np.array([-1.0]), np.array([1.0]), (32, 32)
    )
    net.load_state_dict(agent_state["policy"])
    with torch.no_grad():
        pred = net(states).squeeze(-1)
    true = torch.as_tensor(np.clip(states.numpy() @ gain, -1, 1))
    rmse = (pred - true).square().mean().sqrt().item()
    assert rmse < 0.05 * true.std().item() + 0.01, (rmse, true.std().item())
    # and its deterministic episodes return what the behaviour policy returns
    final = json.loads((run_dir / "summary.json").read_text())["final"]["eval/return"]
    behaviour = collect(ENV, 30, policy, seed=3 + 10_000).rewards.sum()  # the eval episode
    assert final == pytest.approx(float(behaviour), rel=0.05, abs=0.05)


def test_ravl_config_defaults_are_the_papers() -> None:
    cfg = RAVLConfig()
    assert (cfg.num_critics, cfg.eta, cfg.rollout_length, cfg.real_ratio) == (10, 1.0, 5, 0.05)
    assert cfg.real_rows == 12 and cfg.model_buffer_size == 50_000 * 5 * 5
    assert cfg.hidden_sizes == (256, 256, 256)


def test_load_dynamics_reuses_a_fitted_model_without_refitting(
    random_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """``--agent.load-dynamics RUN`` copies RUN's fitted ensemble and skips the fit."""
    root = tmp_path / "runs"
    assert main(offline_args("mopo", random_data, root, 20)) == 0
    source = only_run(root, "mopo")
    fitted = load_checkpoint(find_latest(source))["agent"]["model"]  # type: ignore[arg-type]
    fits: list[int] = []
    monkeypatch.setattr(ModelTrainer, "fit", lambda *a, **k: fits.append(1))
    args = offline_args("ravl", random_data, root, 20, "--agent.load-dynamics", str(source))
    assert main(args) == 0
    assert not fits
    loaded = load_checkpoint(find_latest(only_run(root, "ravl")))["agent"]["model"]  # type: ignore[arg-type]
    assert fitted.keys() == loaded.keys()
    assert all(torch.equal(fitted[k], loaded[k]) for k in fitted)
    keys = {r["key"] for r in read_metrics(only_run(root, "ravl") / "metrics.csv")}
    assert {"model/loaded", "model/holdout_mse"} <= keys
    # another dataset, or a different ensemble shape, is refused by name
    other = save_d4rl(collect(ENV, 200, None, seed=1), tmp_path / "other.hdf5")
    bad = offline_args("mobile", other, tmp_path / "r2", 20, "--agent.load-dynamics", str(source))
    assert main(bad) == 2
    assert "only transfers between runs on one dataset" in capsys.readouterr().err
    wide = offline_args("mobile", random_data, tmp_path / "r3", 20, "--agent.load-dynamics",
                        str(source), "--agent.model-hidden-size", "8")  # fmt: skip
    assert main(wide) == 2
    assert "does not fit this run's ensemble" in capsys.readouterr().err
