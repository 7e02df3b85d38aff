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

import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
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
        planning_reward_fn: optional shaped reward (same signature) that a planner may
            maximize instead of ``reward_fn`` (PETS ``reward_source=planning``), for tasks
            whose true reward gives a planner little to rank plans by (e.g. a constant
            alive bonus). Returns are always measured with the env's own reward.
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
    planning_reward_fn: RewardFn | None = None
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
    planning_reward_fn: RewardFn | None = None,
    never_terminates: bool = False,
    max_episode_steps: int | None = None,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    description: str | None = None,
    check: bool = True,
    **make_kwargs: Any,
) -> Callable[[type[E]], type[E]]:
    """Class decorator: register a custom gymnasium env with gymnasium and with mbrl.

    Args:
        env_id: the id (``"MyTask-v0"``) for ``--run.env`` and ``gymnasium.make``.
        termination_fn, reward_fn: batched torch functions of ``(obs, act, next_obs)``
            so learned models can roll out in the env (see :class:`EnvSpec`).
        planning_reward_fn: optional shaped reward for MPC planning (see :class:`EnvSpec`).
        never_terminates: the task has no termination condition.
        max_episode_steps: time limit (``truncated`` after this many steps).
        ref_min_score, ref_max_score: returns that map to normalized scores 0 and 100.
        check: run gymnasium's env checker now and report a broken env clearly.
        make_kwargs: default keyword arguments of the env's constructor.
    """

    def decorator(cls: type[E]) -> type[E]:
        if env_id not in gym.registry:
            gym.register(
                id=env_id,
                entry_point=f"{cls.__module__}:{cls.__qualname__}",
                max_episode_steps=max_episode_steps,
            )
        doc = description or ((cls.__doc__ or "").strip().splitlines() or [""])[0]
        spec = EnvSpec(
            id=env_id,
            termination_fn=termination_fn,
            reward_fn=reward_fn,
            planning_reward_fn=planning_reward_fn,
            never_terminates=never_terminates,
            ref_min_score=ref_min_score,
            ref_max_score=ref_max_score,
            max_episode_steps=max_episode_steps,
            make_kwargs=make_kwargs,
        )
        if check:
            check_env_class(cls, env_id, make_kwargs)
        add_env_spec(spec, description=doc)
        cls._mbrl_env_id = env_id  # type: ignore[attr-defined]  # for "module:Class" refs
        return cls

    return decorator


def check_env_class(cls: type, env_id: str, make_kwargs: dict[str, Any]) -> None:
    """Run gymnasium's env checker on a fresh instance; a failure names the env and why."""
    import warnings

    from gymnasium.utils.env_checker import check_env

    where = f"{cls.__module__}.{cls.__qualname__}"
    try:
        env = cls(**make_kwargs)
    except Exception as exc:
        raise MbrlError(f"env '{env_id}' ({where}) cannot be constructed: {exc}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            check_env(env, skip_render_check=True)
    except Exception as exc:
        raise MbrlError(
            f"env '{env_id}' ({where}) fails gymnasium's env checker: {exc} "
            "Fix the env (see gymnasium.utils.env_checker.check_env), or pass check=False "
            "to register_env to skip the check."
        ) from None
    finally:
        close = getattr(env, "close", None)
        if callable(close):
            close()


def import_env_module(target: str) -> ModuleType:
    """Import ``package.module`` or ``path/to/file.py`` (its ``register_env`` calls run)."""
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise MbrlError(f"env module file '{path}' does not exist.")
        name = f"mbrl_user_env_{path.stem}"
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise MbrlError(f"cannot import '{path}' as a Python module.")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(target)
    except ImportError as exc:
        raise MbrlError(
            f"cannot import env module '{target}' ({exc}). Use 'package.module' for an "
            "importable module or 'path/to/file.py'."
        ) from None


def resolve_env_reference(ref: str) -> str:
    """Turn ``"package.module:Class"`` or ``"path/to/file.py:Class"`` into the env id that
    the class registered with :func:`register_env`, importing the module first."""
    target, _, cls_name = ref.rpartition(":")
    module = import_env_module(target)
    cls = getattr(module, cls_name, None)
    if cls is None:
        names = [n for n in dir(module) if not n.startswith("_")]
        raise unknown_name("class", cls_name, names, hint=f"(in {target})")
    env_id = getattr(cls, "_mbrl_env_id", None)
    if not isinstance(env_id, str):
        raise MbrlError(
            f"env '{ref}': class {cls_name} is not registered; decorate it with "
            "@mbrl.envs.register_env('MyTask-v0', termination_fn=..., reward_fn=...)."
        )
    return env_id


def get_env_spec(env_id: str) -> EnvSpec:
    """Look up an env: mbrl's registry first, then any id gymnasium knows.

    A gymnasium-only env has no termination/reward functions, so model-free agents
    can train on it but a learned model cannot roll out in it. Unknown ids get a
    close-match suggestion.
    """
    if ":" in env_id:  # "module:Class" or "file.py:Class" of a custom env
        env_id = resolve_env_reference(env_id)
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


__all__ = [
    "EnvSpec",
    "add_env_spec",
    "check_env_class",
    "flat_dim",
    "get_env_spec",
    "import_env_module",
    "register_env",
    "resolve_env_reference",
]
