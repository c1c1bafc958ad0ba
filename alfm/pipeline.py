"""What the Snakemake workflow needs from the library, importable without Snakemake.

The grid (models × datasets × arms × seeds) expanded from the validated experiments config, the
one :func:`path_name`, the registry name checks, the rounds each job stops at, the file layout
under the results folder, the state key of a run, advance-and-publish (what one AL job does) and
the aggregation targets. ``workflow/rules/*.smk`` keep config loading, validation, input functions
and rules that call the ``alfm`` command line.

Layout under ``results`` (config key ``results``; :data:`RUN_FILE` and :data:`STATE_DIR`):

- ``features/{model}/{dataset}{tag}.zarr``: the feature store (config key ``features`` moves it;
  ``{tag}`` is :func:`store_tag` of the extraction settings), with ``.done`` beside it once
  complete (and ``.shard{i}of{N}.done`` per shard with ``extract.shards: N``);
- ``runs/{model}/{dataset}/{arm}/seed{seed}/upto{round}.parquet`` (+ ``.indices.npz``): rounds
  1..round of a run, one pair per job that advanced it;
- ``state/{model}/{dataset}/{arm}/seed{seed}/{key}/run.parquet`` (+ ``.ckpt``,
  ``.indices.npz``): the run's resumable state, outside every declared output; ``{key}`` is
  :func:`state_key`, so extending a grid or changing ``rounds_per_job`` continues a run, while
  changing one of its parameters starts a fresh state;
- ``tables/``, ``figures/``: :func:`aggregate_targets`; ``logs/``, ``benchmarks/``: one log
  per job, extraction timings.

Imports of torch and the run engine wait for the functions that need them, so the workflow's
parse and ``alfm aggregate`` do not pay for them.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import itertools
import json
import os
import re
import shlex
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PATH_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]+")
RUN_DIR = "runs/{model}/{dataset}/{arm}/seed{seed}"
RUN_FILE = RUN_DIR + "/upto{round}.parquet"
STATE_DIR = "state/{model}/{dataset}/{arm}/seed{seed}"
INDICES_SUFFIX = ".indices.npz"
_RUN_FILE_NAME = re.compile(r"upto(\d+)\.parquet")
#: Keys of the config's ``extract`` mapping and the ``alfm extract`` flag each one sets (``compile``
#: is a switch); ``shards`` and ``resources`` shape the workflow's jobs instead.
EXTRACT_FLAGS = {
    "batch_size": "--batch-size",
    "num_workers": "--workers",
    "dtype": "--dtype",
    "device": "--device",
    "image_size": "--image-size",
    "decode": "--decode",
    "compile": "--compile",
}
#: The ``extract`` settings that change the features, with alfm's defaults: a store's path names
#: those that differ from them (:func:`store_tag`), so changing one extracts a new store and reruns
#: the runs on it. The others (``batch_size``, ``num_workers``, ``shards``, ``resources``) only
#: decide how the same chunks are computed.
FEATURE_SETTINGS = {
    "image_size": None,
    "dtype": "float16",
    "device": "auto",
    "decode": "auto",
    "compile": False,
}


class ConfigError(ValueError):
    """A config error; the message names the config key."""


def path_name(name: str) -> str:
    """``name`` as one path component: runs of characters other than letters, digits and
    ``_ . + -`` become ``_`` (``timm:``, ``open_clip:`` and dotted names hold ``:`` or ``/``)."""
    return PATH_UNSAFE.sub("_", name).strip("_")


def unique_path_names(key: str, names: Sequence[str]) -> dict[str, str]:
    """Path name → name for the names of config key ``key``; two names sharing a path name are
    an error."""
    mapping: dict[str, str] = {}
    for name in names:
        short = path_name(name)
        if short in mapping:
            raise ConfigError(
                f"config key {key!r}: {mapping[short]!r} and {name!r} share the path name "
                f"{short!r}; rename one"
            )
        mapping[short] = name
    return mapping


#: Grid-level keys that may be a list: every strategy entry runs with every value (a grid
#: dimension). ``init`` sets the run's ``init``/``init_params`` (an entry's own ``init`` wins); the
#: others are run-config keys of the same name.
GRID_DIMENSIONS = ("init", "probe", "ssl")


#: Run-config sections holding overrides of a config dataclass: section -> (module, class).
SECTION_CLASSES = {"probe": ("alfm.probe", "ProbeConfig"), "ssl": ("alfm.propagation", "SslConfig")}


@functools.cache
def section_defaults(section: str) -> dict[str, Any]:
    """Field defaults of the dataclass behind run-config section ``section`` (imported here, so
    the workflow's parse pays for torch only when a grid dimension is used)."""
    module, name = SECTION_CLASSES[section]
    cls = getattr(importlib.import_module(module), name)
    return {
        f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        for f in dataclasses.fields(cls)
    }


def overrides(section: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` without the keys at their dataclass default: the schema fills every default
    in, and the probe and ssl sections reject settings given where they act on nothing (e.g.
    ``scale`` with the linear classifier, ``alpha`` with ``ssl.enable: false``)."""
    defaults = section_defaults(section)
    return {k: v for k, v in values.items() if k not in defaults or defaults[k] != v}


@dataclass(frozen=True)
class Arm:
    """One compared arm of the grid: a strategy entry of the config with one value of each grid
    dimension (:data:`GRID_DIMENSIONS`).

    ``label`` names it in paths and tables: the entry's label, plus ``+{dimension}-{value}`` for
    every dimension with several values; ``init``/``init_params`` are the entry's own initial pool
    or the grid's; ``run`` holds the other dimensions' run-config values (``probe``, ``ssl``).
    """

    label: str
    strategy: str
    params: Mapping[str, Any] = field(default_factory=dict)
    init: str = "random"
    init_params: Mapping[str, Any] = field(default_factory=dict)
    run: Mapping[str, Any] = field(default_factory=dict)


def store_tag(extract: Mapping[str, Any]) -> str:
    """What a store's path adds to ``{dataset}`` for the :data:`FEATURE_SETTINGS` of the config's
    ``extract`` that differ from alfm's defaults: ``""`` for none, else ``@`` and the values
    joined by ``-`` (``@112px``, ``@112px-float32-cpu-decode_gpu-compiled``). ``@`` never occurs
    in a path name, so the tag cannot be mistaken for part of a dataset's name."""
    parts = []
    for key, default in FEATURE_SETTINGS.items():
        value = extract.get(key, default)
        if value == default:
            continue
        if key == "image_size":
            parts.append(f"{value}px")
        elif key == "decode":
            parts.append(f"decode_{value}")
        elif key == "compile":
            parts.append("compiled")
        else:
            parts.append(str(value))
    return "@" + "-".join(parts) if parts else ""


def strategy_entries(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``config['strategies']`` with every bare name written as ``{"name": name}``."""
    return [{"name": e} if isinstance(e, str) else dict(e) for e in config["strategies"]]


def dimension_values(config: Mapping[str, Any], key: str) -> list[tuple[str, Any]]:
    """(label part, value) of each value of grid dimension ``key`` (one value when it is not a
    list; none when the config lacks it). A part names the init strategy (plus its params when
    two inits share a name), or for a mapping the ``key-value`` pairs where the values differ;
    two equal values are an error."""
    if key not in config:
        return []
    raw = config[key]
    values = list(raw) if isinstance(raw, list) else [raw]
    if key == "init":
        names = [v["name"] for v in values]
        items = [
            {"": v["name"], **(v.get("params") or {})}
            if names.count(v["name"]) > 1
            else {"": v["name"]}
            for v in values
        ]
    else:
        items = [dict(v) for v in values]
    varying = sorted(
        {k for item in items for k in item if any(k not in o or o[k] != item[k] for o in items)}
    )
    parts = []
    for item in items:
        words = [(f"{k}-" if k else "") + _word(item.get(k, "default")) for k in varying]
        parts.append(path_name("-".join(words)))
    for i, part in enumerate(parts):
        if len(values) > 1 and parts.index(part) != i:
            raise ConfigError(
                f"config key {key!r}: values {parts.index(part)} and {i} are equal (label part "
                f"{part!r}); give each value of a list a different setting"
            )
    return list(zip(parts, values, strict=True))


def _word(value: Any) -> str:
    """A value in a label: strings as they are, anything else as JSON (``true``, ``0.5``)."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def expand_arms(config: Mapping[str, Any]) -> dict[str, Arm]:
    """Label → :class:`Arm` for every strategy entry × every value of each grid dimension; a
    label used twice is an error."""
    dims = {key: dimension_values(config, key) for key in GRID_DIMENSIONS}
    arms: dict[str, Arm] = {}
    for i, entry in enumerate(strategy_entries(config)):
        own = {"init": [("", entry["init"])]} if "init" in entry else {}
        axes = [(key, own.get(key, values)) for key, values in dims.items() if values]
        base = entry.get("label") or path_name(entry["name"])
        for combo in itertools.product(*(values for _, values in axes)):
            chosen = {key: value for (key, _), (_, value) in zip(axes, combo, strict=True)}
            suffix = "".join(
                f"+{key}-{part}"
                for (key, values), (part, _) in zip(axes, combo, strict=True)
                if len(values) > 1
            )
            init = chosen.get("init", {"name": "random"})
            arm = Arm(
                label=base + suffix,
                strategy=entry["name"],
                params=entry.get("params", {}),
                init=init["name"],
                init_params=init.get("params", {}),
                run={key: dict(value) for key, value in chosen.items() if key != "init"},
            )
            if arm.label in arms:
                raise ConfigError(
                    f"config key 'strategies[{i}]': label {arm.label!r} is used twice; give the "
                    "entries distinct 'label's"
                )
            arms[arm.label] = arm
    return arms


def check_names(config: Mapping[str, Any]) -> None:
    """Every model, dataset and strategy name of the config resolves in alfm's registries
    (:meth:`alfm.registry.Registry.check`) and every strategy's params build it (unknown, mistyped
    or inert hyperparameters fail at parse time); else a :class:`ConfigError` naming the key."""
    # The registries live in modules that import torch: loaded here, not when this one is.
    import alfm.backbones  # noqa: F401
    import alfm.datasets  # noqa: F401
    import alfm.strategies  # noqa: F401
    from alfm.registry import UnknownNameError, registry

    # Every strategy the config names, as (config key, name, params): the entries, the grid's
    # initial pool(s) and the entries' own.
    grid_init = config["init"]
    inits = grid_init if isinstance(grid_init, list) else [grid_init]
    init_keys = (
        [f"init[{j}]" for j in range(len(inits))] if isinstance(grid_init, list) else ["init"]
    )
    strategies = [
        (key, init["name"], init.get("params", {}))
        for key, init in zip(init_keys, inits, strict=True)
    ]
    for i, entry in enumerate(strategy_entries(config)):
        strategies.append((f"strategies[{i}]", entry["name"], entry.get("params", {})))
        if "init" in entry:
            own = entry["init"]
            strategies.append((f"strategies[{i}].init", own["name"], own.get("params", {})))
    checks = [(f"models[{i}]", "backbone", n) for i, n in enumerate(config["models"])]
    checks += [(f"datasets[{i}]", "dataset", n) for i, n in enumerate(config["datasets"])]
    checks += [(f"{key}.name", "strategy", name) for key, name, _ in strategies]
    for key, kind, name in checks:
        try:
            registry(kind).check(name)
        except UnknownNameError as err:
            raise ConfigError(f"config key {key!r}: {err}") from None
    from alfm.strategies import create_strategy

    for key, name, params in strategies:
        try:
            create_strategy(name, **params)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"config key '{key}.params': {err}") from None


@dataclass(frozen=True)
class Grid:
    """The experiment grid of a validated config (schema defaults filled in).

    Model, dataset and arm arguments of the methods are path names (the keys of ``models``,
    ``datasets``, ``arms``); any of them, a seed or a round may also be a wildcard such as
    ``"{model}"``, which builds a file pattern for a rule.
    """

    config: Mapping[str, Any]
    models: dict[str, str]
    datasets: dict[str, str]
    arms: dict[str, Arm]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Grid:
        return cls(
            config=config,
            models=unique_path_names("models", config["models"]),
            datasets=unique_path_names("datasets", config["datasets"]),
            arms=expand_arms(config),
        )

    @property
    def results(self) -> str:
        return str(self.config["results"]).rstrip("/")

    @property
    def features(self) -> str:
        return str(self.config["features"] or f"{self.results}/features").rstrip("/")

    @property
    def seeds(self) -> list[int]:
        return list(self.config["seeds"])

    @property
    def evaluations(self) -> int:
        return int(self.config["budget"]["evaluations"])

    def runs(self) -> Iterator[tuple[str, str, str, int]]:
        """Every run as (model, dataset, arm, seed)."""
        for model in self.models:
            for dataset in self.datasets:
                for arm in self.arms:
                    for seed in self.seeds:
                        yield model, dataset, arm, seed

    def job_rounds(self) -> list[int]:
        """The round each job of a run advances to: every ``rounds_per_job``-th round and the
        last one (only the last when ``rounds_per_job`` is null)."""
        step = self.config["rounds_per_job"]
        if step is None:
            return [self.evaluations]
        stops = range(step, self.evaluations + step, step)
        return sorted({min(r, self.evaluations) for r in stops})

    def previous_round(self, upto: int) -> int | None:
        """The round the job before the one advancing to ``upto`` stops at (None: first job)."""
        earlier = [r for r in self.job_rounds() if r < upto]
        return earlier[-1] if earlier else None

    def job_seeds(self, seed: int | str | None) -> list[int | str]:
        """The seeds one AL job advances: its own with ``one_job_per_run``, else every seed."""
        return [seed] if seed is not None else self.seeds

    @property
    def extract_shards(self) -> int:
        """Extraction jobs per (model, dataset) (``extract.shards``)."""
        return int(self.config["extract"].get("shards", 1))

    @property
    def extract_resources(self) -> dict[str, int]:
        """What one extraction job asks the scheduler for (``extract.resources``): ``gpu``,
        ``threads``, ``mem_mb``, ``runtime`` (minutes)."""
        return dict(self.config["extract"]["resources"])

    def store_path(self, model: str, dataset: str) -> str:
        """The feature store of (model, dataset) with the config's extraction settings
        (``{dataset}`` + :func:`store_tag` + ``.zarr``)."""
        return f"{self.features}/{model}/{dataset}{store_tag(self.config['extract'])}.zarr"

    def store_done(self, model: str, dataset: str) -> str:
        """The flag the extraction of (model, dataset) leaves once its store is complete: what AL
        jobs depend on (a store directory cannot be the output of several shard jobs)."""
        return f"{self.store_path(model, dataset)}.done"

    def shard_done(self, model: str, dataset: str, shard: int | str) -> str:
        """The flag shard ``shard`` of :attr:`extract_shards` leaves once its chunks are
        written."""
        return f"{self.store_path(model, dataset)}.shard{shard}of{self.extract_shards}.done"

    def run_path(self, model: str, dataset: str, arm: str, seed: int | str, upto: int | str) -> str:
        """The Parquet holding rounds 1..upto of a run (its indices: + :data:`INDICES_SUFFIX`)."""
        name = RUN_FILE.format(model=model, dataset=dataset, arm=arm, seed=seed, round=upto)
        return f"{self.results}/{name}"

    def state_dir(self, model: str, dataset: str, arm: str, seed: int | str) -> str:
        """The folder of a run's resumable states (one sub-folder per :func:`state_key`)."""
        name = STATE_DIR.format(model=model, dataset=dataset, arm=arm, seed=seed)
        return f"{self.results}/{name}"

    def final_run_paths(self) -> list[str]:
        """Every run's final Parquet (all evaluations)."""
        return [self.run_path(*run, self.evaluations) for run in self.runs()]

    def job_outputs(self) -> list[str]:
        """The records files of the AL rule as patterns over ``{model}``, ``{dataset}``,
        ``{strategy}``, ``{round}`` (and ``{seed}`` with ``one_job_per_run``)."""
        seed = "{seed}" if self.config["one_job_per_run"] else None
        return [
            self.run_path("{model}", "{dataset}", "{strategy}", s, "{round}")
            for s in self.job_seeds(seed)
        ]

    def job_log(self) -> str:
        """The log of one AL job, over the same wildcards as :meth:`job_outputs`."""
        run = "seed{seed}/" if self.config["one_job_per_run"] else ""
        job = f"{{model}}/{{dataset}}/{{strategy}}/{run}upto{{round}}"
        return f"{self.results}/logs/active_learning/{job}.log"

    def run_config(self, model: str, dataset: str, arm: str, seed: int, upto: int) -> dict:
        """The :class:`alfm.run.RunConfig` dict of the job advancing a run to round ``upto``.

        ``budget.evaluations`` is the job's own last round, so a job's parameters do not depend
        on how far the grid goes (extending a grid leaves finished jobs untouched).
        """
        entry = self.arms[arm]
        return {
            "features": self.store_path(model, dataset),
            "strategy": entry.strategy,
            "strategy_params": dict(entry.params),
            "init": entry.init,
            "init_params": dict(entry.init_params),
            "seed": int(seed),
            "budget": {**self.config["budget"], "evaluations": int(upto)},
            **{key: overrides(key, value) for key, value in entry.run.items()},
            "device": self.config["device"],
            "tf32": self.config["tf32"],
            "label": arm,
        }

    def job_inputs(
        self, model: str, dataset: str, arm: str, seeds: Sequence[int | str], upto: int
    ) -> dict[str, Any]:
        """An AL job's inputs: the flag of the complete feature store (:meth:`store_done`) and the
        previous job's records of each run."""
        inputs: dict[str, Any] = {"features": self.store_done(model, dataset)}
        before = self.previous_round(upto)
        if before is not None:
            inputs["previous"] = [self.run_path(model, dataset, arm, s, before) for s in seeds]
        return inputs

    def job_runs(
        self, model: str, dataset: str, arm: str, seeds: Sequence[int | str], upto: int
    ) -> str:
        """The run configs of one AL job as JSON (what ``alfm advance`` reads)."""
        configs = [self.run_config(model, dataset, arm, int(s), upto) for s in seeds]
        return json.dumps(configs, sort_keys=True)

    def extract_arguments(self, model: str, dataset: str) -> str:
        """The ``alfm extract`` arguments of (model, dataset), shell-quoted: names, store, data
        root, weights folder and the config's ``extract`` settings (null keys keep alfm's
        default)."""
        name = self.datasets[dataset]
        argv = ["--model", self.models[model], "--dataset", name]
        argv += ["--out", self.store_path(model, dataset)]
        if self.config["data_root"]:
            argv += ["--root", f"{str(self.config['data_root']).rstrip('/')}/{name}"]
        if self.config["model_dir"]:
            argv += ["--model-dir", str(self.config["model_dir"])]
        for key, flag in EXTRACT_FLAGS.items():
            value = self.config["extract"].get(key)
            if isinstance(value, bool):
                argv += [flag] if value else []
            elif value is not None:
                argv += [flag, str(value)]
        return shlex.join(argv)


def statistics_paths(results: str | Path) -> list[str]:
    """The statistics tables and summary under ``results``: ``tables/<TABLE_NAMES>``."""
    from alfm.results import TABLE_NAMES

    return [f"{str(results).rstrip('/')}/tables/{name}" for name in TABLE_NAMES]


def figure_paths(results: str | Path, ext: str) -> list[str]:
    """Every figure under ``results`` in one format: ``figures/<FIGURE_NAMES>.<ext>``."""
    from alfm.plots import FIGURE_NAMES

    return [f"{str(results).rstrip('/')}/figures/{name}.{ext}" for name in FIGURE_NAMES]


def aggregate_targets(results: str | Path) -> list[str]:
    """Everything the aggregation builds under ``results``: ``tables/runs.parquet``,
    :func:`statistics_paths` and :func:`figure_paths` as PNG and PDF."""
    combined = f"{str(results).rstrip('/')}/tables/runs.parquet"
    figures = figure_paths(results, "png") + figure_paths(results, "pdf")
    return [combined, *statistics_paths(results), *figures]


def final_run_files(results: str | Path) -> list[Path]:
    """Each run's final Parquet under a results folder: of the ``upto{round}`` files in a run's
    folder (one per job that advanced it), the one with the most rounds."""
    finals = []
    every_run = RUN_DIR.format(model="*", dataset="*", arm="*", seed="*")
    for folder in sorted(Path(results).glob(every_run)):
        files = {int(m[1]): p for p in folder.iterdir() if (m := _RUN_FILE_NAME.fullmatch(p.name))}
        if files:
            finals.append(files[max(files)])
    if not finals:
        raise FileNotFoundError(f"{results} holds no run results ({RUN_FILE})")
    return finals


def state_key(run: Mapping[str, Any], store_attrs: Mapping[str, Any]) -> str:
    """The folder name of a run's state: :func:`alfm.run.identity_key` of its
    :func:`alfm.run.run_identity`."""
    from alfm.run import RunConfig, identity_key, run_identity

    return identity_key(run_identity(RunConfig.from_dict(run), store_attrs))


def advance_and_publish(
    runs: Sequence[Mapping[str, Any]],
    state_dirs: Sequence[str | Path],
    outs: Sequence[str | Path],
    *,
    progress: bool = True,
) -> None:
    """One AL job: advance each run to its ``budget.evaluations`` in its state folder (resuming
    the state the job before left), then publish its records and indices to ``out`` and
    ``out`` + :data:`INDICES_SUFFIX`, each atomically."""
    if not len(runs) == len(state_dirs) == len(outs):
        raise ValueError(
            f"{len(runs)} runs, {len(state_dirs)} state folders and {len(outs)} outputs; "
            "give one of each per run"
        )
    from alfm.run import run_active_learning
    from alfm.store import open_store

    attrs: dict[str, Mapping[str, Any]] = {}
    for run, state_dir, out in zip(runs, state_dirs, outs, strict=True):
        features = str(run["features"])
        if features not in attrs:
            attrs[features] = open_store(features).attrs
        state = Path(state_dir) / state_key(run, attrs[features]) / "run.parquet"
        run_active_learning(run, state, progress=progress, shorten=True)
        out = Path(out)
        _copy_atomic(
            state.with_name(state.name + INDICES_SUFFIX), out.with_name(out.name + INDICES_SUFFIX)
        )
        _copy_atomic(state, out)


def _copy_atomic(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` through a temporary file beside it, so ``target`` is never
    seen half written."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
