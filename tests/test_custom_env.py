"""Bring your own environment: one file, one decorator, then every command works."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from mbrl.cli import main
from mbrl.envs import get_env_spec, register_env
from mbrl.envs.examples import reach2d
from mbrl.errors import MbrlError

EXAMPLE = Path(reach2d.__file__)


def user_copy(path: Path, env_id: str) -> Path:
    """The example as a user's own file, registering under its own id."""
    path.write_text(EXAMPLE.read_text().replace('"Reach2D-v0"', f'"{env_id}"'))
    return path


def test_example_functions_agree_with_the_env() -> None:
    env = gym.make("Reach2D-v0")
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    for steps in range(300):
        act = rng.uniform(-1, 1, size=2).astype(np.float32) if steps % 3 else -np.sign(obs[:2])
        next_obs, rew, terminated, truncated, _ = env.step(act)
        o, a, n = (torch.as_tensor(x, dtype=torch.float32)[None] for x in (obs, act, next_obs))
        assert float(reach2d.reach2d_reward(o, a, n)[0]) == pytest.approx(rew, abs=1e-6)
        assert bool(reach2d.reach2d_termination(o, a, n)[0]) == terminated
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset(seed=steps)
    env.close()


def test_module_and_file_references_resolve(tmp_path: Path) -> None:
    spec = get_env_spec("mbrl.envs.examples.reach2d:Reach2D")
    assert spec.id == "Reach2D-v0" and spec.dims() == (4, 2)
    assert spec.ref_min_score == -100.0 and spec.ref_max_score == -10.0
    copy = user_copy(tmp_path / "my_reach.py", "MyReach-v0")
    assert get_env_spec(f"{copy}:Reach2D").id == "MyReach-v0"


def test_bad_references_are_explained(tmp_path: Path) -> None:
    with pytest.raises(MbrlError, match="does not exist"):
        get_env_spec(f"{tmp_path / 'missing.py'}:X")
    with pytest.raises(MbrlError, match=r"cannot import env module 'no_such_pkg\.mod'"):
        get_env_spec("no_such_pkg.mod:X")
    with pytest.raises(MbrlError, match=r"unknown class 'Reach2d'.*Did you mean 'Reach2D'"):
        get_env_spec("mbrl.envs.examples.reach2d:Reach2d")
    plain = tmp_path / "plain_env.py"
    plain.write_text("import gymnasium\nclass Plain(gymnasium.Env):\n    pass\n")
    with pytest.raises(MbrlError, match="not registered; decorate it with"):
        get_env_spec(f"{plain}:Plain")


def test_broken_env_is_refused_at_registration() -> None:
    class Broken(gym.Env[np.ndarray, np.ndarray]):
        """Returns observations outside its own observation space."""

        def __init__(self) -> None:
            self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
            self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return np.full(3, 5.0, dtype=np.float32), {}

        def step(self, action):
            return np.zeros(3, dtype=np.float32), 0.0, False, False, {}

    with pytest.raises(MbrlError, match=r"'Broken-v0' .*fails gymnasium's env checker"):
        register_env("Broken-v0", never_terminates=True)(Broken)


def test_envs_command_lists_a_loaded_custom_env(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = user_copy(tmp_path / "listed.py", "Listed-v0")
    assert main(["envs", "--load", str(copy)]) == 0
    out = capsys.readouterr().out
    assert "Listed-v0" in out and "-100.0 / -10.0" in out
    # the planning-reward column: InvertedPendulum registers one, HalfCheetah does not
    cells = {ln.split("│")[1].strip(): ln.split("│") for ln in out.splitlines() if "│" in ln}
    assert cells["InvertedPendulum-v5"][6].strip() == "yes"
    assert cells["HalfCheetah-v5"][6].strip() == ""


def test_train_on_a_custom_env_from_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = user_copy(tmp_path / "my_task.py", "MyTask-v0")
    args = [
        "train", "sac", "--run.env", f"{copy}:Reach2D", "--run.total-steps", "150",
        "--run.eval-every", "0", "--run.eval-episodes", "2", "--run.checkpoint-every", "0",
        "--run.run-root", str(tmp_path / "runs"), "--run.no-progress",
        "--run.no-tensorboard", "--agent.learning-starts", "100", "--agent.batch-size", "32",
        "--agent.hidden-sizes", "32", "32",
    ]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    (summary_path,) = list((tmp_path / "runs").rglob("summary.json"))
    summary = json.loads(summary_path.read_text())
    ret = summary["final"]["eval/return"]
    assert summary["normalized_score"] == pytest.approx(100 * (ret + 100.0) / 90.0)
