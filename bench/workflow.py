"""Workflow overhead: the default grid through Snakemake vs in-process, per-job overhead, DAG times.

    python bench/workflow.py grid [--cores N] [--seeds 1 10 100] [--one-job-per-run]
    python bench/workflow.py overhead     what one AL job costs beyond its rounds (median of 3)
    python bench/workflow.py dryrun       paper grid dry runs (rounds_per_job null, 1)
    python bench/workflow.py phases LOG   a Snakemake log's wall time per stage: store
                                          (extraction), runs (AL jobs), aggregation

`grid` uses the default feature store (results/features/mobilenet_v2/animal_mnist@112px.zarr,
extracted first when missing), runs every run of the default grid (alfm.pipeline.Grid, as the
workflow expands it) once in this process (run_active_learning, one after the other) and once
through `snakemake runs --cores N` in a fresh results folder, and prints both wall times, their
ratio (goal <= 1.3) and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
FEATURES = REPO / "results" / "features"


def snakemake(workdir: Path, config: Path, *args: str) -> float:
    """Run Snakemake from the repository root on `workdir`; returns wall seconds."""
    command = [
        sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(workdir),
        "--configfile", str(config), *args,
    ]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"snakemake {' '.join(args)} failed:\n{result.stderr[-4000:]}")
    return seconds


def workflow_config(**overrides) -> dict:
    """The repository's config with `overrides`, validated and defaulted as the workflow does."""
    from snakemake.utils import validate

    config = {}
    for name in ("config.yaml", "experiments.yaml"):
        config.update(yaml.safe_load((REPO / "config" / name).read_text()))
    config.update(overrides)
    schemas = REPO / "workflow" / "schemas"
    paths = {k: config[k] for k in ("data_root", "model_dir", "results", "features")}
    validate(paths, str(schemas / "config.schema.yaml"))
    validate(config, str(schemas / "experiments.schema.yaml"))
    return config


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def default_grid(**overrides) -> tuple:
    """The default grid on the default store (extracted first when missing), and that store."""
    from alfm.pipeline import Grid

    grid = Grid.from_config(workflow_config(features=str(FEATURES), **overrides))
    model, dataset = next(iter(grid.models)), next(iter(grid.datasets))
    store = Path(grid.store_path(model, dataset))
    if not store.exists():
        from alfm.extract import extract_features

        extract = grid.config["extract"]
        extract_features(
            grid.models[model], grid.datasets[dataset], store, image_size=extract["image_size"]
        )
    Path(grid.store_done(model, dataset)).touch()  # what the extraction job leaves
    return grid, model, dataset


def bench_grid(cores: int, seeds: list[int] | None, one_job_per_run: bool) -> dict:
    from alfm.run import run_active_learning

    overrides = {"one_job_per_run": one_job_per_run, **({"seeds": seeds} if seeds else {})}
    grid, _, _ = default_grid(**overrides)
    configs = [grid.run_config(*run, grid.evaluations) for run in grid.runs()]

    load_before = load()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        for i, config in enumerate(configs):
            run_active_learning(config, tmp / "inprocess" / f"{i}.parquet", progress=False)
        in_process = time.perf_counter() - start

        config_file = tmp / "grid.yaml"
        config_file.write_text(
            yaml.safe_dump({"features": str(FEATURES), "seeds": grid.seeds, **overrides})
        )
        workflow = snakemake(tmp / "workflow", config_file, "--cores", str(cores), "runs")
    return {
        "runs": len(configs),
        "cores": cores,
        "one_job_per_run": one_job_per_run,
        "in_process_s": round(in_process, 1),
        "snakemake_s": round(workflow, 1),
        "ratio": round(workflow / in_process, 3),
        "load_before": load_before,
        "load_after": load(),
    }


def bench_overhead(repeats: int = 3) -> dict:
    """Median wall seconds of: a bare interpreter, `import torch`, the run engine's imports,
    loading the default store (both splits, after the imports), the workflow's parse and DAG
    (`snakemake -n` of the default grid: once per local run, once per job on a cluster), and an
    `alfm advance` job of a finished run of the default store (process start, imports, store
    open, checkpoint load, publishing: everything a job costs beyond computing rounds)."""

    def median_seconds(command: list[str]) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            times.append(time.perf_counter() - start)
        return round(statistics.median(times), 2)

    with tempfile.TemporaryDirectory() as tmp:
        grid, model, dataset = default_grid(results=tmp, budget={"evaluations": 2})
        job = [
            "alfm", "advance", grid.job_runs(model, dataset, "random", [1], 2),
            "--state", grid.state_dir(model, dataset, "random", 1),
            "--out", grid.run_path(model, dataset, "random", 1, 2), "--threads", "1", "--quiet",
        ]  # fmt: skip
        subprocess.run(job, check=True, capture_output=True)  # computes the run once
        python = [sys.executable, "-c"]
        store = grid.store_path(model, dataset)
        load_store = (
            "import time; from alfm.store import open_store; t = time.perf_counter(); "
            f"s = open_store({store!r}); s.load('train'); s.load('test'); "
            "print(time.perf_counter() - t)"
        )
        store_s = [float(subprocess.check_output([*python, load_store])) for _ in range(repeats)]
        config = Path(tmp) / "grid.yaml"
        config.write_text(yaml.safe_dump({"features": str(FEATURES)}))
        parse = [
            snakemake(
                Path(tmp) / "parse", config, "-n", "--cores", "1", "--quiet", "all", "--", "runs"
            )
            for _ in range(repeats)
        ]
        return {
            "python_s": median_seconds([*python, "pass"]),
            "import_torch_s": median_seconds([*python, "import torch"]),
            "import_engine_s": median_seconds([*python, "import alfm.run, alfm.strategies"]),
            "store_load_s": round(statistics.median(store_s), 2),
            "workflow_parse_dag_s": round(statistics.median(parse), 2),
            "finished_job_s": median_seconds(job),
            "load": load(),
        }


def bench_dryrun() -> dict:
    """Dry-run wall time of the paper grid, default rounds_per_job and 1 (no data needed)."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for rpj in (None, 1):
            config = tmp / f"paper_{rpj}.yaml"
            paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
            config.write_text(yaml.safe_dump({**paper, "rounds_per_job": rpj}))
            seconds = snakemake(tmp / "work", config, "--dry-run", "--cores", "1", "--quiet")
            out[f"paper_dryrun_rounds_per_job_{rpj}_s"] = round(seconds, 1)
    return out


STAGES = {
    "store": ("extract_features", "finalize_features"),
    "runs": ("active_learning",),
    "aggregation": ("aggregate", "plot_figures"),
}


def bench_phases(log: Path) -> dict:
    """Wall seconds of each stage in a Snakemake log (`.snakemake/log/*.snakemake.log`): from
    the first start of one of its rules' jobs to the last finish."""
    from datetime import datetime

    stamp = re.compile(r"^\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]$")
    now, rule, starts, ends, rules = None, None, {}, {}, {}
    for line in log.read_text().splitlines():
        if m := stamp.match(line):
            now = datetime.strptime(m[1], "%a %b %d %H:%M:%S %Y")
        elif m := re.match(r"^\s*(?:local)?rule (\w+):$", line):
            rule = m[1]
        elif (m := re.match(r"^\s+jobid: (\d+)$", line)) and rule:
            rules[m[1]], starts[m[1]] = rule, now
        elif m := re.match(r"^Finished job(?:id:)? (\d+)", line):
            ends[m[1]] = now
    out = {}
    for stage, names in STAGES.items():
        jobs = [j for j, r in rules.items() if r in names and j in ends]
        if jobs:
            span = max(ends[j] for j in jobs) - min(starts[j] for j in jobs)
            out[f"{stage}_s"] = span.total_seconds()
            out[f"{stage}_jobs"] = len(jobs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    grid = sub.add_parser("grid")
    grid.add_argument("--cores", type=int, default=os.cpu_count())
    grid.add_argument("--seeds", type=int, nargs="+")
    grid.add_argument("--one-job-per-run", action="store_true")
    sub.add_parser("overhead")
    sub.add_parser("dryrun")
    sub.add_parser("phases").add_argument("log", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.what == "grid":
        result = bench_grid(args.cores, args.seeds, args.one_job_per_run)
    elif args.what == "phases":
        result = bench_phases(args.log)
    else:
        result = bench_overhead() if args.what == "overhead" else bench_dryrun()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
