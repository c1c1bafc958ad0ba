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
    """An AL job's inputs: the feature store and the previous job's records of each run."""
    seeds = job_seeds(wildcards)
    job = (wildcards.model, wildcards.dataset, wildcards.strategy)
    return GRID.job_inputs(*job, seeds, int(wildcards.round))


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
