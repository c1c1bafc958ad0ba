"""Classifier benchmark: one round's training of each classifier, and its pool inference.

On a synthetic Gaussian-mixture pool (N × D float32, C classes) it trains every classifier of
``--classifiers`` (default config otherwise: AdamW, at most 400 epochs, early stopping) on
``--labeled`` random pool points, as one round of a run does, ``--repeats`` times with different
seeds, and reports the median seconds, epochs and the peak extra memory; then the seconds of a
clean pass over the whole pool (``predict_proba``) and of the embedding z (``embed``), which
every probe-based query needs.

    python bench/classifiers.py                       # 50k pool, 1,000 labels, D 768, C 100
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
from strategies import make_pool, timed

from alfm.probe import ProbeConfig, train_probe


def bench_classifier(name: str, args: argparse.Namespace) -> dict[str, object]:
    """One row: training and inference of classifier ``name``."""
    device = torch.device(args.device)
    x, labels, _ = make_pool(args.size, args.dim, args.classes, args.seed, device, args.noise)
    config = ProbeConfig(classifier=name)
    seconds, epochs, peaks = [], [], []
    for repeat in range(args.repeats):
        g = torch.Generator().manual_seed(args.seed + repeat)
        rows = torch.randperm(args.size, generator=g)[: args.labeled].to(device)
        s, peak, probe = timed(
            device,
            lambda rows=rows, g=g: train_probe(x[rows], labels[rows], args.classes, config, g),
        )
        seconds.append(s)
        epochs.append(len(probe.loss_history))
        peaks.append(peak)
    proba_s, _, _ = timed(device, lambda: probe.predict_proba(x))
    embed_s, _, _ = timed(device, lambda: probe.embed(x))
    return {
        "classifier": name,
        "size": args.size,
        "labeled": args.labeled,
        "train_seconds": statistics.median(seconds),
        "train_seconds_all": seconds,
        "epochs": statistics.median(epochs),
        "seconds_per_epoch": statistics.median(s / e for s, e in zip(seconds, epochs, strict=True)),
        "train_peak_mib": max(peaks) / 2**20,
        "predict_seconds": proba_s,
        "embed_seconds": embed_s,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classifiers", default="linear,residual_adapter")
    parser.add_argument("--size", type=int, default=50_000, help="pool size N")
    parser.add_argument("--labeled", type=int, default=1000, help="labeled points |L|")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--noise", type=float, default=1.5, help="within-class noise")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor()}, "
        f"load {os.getloadavg()[0]:.2f}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print(
        "\n| classifier | N | |L| | train s (median) | epochs | s / epoch | train peak MiB | "
        "predict_proba(pool) s | embed(pool) s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for name in args.classifiers.split(","):
        row = bench_classifier(name, args)
        rows.append(row)
        print(
            f"| {name} | {args.size:,} | {args.labeled:,} | {row['train_seconds']:.2f} | "
            f"{row['epochs']:.0f} | {row['seconds_per_epoch'] * 1000:.1f} ms | "
            f"{row['train_peak_mib']:.0f} | {row['predict_seconds']:.2f} | "
            f"{row['embed_seconds']:.2f} |",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
