"""Deterministic evaluation episodes in the real environment, shared by all agents."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mbrl.envs import EnvSpec
from mbrl.errors import MbrlError

ActFn = Callable[[np.ndarray], np.ndarray]
"""``act_fn(obs (O,)) -> act (A,)``: the deterministic policy being evaluated."""

EVAL_SEED_OFFSET = 10_000  # evaluation episodes never reuse training resets' seeds


def evaluate_policy(
    spec: EnvSpec,
    act_fn: ActFn,
    episodes: int,
    seed: int,
    video_path: Path | None = None,
) -> dict[str, float]:
    """Run ``episodes`` episodes and return ``eval/return`` (mean), its std and length.

    Episode ``i`` resets with seed ``seed + EVAL_SEED_OFFSET + i`` so evaluations are
    reproducible and comparable across agents. With ``video_path`` the first episode
    is rendered offscreen and written as an MP4 (needs the ``video`` extra).
    """
    if video_path is not None:
        os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering
    if video_path is None:
        env = spec.make()
    else:
        try:
            env = spec.make(render_mode="rgb_array")
        except TypeError as exc:  # the env's constructor takes no render_mode
            raise MbrlError(
                f"env '{spec.id}' cannot render videos ({exc}); evaluate without --video."
            ) from None
    returns, lengths = [], []
    frames: list[np.ndarray] = []
    try:
        for i in range(episodes):
            obs, _ = env.reset(seed=seed + EVAL_SEED_OFFSET + i)
            total, steps, done = 0.0, 0, False
            while not done:
                if video_path is not None and i == 0:
                    frames.append(np.asarray(env.render()))
                obs, rew, terminated, truncated, _ = env.step(act_fn(np.asarray(obs)))
                total += float(rew)
                steps += 1
                done = bool(terminated or truncated)
            returns.append(total)
            lengths.append(steps)
    finally:
        env.close()
    if video_path is not None:
        write_video(frames, video_path, fps=int(env.metadata.get("render_fps", 30)))
    return {
        "eval/return": float(np.mean(returns)),
        "eval/return_std": float(np.std(returns)),
        "eval/length": float(np.mean(lengths)),
    }


def write_video(frames: list[np.ndarray], path: Path, fps: int) -> None:
    try:
        import imageio.v2 as imageio
    except ImportError:
        raise MbrlError(
            "writing videos needs the 'video' extra: pip install 'mbrl-framework[video]'."
        ) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimsave(path, frames, fps=fps)  # type: ignore[arg-type]
