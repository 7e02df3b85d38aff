"""MBPO: schedule, batch composition, model buffer, rollout starts, resume, and learning."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from mbrl.agents.mbpo import (
    MBPOAgent,
    MBPOConfig,
    model_buffer_capacity,
    rollout_length,
)
from mbrl.agents.sac import SAC
from mbrl.checkpoint import find_latest, load_checkpoint
from mbrl.cli import main
from mbrl.data.buffer import ReplayBuffer
from mbrl.errors import MbrlError
from mbrl.models.model_env import ModelEnv
from mbrl.rundir import read_metrics
from mbrl.types import TransitionBatch

torch.set_num_threads(1)

# A tiny, fast MBPO on the point mass (30-step episodes): for mechanics, not learning.
TINY = [
    "--agent.learning-starts", "60", "--agent.model-train-freq", "30",
    "--agent.epoch-length", "30", "--agent.rollout-batch-size", "100",
    "--agent.rollout-schedule", "0", "2", "1", "3", "--agent.updates-per-step", "2",
    "--agent.model-max-epochs", "3", "--agent.log-every", "30", "--agent.batch-size", "256",
]  # fmt: skip


def train_args(root: Path, steps: int, seed: int = 0, extra: list[str] | None = None) -> list[str]:
    return [
        "train", "mbpo", "--preset", "point_mass", "--run.total-steps", str(steps),
        "--run.seed", str(seed), "--run.run-root", str(root), "--run.no-progress",
        "--run.no-tensorboard", *(extra or []),
    ]  # fmt: skip


def only_run(root: Path) -> Path:
    (run_dir,) = (root / "PointMass1D-v0" / "mbpo").iterdir()
    return run_dir


def rows_in(rows: Tensor, table: Tensor) -> Tensor:
    """``(B,)`` bool: which rows of ``rows (B, D)`` occur exactly in ``table (N, D)``."""
    return (rows[:, None, :] == table[None, :, :]).all(-1).any(1)


# -- schedule and sizes ---------------------------------------------------------------------
def test_rollout_length_follows_the_linear_schedule() -> None:
    hopper = (20, 150, 1, 15)
    # k_a up to epoch a, then int(k_a + (e - a)/(b - a) * (k_b - k_a)), k_b from epoch b
    expected = {0: 1, 20: 1, 21: 1, 29: 1, 30: 2, 85: 8, 149: 14, 150: 15, 400: 15}
    assert {e: rollout_length(e, hopper) for e in expected} == expected
    assert [rollout_length(e, (20, 100, 1, 25)) for e in (60, 99, 100)] == [13, 24, 25]
    assert {rollout_length(e, (20, 150, 1, 1)) for e in range(300)} == {1}


def test_epochs_count_from_the_end_of_the_warm_up(tmp_path: Path) -> None:
    cfg = MBPOConfig()
    assert cfg.learning_starts == 5000 and cfg.epoch_length == 1000
    agent = _agent(tmp_path, MBPOConfig(learning_starts=5000, epoch_length=1000))
    assert [agent.epoch(s) for s in (1, 5000, 5999, 6000, 25_000)] == [0, 0, 0, 1, 20]


def test_model_buffer_capacity_is_retain_epochs_of_rollouts() -> None:
    cfg = MBPOConfig()  # 100k starts every 250 steps, epochs of 1000 steps, retain 1
    assert model_buffer_capacity(cfg, 1) == 400_000
    assert model_buffer_capacity(cfg, 15) == 6_000_000
    assert model_buffer_capacity(MBPOConfig(model_retain_epochs=5), 2) == 4_000_000


def test_real_rows_per_batch() -> None:
    assert MBPOConfig().real_rows == 13  # round(0.05 * 256) = round(12.8)
    assert MBPOConfig(real_ratio=0.1, batch_size=100).real_rows == 10
    assert MBPOConfig(real_ratio=1.0).real_rows == 256


def test_config_errors_name_the_field() -> None:
    with pytest.raises(MbrlError, match="rollout_schedule"):
        MBPOConfig(rollout_schedule=(150, 20, 1, 15))
    with pytest.raises(MbrlError, match="real_ratio"):
        MBPOConfig(real_ratio=1.5)
    with pytest.raises(MbrlError, match="weight_decays"):
        MBPOConfig(model_num_layers=2)  # 5 decays for 3 linear layers
    with pytest.raises(MbrlError, match="propagation"):
        MBPOConfig(propagation="random_elites")


# -- an agent built directly (no loop) -----------------------------------------------------
def _agent(tmp_path: Path, agent_cfg: MBPOConfig) -> MBPOAgent:
    from mbrl.config import RunConfig
    from mbrl.rundir import MetricsLogger, RunDir
    from mbrl.train import RunContext, TrainConfig

    run = RunConfig(env="PointMass1D-v0", seed=3, run_root=tmp_path, tensorboard=False)
    run_dir = RunDir.create(tmp_path, "PointMass1D-v0", "mbpo", 3, None)
    ctx = RunContext(run_dir, MetricsLogger(run_dir, tensorboard=False), torch.device("cpu"))
    return MBPOAgent(TrainConfig(agent=agent_cfg, run=run), ctx)


def _filled_buffer(n: int, seed: int = 0) -> ReplayBuffer:
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, 2, generator=gen) * 5
    act = torch.rand(n, 1, generator=gen) * 2 - 1
    vel = obs[:, 1:] + act
    next_obs = torch.cat([obs[:, :1] + 0.03 * vel, vel], dim=1)
    rew = -0.001 * next_obs[:, 0] ** 2
    buf = ReplayBuffer(10_000, 2, 1, seed=seed)
    falses = torch.zeros(n, dtype=torch.bool)
    buf.add_batch(obs, act, rew, next_obs, falses, falses)
    return buf


def test_model_buffer_is_fifo_and_keeps_the_newest_rows_when_resized(tmp_path: Path) -> None:
    cfg = MBPOConfig(
        rollout_batch_size=50, epoch_length=100, model_train_freq=50, model_retain_epochs=1,
        num_members=3, num_elites=2, model_hidden_size=16, model_num_layers=1,
        model_weight_decays=(0.0, 0.0), model_max_epochs=2, hidden_sizes=(16, 16),
    )  # fmt: skip
    agent = _agent(tmp_path, cfg)
    real = _filled_buffer(300)
    agent.train_model(real)
    assert model_buffer_capacity(cfg, 1) == 100  # 1 epoch = 2 refits of 50 starts, k = 1
    made = [agent.rollout(real, 1) for _ in range(3)]
    mb = agent.model_buffer
    assert mb is not None and mb.capacity == 100 and len(mb) == 100
    newest = torch.cat([made[1].obs, made[2].obs])
    assert torch.equal(mb.transitions().obs, newest)  # the oldest rollout is gone
    # k = 2 doubles the capacity; the kept rows survive the reallocation, oldest first
    more = agent.rollout(real, 2)
    mb = agent.model_buffer
    assert mb is not None and mb.capacity == 200
    assert torch.equal(mb.transitions().obs, torch.cat([newest, more.obs])[-200:])
    assert agent.model_metrics["model/buffer_size"] == 200.0
    assert agent.model_metrics["model/rollout_length"] == 2.0


def test_sac_batch_mixes_exactly_round_ratio_real_rows(tmp_path: Path) -> None:
    agent = _agent(tmp_path, MBPOConfig(hidden_sizes=(16, 16)))
    real = _filled_buffer(500)
    assert agent.sample_sac_batch(real).obs.shape == (256, 2)  # no rollouts yet: all real
    fake = ReplayBuffer(1000, 2, 1, seed=1)
    ones = torch.ones(1000, dtype=torch.bool)
    fake.add_batch(
        torch.full((1000, 2), 1e3), torch.zeros(1000, 1), torch.zeros(1000),
        torch.full((1000, 2), 1e3), ~ones, ones,
    )  # fmt: skip
    agent.model_buffer = fake
    for _ in range(5):
        batch = agent.sample_sac_batch(real)
        is_real = rows_in(batch.obs, real.transitions().obs)
        assert len(batch) == 256
        assert is_real[:13].all() and not is_real[13:].any()


# -- through the online loop -----------------------------------------------------------------
def test_every_sac_batch_has_13_real_rows_and_rollouts_start_from_real_states(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches: list[TransitionBatch] = []
    starts: list[Tensor] = []
    update, rollout = SAC.update, ModelEnv.rollout

    def spy_update(self: SAC, batch: TransitionBatch) -> dict[str, float]:
        batches.append(batch)
        return update(self, batch)

    def spy_rollout(self: ModelEnv, policy: Any, start_obs: Tensor, *a: Any) -> TransitionBatch:
        starts.append(start_obs.clone())
        return rollout(self, policy, start_obs, *a)

    monkeypatch.setattr(SAC, "update", spy_update)
    monkeypatch.setattr(ModelEnv, "rollout", spy_rollout)
    root = tmp_path / "runs"
    assert main(train_args(root, 120, extra=TINY)) == 0
    run_dir = only_run(root)
    state = load_checkpoint(find_latest(run_dir))  # type: ignore[arg-type]
    real = state["buffer"]
    real_rows = torch.cat([real["obs"], real["act"], real["next_obs"]], dim=1)

    assert len(batches) == (120 - 60 + 1) * 2  # G = 2 updates from step 60 on
    for batch in batches:
        rows = torch.cat([batch.obs, batch.act, batch.next_obs], dim=1)
        is_real = rows_in(rows, real_rows)
        assert is_real[:13].all() and not is_real[13:].any()
    assert len(starts) == 3  # refits at steps 60, 90, 120
    for s in starts:
        assert s.shape == (100, 2) and rows_in(s, real["obs"]).all()

    metrics = read_metrics(run_dir / "metrics.csv")
    keys = {r["key"] for r in metrics}
    assert {
        "model/holdout_mse", "model/rollout_length", "model/buffer_size", "train/critic_loss",
        "time/model_train_s", "time/rollout_s", "time/sac_update_s", "time/env_s",
        "rollout/episode_max_reward",
    } <= keys  # fmt: skip
    lengths = {r["step"]: r["value"] for r in metrics if r["key"] == "model/rollout_length"}
    # epoch = (step - 60) // 30 under schedule [0, 2, 1, 3]: k = 1, 2, 3 at 60, 90, 120
    assert lengths[60] == 1.0 and lengths[90] == 2.0 and lengths[120] == 3.0
    # the model buffer keeps one epoch (1 refit) of rollouts: at most 100 * k rows
    sizes = {r["step"]: r["value"] for r in metrics if r["key"] == "model/buffer_size"}
    assert sizes[120] <= 300


def test_killed_and_resumed_run_ends_identically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = [*TINY, "--run.checkpoint-every", "70", "--run.eval-every", "0"]
    full_root = tmp_path / "full"
    assert main(train_args(full_root, 150, seed=4, extra=extra)) == 0

    on_step = MBPOAgent.on_step

    def killed(self: MBPOAgent, step: int, buffer: ReplayBuffer) -> dict[str, float]:
        if step == 125:
            raise KeyboardInterrupt
        return on_step(self, step, buffer)

    monkeypatch.setattr(MBPOAgent, "on_step", killed)
    root = tmp_path / "killed"
    assert main(train_args(root, 150, seed=4, extra=extra)) == 130
    monkeypatch.setattr(MBPOAgent, "on_step", on_step)
    assert main(["train", "--resume", str(only_run(root))]) == 0

    want = json.loads((only_run(full_root) / "summary.json").read_text())["final"]
    got = json.loads((only_run(root) / "summary.json").read_text())["final"]
    assert got == want
    a = load_checkpoint(find_latest(only_run(full_root)))["agent"]  # type: ignore[arg-type]
    b = load_checkpoint(find_latest(only_run(root)))["agent"]  # type: ignore[arg-type]
    for key, value in a["sac"]["actor"].items():
        assert torch.equal(value, b["sac"]["actor"][key]), key
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert torch.equal(a["model_buffer"]["obs"], b["model_buffer"]["obs"])


# -- the learning check -----------------------------------------------------------------------
def test_mbpo_learns_point_mass_within_12_episodes(tmp_path: Path) -> None:
    """Issue criterion (from mbrl-lib's tests): a step reward above -0.02 within 12 episodes,
    here for at least 2 of seeds 0-2.

    Uniform-random actions get there in ~1.6% of episodes; the point_mass preset is MBPO
    scaled down for this toy task (see the preset's header). Not every seed gets there
    (7 of seeds 0-7 did on one CPU), and a seed's path differs between CPUs (float
    rounding), so one fixed seed would make the test depend on the machine.
    """
    best: dict[int, list[float]] = {}
    for seed in (0, 1, 2):
        root = tmp_path / f"runs{seed}"
        assert main(train_args(root, 360, seed=seed)) == 0
        rows = read_metrics(only_run(root) / "metrics.csv")
        best[seed] = [r["value"] for r in rows if r["key"] == "rollout/episode_max_reward"]
        assert len(best[seed]) == 12
    assert sum(max(v) > -0.02 for v in best.values()) >= 2, best
