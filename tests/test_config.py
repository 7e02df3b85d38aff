"""Typed configs: YAML round trip, clear errors, presets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mbrl.config import (
    RunConfig,
    deep_merge,
    from_dict,
    load_preset,
    load_yaml,
    save_yaml,
)
from mbrl.errors import MbrlError


@dataclass
class Inner:
    lr: float = 1e-3
    hidden: tuple[int, ...] = (200, 200)


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    path: Path = Path("runs")
    note: str | None = None


def test_yaml_round_trip(tmp_path: Path) -> None:
    cfg = Outer(name="y", inner=Inner(lr=3e-4, hidden=(64, 32, 16)), path=Path("a/b"), note="n")
    save_yaml(cfg, tmp_path / "c.yaml", header="# test")
    text = (tmp_path / "c.yaml").read_text()
    assert text.startswith("# test")
    back = from_dict(Outer, load_yaml(tmp_path / "c.yaml"))
    assert back == cfg
    assert isinstance(back.inner.hidden, tuple) and isinstance(back.path, Path)


def test_run_config_round_trip(tmp_path: Path) -> None:
    cfg = RunConfig(env="Hopper-v4", seed=3, total_steps=123, run_root=tmp_path)
    save_yaml(cfg, tmp_path / "run.yaml")
    assert from_dict(RunConfig, load_yaml(tmp_path / "run.yaml")) == cfg


def test_int_accepted_for_float_field() -> None:
    assert from_dict(Inner, {"lr": 1}).lr == 1.0


def test_unknown_field_names_source_and_suggests() -> None:
    with pytest.raises(
        MbrlError, match=r"my.yaml: unknown field\(s\) lrr for Inner\. Did you mean 'lr'"
    ):
        from_dict(Inner, {"lrr": 0.1}, source="my.yaml")


def test_wrong_type_names_field() -> None:
    with pytest.raises(MbrlError, match=r"cfg.yaml: .*lr"):
        from_dict(Inner, {"lr": "fast"}, source="cfg.yaml")


def test_invalid_values_are_refused_with_the_field_name() -> None:
    with pytest.raises(MbrlError, match=r"RunConfig.total_steps=0 must be > 0"):
        RunConfig(total_steps=0)
    with pytest.raises(MbrlError, match=r"run.device='gpu'"):
        RunConfig(device="gpu")


def test_load_yaml_errors(tmp_path: Path) -> None:
    with pytest.raises(MbrlError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(MbrlError, match=r"bad.yaml' is not valid YAML"):
        load_yaml(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(MbrlError, match="must hold a mapping"):
        load_yaml(scalar)


def test_deep_merge_overrides_nested_values_only() -> None:
    base = {"agent": {"lr": 1, "h": 2}, "run": {"seed": 0}}
    out = deep_merge(base, {"agent": {"lr": 5}})
    assert out == {"agent": {"lr": 5, "h": 2}, "run": {"seed": 0}}
    assert base["agent"]["lr"] == 1  # not modified in place


def test_unknown_preset_lists_presets() -> None:
    with pytest.raises(MbrlError, match="no preset 'nope' for 'no-such-agent'"):
        load_preset("no-such-agent", "nope")


def test_preset_may_be_a_path(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("run:\n  seed: 7\n")
    assert load_preset("anything", str(f)) == {"run": {"seed": 7}}
