"""Typed run configuration, YAML presets and their round trip.

Every run is described by a dataclass tree: :class:`RunConfig` (seed, device, budget,
evaluation cadence, run root) plus the component's own config (an agent's, or a
model's). Presets are YAML files in ``configs/`` (installed as ``mbrl.configs``)
named ``<component>/<preset>.yaml``; each carries the paper's values with a comment
naming the source. The CLI layers: dataclass defaults < preset/``--config`` file <
command-line overrides; the fully resolved config is written to the run directory.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import dacite
import yaml

from mbrl.atomic import write_text_atomic as write_atomic  # re-exported: used across mbrl
from mbrl.errors import MbrlError, did_you_mean

C = TypeVar("C")


@dataclass
class RunConfig:
    """Settings shared by every run, whatever the agent.

    Attributes:
        env: registered environment id (``mbrl envs`` lists them).
        dataset: offline dataset (``d4rl:hopper-medium-v2`` or a path to an HDF5 file).
        seed: seeds python, numpy and torch.
        device: torch device, ``cpu`` or ``cuda[:i]``.
        total_steps: budget: environment steps for online runs, gradient updates offline.
        eval_every: evaluate every this many steps (0: only at the end).
        eval_episodes: deterministic evaluation episodes per evaluation.
        checkpoint_every: write a checkpoint every this many steps (0: only at the end).
        keep_checkpoints: how many checkpoints to keep in ``checkpoints/``.
        run_root: runs are written to ``<run_root>/<env>/<agent>/<seed>-<timestamp>/``.
        run_name: optional suffix for the run directory name.
        torch_threads: ``torch.set_num_threads``; small nets are often fastest on 1.
        progress: show a progress bar.
        tensorboard: write TensorBoard event files beside ``metrics.csv``.
    """

    env: str = "HalfCheetah-v5"
    dataset: str | None = None
    seed: int = 0
    device: str = "cpu"
    total_steps: int = 10_000
    eval_every: int = 5_000
    eval_episodes: int = 5
    checkpoint_every: int = 5_000
    keep_checkpoints: int = 2
    run_root: Path = Path("runs")
    run_name: str | None = None
    torch_threads: int = 1
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        check_positive(self, "total_steps", "eval_episodes", "torch_threads", "keep_checkpoints")
        check_non_negative(self, "eval_every", "checkpoint_every", "seed")
        if not (self.device == "cpu" or self.device.startswith("cuda") or self.device == "mps"):
            raise MbrlError(
                f"run.device='{self.device}' is not a torch device; use 'cpu' or 'cuda' "
                "(or 'cuda:1')."
            )


def check_positive(cfg: object, *names: str) -> None:
    """Raise a clear error naming the field if any of ``names`` is not > 0."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            raise MbrlError(f"{type(cfg).__name__}.{name}={value!r} must be > 0.")


def check_non_negative(cfg: object, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is not None and value < 0:
            raise MbrlError(f"{type(cfg).__name__}.{name}={value!r} must be >= 0.")


def check_in_range(cfg: object, name: str, low: float, high: float) -> None:
    value = getattr(cfg, name)
    if not low <= value <= high:
        raise MbrlError(f"{type(cfg).__name__}.{name}={value!r} must be in [{low}, {high}].")


# -- dict <-> dataclass ------------------------------------------------------------
def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass tree as plain YAML-friendly values (Paths as str, tuples as lists)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        return value

    result = plain(cfg)
    assert isinstance(result, dict)
    return result


_DACITE = dacite.Config(strict=True, cast=[Path, tuple], check_types=True)


def from_dict(cls: type[C], data: dict[str, Any], source: str = "config") -> C:
    """Build ``cls`` from a dict, with errors that name the source and the field."""
    if not isinstance(data, dict):
        raise MbrlError(f"{source}: expected a mapping of fields, got {type(data).__name__}.")
    try:
        return dacite.from_dict(cls, _ints_to_floats(cls, data), config=_DACITE)
    except dacite.UnexpectedDataError as exc:
        known = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        bad = sorted(exc.keys)
        hint = did_you_mean(bad[0], known) if bad else ""
        raise MbrlError(
            f"{source}: unknown field(s) {', '.join(bad)} for {cls.__name__}.{hint} "
            f"Known fields: {', '.join(known)}."
        ) from None
    except dacite.DaciteError as exc:
        raise MbrlError(
            f"{source}: {exc}. Fix the value in the file or on the command line."
        ) from None


def _ints_to_floats(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """YAML reads ``1`` as an int: accept it for float fields (recursively)."""
    hints = typing.get_type_hints(cls)
    out = dict(data)
    for f in dataclasses.fields(cls):
        if f.name not in out:
            continue
        hint, value = hints[f.name], out[f.name]
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            out[f.name] = float(value)
        elif dataclasses.is_dataclass(hint) and isinstance(value, dict):
            out[f.name] = _ints_to_floats(hint, value)  # type: ignore[arg-type]
    return out


def load_yaml(path: Path | str) -> dict[str, Any]:
    """Read a YAML mapping with a clear error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise MbrlError(f"config file '{path}' does not exist.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise MbrlError(f"config file '{path}' is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MbrlError(f"config file '{path}' must hold a mapping (key: value lines).")
    return data


def save_yaml(data: Any, path: Path, header: str = "") -> None:
    """Save a dataclass tree or dict as YAML (atomically)."""
    body = yaml.safe_dump(to_dict(data) if not isinstance(data, dict) else data, sort_keys=False)
    write_atomic(path, (header + "\n" if header else "") + body)


# -- presets -----------------------------------------------------------------------
def preset_dir(component: str) -> Path:
    """Folder of ``component``'s presets inside ``mbrl.configs`` (may not exist)."""
    return Path(str(resources.files("mbrl.configs"))) / component


def list_presets(component: str) -> list[str]:
    folder = preset_dir(component)
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def load_preset(component: str, name: str) -> dict[str, Any]:
    """Load ``configs/<component>/<name>.yaml``; ``name`` may also be a path to a YAML file."""
    as_path = Path(name)
    if as_path.suffix in {".yaml", ".yml"} or as_path.is_file():
        return load_yaml(as_path)
    presets = list_presets(component)
    if name not in presets:
        listing = ", ".join(presets) if presets else "none yet"
        raise MbrlError(
            f"no preset '{name}' for '{component}'.{did_you_mean(name, presets)} "
            f"Presets: {listing}. A path to a YAML file works too."
        )
    return load_yaml(preset_dir(component) / f"{name}.yaml")


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``over`` into a copy of ``base``."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out
