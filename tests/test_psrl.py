"""PSRL: one ensemble member per episode for every particle, resampled; learns the point mass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_pets import (
    episode_max_rewards,
    make_agent,
    random_buffer,
    record_members,
    run_cli,
    small_config,
)

from mbrl.agents.psrl import PSRLAgent, PSRLConfig
from mbrl.config import from_dict, load_yaml, save_yaml
from mbrl.errors import MbrlError
from mbrl.rundir import read_metrics

torch.set_num_threads(1)


@pytest.mark.parametrize("seed", [1])
def test_psrl_solves_point_mass_within_6_episodes(
    seed: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A step reward above -0.02 within 6 episodes (the first one random). Checked on
    # seeds 0-8 with this preset: all get there by episode 5 (6 of 9 by episode 3); one
    # episode more than PETS is allowed, as one sampled member explores more.
    maxes = episode_max_rewards(monkeypatch)
    run_dir = run_cli("psrl", tmp_path, seed, steps=180)
    assert len(maxes) == 6
    assert maxes[0] < -0.02  # the random episode did not get there by luck
    assert max(maxes) > -0.02, maxes
    rows = read_metrics(run_dir / "metrics.csv")
    drawn = [r for r in rows if r["key"] == "train/psrl_member"]
    # the first fit draws a member, then a new one at the start of every later episode
    assert len(drawn) >= 5
    assert len({r["value"] for r in drawn}) > 1


def test_one_member_for_every_particle_and_step_then_resampled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = small_config(PSRLConfig, horizon=5, cem={"num_iterations": 2, "population_size": 20})
    agent = make_agent(tmp_path, PSRLAgent, cfg)
    assert agent.model_env.propagation == "episode_member"
    agent.fit_model(90, random_buffer(agent))
    assert agent.member is not None  # drawn right after the first fit
    members = record_members(agent.model_env, monkeypatch)
    obs = np.array([8.0, 0.0], dtype=np.float32)
    agent.act(obs)
    agent.act(obs)  # a second env step of the same episode: still the same member
    assert len(members) == 2 * 2 * 5
    assert all(bool((m == agent.member).all()) for m in members)

    drawn = []
    first = agent.member
    agent.on_new_episode(90)  # the episode that ended with the first fit: no redraw
    assert agent.member == first
    for i in range(12):  # twelve episode boundaries
        agent.on_new_episode(120 + 30 * i)
        drawn.append(agent.member)
        assert agent.model_env.member == agent.member
    assert set(drawn) <= set(agent.model.elite_idx.tolist())
    assert len(set(drawn)) >= 3  # uniform over 5 elites: resampled, not stuck


def test_evaluation_plans_with_the_whole_ensemble(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = small_config(PSRLConfig, horizon=4, cem={"num_iterations": 1, "population_size": 20})
    agent = make_agent(tmp_path, PSRLAgent, cfg)
    agent.fit_model(90, random_buffer(agent))
    assert agent.eval_model_env.propagation == "fixed_member"
    members = record_members(agent.eval_model_env, monkeypatch)
    agent.act(np.array([8.0, 0.0], dtype=np.float32), deterministic=True)
    assert members[0].unique().numel() == 5  # TS∞ over all elites, not one sample


def test_state_dict_keeps_the_episode_member(tmp_path: Path) -> None:
    cfg = small_config(PSRLConfig)
    agent = make_agent(tmp_path / "a", PSRLAgent, cfg, seed=2)
    agent.fit_model(90, random_buffer(agent))
    agent.on_new_episode(90)
    other = make_agent(tmp_path / "b", PSRLAgent, cfg, seed=7)
    other.load_state_dict(agent.state_dict())
    assert other.member == agent.member == other.model_env.member
    agent.on_new_episode(120)
    other.on_new_episode(120)
    assert other.member == agent.member  # the member generator was restored too


def test_config_round_trips_and_defaults(tmp_path: Path) -> None:
    cfg = PSRLConfig(horizon=10, num_particles=4)
    save_yaml(cfg, tmp_path / "psrl.yaml")
    assert from_dict(PSRLConfig, load_yaml(tmp_path / "psrl.yaml")) == cfg
    assert PSRLConfig().horizon == 25  # MPC-PSRL's horizon
    with pytest.raises(MbrlError, match="unknown PETS propagation"):
        PSRLConfig(propagation="episode_member")  # training always uses it; eval cannot
