"""Contract tests: every registered component, whatever it is, keeps the same promises."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from mbrl.cli import main
from mbrl.config import from_dict, load_yaml, save_yaml
from mbrl.registry import AGENTS, ENVS

ENV_IDS = ENVS.names()
AGENT_NAMES = AGENTS.names()


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_env_spec_functions_are_batched(env_id: str) -> None:
    spec = ENVS.get(env_id).obj
    obs_dim, act_dim = spec.dims()
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(64, obs_dim, generator=gen)
    act = torch.rand(64, act_dim, generator=gen) * 2 - 1
    next_obs = obs + 0.01 * torch.randn(64, obs_dim, generator=gen)
    if spec.termination_fn is not None:
        term = spec.termination_fn(obs, act, next_obs)
        assert term.shape == (64,) and term.dtype == torch.bool
    else:
        assert spec.never_terminates or spec.termination_fn is None
    if spec.reward_fn is not None:
        rew = spec.reward_fn(obs, act, next_obs)
        assert rew.shape == (64,) and rew.dtype.is_floating_point
        assert torch.isfinite(rew).all()


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_env_spec_declared_dims_match_env(env_id: str) -> None:
    spec = ENVS.get(env_id).obj
    if spec.obs_dim is None:
        pytest.skip("dims read from the env itself")
    env = spec.make()
    try:
        assert env.observation_space.shape == (spec.obs_dim,)
        assert env.action_space.shape == (spec.act_dim,)
    finally:
        env.close()


@pytest.mark.parametrize("name", AGENT_NAMES)
def test_agent_config_round_trips_through_yaml(name: str, tmp_path: Path) -> None:
    entry = AGENTS.get(name)
    assert entry.config is not None and dataclasses.is_dataclass(entry.config)
    assert entry.description, f"agent {name} needs a docstring summary"
    cfg = entry.config()
    save_yaml(cfg, tmp_path / "c.yaml")
    assert from_dict(entry.config, load_yaml(tmp_path / "c.yaml")) == cfg


@pytest.mark.parametrize("name", AGENT_NAMES)
def test_agent_is_listed_and_described(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["agents", name]) == 0
    out = capsys.readouterr().out
    config = AGENTS.get(name).config
    assert config is not None, f"agent {name!r} registers no config dataclass"
    first_field = dataclasses.fields(config)[0].name
    assert f"agent.{first_field}" in out


@pytest.mark.parametrize("name", AGENT_NAMES)
def test_agent_presets_are_valid(name: str) -> None:
    from mbrl.config import RunConfig, list_presets, load_preset

    config = AGENTS.get(name).config
    assert config is not None
    for preset in list_presets(name):
        data = load_preset(name, preset)
        assert set(data) <= {"agent", "run"}, preset
        from_dict(config, data.get("agent", {}), source=preset)
        from_dict(RunConfig, data.get("run", {}), source=preset)


@pytest.mark.parametrize("name", ["mbpo", "mopo", "mobile", "ravl"])
def test_dyna_agents_refuse_sequence_models_at_start_up(name: str) -> None:
    """Their recipes sample from a random elite's Gaussian: a deterministic sequence model
    is refused when the config is built (before any data or env), saying why and where it
    does plug in; an unknown model name lists the registered ones."""
    from mbrl.errors import MbrlError

    config = AGENTS.get(name).config
    assert config is not None
    assert config(model="ensemble").model == "ensemble"
    for model in ("koopman", "transformer"):
        with pytest.raises(MbrlError, match=rf"{name}: agent.model='{model}' is not supp") as e:
            config(model=model)
        assert "deterministic" in str(e.value) and f"--agent.model {model}" in str(e.value)
    with pytest.raises(MbrlError, match=r"unknown model 'nope'.*ensemble, koopman, transformer"):
        config(model="nope")
