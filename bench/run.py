"""Run-engine benchmarks: per-round time split, and the embedded default grid in-process.

    python bench/run.py --synthetic [--n 50000 --dim 768 --classes 100 --evaluations 3]
        per-round train / evaluate / query seconds on a synthetic store (written with
        alfm.store.write_store into a temporary folder) for each strategy
    python bench/run.py --grid [--store PATH] [--seeds 1 10 100 1000 10000] [--evaluations 20]
        every strategy x seed on the default store
        (results/features/mobilenet_v2/animal_mnist@112px.zarr, extracted first when missing),
        all runs in this process; per strategy mean ± std of the final accuracy and of the
        normalized area under the learning curve, and the wall time
    python bench/run.py --summarize DIR
        the same table from the complete runs under DIR (a grid's --out-dir, e.g. cut short)

Both take --strategies (comma list; default the 12 query strategies), --threads (torch intra-op
threads, default: torch's) and --device. Markdown tables go to stdout; --json FILE saves the rows.
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

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from alfm.results import normalized_auc
from alfm.run import run_grid
from alfm.store import SplitData, write_store

REPO = Path(__file__).resolve().parents[1]
DEFAULT_STORE = REPO / "results" / "features" / "mobilenet_v2" / "animal_mnist@112px.zarr"
STRATEGIES = [
    "random",
    "uncertainty",
    "entropy",
    "margins",
    "bald",
    "powerbald",
    "coreset",
    "badge",
    "alfamix",
    "typiclust",
    "probcover",
    "dropquery",
]
SEEDS = (1, 10, 100, 1000, 10000)


def synthetic_store(path: Path, n: int, dim: int, classes: int, test: int, seed: int = 0) -> Path:
    """One Gaussian blob per class: unit noise around centers drawn with standard deviation 0.2."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=0.2, size=(classes, dim)).astype(np.float32)

    def split(rows: int) -> SplitData:
        labels = rng.integers(0, classes, rows)
        labels[:classes] = np.arange(classes)  # every class present in both splits
        features = centers[labels] + rng.normal(size=(rows, dim)).astype(np.float32)
        return SplitData(features, labels.astype(np.int64), np.arange(rows).astype(str))

    write_store(path, split(n), split(test), {"dataset": f"synthetic{n}x{dim}c{classes}"})
    return path


def configs(store: Path, strategies: list[str], seeds: list[int], evaluations: int, device: str):
    return [
        {
            "features": str(store),
            "strategy": strategy,
            "seed": seed,
            "budget": {"evaluations": evaluations},
            "device": device,
        }
        for seed in seeds  # seed-major: a grid cut short still covers every strategy
        for strategy in strategies
    ]


def bench_synthetic(args: argparse.Namespace) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        store = synthetic_store(Path(tmp) / "s.zarr", args.n, args.dim, args.classes, args.test)
        print(
            f"wrote {args.n}x{args.dim} C={args.classes} store in "
            f"{time.perf_counter() - start:.1f} s",
            file=sys.stderr,
        )
        # One untimed round first: torch's first calls pay one-off initialization.
        run_grid(
            configs(store, ["random"], [0], 1, args.device), Path(tmp) / "warm", progress=False
        )
        runs = run_grid(
            configs(store, args.strategies, [1], args.evaluations, args.device), Path(tmp) / "runs"
        )
    queried = runs[runs["round"] < args.evaluations]  # rounds that queried
    table = runs.groupby("strategy", sort=False).agg(
        train_s=("train_seconds", "mean"),
        eval_s=("eval_seconds", "mean"),
        peak_host_mb=("peak_host_mb", "max"),
        peak_device_mb=("peak_device_mb", "max"),
    )
    table.insert(2, "query_s", queried.groupby("strategy", sort=False)["query_seconds"].mean())
    table.insert(3, "round_s", table[["train_s", "eval_s", "query_s"]].sum(axis=1))
    table.insert(4, "train_share", table["train_s"] / table["round_s"])
    print(
        f"\nPer-round seconds (mean over {args.evaluations} rounds; query over the "
        f"{args.evaluations - 1} that query), {args.n}x{args.dim}, C={args.classes}, "
        f"{args.test} test rows, labeled {args.classes}..{args.classes * args.evaluations}, "
        f"device {args.device}, {torch.get_num_threads()} threads\n"
    )
    print(table.to_markdown(floatfmt=".3f"))
    return table.reset_index()


def grid_table(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(printable, numeric) per-strategy table: mean ± std over seeds of final accuracy and AUC."""
    per_run = runs.groupby(["strategy", "seed"], sort=False).agg(
        final=("accuracy", "last"),
        auc=("accuracy", normalized_auc),
        query_s=("query_seconds", "mean"),
        train_s=("train_seconds", "mean"),
    )
    table = per_run.groupby("strategy", sort=False).agg(
        final_mean=("final", "mean"),
        final_std=("final", "std"),
        auc_mean=("auc", "mean"),
        auc_std=("auc", "std"),
        query_s=("query_s", "mean"),
        train_s=("train_s", "mean"),
        seeds=("final", "size"),
    )
    table = table.sort_values("auc_mean", ascending=False)
    shown = pd.DataFrame(
        {
            "final accuracy": [
                f"{m:.4f} ± {s:.4f}" for m, s in zip(table.final_mean, table.final_std, strict=True)
            ],
            "AUC (accuracy)": [
                f"{m:.4f} ± {s:.4f}" for m, s in zip(table.auc_mean, table.auc_std, strict=True)
            ],
            "query s/round": table.query_s.round(3),
            "train s/round": table.train_s.round(3),
            "seeds": table.seeds,
        },
        index=table.index,
    )
    return shown, table


def summarize(folder: Path) -> pd.DataFrame:
    """The grid table of the complete runs found under ``folder`` (e.g. a grid cut short)."""
    runs = [pq.read_table(p) for p in sorted(folder.rglob("*.parquet"))]
    complete = [t.to_pandas() for t in runs if json.loads(t.schema.metadata[b"alfm"])["complete"]]
    frame = pd.concat(complete, ignore_index=True)
    shown, table = grid_table(frame)
    compute = frame[["train_seconds", "eval_seconds", "query_seconds"]].sum().sum()
    print(
        f"\n{len(complete)} complete runs of {len(runs)} under {folder}; train+evaluate+query "
        f"seconds recorded in them {compute:.1f} s. Mean ± std over the seeds present; AUC = "
        "trapezoid over the evaluation index / its span.\n"
    )
    print(shown.to_markdown())
    return table.reset_index()


def bench_grid(args: argparse.Namespace) -> pd.DataFrame:
    store = Path(args.store)
    if not store.exists() and store == DEFAULT_STORE:
        subprocess.run([sys.executable, "-m", "alfm.cli", "extract"], check=True, cwd=REPO)
    cfgs = configs(store, args.strategies, args.seeds, args.evaluations, args.device)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        runs = run_grid(cfgs, args.out_dir or tmp)
        wall = time.perf_counter() - start
    shown, table = grid_table(runs)
    compute = runs[["train_seconds", "eval_seconds", "query_seconds"]].sum().sum()
    print(
        f"\nGrid: {len(args.strategies)} strategies x {len(args.seeds)} seeds x "
        f"{args.evaluations} evaluations on {store} ({len(cfgs)} runs), device {args.device}, "
        f"{torch.get_num_threads()} threads: {wall:.1f} s in-process "
        f"({wall / len(cfgs):.2f} s per run); train+evaluate+query seconds recorded in the runs "
        f"{compute:.1f} s (this counts runs finished by an earlier invocation too). "
        "Mean ± std over seeds; AUC = trapezoid over the evaluation index / its span.\n"
    )
    print(shown.to_markdown())
    return table.reset_index().assign(wall_seconds=wall)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--synthetic", action="store_true", help="per-round time split")
    mode.add_argument("--grid", action="store_true", help="default grid in-process")
    mode.add_argument("--summarize", metavar="DIR", help="table of the complete runs under DIR")
    parser.add_argument("--strategies", type=lambda s: s.split(","), default=list(STRATEGIES))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, help="torch intra-op threads")
    parser.add_argument("--json", help="save the table rows as JSON here")
    parser.add_argument("--n", type=int, default=50_000, help="synthetic pool rows")
    parser.add_argument("--dim", type=int, default=768, help="synthetic feature dimension")
    parser.add_argument("--classes", type=int, default=100, help="synthetic classes")
    parser.add_argument("--test", type=int, default=10_000, help="synthetic test rows")
    parser.add_argument("--store", default=str(DEFAULT_STORE), help="grid: feature store")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--evaluations", type=int, help="default: 3 synthetic, 20 grid")
    parser.add_argument("--out-dir", help="grid: keep the run files here (default: temporary)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.evaluations is None:
        args.evaluations = 3 if args.synthetic else 20
    if args.summarize:
        table = summarize(Path(args.summarize))
    else:
        table = bench_synthetic(args) if args.synthetic else bench_grid(args)
    if args.json:
        Path(args.json).write_text(table.to_json(orient="records", indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
