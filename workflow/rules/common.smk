# Config loading and validation, the grid and the input functions of the rules. Everything else
# (the file layout under `results`, grid expansion, name checks, what a job does) is
# alfm/pipeline.py, the same code `alfm` runs.

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from alfm.pipeline import ConfigError, Grid, check_names

PATH_KEYS = ("data_root", "model_dir", "results", "features")


def validate_config() -> None:
    """Validate the merged config against both schemas, filling in defaults."""
    paths = {key: config[key] for key in PATH_KEYS if key in config}
    validate(paths, "../schemas/config.schema.yaml")
    config.update(paths)
    validate(config, "../schemas/experiments.schema.yaml")


def load_grid() -> Grid:
    """The grid of the validated config; name errors fail here, naming the config key."""
    try:
        if workflow.is_main_process:
            check_names(config)
        return Grid.from_config(config)
    except ConfigError as err:
        raise WorkflowError(str(err)) from None


validate_config()
GRID = load_grid()
RESULTS = GRID.results
FEATURES = GRID.features


def run_result_paths() -> list[str]:
    """Every run's final Parquet (all evaluations)."""
    return GRID.final_run_paths()


def job_seeds(wildcards) -> list:
    """The seeds an AL job advances (its own seed with one_job_per_run, else every seed)."""
    return GRID.job_seeds(wildcards.get("seed"))


def al_inputs(wildcards) -> dict:
    """An AL job's inputs: the complete store's flag and the previous job's records of each run.
    The flag is `ancient`: a store is immutable once complete, so re-touching its flag (a
    finalize rerun after changing `extract.shards`) reruns nothing; other settings that change
    the features change the store's path, and the AL jobs rerun on the new one."""
    seeds = job_seeds(wildcards)
    job = (wildcards.model, wildcards.dataset, wildcards.strategy)
    inputs = GRID.job_inputs(*job, seeds, int(wildcards.round))
    return {**inputs, "features": ancient(inputs["features"])}


def al_runs(wildcards) -> str:
    """The run configs (JSON) of an AL job, `alfm advance`'s first argument."""
    job = (wildcards.model, wildcards.dataset, wildcards.strategy)
    return GRID.job_runs(*job, job_seeds(wildcards), int(wildcards.round))


def al_states(wildcards) -> list[str]:
    """The state folder of each run of an AL job."""
    job = (wildcards.model, wildcards.dataset, wildcards.strategy)
    return [GRID.state_dir(*job, seed) for seed in job_seeds(wildcards)]


def extract_arguments(wildcards) -> str:
    """The `alfm extract` arguments of (model, dataset), shell-quoted."""
    return GRID.extract_arguments(wildcards.model, wildcards.dataset)


def store_path(wildcards) -> str:
    """The feature store of (model, dataset)."""
    return GRID.store_path(wildcards.model, wildcards.dataset)


def shard_flags(wildcards) -> list[str]:
    """The flags of every extraction shard of (model, dataset)."""
    job = (wildcards.model, wildcards.dataset)
    return [GRID.shard_done(*job, i) for i in range(GRID.extract_shards)]


# Where a rule's cluster resources are set, for the error of check_slurm().
RESOURCES_SET_IN = {"extract_features": "extract.resources of the config"}


def slurm_requests() -> list:
    """What each job (or group job) about to run asks SLURM for (alfm.cluster.Request), after
    every profile and command-line override, with the SLURM executor's own CPU and GPU logic.
    """
    from snakemake_executor_plugin_slurm.partitions import (
        get_job_cpu_requirement,
        parse_gpu_requirements,
    )

    from alfm.cluster import Request

    requests = set()
    for job in workflow.dag.get_jobs_or_groups():
        members = list(job.jobs) if job.is_group() else [job]
        if job.is_local or not any(workflow.dag.needrun(j) for j in members):
            continue
        names = sorted({j.rule.name for j in members})
        if job.is_group():
            counts = ", ".join(
                f"{sum(j.rule.name == n for j in members)} {n} jobs" for n in names
            )
            label = f"group job {job.groupid} ({counts})"
            where = "the profile's group-components and set-resources"
        else:
            label = f"rule {names[0]}"
            where = RESOURCES_SET_IN.get(names[0], "the profile's set-resources")
        cpus, per = get_job_cpu_requirement(job)
        gpus = parse_gpu_requirements(job)[0]
        res = job.resources
        request = Request(
            label,
            cpus=cpus * gpus if per == "gpu" else cpus,
            mem_mb=res.get("mem_mb"),
            gpus=gpus,
            runtime=res.get("runtime"),
            partition=res.get("slurm_partition"),
            where=where,
        )
        requests.add(request)
    return sorted(requests, key=lambda r: r.job)


def check_slurm() -> None:
    """With the SLURM executor, fail before submitting anything when a job could never start
    (alfm.cluster.check_requests), naming the rule and the resource."""
    plugin = workflow.executor_plugin
    if plugin is None or plugin.cli_prefix != "slurm":
        return
    from alfm.cluster import check_requests, slurm_partitions

    try:
        check_requests(slurm_requests(), slurm_partitions())
    except ValueError as err:
        raise WorkflowError(f"SLURM could never run this workflow: {err}") from None


onstart:
    check_slurm()
