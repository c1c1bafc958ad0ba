"""The small grid on a real single-node SLURM with profiles/slurm equals the local run.

Starts munged, slurmctld and slurmd in a temporary folder (tests/slurm_cluster.py) and stops them
by PID afterwards. Skipped only when SLURM is not installed and $CI is unset; in CI it must run.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from slurm_cluster import SlurmCluster, slurm_available
from test_workflow import (
    REPO,
    SNAKEFILE,
    assert_same_results,
    computed_rounds,
    make_grid,
    read_results,
    snakemake,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.slurm,
    pytest.mark.skipif(
        not os.environ.get("CI") and not (slurm_available() and os.geteuid() == 0),
        reason="needs slurm-wlm + munge and root (bash install.sh test); CI always runs it",
    ),
]


@pytest.fixture
def cluster(tmp_path_factory, request):
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    request.addfinalizer(cluster.stop)
    cluster.start()
    return cluster


def test_small_grid_on_slurm_equals_local_run(cluster, tmp_path):
    local = tmp_path / "local"
    make_grid(local)
    snakemake(local, "--cores", "2", "runs")

    # one job per run on the cluster (4 jobs, 2 per group job); locally one job per strategy
    remote = tmp_path / "slurm"
    make_grid(remote, one_job_per_run=True)
    command = [
        sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(remote),
        "--configfile", str(remote / "grid.yaml"), "--profile", "profiles/slurm",
        # this node has 2 CPUs: 2 runs per group job; poll SLURM every few seconds
        "--group-components", "al=2", "--slurm-init-seconds-before-status-checks", "2",
        "--jobs", "4", "runs",
    ]  # fmt: skip
    env = {**cluster.env, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{result.stderr[-6000:]}\n{cluster.logs()}"
    log = result.stdout + result.stderr
    # 4 runs, 2 per group job: exactly 2 SLURM submissions
    assert log.count("has been submitted with SLURM jobid") == 2, log[-3000:]

    assert_same_results(read_results(remote), read_results(local))
    assert computed_rounds(remote) == {key: [1, 2, 3, 4] for key in read_results(local)}
