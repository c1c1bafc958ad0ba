"""Name → component registries, one per kind of component (timm's ``create_model`` style)."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(ValueError):
    """A name that no registry entry (and no dotted path) resolves to."""


class Registry(Generic[T]):
    """A mapping from names to components with helpful errors for unknown names.

    Names of the form ``package.module:Attribute`` are imported on lookup, so users can plug in
    their own components from config without editing alfm.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; a name can be registered once."""

        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        """Register ``obj`` under ``name`` (non-decorator form)."""
        self.register(name)(obj)

    def names(self) -> list[str]:
        """Sorted registered names."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> T:
        """The component registered as ``name`` or imported from ``module:attr``."""
        if name in self._entries:
            return self._entries[name]
        if ":" in name:
            return import_dotted(name, self.kind)
        hint = difflib.get_close_matches(name, self._entries, n=1)
        suggestion = f" Did you mean {hint[0]!r}?" if hint else ""
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}.{suggestion} Known {self.kind}s: "
            f"{', '.join(self.names())} (or a dotted path 'package.module:Name')"
        )


def import_dotted(path: str, kind: str = "object") -> object:
    """Import ``package.module:Attribute``; errors name the path."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UnknownNameError(f"cannot import {kind} {path!r}: {err}") from err
    try:
        return getattr(module, attr)
    except AttributeError as err:
        raise UnknownNameError(
            f"cannot import {kind} {path!r}: module {module_name!r} has no {attr!r}"
        ) from err
