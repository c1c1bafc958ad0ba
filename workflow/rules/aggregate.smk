# Aggregation stage: run Parquets -> one tidy table -> statistics tables -> figures (+ HTML report).
# Uses RESULTS and run_result_paths() from common.smk. All rules here are cheap and run locally.
# `snakemake figures --forcerun combine_runs` regenerates every table and figure from the runs that
# exist, without recomputing any run.

from alfm.plots import FIGURE_NAMES
from alfm.results import TABLE_NAMES

report: "../report/workflow.rst"


localrules:
    combine_runs,
    statistics,
    plot_figures,
    figures,


def aggregate_tables() -> list[str]:
    """Every statistics table (and the markdown summary) under RESULTS/tables."""
    return [f"{RESULTS}/tables/runs.parquet"] + [
        f"{RESULTS}/tables/{name}" for name in TABLE_NAMES
    ]


def aggregate_figures() -> list[str]:
    """Every paper figure, PNG and PDF, under RESULTS/figures."""
    return [f"{RESULTS}/figures/{name}.{ext}" for name in FIGURE_NAMES for ext in ("png", "pdf")]


def aggregate_targets() -> list[str]:
    """Every table and figure that `rule all` must build."""
    return aggregate_tables() + aggregate_figures()


rule combine_runs:
    input:
        run_result_paths(),
    output:
        f"{RESULTS}/tables/runs.parquet",
    run:
        from alfm.results import combine_runs

        combine_runs(list(input), output[0])


rule statistics:
    input:
        f"{RESULTS}/tables/runs.parquet",
    output:
        [f"{RESULTS}/tables/{name}" for name in TABLE_NAMES],
    run:
        from alfm.results import load_runs, write_tables

        write_tables(load_runs([input[0]]), f"{RESULTS}/tables")


rule plot_figures:
    input:
        f"{RESULTS}/tables/runs.parquet",
    output:
        [
            report(
                f"{RESULTS}/figures/{name}.png",
                caption=f"../report/{name}.rst",
                category="Figures",
            )
            for name in FIGURE_NAMES
        ],
        [f"{RESULTS}/figures/{name}.pdf" for name in FIGURE_NAMES],
    run:
        from alfm.plots import write_figures
        from alfm.results import load_runs

        write_figures(load_runs([input[0]]), f"{RESULTS}/figures")


rule figures:
    input:
        aggregate_targets(),
