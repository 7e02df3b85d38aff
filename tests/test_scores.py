"""D4RL reference scores and normalized-score maths."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mbrl.data.scores import (
    D4RL_REF_SCORES,
    env_family,
    metadata_ref_scores,
    normalized_score,
    ref_scores_for,
)


def test_reference_table_values() -> None:
    assert D4RL_REF_SCORES == {
        "halfcheetah": (-280.178953, 12135.0),
        "hopper": (-20.272305, 3234.3),
        "walker2d": (1.629008, 4592.3),
        "ant": (-325.6, 3879.7),
    }


def test_normalized_score_maths() -> None:
    lo, hi = D4RL_REF_SCORES["hopper"]
    assert normalized_score(lo, lo, hi) == 0.0
    assert normalized_score(hi, lo, hi) == pytest.approx(100.0)
    assert normalized_score((lo + hi) / 2, lo, hi) == pytest.approx(50.0)
    # a hand-computed value: 100 * (1000 + 20.272305) / (3234.3 + 20.272305)
    assert normalized_score(1000.0, lo, hi) == pytest.approx(31.348890, abs=1e-5)
    assert normalized_score(-400.0, 0.0, 200.0) == -200.0  # below random is negative
    with pytest.raises(ValueError, match="must exceed"):
        normalized_score(1.0, 5.0, 5.0)


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("HalfCheetah-v4", "halfcheetah"),
        ("HalfCheetah-v5", "halfcheetah"),
        ("Hopper-v5", "hopper"),
        ("Walker2d-v4", "walker2d"),
        ("Ant-v4", "ant"),
        ("d4rl:hopper-medium-replay-v2", "hopper"),
        ("walker2d-medium-expert-v2", "walker2d"),
        ("halfcheetah_medium_replay-v2.hdf5", "halfcheetah"),
        ("minari:mujoco/ant/expert-v0", "ant"),
        ("antmaze-umaze-v0", None),
        ("Pendulum-v1", None),
    ],
)
def test_env_family(name: str, family: str | None) -> None:
    assert env_family(name) == family


@dataclass
class _Data:
    metadata: dict[str, Any] = field(default_factory=dict)
    env_id: str | None = None
    path: Path | None = None


def test_ref_scores_lookup_order() -> None:
    hopper = D4RL_REF_SCORES["hopper"]
    assert ref_scores_for(env_id="Hopper-v5") == hopper
    assert ref_scores_for(dataset="d4rl:walker2d-medium-v2") == D4RL_REF_SCORES["walker2d"]
    # a dataset's own metadata wins over the table and over env_id
    own = _Data(metadata={"ref_min_score": -5.0, "ref_max_score": 50.0}, env_id="Hopper-v4")
    assert ref_scores_for(env_id="Hopper-v4", dataset=own) == (-5.0, 50.0)
    # without metadata: the dataset's env, then its file name, then env_id
    assert ref_scores_for(dataset=_Data(env_id="Ant-v4")) == D4RL_REF_SCORES["ant"]
    by_name = _Data(path=Path("/x/halfcheetah_random-v2.hdf5"))
    assert ref_scores_for(env_id="Hopper-v4", dataset=by_name) == D4RL_REF_SCORES["halfcheetah"]
    assert ref_scores_for(env_id="Hopper-v4", dataset=_Data()) == hopper
    assert ref_scores_for() is None
    assert ref_scores_for(dataset="my-own-data") is None


def test_metadata_ref_scores_rejects_bad_values() -> None:
    assert metadata_ref_scores({"ref_min_score": 1, "ref_max_score": "3.5"}) == (1.0, 3.5)
    assert metadata_ref_scores({"ref_min_score": 1.0}) is None
    assert metadata_ref_scores({"ref_min_score": 4.0, "ref_max_score": 2.0}) is None
    assert metadata_ref_scores({"ref_min_score": "x", "ref_max_score": 2.0}) is None
    assert metadata_ref_scores({"ref_min_score": float("nan"), "ref_max_score": 2.0}) is None
