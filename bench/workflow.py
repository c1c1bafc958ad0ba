"""Workflow overhead: the default grid through Snakemake vs in-process, and DAG build times.

    python bench/workflow.py grid [--cores N] [--seeds 1 10 100]  default grid: Snakemake vs alfm
    python bench/workflow.py dryrun                                paper grid dry runs (rpj null, 1)

`grid` uses the default feature store (results/features/mobilenet_v2/animal_mnist.zarr, extracted
first when missing), runs every strategy of config/experiments.yaml x the seeds once in this
process (run_active_learning, one after the other) and once through `snakemake runs --cores N`
in a fresh results folder, and prints both wall times and their ratio (goal <= 1.3).
"""

from __future__ import annotations

import argparse
import json
import os
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


def grid_configs(experiments: dict, store: Path, seeds: list[int]) -> list[dict]:
    """The RunConfig dicts of the default grid, as the workflow builds them."""
    configs = []
    for entry in experiments["strategies"]:
        entry = {"name": entry} if isinstance(entry, str) else entry
        init = entry.get("init") or experiments["init"]
        for seed in seeds:
            configs.append(
                {
                    "features": str(store),
                    "strategy": entry["name"],
                    "strategy_params": entry.get("params", {}),
                    "init": init["name"],
                    "init_params": init.get("params", {}),
                    "seed": seed,
                    "budget": experiments["budget"],
                    "probe": experiments["probe"],
                    "device": experiments["device"],
                }
            )
    return configs


def bench_grid(cores: int, seeds: list[int] | None) -> dict:
    from alfm.run import run_active_learning

    experiments = yaml.safe_load((REPO / "config" / "experiments.yaml").read_text())
    seeds = seeds or experiments["seeds"]
    model, dataset = experiments["models"][0], experiments["datasets"][0]
    store = FEATURES / model / f"{dataset}.zarr"
    if not store.exists():
        from alfm.extract import extract_features

        extract_features(model, dataset, store)
    configs = grid_configs(experiments, store, seeds)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        for i, config in enumerate(configs):
            run_active_learning(config, tmp / "inprocess" / f"{i}.parquet", progress=False)
        in_process = time.perf_counter() - start

        config_file = tmp / "grid.yaml"
        config_file.write_text(yaml.safe_dump({"features": str(FEATURES), "seeds": seeds}))
        workflow = snakemake(tmp / "workflow", config_file, "--cores", str(cores), "runs")
    return {
        "runs": len(configs),
        "cores": cores,
        "in_process_s": round(in_process, 1),
        "snakemake_s": round(workflow, 1),
        "ratio": round(workflow / in_process, 3),
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    grid = sub.add_parser("grid")
    grid.add_argument("--cores", type=int, default=os.cpu_count())
    grid.add_argument("--seeds", type=int, nargs="+")
    sub.add_parser("dryrun")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = bench_grid(args.cores, args.seeds) if args.what == "grid" else bench_dryrun()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
