"""Rule aggregate: the run files -> tables/runs.parquet, the statistics tables and summary.md."""

import contextlib
from pathlib import Path

from alfm.results import aggregate

with open(snakemake.log[0], "w") as log, contextlib.redirect_stderr(log):  # noqa: F821
    aggregate(snakemake.input, Path(snakemake.output.table).parent)  # noqa: F821
