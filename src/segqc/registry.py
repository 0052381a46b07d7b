"""A tiny registry of named, swappable components (uncertainty methods, quality predictors)."""

from __future__ import annotations

import fnmatch
import importlib
import inspect
import pkgutil
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from segqc.errors import SettingsError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to classes. ``register`` is a class decorator; ``create`` builds by name."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def deco(cls: type[T]) -> type[T]:
            if name in self._items:
                raise KeyError(f"duplicate {self.kind} {name!r}")
            self._items[name] = cls
            cls.name = name  # type: ignore[attr-defined]
            return cls

        return deco

    def unregister(self, name: str) -> None:
        """Remove ``name`` (e.g. a plug-in a test registered for itself)."""
        self._items.pop(name, None)

    def get(self, name: str) -> type[T]:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}"
            ) from None

    def create(self, name: str, **kwargs: Any) -> T:
        """Build ``name``; ``None``-valued keywords are dropped so unset CLI flags keep the defaults."""
        cls = self.get(name)
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        try:
            accepted = inspect.signature(cls).parameters.values()
        except (TypeError, ValueError):  # no signature to read: let the call decide
            accepted = None
        if accepted is not None and not any(p.kind is p.VAR_KEYWORD for p in accepted):
            names = {p.name for p in accepted if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
            unknown = sorted(set(kwargs) - names)
            if unknown:
                takes = ", ".join(sorted(names)) or "none"
                raise SettingsError(
                    f"{self.kind} {name!r} has no setting {', '.join(map(repr, unknown))}; "
                    f"its settings: {takes}"
                )
        return cls(**kwargs)

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._items


def import_submodules(package_name: str, package_path: list[str]) -> None:
    """Import every module of a package, so that their ``register`` decorators run."""
    for info in pkgutil.iter_modules(package_path):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package_name}.{info.name}")
