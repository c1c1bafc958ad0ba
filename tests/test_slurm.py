"""The whole workflow on a real single-node SLURM through the card's `snakemake --profile slurm`.

Starts munged, slurmctld and slurmd in a temporary folder (tests/slurm_cluster.py) and stops them
by PID afterwards; the profile is installed as the README says, under a temporary HOME. Skipped
only when SLURM is not installed and $CI is unset; in CI it must run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import yaml
from slurm_cluster import SlurmCluster, slurm_available
from test_workflow import REPO, SNAKEFILE, TIMING

from alfm.store import SPLITS, open_store

pytestmark = [
    pytest.mark.slow,
    pytest.mark.slurm,
    pytest.mark.skipif(
        not os.environ.get("CI") and not (slurm_available() and os.geteuid() == 0),
        reason="needs slurm-wlm + munge and root (bash install.sh test); CI always runs it",
    ),
]

# The embedded digits through MobileNetV2 at 32 px in 2 extraction shards (one store chunk each),
# 2 strategies x 2 seeds x 3 evaluations; the resources are the documented extract.resources.
GRID = {
    "data_root": None,
    "models": ["mobilenet_v2"],
    "datasets": ["digits"],
    "strategies": ["random", "margins"],
    "seeds": [1, 2],
    "budget": {"evaluations": 3},
    "probe": {"max_epochs": 30},
    "device": "cpu",
    "extract": {
        "image_size": 32,
        "shards": 2,
        "resources": {"gpu": 0, "threads": 1, "mem_mb": 2000, "runtime": 30},
    },
}
STORE = "results/features/mobilenet_v2/digits@32px.zarr"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A HOME with profiles/slurm installed as the README says."""
    home = tmp_path_factory.mktemp("home")
    profiles = home / ".config" / "snakemake"
    profiles.mkdir(parents=True)
    shutil.copytree(REPO / "profiles" / "slurm", profiles / "slurm")
    return home


def write_grid(root, **extract) -> None:
    root.mkdir(parents=True, exist_ok=True)
    config = {**GRID, "extract": {**GRID["extract"], **extract}}
    (root / "grid.yaml").write_text(yaml.safe_dump(config))


def run_snakemake(root, *args, env=None, timeout=900) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(root),
        "--configfile", str(root / "grid.yaml"), *args,
    ]  # fmt: skip
    environment = {**(env or os.environ), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=timeout
    )


def on_slurm(cluster, home, root, timeout=900) -> subprocess.CompletedProcess:
    """`snakemake --profile slurm` with the installed profile, nothing else on the command line
    but the grid's folder and config."""
    env = {**cluster.env, "HOME": str(home)}
    return run_snakemake(root, "--profile", "slurm", env=env, timeout=timeout)


def results(root) -> dict[str, pd.DataFrame]:
    runs = sorted((root / "results" / "runs").glob("*/*/*/seed*/upto3.parquet"))
    assert len(runs) == 4, runs
    return {str(p.relative_to(root)): pd.read_parquet(p).drop(columns=TIMING) for p in runs}


def test_whole_workflow_on_slurm_equals_the_local_run(cluster, home, tmp_path):
    local = tmp_path / "local"
    write_grid(local, shards=1)  # unsharded, locally
    done = run_snakemake(local, "--cores", "2")
    assert done.returncode == 0, done.stderr[-6000:]

    remote = tmp_path / "slurm"
    write_grid(remote)
    result = on_slurm(cluster, home, remote)
    assert result.returncode == 0, f"{result.stderr[-6000:]}\n{cluster.logs()}"
    log = result.stdout + result.stderr
    # 2 extraction shards, then the 2 AL jobs as one group job; finalize and aggregation local
    assert log.count("has been submitted with SLURM jobid") == 3, log[-3000:]
    for shard in (0, 1):
        assert (remote / f"{STORE}.shard{shard}of2.done").exists()

    ours, theirs = open_store(remote / STORE), open_store(local / STORE)
    assert sorted(ours.attrs["extraction"]) == ["shard-0-of-2", "shard-1-of-2"]
    for split in SPLITS:
        a, b = ours.load(split), theirs.load(split)
        np.testing.assert_array_equal(a.features, b.features)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.ids, b.ids)
    ours_results, local_results = results(remote), results(local)
    assert ours_results.keys() == local_results.keys()
    for key, frame in ours_results.items():
        pd.testing.assert_frame_equal(frame, local_results[key], obj=key)
    tables = [pd.read_parquet(r / "results" / "tables" / "runs.parquet") for r in (remote, local)]
    assert len(tables[0]) == 4 * 3
    pd.testing.assert_frame_equal(*(t.drop(columns=TIMING) for t in tables))
    assert (remote / "results" / "figures" / "learning_curves.pdf").exists()


CPUS = os.cpu_count() or 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"extract": {"resources": {"threads": CPUS + 1}}},
            f"rule extract_features asks for {CPUS + 1} CPUs per job (threads, set in "
            "extract.resources of the config) but the largest node of partition 'debug' has "
            f"{CPUS}; SLURM would leave it pending for ever (PartitionConfig)",
        ),
        (
            {"extract": {"resources": {"gpu": 1}}},
            "rule extract_features asks for 1 GPU(s) per job (gpu, set in extract.resources of "
            "the config) but partition 'debug' has no GPUs (sbatch: Invalid generic resource); "
            "set gpu: 0 for a CPU-only partition",
        ),
        (
            # one job per run, 2 x CPUS runs: profiles/default groups up to 8 in one allocation
            {"one_job_per_run": True, "seeds": list(range(1, CPUS + 1))},
            f"group job al ({min(8, 2 * CPUS)} active_learning jobs) asks for "
            f"{min(8, 2 * CPUS)} CPUs per job (threads, set in the profile's group-components "
            f"and set-resources) but the largest node of partition 'debug' has {CPUS}",
        ),
    ],
)
def test_a_job_slurm_could_never_start_fails_before_submission(
    cluster, home, tmp_path, overrides, message
):
    if overrides.get("one_job_per_run") and min(8, 2 * CPUS) <= CPUS:
        pytest.skip("a group of 8 AL jobs fits this node")
    overrides = dict(overrides)
    extract = overrides.pop("extract", {})
    resources = {**GRID["extract"]["resources"], **extract.get("resources", {})}
    write_grid(tmp_path, resources=resources)
    config = yaml.safe_load((tmp_path / "grid.yaml").read_text())
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump({**config, **overrides}))
    start = time.perf_counter()
    result = on_slurm(cluster, home, tmp_path, timeout=300)
    seconds = time.perf_counter() - start
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert message in log, log[-3000:]
    assert "has been submitted with SLURM jobid" not in log  # it did not wait on SLURM
    queue = subprocess.run(
        ["squeue", "-h"], env=cluster.env, capture_output=True, text=True, check=True
    )
    assert queue.stdout.strip() == ""
    print(f"failed after {seconds:.1f} s")
