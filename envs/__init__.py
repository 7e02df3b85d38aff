"""Environments known to mbrl (installed as ``mbrl.envs``).

Each environment is an :class:`EnvSpec`: a gymnasium id plus what a learned model
needs to roll out in it — batched torch termination and reward functions — and the
D4RL reference scores where they exist. Built-in specs live in this package's
modules; a custom environment is one file::

    from mbrl.envs import register_env

    def term_fn(obs, act, next_obs):  # (B,O),(B,A),(B,O) -> (B,) bool
        return next_obs[:, 0].abs() > 10

    @register_env("MyTask-v0", termination_fn=term_fn, max_episode_steps=200)
    class MyTask(gymnasium.Env): ...

``register_env`` also registers the class with gymnasium, so ``gymnasium.make`` works.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import gymnasium as gym

from mbrl.errors import MbrlError, unknown_name
from mbrl.registry import ENVS, Entry
from mbrl.types import RewardFn, TerminationFn

E = TypeVar("E")


@dataclass(frozen=True)
class EnvSpec:
    """Metadata of a registered environment.

    Attributes:
        id: gymnasium id passed to ``gymnasium.make``.
        obs_dim, act_dim: flat observation/action sizes (``None``: read from the env).
        termination_fn: batched termination; ``None`` means unknown, unless
            ``never_terminates`` says the task has no termination condition.
        reward_fn: batched reward computable from ``(obs, act, next_obs)``, or ``None``.
        never_terminates: the task has no termination condition (e.g. HalfCheetah).
        ref_min_score, ref_max_score: D4RL reference returns for normalized scores.
        max_episode_steps: time limit used by gymnasium.
        make_kwargs: extra keyword arguments for ``gymnasium.make``.
        notes: caveats (e.g. how a reward or observation layout is approximated).
    """

    id: str
    obs_dim: int | None = None
    act_dim: int | None = None
    termination_fn: TerminationFn | None = None
    reward_fn: RewardFn | None = None
    never_terminates: bool = False
    ref_min_score: float | None = None
    ref_max_score: float | None = None
    max_episode_steps: int | None = None
    make_kwargs: dict[str, Any] = field(default_factory=dict)
    notes: str = ""

    def make(self, **kwargs: Any) -> gym.Env:
        """Create the gymnasium env (``render_mode`` etc. may be passed)."""
        return gym.make(self.id, **{**self.make_kwargs, **kwargs})

    def dims(self) -> tuple[int, int]:
        """``(obs_dim, act_dim)``, instantiating the env if they were not declared."""
        if self.obs_dim is not None and self.act_dim is not None:
            return self.obs_dim, self.act_dim
        env = self.make()
        try:
            return flat_dim(env.observation_space), flat_dim(env.action_space)
        finally:
            env.close()

    @property
    def has_termination_fn(self) -> bool:
        return self.termination_fn is not None or self.never_terminates


def flat_dim(space: gym.Space) -> int:
    """Flat size of a Box space; other spaces are not supported by the models."""
    if not isinstance(space, gym.spaces.Box) or space.shape is None:
        raise MbrlError(f"only Box observation/action spaces are supported, got {space}.")
    size = 1
    for s in space.shape:
        size *= int(s)
    return size


def add_env_spec(spec: EnvSpec, description: str = "") -> EnvSpec:
    """Register an :class:`EnvSpec` for an env gymnasium already knows."""
    ENVS.add(Entry(name=spec.id, obj=spec, description=description or spec.notes))
    return spec


def register_env(
    env_id: str,
    *,
    termination_fn: TerminationFn | None = None,
    reward_fn: RewardFn | None = None,
    never_terminates: bool = False,
    max_episode_steps: int | None = None,
    description: str | None = None,
    **make_kwargs: Any,
) -> Callable[[type[E]], type[E]]:
    """Class decorator: register a custom gymnasium env with gymnasium and with mbrl."""

    def decorator(cls: type[E]) -> type[E]:
        if env_id not in gym.registry:
            gym.register(
                id=env_id,
                entry_point=f"{cls.__module__}:{cls.__qualname__}",
                max_episode_steps=max_episode_steps,
            )
        doc = description or ((cls.__doc__ or "").strip().splitlines() or [""])[0]
        add_env_spec(
            EnvSpec(
                id=env_id,
                termination_fn=termination_fn,
                reward_fn=reward_fn,
                never_terminates=never_terminates,
                max_episode_steps=max_episode_steps,
                make_kwargs=make_kwargs,
            ),
            description=doc,
        )
        return cls

    return decorator


def get_env_spec(env_id: str) -> EnvSpec:
    """Look up an env: mbrl's registry first, then any id gymnasium knows.

    A gymnasium-only env has no termination/reward functions, so model-free agents
    can train on it but a learned model cannot roll out in it. Unknown ids get a
    close-match suggestion.
    """
    if env_id in ENVS:
        spec: EnvSpec = ENVS.get(env_id).obj
        return spec
    if env_id in gym.registry:
        return EnvSpec(id=env_id, notes="gymnasium env without mbrl termination/reward fns")
    raise unknown_name(
        "env",
        env_id,
        set(ENVS.names()) | set(gym.registry),
        hint="'mbrl envs' lists mbrl's envs; any gymnasium id works for model-free agents.",
    )


__all__ = ["EnvSpec", "add_env_spec", "flat_dim", "get_env_spec", "register_env"]
