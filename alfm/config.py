"""Config sections defined once: typed dataclass fields whose metadata carries the bounds.

Each section (``BudgetConfig``, ``ProbeConfig``, ``RunConfig``, ...) is a frozen dataclass derived
from :class:`Config` whose fields are declared with :func:`setting`. The field's annotation gives
its type and the metadata its bounds in JSON-schema words (``minimum``, ``exclusiveMinimum``,
``maximum``, ``exclusiveMaximum``, ``enum``, ``minLength``) and its ``help`` text; from these
alone :class:`Config` validates every instance, :func:`add_arguments` builds command-line flags,
and the test suite checks that ``workflow/schemas/experiments.schema.yaml`` says the same.
:func:`check_value` also validates strategy hyperparameters against their ``__init__``
annotations.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

#: Metadata keys that bound a field's value (JSON-schema keywords), with the check each makes.
BOUNDS: dict[str, tuple[str, Callable[[Any, Any], bool]]] = {
    "minimum": (">=", lambda value, bound: value >= bound),
    "exclusiveMinimum": (">", lambda value, bound: value > bound),
    "maximum": ("<=", lambda value, bound: value <= bound),
    "exclusiveMaximum": ("<", lambda value, bound: value < bound),
}

C = TypeVar("C", bound="Config")

#: Devices an AL run (and extraction) may ask for: ``auto`` is CUDA when available.
DEVICES = ("auto", "cpu", "cuda")


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    **bounds: Any,
) -> Any:
    """A dataclass field with ``help`` text and JSON-schema bounds (see :data:`BOUNDS`, plus
    ``enum`` and ``minLength``) in its metadata; no default makes the key required."""
    unknown = set(bounds) - {*BOUNDS, "enum", "minLength"}
    if unknown:
        raise TypeError(f"unknown setting bound(s) {', '.join(sorted(unknown))}")
    metadata = {"help": help, **bounds}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def check_known_keys(data: Mapping[str, Any], cls: type, what: str) -> None:
    """Raise a ValueError naming ``data``'s keys that are not fields of the dataclass ``cls``."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(
            f"unknown {what} key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}"
        )


def check_value(value: Any, annotation: Any) -> bool:
    """Whether ``value`` fits the type ``annotation``: ``int`` (not bool), ``float`` (ints too),
    ``bool``, ``str``, ``None``, unions / ``Optional``, ``Literal``, ``Any``, a class
    (``isinstance``) or a generic alias (its origin, e.g. ``dict[str, Any]`` any dict)."""
    if annotation is Any or isinstance(annotation, typing.TypeVar):
        return True
    if annotation is None or annotation is type(None):
        return value is None
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return any(check_value(value, arg) for arg in typing.get_args(annotation))
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if origin is not None:
        return isinstance(value, origin)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(annotation, type) and isinstance(value, annotation)


def type_name(annotation: Any) -> str:
    """``annotation`` in words for error messages: ``int``, ``float or None``, ..."""
    if annotation is None or annotation is type(None):
        return "None"
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return " or ".join(type_name(arg) for arg in typing.get_args(annotation))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(arg) for arg in typing.get_args(annotation))
    if origin is not None:
        return getattr(origin, "__name__", str(annotation))
    return getattr(annotation, "__name__", str(annotation))


def type_hints(obj: Any) -> dict[str, Any]:
    """Resolved annotations of a class or function; {} when they cannot be resolved (e.g. names
    imported only for type checkers), so such parameters go unchecked."""
    try:
        return typing.get_type_hints(obj)
    except (NameError, TypeError):
        return {}


def _expectation(annotation: Any, metadata: Mapping[str, Any]) -> str:
    """What a field accepts, in words: ``an integer >= 1 or null``, ``one of linear, doubling``."""
    if "enum" in metadata:
        return "one of " + ", ".join(str(v) for v in metadata["enum"])
    args = typing.get_args(annotation)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), annotation) if optional else annotation
    words = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    text = words.get(base) or ("a mapping" if typing.get_origin(base) is dict else type_name(base))
    if metadata.get("minLength") == 1:
        text = "a non-empty string"
    limits = [f"{op} {metadata[key]}" for key, (op, _) in BOUNDS.items() if key in metadata]
    if limits:
        text += " " + " and ".join(limits)
    return text + (" or null" if optional else "")


def _fits(value: Any, annotation: Any, metadata: Mapping[str, Any]) -> bool:
    if not check_value(value, annotation):
        return False
    if value is None:
        return True
    if "enum" in metadata and value not in metadata["enum"]:
        return False
    if "minLength" in metadata and len(value) < metadata["minLength"]:
        return False
    return all(check(value, metadata[key]) for key, (_, check) in BOUNDS.items() if key in metadata)


class Config:
    """Base of config sections: frozen dataclasses whose fields come from :func:`setting`.

    ``__post_init__`` checks every field's type and bounds; errors name the key as
    ``key_format.format(name)`` (e.g. ``budget.evaluations``). :meth:`from_dict` refuses
    unknown keys, naming the ``section``.
    """

    section: ClassVar[str] = "config"
    key_format: ClassVar[str] = "{}"

    def __post_init__(self) -> None:
        hints = type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value, annotation = getattr(self, f.name), hints.get(f.name, Any)
            if not _fits(value, annotation, f.metadata):
                expected = _expectation(annotation, f.metadata)
                raise ValueError(
                    f"{self.key_format.format(f.name)} must be {expected}, got {value!r}"
                )

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Build from a mapping with the field names as keys; unknown keys are an error."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{cls.section} must be a mapping, got {type(data).__name__}")
        check_known_keys(data, cls, cls.section)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-able dict that :meth:`from_dict` turns back into an equal one."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]


def add_arguments(
    parser: argparse.ArgumentParser,
    cls: type[Config],
    aliases: Mapping[str, list[str]] | None = None,
) -> None:
    """One ``--field-name`` flag per field of ``cls`` (types, choices, defaults and help from the
    field), parsed into ``dest=field name``; bounds are checked when the section is built."""
    hints = type_hints(cls)
    for f in dataclasses.fields(cls):
        annotation = hints.get(f.name, str)
        args = typing.get_args(annotation)
        base = next((a for a in args if a is not type(None)), annotation) if args else annotation
        default = None if f.default is dataclasses.MISSING else f.default
        kwargs: dict[str, Any] = {"dest": f.name, "default": default}
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif "enum" in f.metadata:
            kwargs["choices"] = list(f.metadata["enum"])
        else:
            kwargs["type"] = base
        shown = "" if default is None else f" (default {default})"
        kwargs["help"] = f.metadata.get("help", "") + shown
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(flag, *(aliases or {}).get(f.name, []), **kwargs)


def parsed_arguments(args: argparse.Namespace, cls: type[Config]) -> dict[str, Any]:
    """The values of :func:`add_arguments`' flags, as a mapping for ``cls.from_dict``."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
