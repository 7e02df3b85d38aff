"""D4RL normalized scores.

Fu et al. (2020), "D4RL: Datasets for Deep Data-Driven Reinforcement Learning", report
returns as ``100 * (R - random) / (expert - random)`` where ``random`` and ``expert`` are
per-task reference returns. The MuJoCo locomotion references below are the values the
d4rl package ships for its v2 datasets; all datasets of one env family share them.

Lookup order of :func:`ref_scores_for`: the dataset's own metadata
(``metadata/ref_min_score``, ``metadata/ref_max_score``: the project's generated datasets
and Minari datasets carry them), then this table by env family, then the reference scores
declared on a registered :class:`mbrl.envs.EnvSpec`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Protocol

# env family -> (ref_min_score, ref_max_score), d4rl's ``infos.py`` values for the
# gym-mujoco v2 datasets (random-policy and expert-policy returns).
D4RL_REF_SCORES: dict[str, tuple[float, float]] = {
    "halfcheetah": (-280.178953, 12135.0),
    "hopper": (-20.272305, 3234.3),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
}

# env family -> the gymnasium id whose model and observation layout match D4RL's gym v2
# env (see recipes: v4 keeps the v2 layouts; Ant needs contact forces for 111 dims).
FAMILY_GYM_ID: dict[str, str] = {
    "halfcheetah": "HalfCheetah-v4",
    "hopper": "Hopper-v4",
    "walker2d": "Walker2d-v4",
    "ant": "Ant-v4",
}

_TOKEN_SPLIT = re.compile(r"[^a-z0-9]+")


class _HasMetadata(Protocol):
    @property
    def metadata(self) -> Mapping[str, Any]: ...


def env_family(name: str) -> str | None:
    """Env family of a gymnasium id, dataset id or file name, or ``None``.

    ``"HalfCheetah-v4"``, ``"d4rl:halfcheetah-medium-v2"``, ``"halfcheetah_medium-v2.hdf5"``
    and ``"minari:mujoco/halfcheetah/medium-v0"`` all give ``"halfcheetah"``. Whole tokens
    only, so ``"antmaze-umaze-v0"`` is not ``"ant"``.
    """
    for token in _TOKEN_SPLIT.split(name.lower()):
        if token in D4RL_REF_SCORES:
            return token
    return None


def normalized_score(ret: float, ref_min: float, ref_max: float) -> float:
    """D4RL normalized score ``100 * (ret - ref_min) / (ref_max - ref_min)``."""
    if not ref_max > ref_min:
        raise ValueError(f"ref_max ({ref_max}) must exceed ref_min ({ref_min})")
    return 100.0 * (ret - ref_min) / (ref_max - ref_min)


def metadata_ref_scores(metadata: Mapping[str, Any]) -> tuple[float, float] | None:
    """``(ref_min_score, ref_max_score)`` from a dataset's metadata, if both are there."""
    lo, hi = metadata.get("ref_min_score"), metadata.get("ref_max_score")
    if lo is None or hi is None:
        return None
    try:
        lo_f, hi_f = float(lo), float(hi)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(lo_f) and math.isfinite(hi_f) and hi_f > lo_f):
        return None
    return lo_f, hi_f


def ref_scores_for(
    env_id: str | None = None, dataset: _HasMetadata | str | None = None
) -> tuple[float, float] | None:
    """Reference ``(min, max)`` returns for an env and/or dataset, or ``None`` if unknown.

    Args:
        env_id: gymnasium id (``"Hopper-v4"``, ``"Hopper-v5"``) or any name
            :func:`env_family` understands.
        dataset: a loaded dataset (anything with a ``metadata`` mapping, e.g.
            :class:`mbrl.data.d4rl.D4RLDataset`) or a dataset id such as
            ``"d4rl:hopper-medium-v2"``. A loaded dataset's own ``ref_min_score`` /
            ``ref_max_score`` win over the table.
    """
    names: list[str] = []
    if dataset is not None and not isinstance(dataset, str):
        own = metadata_ref_scores(dataset.metadata)
        if own is not None:
            return own
        for attr in ("env_id", "path"):
            value = getattr(dataset, attr, None)
            if value is not None:
                names.append(str(value))
    elif isinstance(dataset, str):
        names.append(dataset)
    if env_id is not None:
        names.append(env_id)
    for name in names:
        family = env_family(name)
        if family is not None:
            return D4RL_REF_SCORES[family]
    if env_id is not None:
        return _env_spec_ref_scores(env_id)
    return None


def _env_spec_ref_scores(env_id: str) -> tuple[float, float] | None:
    # Imported lazily: reading ENVS imports every env module, which a plain score
    # lookup for a D4RL family never needs.
    from mbrl.registry import ENVS

    if env_id not in ENVS:
        return None
    spec = ENVS.get(env_id).obj
    lo, hi = getattr(spec, "ref_min_score", None), getattr(spec, "ref_max_score", None)
    if lo is None or hi is None:
        return None
    return float(lo), float(hi)


__all__ = [
    "D4RL_REF_SCORES",
    "FAMILY_GYM_ID",
    "env_family",
    "metadata_ref_scores",
    "normalized_score",
    "ref_scores_for",
]
