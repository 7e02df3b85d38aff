"""Stable-Baselines3's SAC behind mbrl's CLI, run directory, metrics and evaluation.

A well-known model-free baseline for the results tables: the algorithm is
stable-baselines3's (Haarnoja et al. 2018, "Soft Actor-Critic Algorithms and
Applications", arXiv:1812.05905), only the plumbing is ours.

Defaults follow the SAC paper's MuJoCo settings (2×256 MLPs, Adam 3e-4, batch 256,
γ 0.99, τ 0.005, automatic entropy tuning with target −|A|, 1 update per env step,
buffer 1M) with 10,000 initial uniform-random steps as in the paper's code.

Deviations, all from stable-baselines3 itself:
- Resuming (``--resume``) restores the weights, optimizers and replay buffer but
  not the RNG streams, so a resumed run is statistically, not bitwise, identical
  to an uninterrupted one.
- The progress bar is stable-baselines3's.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3 import SAC
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import configure

from mbrl.config import check_positive
from mbrl.envs import get_env_spec
from mbrl.evaluation import evaluate_policy
from mbrl.registry import AGENTS
from mbrl.rundir import RunDir
from mbrl.train import RunContext, TrainConfig, load_run_config


@dataclass
class SB3SACConfig:
    """Stable-Baselines3 SAC hyperparameters (SAC paper defaults).

    Attributes:
        learning_rate: Adam step size for actor, critics and temperature.
        buffer_size: replay buffer capacity.
        learning_starts: uniform-random steps before learning starts.
        batch_size: minibatch size.
        tau: Polyak coefficient of the target critics.
        gamma: discount.
        gradient_steps: SAC updates per environment step.
        hidden_sizes: hidden layer sizes of actor and critics.
        log_every: environment steps between train/* metric rows.
    """

    learning_rate: float = 3e-4
    buffer_size: int = 1_000_000
    learning_starts: int = 10_000
    batch_size: int = 256
    tau: float = 0.005
    gamma: float = 0.99
    gradient_steps: int = 1
    hidden_sizes: tuple[int, ...] = (256, 256)
    log_every: int = 1_000

    def __post_init__(self) -> None:
        check_positive(self, "learning_rate", "buffer_size", "batch_size", "log_every")


@AGENTS.register("sb3-sac", config=SB3SACConfig)
class SB3SAC:
    """Stable-Baselines3 SAC: model-free baseline (Haarnoja et al. 2018)."""

    def __init__(self, cfg: TrainConfig[SB3SACConfig], ctx: RunContext) -> None:
        self.cfg, self.ctx = cfg, ctx
        self.spec = get_env_spec(cfg.run.env)

    def train(self) -> dict[str, float]:
        run, agent = self.cfg.run, self.cfg.agent
        env = self.spec.make()
        ckpt = latest_checkpoint(self.ctx.run_dir) if self.ctx.resumed else None
        if ckpt is not None:
            model = SAC.load(ckpt, env=env, device=self.ctx.device)
            model.load_replay_buffer(ckpt.with_suffix(".buffer.pkl"))
        else:
            model = SAC(
                "MlpPolicy",
                env,
                learning_rate=agent.learning_rate,
                buffer_size=min(agent.buffer_size, run.total_steps),
                learning_starts=agent.learning_starts,
                batch_size=agent.batch_size,
                tau=agent.tau,
                gamma=agent.gamma,
                gradient_steps=agent.gradient_steps,
                policy_kwargs={"net_arch": list(agent.hidden_sizes)},
                seed=run.seed,
                device=self.ctx.device,
            )
        model.set_logger(configure(None, []))  # metrics go through our logger
        remaining = run.total_steps - model.num_timesteps
        if remaining > 0:
            model.learn(
                remaining,
                callback=_Callback(self),
                reset_num_timesteps=ckpt is None,
                progress_bar=run.progress,
            )
        final = self.evaluate(model)
        self.ctx.logger.log(run.total_steps, final)
        save_checkpoint(self.ctx.run_dir, model, run.keep_checkpoints)
        env.close()
        return final

    def evaluate(
        self, model: Any, episodes: int | None = None, video: Path | None = None
    ) -> dict[str, float]:
        def act(obs: np.ndarray) -> np.ndarray:
            action, _ = model.predict(obs, deterministic=True)
            return np.asarray(action)

        n = episodes or self.cfg.run.eval_episodes
        return evaluate_policy(self.spec, act, n, self.cfg.run.seed, video_path=video)

    @classmethod
    def evaluate_run(
        cls, run_dir: RunDir, episodes: int, video: bool, device: str
    ) -> dict[str, float]:
        from mbrl.errors import MbrlError

        cfg = load_run_config(run_dir, SB3SACConfig)
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            raise MbrlError(f"{run_dir.checkpoint_dir} holds no checkpoint to evaluate.")
        model = SAC.load(ckpt, device=device)
        agent = cls.__new__(cls)
        agent.cfg, agent.spec = cfg, get_env_spec(cfg.run.env)
        video_path = run_dir.path / "videos" / f"{ckpt.stem}.mp4" if video else None
        return agent.evaluate(model, episodes=episodes, video=video_path)


class _Callback(BaseCallback):
    """Evaluation, train metrics and checkpoints on the run's schedule."""

    def __init__(self, owner: SB3SAC) -> None:
        super().__init__()
        self.owner = owner

    def _on_step(self) -> bool:
        run, agent = self.owner.cfg.run, self.owner.cfg.agent
        step, log = self.num_timesteps, self.owner.ctx.logger
        if step % agent.log_every == 0:
            metrics = {
                k: float(v)
                for k, v in self.model.logger.name_to_value.items()
                if k.startswith("train/")
            }
            metrics["time/sps"] = step / max(log.wall_time, 1e-9)
            log.log(step, metrics)
        if run.eval_every and step % run.eval_every == 0 and step < run.total_steps:
            log.log(step, self.owner.evaluate(self.model))
        if run.checkpoint_every and step % run.checkpoint_every == 0 and step < run.total_steps:
            save_checkpoint(self.owner.ctx.run_dir, self.model, run.keep_checkpoints)
        return True


def save_checkpoint(run_dir: RunDir, model: Any, keep: int) -> Path:
    """Save model and replay buffer atomically as ``checkpoints/step_<n>.zip``."""
    folder = run_dir.checkpoint_dir
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step_{model.num_timesteps:09d}.zip"
    for suffix, save in ((".buffer.pkl", model.save_replay_buffer), (".zip", model.save)):
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=suffix)
        os.close(fd)
        save(tmp)
        os.replace(tmp, final.with_suffix(suffix))
    for old in sorted(folder.glob("step_*.zip"))[:-keep]:
        old.unlink()
        old.with_suffix(".buffer.pkl").unlink(missing_ok=True)
    return final


def latest_checkpoint(run_dir: RunDir) -> Path | None:
    found = sorted(run_dir.checkpoint_dir.glob("step_*.zip"))
    return found[-1] if found else None
