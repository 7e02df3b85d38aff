"""Registries: decorator registration, lookup errors with suggestions, plugins."""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass

import pytest

from mbrl.errors import MbrlError, did_you_mean
from mbrl.registry import AGENTS, ENVS, Entry, Registry


def test_decorator_registers_with_config_and_docstring() -> None:
    reg: Registry[object] = Registry("widget")

    @dataclass
    class WidgetConfig:
        size: int = 3

    @reg.register("square", config=WidgetConfig)
    class Square:
        """A square widget.

        More text that is not the summary.
        """

    entry = reg.get("square")
    assert entry.obj is Square
    assert entry.config is WidgetConfig
    assert entry.description == "A square widget."
    assert reg.names() == ["square"]
    assert "square" in reg and "circle" not in reg


def test_unknown_name_suggests_close_match() -> None:
    reg: Registry[object] = Registry("widget")
    reg.add(Entry(name="halfcheetah", obj=1))
    reg.add(Entry(name="hopper", obj=2))
    with pytest.raises(MbrlError, match=r"unknown widget 'hoper'.*Did you mean 'hopper'\?"):
        reg.get("hoper")
    with pytest.raises(MbrlError, match="Known widgets: halfcheetah, hopper"):
        reg.get("zzzzzz")


def test_duplicate_name_is_an_error() -> None:
    reg: Registry[object] = Registry("widget")
    reg.add(Entry(name="a", obj=1))
    reg.add(Entry(name="a", obj=1))  # the same object again (re-import) is fine
    with pytest.raises(MbrlError, match="registered twice"):
        reg.add(Entry(name="a", obj=2))


def test_entry_point_plugins_are_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[str] = []

    class FakeEP:
        name = "plugin"
        value = "fake.module"

        def load(self) -> None:
            loaded.append(self.name)
            reg.add(Entry(name="from-plugin", obj=object()))

    def fake_entry_points(group: str) -> list[FakeEP]:
        return [FakeEP()] if group == "mbrl.widgets" else []

    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points)
    reg: Registry[object] = Registry("widget")
    assert reg.names() == ["from-plugin"]
    assert loaded == ["plugin"]


def test_broken_plugin_warns_instead_of_crashing(monkeypatch: pytest.MonkeyPatch) -> None:
    class BrokenEP:
        name = "broken"
        value = "missing.module"

        def load(self) -> None:
            raise ImportError("no module named missing")

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [BrokenEP()])
    reg: Registry[object] = Registry("widget")
    with pytest.warns(UserWarning, match="could not load widget plugin 'broken'"):
        assert reg.names() == []


def test_did_you_mean() -> None:
    assert did_you_mean("HalfCheetah-v6", ["HalfCheetah-v5", "Hopper-v5"]) == (
        " Did you mean 'HalfCheetah-v5'?"
    )
    assert did_you_mean("qqqq", ["HalfCheetah-v5"]) == ""


def test_builtin_registries_import_their_packages() -> None:
    # Built-ins register on first read; the point mass is a built-in env.
    assert "PointMass1D-v0" in ENVS
    assert isinstance(AGENTS.names(), list)
