"""Name → component registries, one per kind of component (timm's ``create_model`` style)."""

from __future__ import annotations

import difflib
import functools
import importlib
import typing
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(ValueError):
    """A name that no registry entry (and no dotted path) resolves to."""


class Registry(Generic[T]):
    """A mapping from names to components with helpful errors for unknown names.

    Names of the form ``package.module:Attribute`` are imported on lookup, so users can plug in
    their own components from config without editing alfm. Importing runs the module's code (as
    a Snakefile's does), but nothing it holds is called unless it is a component of this kind:
    an object registered here (by the module, through alfm's ``register_*`` API) or one that
    ``accepts`` (e.g. a :class:`~alfm.strategies.Strategy` subclass); anything else (say
    ``shutil:rmtree``) is an :class:`UnknownNameError` before it could be called.
    ``prefixes`` declares name families that the owning module builds itself (``timm:<name>``):
    :meth:`split_prefix` parses them and :meth:`check` accepts them.
    """

    def __init__(
        self,
        kind: str,
        prefixes: tuple[str, ...] = (),
        *,
        plural: str | None = None,
        accepts: Callable[[object], bool] | None = None,
        expected: str | None = None,
    ) -> None:
        if kind in _REGISTRIES:
            raise ValueError(f"a {kind} registry exists already")
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self.prefixes = prefixes
        self.expected = expected or f"a {kind} registered through alfm's API"
        self._accepts = accepts
        self._entries: dict[str, T] = {}
        _REGISTRIES[kind] = self

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

    def split_prefix(self, name: str) -> tuple[str | None, str]:
        """``(prefix, rest)`` for a name of a declared prefix (``"timm:vit_b"`` → ``("timm:",
        "vit_b")``), else ``(None, name)``."""
        for prefix in self.prefixes:
            if name.startswith(prefix):
                return prefix, name.removeprefix(prefix)
        return None, name

    def check(self, name: str) -> None:
        """Raise :class:`UnknownNameError` unless ``name`` resolves: a registered name, a declared
        prefix followed by a name, or a ``package.module:Attribute`` that imports and names a
        component of this kind (see the class docstring)."""
        prefix, rest = self.split_prefix(name)
        if prefix is None:
            self.get(name)
        elif not rest:
            raise UnknownNameError(f"{self.kind} {name!r} names nothing after {prefix!r}")

    def get(self, name: str) -> T:
        """The component registered as ``name`` or imported from ``module:attr`` (only a
        component of this kind; see the class docstring)."""
        if name in self._entries:
            return self._entries[name]
        if ":" in name:
            return self._dotted(name)
        hint = difflib.get_close_matches(name, self._entries, n=1)
        suggestion = f" Did you mean {hint[0]!r}?" if hint else ""
        families = "".join(f"{prefix}<name>, " for prefix in self.prefixes)
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}.{suggestion} Known {self.plural}: "
            f"{', '.join(self.names())} (or {families}a dotted path 'package.module:Name')"
        )

    def _dotted(self, name: str) -> T:
        obj = import_dotted(name, self.kind)
        registered = any(obj is entry for entry in self._entries.values())
        if not registered and not (self._accepts is not None and self._accepts(obj)):
            shown = getattr(obj, "__qualname__", None) or type(obj).__name__
            raise UnknownNameError(
                f"{self.kind} {name!r} names {shown!r}, which is not {self.expected}; "
                "refusing to use it"
            )
        return obj  # type: ignore[return-value]


_REGISTRIES: dict[str, Registry] = {}


def registry(kind: str) -> Registry:
    """The registry of ``kind`` (``"backbone"``, ``"dataset"``, ``"strategy"``), once the module
    that creates it is imported."""
    if kind not in _REGISTRIES:
        raise KeyError(f"no {kind} registry; known kinds: {', '.join(sorted(_REGISTRIES))}")
    return _REGISTRIES[kind]


def returns(cls: type) -> Callable[[object], bool]:
    """A predicate for ``Registry(accepts=...)``: a function (or ``functools.partial`` of one)
    whose return annotation resolves to ``cls`` or a subclass, i.e. one declared to build a
    ``cls``; classes and unannotated callables are refused."""

    def accepts(obj: object) -> bool:
        target = obj.func if isinstance(obj, functools.partial) else obj
        if isinstance(target, type) or not callable(target):
            return False
        try:
            hint = typing.get_type_hints(target).get("return")
        except Exception:  # unresolvable annotations: not declared to build a cls
            return False
        return isinstance(hint, type) and issubclass(hint, cls)

    return accepts


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
