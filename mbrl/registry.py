"""Registries: one small generic registry per kind of component.

A component is registered by a decorator in the file that defines it::

    @AGENTS.register("pets", config=PETSConfig, description="PETS (Chua et al. 2018)")
    class PETS: ...

Built-in components live in packages that import all their modules on first use
(``mbrl.agents``, ``mbrl.envs``, ``mbrl.models``, ``mbrl.planners``), so a new file
with a decorator is all it takes for a component to show up in ``mbrl --help``.
Third-party packages register through the entry-point group ``mbrl.<kind>s``
(e.g. ``[project.entry-points."mbrl.agents"] my_agent = "my_pkg.my_agent"``): the named
module is imported when the registry is first read.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from mbrl.errors import MbrlError, unknown_name

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered component: the object, its config dataclass, and a one-line description."""

    name: str
    obj: T
    config: type | None = None
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Name -> :class:`Entry` map with lazy loading of built-ins and entry-point plugins.

    Args:
        kind: human name of the kind ("agent", "model", ...), used in messages.
        builtin_package: package whose submodules are imported on first access, so
            that their decorators run.
        entry_point_group: ``importlib.metadata`` group scanned for plugins.
    """

    def __init__(self, kind: str, builtin_package: str | None = None) -> None:
        self.kind = kind
        self.builtin_package = builtin_package
        self.entry_point_group = f"mbrl.{kind}s"
        self._entries: dict[str, Entry[T]] = {}
        self._loaded = False

    # -- registration -------------------------------------------------------------
    def register(
        self,
        name: str,
        *,
        config: type | None = None,
        description: str | None = None,
        **extra: Any,
    ) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` (duplicate names are an error)."""

        def decorator(obj: T) -> T:
            doc = description
            if doc is None:
                doc = ((getattr(obj, "__doc__", None) or "").strip().splitlines() or [""])[0]
            self.add(Entry(name=name, obj=obj, config=config, description=doc, extra=extra))
            return obj

        return decorator

    def add(self, entry: Entry[T]) -> None:
        old = self._entries.get(entry.name)
        if old is not None and old.obj is not entry.obj:
            raise MbrlError(
                f"{self.kind} '{entry.name}' is registered twice "
                f"({_where(old.obj)} and {_where(entry.obj)}); rename one of them."
            )
        self._entries[entry.name] = entry

    # -- lookup --------------------------------------------------------------------
    def get(self, name: str) -> Entry[T]:
        self._ensure_loaded()
        try:
            return self._entries[name]
        except KeyError:
            raise unknown_name(self.kind, name, self._entries) from None

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return name in self._entries

    def names(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._entries)

    def entries(self) -> Iterator[Entry[T]]:
        self._ensure_loaded()
        for name in sorted(self._entries):
            yield self._entries[name]

    def __len__(self) -> int:
        self._ensure_loaded()
        return len(self._entries)

    # -- loading -------------------------------------------------------------------
    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # set first: modules imported below read the registry too
        if self.builtin_package is not None:
            import_submodules(self.builtin_package)
        for ep in importlib.metadata.entry_points(group=self.entry_point_group):
            try:
                ep.load()
            except Exception as exc:  # a broken plugin must not break the CLI
                warnings.warn(
                    f"could not load {self.kind} plugin '{ep.name}' ({ep.value}): {exc}",
                    stacklevel=2,
                )


def import_submodules(package: str) -> None:
    """Import every module of ``package`` (not recursively into subpackages' tests)."""
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__, prefix=f"{package}."):
        if info.name.rsplit(".", 1)[-1].startswith("_"):
            continue
        importlib.import_module(info.name)


def _where(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


# The project's registries. Each kind's built-ins live in the named package.
AGENTS: Registry[Any] = Registry("agent", "mbrl.agents")
MODELS: Registry[Any] = Registry("model", "mbrl.models")
PLANNERS: Registry[Any] = Registry("planner", "mbrl.planners")
ENVS: Registry[Any] = Registry("env", "mbrl.envs")
DATASETS: Registry[Any] = Registry("dataset", "mbrl.data")
