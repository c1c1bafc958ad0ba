# Aggregation: every run's final Parquet -> the tidy table, statistics tables, summary and the
# study table (each strategy with vs without what its arms change: tables/study.{csv,md})
# (`aggregate`) -> figures (`plot_figures`, + the HTML report). Uses RESULTS and
# run_result_paths() from common.smk. Both rules are cheap and run locally.
# `snakemake figures --forcerun aggregate` regenerates every table and figure from the runs that
# exist, without recomputing any run; `snakemake --report report.html` then builds the report.

from pathlib import Path

from alfm.pipeline import aggregate_targets, figure_paths, statistics_paths


report: "../report/workflow.rst"


localrules:
    aggregate,
    plot_figures,
    figures,


# A script, not `alfm aggregate`: a large grid's run list does not fit on one command line.
rule aggregate:
    input:
        run_result_paths(),
    output:
        table=f"{RESULTS}/tables/runs.parquet",
        statistics=statistics_paths(RESULTS),
    log:
        f"{RESULTS}/logs/aggregate/aggregate.log",
    conda:
        "../envs/alfm.yaml"
    script:
        "../scripts/aggregate.py"


rule plot_figures:
    input:
        f"{RESULTS}/tables/runs.parquet",
    output:
        [
            report(
                path, caption=f"../report/{Path(path).stem}.rst", category="Figures"
            )
            for path in figure_paths(RESULTS, "png")
        ],
        figure_paths(RESULTS, "pdf"),
    log:
        f"{RESULTS}/logs/aggregate/plot_figures.log",
    conda:
        "../envs/alfm.yaml"
    params:
        out=lambda wildcards, output: Path(output[0]).parent,
    shell:
        "alfm plot {input:q} --out {params.out:q} > {log:q} 2>&1"


rule figures:
    input:
        aggregate_targets(RESULTS),
