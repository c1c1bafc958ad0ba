# Config loading and validation, the target list and every helper the rules use.
#
# Layout under RESULTS (config key `results`):
#   features/{model}/{dataset}.zarr          feature store (FEATURES, config key `features`)
#   runs/{model}/{dataset}/{strategy}/seed{seed}/upto{round}.parquet
#                                            a run's records for rounds 1..round (one job's output)
#   state/{model}/{dataset}/{strategy}/seed{seed}/{key}/run.parquet(.ckpt, .indices.npz)
#                                            the run's resumable state, outside every declared
#                                            output; {key} is alfm.run.identity_key of the run's
#                                            identity (everything but the number of evaluations),
#                                            so extending a grid or changing rounds_per_job
#                                            continues it, while changing a parameter starts a
#                                            fresh state
#   logs/, benchmarks/                       one log per job, extraction benchmarks

import contextlib
import re
import shutil
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

PATH_KEYS = ("data_root", "model_dir", "results", "features")


def validate_config() -> None:
    """Validate the merged config against both schemas, filling in defaults."""
    paths = {key: config[key] for key in PATH_KEYS if key in config}
    validate(paths, "../schemas/config.schema.yaml")
    config.update(paths)
    validate(config, "../schemas/experiments.schema.yaml")


validate_config()

RESULTS = config["results"].rstrip("/")
FEATURES = (config["features"] or f"{RESULTS}/features").rstrip("/")
EVALUATIONS = config["budget"]["evaluations"]
ROUNDS_PER_JOB = config["rounds_per_job"]
PATH_SAFE = re.compile(r"[^A-Za-z0-9_.+-]+")


def path_name(name: str) -> str:
    """A name usable as one path component (timm:/open_clip:/dotted names contain ':' or '/')."""
    return PATH_SAFE.sub("_", name).strip("_")


def unique_path_names(key: str, names: list[str]) -> dict[str, str]:
    """Map path name -> name for config[key]; two names sharing a path name are an error."""
    mapping = {}
    for name in names:
        short = path_name(name)
        if short in mapping:
            raise WorkflowError(
                f"config key {key!r}: {mapping[short]!r} and {name!r} share the path name "
                f"{short!r}; rename one"
            )
        mapping[short] = name
    return mapping


def strategy_entries() -> dict[str, dict]:
    """Label -> {name, params, init} for every entry of config['strategies']."""
    entries = {}
    for i, entry in enumerate(config["strategies"]):
        if isinstance(entry, str):
            entry = {"name": entry}
        label = entry.get("label") or path_name(entry["name"])
        if label in entries:
            raise WorkflowError(
                f"config key 'strategies[{i}]': label {label!r} is used twice; give the entries "
                f"distinct 'label's"
            )
        entries[label] = {
            "name": entry["name"],
            "params": entry.get("params", {}),
            "init": entry.get("init") or config["init"],
        }
    return entries


MODELS = unique_path_names("models", config["models"])
DATASETS = unique_path_names("datasets", config["datasets"])
STRATEGIES = strategy_entries()
SEEDS = config["seeds"]


def check_names() -> None:
    """Every model, dataset and strategy name resolves in alfm's registries (else name the key)."""
    from alfm.backbones import list_backbones
    from alfm.datasets import list_datasets
    from alfm.registry import UnknownNameError, import_dotted
    from alfm.strategies import list_strategies

    known = {
        "model": (list_backbones(), ("timm:", "open_clip:")),
        "dataset": (list_datasets(), ()),
        "strategy": (list_strategies(), ()),
    }
    checks = [(f"models[{i}]", "model", n) for i, n in enumerate(config["models"])]
    checks += [(f"datasets[{i}]", "dataset", n) for i, n in enumerate(config["datasets"])]
    checks.append(("init.name", "strategy", config["init"]["name"]))
    for i, entry in enumerate(config["strategies"]):
        entry = {"name": entry} if isinstance(entry, str) else entry
        checks.append((f"strategies[{i}].name", "strategy", entry["name"]))
        if "init" in entry:
            checks.append((f"strategies[{i}].init.name", "strategy", entry["init"]["name"]))
    for key, kind, name in checks:
        names, prefixes = known[kind]
        if name in names or name.startswith(prefixes):
            continue
        if ":" in name:
            try:
                import_dotted(name, kind)
                continue
            except UnknownNameError as err:
                raise WorkflowError(f"config key {key!r}: {err}") from None
        raise WorkflowError(
            f"config key {key!r}: unknown {kind} {name!r}; known {kind} names: {', '.join(names)}"
            f" (or a dotted path 'package.module:Name')"
        )


if workflow.is_main_process:
    check_names()


def job_rounds() -> list[int]:
    """The round each job of a run advances to: every rounds_per_job-th round and the last one."""
    if ROUNDS_PER_JOB is None:
        return [EVALUATIONS]
    stops = range(ROUNDS_PER_JOB, EVALUATIONS + ROUNDS_PER_JOB, ROUNDS_PER_JOB)
    return sorted({min(r, EVALUATIONS) for r in stops})


def run_path(model: str, dataset: str, strategy: str, seed: int, upto: int) -> str:
    """The Parquet holding rounds 1..upto of one run."""
    return f"{RESULTS}/runs/{model}/{dataset}/{strategy}/seed{seed}/upto{upto}.parquet"


def run_result_paths() -> list[str]:
    """Every run's final Parquet (all evaluations), one per (model, dataset, strategy, seed)."""
    return [
        run_path(model, dataset, strategy, seed, EVALUATIONS)
        for model in MODELS
        for dataset in DATASETS
        for strategy in STRATEGIES
        for seed in SEEDS
    ]


def dataset_root(dataset: str) -> str | None:
    """Where a dataset's files live: {data_root}/{dataset} (None when data_root is null)."""
    return f"{config['data_root'].rstrip('/')}/{dataset}" if config["data_root"] else None


def store_path(model: str, dataset: str) -> str:
    """The feature store of (model, dataset); model and dataset are path names."""
    return f"{FEATURES}/{model}/{dataset}.zarr"


def run_config(wildcards) -> dict:
    """The alfm.run.RunConfig dict of the job advancing a run to round `wildcards.round`.

    `evaluations` is the job's own last round, so a job's parameters do not depend on how far
    the grid goes (extending a grid leaves finished jobs untouched).
    """
    entry = STRATEGIES[wildcards.strategy]
    return {
        "features": store_path(wildcards.model, wildcards.dataset),
        "strategy": entry["name"],
        "strategy_params": entry["params"],
        "init": entry["init"]["name"],
        "init_params": entry["init"].get("params", {}),
        "seed": int(wildcards.seed),
        "budget": {**config["budget"], "evaluations": int(wildcards.round)},
        "probe": config["probe"],
        "device": config["device"],
        "tf32": config["tf32"],
        "label": wildcards.strategy,
    }


def state_dir(wildcards) -> str:
    """The folder holding a run's resumable states (one sub-folder per state key)."""
    return (
        f"{RESULTS}/state/{wildcards.model}/{wildcards.dataset}/{wildcards.strategy}/"
        f"seed{wildcards.seed}"
    )


def previous_round(upto: int) -> int | None:
    """The round the job before the one advancing to `upto` stops at (None: first job)."""
    earlier = [r for r in job_rounds() if r < upto]
    return earlier[-1] if earlier else None


def al_inputs(wildcards) -> dict[str, str]:
    """A job's inputs: the feature store and the previous job's records."""
    inputs = {"features": store_path(wildcards.model, wildcards.dataset)}
    before = previous_round(int(wildcards.round))
    if before is not None:
        inputs["previous"] = run_path(
            wildcards.model, wildcards.dataset, wildcards.strategy, wildcards.seed, before
        )
    return inputs


def advance_run(input, params, output, log, threads: int) -> None:
    """Advance one run to the job's round in its state, then publish its records and indices."""
    import torch

    from alfm.run import RunConfig, identity_key, run_active_learning, run_identity
    from alfm.store import open_store

    torch.set_num_threads(threads)
    run = params.run
    key = identity_key(run_identity(RunConfig.from_dict(run), open_store(input.features).attrs))
    state = Path(params.state) / key / "run.parquet"
    state.parent.mkdir(parents=True, exist_ok=True)
    with open(log[0], "w") as stream, contextlib.redirect_stderr(stream):
        run_active_learning(run, state, stop_round=run["budget"]["evaluations"])
    shutil.copyfile(state, output.records)
    shutil.copyfile(f"{state}.indices.npz", output.indices)


def extract_store(wildcards, output, log, threads: int) -> None:
    """Extract the features of (model, dataset) into the store `output[0]`."""
    import torch

    from alfm.extract import extract_features

    torch.set_num_threads(threads)
    settings = {k: v for k, v in config["extract"].items() if v is not None}
    with open(log[0], "w") as stream, contextlib.redirect_stderr(stream):
        extract_features(
            MODELS[wildcards.model],
            DATASETS[wildcards.dataset],
            output[0],
            root=dataset_root(DATASETS[wildcards.dataset]),
            model_dir=config["model_dir"],
            **settings,
        )
