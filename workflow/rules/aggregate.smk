# Aggregation stage: run Parquets -> one tidy table -> statistics tables -> figures (+ HTML report).
# Uses RESULTS and run_result_paths() from common.smk. All rules here are cheap and run locally.
# `snakemake figures --forcerun combine_runs` regenerates every table and figure from the runs that
# exist, without recomputing any run; `snakemake --report report.html` then builds the report.

from functools import partial

from alfm.plots import FIGURE_NAMES, aggregate_paths, aggregation_step
from alfm.results import TABLE_NAMES

# Every table and figure that `rule all` must build.
aggregate_targets = partial(aggregate_paths, RESULTS)


report: "../report/workflow.rst"


localrules:
    combine_runs,
    statistics,
    plot_figures,
    figures,


rule combine_runs:
    input:
        run_result_paths(),
    output:
        f"{RESULTS}/tables/runs.parquet",
    log:
        f"{RESULTS}/logs/aggregate/combine_runs.log",
    run:
        aggregation_step("combine_runs", input, output[0], log[0])


rule statistics:
    input:
        f"{RESULTS}/tables/runs.parquet",
    output:
        [f"{RESULTS}/tables/{name}" for name in TABLE_NAMES],
    log:
        f"{RESULTS}/logs/aggregate/statistics.log",
    run:
        aggregation_step("statistics", input, output[0], log[0])


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
    log:
        f"{RESULTS}/logs/aggregate/plot_figures.log",
    run:
        aggregation_step("plot_figures", input, output[0], log[0])


rule figures:
    input:
        aggregate_targets(),
