"""Config defined once: the dataclass sections validate themselves from their field metadata, the
``alfm run`` budget flags come from BudgetConfig, and the workflow's JSON schema says the same as
the dataclasses (types, bounds, defaults) — a test that fails when either side changes alone."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import typing
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

from alfm.budget import BudgetConfig
from alfm.cli import build_parser, main
from alfm.config import BOUNDS, Config, add_arguments, check_value, parsed_arguments, setting
from alfm.probe import ProbeConfig
from alfm.propagation import SslConfig
from alfm.run import RunConfig

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "workflow/schemas/experiments.schema.yaml"
SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())
#: Schema keywords compared with a field: its type, bounds and default.
KEYWORDS = ("type", "enum", "minLength", "default", *BOUNDS)
JSON_TYPES = {int: "integer", float: "number", bool: "boolean", str: "string", dict: "object"}


def json_type(annotation: Any) -> str | list[str]:
    """The JSON-schema ``type`` of a field annotation (``int | None``: ``[integer, null]``)."""
    args = typing.get_args(annotation)
    if type(None) in args:
        (base,) = (a for a in args if a is not type(None))
        return [json_type(base), "null"]
    return JSON_TYPES[typing.get_origin(annotation) or annotation]


def field_view(cls: type, name: str) -> dict[str, Any]:
    """What the dataclass says about field ``name``, in schema keywords (an ``enum`` implies the
    type, as the schema writes it)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    view = {key: f.metadata[key] for key in KEYWORDS if key in f.metadata}
    if "enum" in view:
        view["enum"] = list(view["enum"])
    else:
        view["type"] = json_type(typing.get_type_hints(cls)[name])
    if f.default is not dataclasses.MISSING:
        view["default"] = f.default
    elif f.default_factory is not dataclasses.MISSING:
        view["default"] = f.default_factory()
    return view


def resolve(node: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """``node`` with a local ``$ref`` replaced by its target (the node's own keys win)."""
    if "$ref" not in node:
        return node
    target = schema
    for part in node["$ref"].removeprefix("#/").split("/"):
        target = target[part]
    rest = {k: v for k, v in node.items() if k != "$ref"}
    return {**resolve(target, schema), **rest}


def schema_view(node: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    node = resolve(node, schema)
    return {key: node[key] for key in KEYWORDS if key in node}


def section_disagreements(
    cls: type, properties: dict[str, Any], schema: dict[str, Any]
) -> list[str]:
    """Every field of ``cls`` and every schema property of its section that differ."""
    names = [f.name for f in dataclasses.fields(cls)]
    found = [f"{cls.__name__}.{n}: not in the schema" for n in names if n not in properties]
    found += [
        f"schema property {n!r}: no {cls.__name__} field" for n in properties if n not in names
    ]
    for name in (n for n in names if n in properties):
        ours, theirs = field_view(cls, name), schema_view(properties[name], schema)
        if ours != theirs:
            found.append(f"{cls.__name__}.{name}: dataclass {ours} vs schema {theirs}")
    return found


def run_level_disagreements(cls: type, schema: dict[str, Any]) -> list[str]:
    """RunConfig's seed, device, tf32, init and init_params against the schema's run-level keys
    (``seeds`` lists seeds; ``init`` is ``{name, params}`` with its default name)."""
    props = schema["properties"]
    init = resolve(props["init"]["then"], schema)  # one init (a list holds the same objects)
    counterparts = {
        "seed": props["seeds"]["items"],
        "device": props["device"],
        "tf32": props["tf32"],
        "init": {**init["properties"]["name"], "default": props["init"]["default"]["name"]},
        "init_params": init["properties"]["params"],
    }
    found = []
    for name, node in counterparts.items():
        ours, theirs = field_view(cls, name), schema_view(node, schema)
        if ours != theirs:
            found.append(f"{cls.__name__}.{name}: dataclass {ours} vs schema {theirs}")
    return found


#: (dataclass, path of its section's properties in the schema).
SECTIONS = [
    (BudgetConfig, ("properties", "budget", "properties")),
    (ProbeConfig, ("$defs", "probe", "properties")),
    (SslConfig, ("$defs", "ssl", "properties")),
]


def disagreements(schema: dict[str, Any], classes: dict[type, type] | None = None) -> list[str]:
    """All differences between ``schema`` and the config dataclasses (``classes`` swaps one)."""
    classes = classes or {}
    found = []
    for cls, path in SECTIONS:
        node = schema
        for key in path:
            node = node[key]
        found += section_disagreements(classes.get(cls, cls), node, schema)
    return found + run_level_disagreements(classes.get(RunConfig, RunConfig), schema)


def test_schema_agrees_with_the_dataclasses() -> None:
    assert disagreements(SCHEMA) == []


def schema_with(path: tuple[str, ...], change: Any) -> dict[str, Any]:
    """A copy of the schema with the node at ``path`` replaced (``change`` None: deleted)."""
    schema = copy.deepcopy(SCHEMA)
    node = schema
    for key in path[:-1]:
        node = node[key]
    if change is None:
        del node[path[-1]]
    else:
        node[path[-1]] = change
    return schema


PROBE = ("$defs", "probe", "properties")
BUDGET = ("properties", "budget", "properties")
SSL = ("$defs", "ssl", "properties")


@pytest.mark.parametrize(
    ("path", "change", "culprit"),
    [
        ((*PROBE, "batch_size", "minimum"), 1, "ProbeConfig.batch_size"),  # the old disagreement
        ((*PROBE, "lr", "exclusiveMinimum"), None, "ProbeConfig.lr"),
        ((*PROBE, "dropout", "default"), 0.5, "ProbeConfig.dropout"),
        ((*PROBE, "patience", "type"), "number", "ProbeConfig.patience"),
        ((*PROBE, "min_delta"), None, "ProbeConfig.min_delta: not in the schema"),
        ((*PROBE, "momentum"), {"type": "number"}, "schema property 'momentum'"),
        ((*PROBE, "scale", "default"), 2, "ProbeConfig.scale"),
        ((*SSL, "knn", "minimum"), 0, "SslConfig.knn"),
        ((*SSL, "n_iter"), None, "SslConfig.n_iter: not in the schema"),
        ((*BUDGET, "evaluations", "minimum"), 2, "BudgetConfig.evaluations"),
        ((*BUDGET, "schedule", "enum"), ["linear"], "BudgetConfig.schedule"),
        ((*BUDGET, "init_size", "type"), "integer", "BudgetConfig.init_size"),
        (("properties", "seeds", "items", "minimum"), 1, "RunConfig.seed"),
        (("properties", "device", "default"), "cpu", "RunConfig.device"),
        (("properties", "tf32", "default"), True, "RunConfig.tf32"),
        (("properties", "init", "default"), {"name": "centroid"}, "RunConfig.init"),
        (("$defs", "name", "minLength"), 0, "RunConfig.init"),
    ],
)
def test_a_schema_changed_alone_disagrees(path: tuple[str, ...], change: Any, culprit: str) -> None:
    found = disagreements(schema_with(path, change))
    assert found and all(culprit in line for line in found), found


def dataclass_with(
    cls: type, name: str, *, remove: bool = False, drop: tuple[str, ...] = (), **changes: Any
) -> type:
    """A copy of config dataclass ``cls`` whose field ``name`` has another ``default``, ``type``
    or metadata (``drop``: metadata keys to remove), or is added when new, or ``remove``d."""
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        if f.name == name and remove:
            continue
        annotation, default, factory = hints[f.name], f.default, f.default_factory
        metadata = dict(f.metadata)
        if f.name == name:
            metadata = {k: v for k, v in metadata.items() if k not in drop}
            annotation = changes.pop("type", annotation)
            default = changes.pop("default", default)
            metadata.update(changes)
        kwargs = (
            {"default": default} if factory is dataclasses.MISSING else {"default_factory": factory}
        )
        specs.append((f.name, annotation, dataclasses.field(**kwargs, metadata=metadata)))
    if name not in hints:
        specs.append((name, changes.pop("type"), setting(changes.pop("default"), **changes)))
    namespace = {"section": cls.section, "key_format": cls.key_format}
    return dataclasses.make_dataclass(
        cls.__name__, specs, bases=(Config,), frozen=True, namespace=namespace
    )


@pytest.mark.parametrize(
    ("cls", "name", "changes", "culprit"),
    [
        (ProbeConfig, "lr", {"drop": ("exclusiveMinimum",)}, "ProbeConfig.lr"),  # the old lr
        (ProbeConfig, "batch_size", {"minimum": 1}, "ProbeConfig.batch_size"),
        (ProbeConfig, "max_epochs", {"default": 200}, "ProbeConfig.max_epochs"),
        (ProbeConfig, "dropout", {"type": int}, "ProbeConfig.dropout"),
        (
            ProbeConfig,
            "momentum",
            {"type": float, "default": 0.9, "help": "h"},
            "ProbeConfig.momentum",
        ),
        (ProbeConfig, "patience", {"remove": True}, "schema property 'patience'"),
        (BudgetConfig, "step_size", {"type": int}, "BudgetConfig.step_size"),
        (
            BudgetConfig,
            "schedule",
            {"enum": ("linear", "doubling", "cubic")},
            "BudgetConfig.schedule",
        ),
        (RunConfig, "device", {"default": "cpu"}, "RunConfig.device"),
        (RunConfig, "tf32", {"type": int}, "RunConfig.tf32"),
        (RunConfig, "seed", {"minimum": 1}, "RunConfig.seed"),
        (RunConfig, "init", {"default": "centroid"}, "RunConfig.init"),
    ],
)
def test_a_dataclass_changed_alone_disagrees(
    cls: type, name: str, changes: dict[str, Any], culprit: str
) -> None:
    found = disagreements(SCHEMA, {cls: dataclass_with(cls, name, **changes)})
    assert found and all(culprit in line for line in found), found


# --- the dataclasses validate themselves from their metadata --------------------------------


@dataclasses.dataclass(frozen=True)
class Section(Config):
    """A made-up section, as issue 11's classifier and ssl options will be."""

    section = "ssl"
    key_format = "ssl.{}"

    enable: bool = setting(False, help="on or off")
    alpha: float = setting(0.9, exclusiveMinimum=0, maximum=1, help="label weight")
    knn: int = setting(500, minimum=1, help="neighbours")
    mode: str = setting("reference", enum=("reference", "textbook"), help="formulas")
    note: str | None = setting(None, minLength=1, help="free text")


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"enable": 1}, r"ssl.enable must be true or false, got 1"),
        ({"alpha": 0}, r"ssl.alpha must be a number > 0 and <= 1, got 0"),
        ({"alpha": 1.5}, r"ssl.alpha must be a number > 0 and <= 1, got 1.5"),
        ({"alpha": "0.5"}, r"ssl.alpha must be a number > 0 and <= 1, got '0.5'"),
        ({"knn": 0}, r"ssl.knn must be an integer >= 1, got 0"),
        ({"knn": 5.0}, r"ssl.knn must be an integer >= 1, got 5.0"),
        ({"knn": True}, r"ssl.knn must be an integer >= 1, got True"),
        ({"mode": "dense"}, r"ssl.mode must be one of reference, textbook, got 'dense'"),
        ({"note": ""}, r"ssl.note must be a non-empty string or null, got ''"),
        ({"nope": 1}, r"unknown ssl key\(s\) nope; known keys: alpha, enable, knn, mode, note"),
    ],
)
def test_a_section_validates_types_and_bounds_from_its_metadata(values: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Section.from_dict(values)


def test_a_section_round_trips_and_takes_ints_for_floats() -> None:
    section = Section.from_dict({"alpha": 1, "note": "x"})
    assert Section.from_dict(section.to_dict()) == section and section.alpha == 1
    with pytest.raises(ValueError, match="ssl must be a mapping, got list"):
        Section.from_dict([1])


@pytest.mark.parametrize(
    ("value", "annotation", "fits"),
    [
        (1, int, True),
        (True, int, False),
        (1.0, int, False),
        (1, float, True),
        (False, float, False),
        (True, bool, True),
        (0, bool, False),
        (None, float | None, True),
        (None, typing.Optional[int], True),  # noqa: UP045 (the old spelling must work too)
        ("a", int | str, True),
        (2.5, int | None, False),
        ("b", Literal["a", "b"], True),
        ("c", Literal["a", "b"], False),
        ({}, dict[str, Any], True),
        ([], dict[str, Any], False),
        (object(), Any, True),
    ],
)
def test_check_value(value: Any, annotation: Any, fits: bool) -> None:
    assert check_value(value, annotation) is fits


# --- the CLI's budget flags come from BudgetConfig ---------------------------------------------


def test_add_arguments_derives_flags_from_the_fields() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser, Section, aliases={"knn": ["-k"]})
    args = parser.parse_args(["-k", "7", "--alpha", "0.5", "--mode", "textbook", "--enable"])
    assert Section.from_dict(parsed_arguments(args, Section)) == Section(
        enable=True, alpha=0.5, knn=7, mode="textbook"
    )
    assert parsed_arguments(parser.parse_args([]), Section) == Section().to_dict()
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "dense"])  # choices from the enum
    help_text = parser.format_help()
    assert "label weight (default 0.9)" in help_text and "{reference,textbook}" in help_text


def run_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["run"]


def test_alfm_run_budget_flags_are_budgetconfig_fields() -> None:
    parser = run_parser()
    required = ["--features", "s.zarr", "--strategy", "random", "--seed", "1", "--out", "o"]
    defaults = parser.parse_args(required)
    assert BudgetConfig.from_dict(parsed_arguments(defaults, BudgetConfig)) == BudgetConfig()
    flags = {f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(BudgetConfig)}
    assert flags <= set(parser._option_string_actions)
    given = parser.parse_args(
        [*required, "--rounds", "3", "--init-size", "4", "--schedule", "doubling"]
    )
    budget = BudgetConfig.from_dict(parsed_arguments(given, BudgetConfig))
    assert budget == BudgetConfig(evaluations=3, init_size=4, schedule="doubling")


def test_alfm_run_budget_bounds_are_the_dataclass_bounds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.parquet"
    argv = ["run", "--features", str(tmp_path / "s.zarr"), "--strategy", "random", "--seed", "1"]
    assert main([*argv, "--evaluations", "0", "--out", str(out)]) == 2
    assert "budget.evaluations must be an integer >= 1, got 0" in capsys.readouterr().err
    assert main([*argv, "--step-size", "-1", "--out", str(out)]) == 2
    assert "budget.step_size must be an integer >= 1 or null, got -1" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
