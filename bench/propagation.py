"""Label propagation benchmark: seconds and peak extra memory of the graph and of one round.

For every pool size N it builds the label-propagation graph (:func:`alfm.propagation.build_graph`:
exact kNN of the L2-normalized features, weights, degree, the two CSR halves) on a synthetic
Gaussian-mixture pool (N × D float32, C classes), then propagates the one-hot labels of one point
per class for ``--n-iter`` steps and derives the training targets, as one round of a run with
``ssl.enable`` does. Memory is the peak extra over what is resident with the pool loaded (CPU:
growth of the peak RSS, reset through /proc/self/clear_refs; CUDA: peak allocated bytes), for
each phase and for the whole (graph + propagation, the graph resident throughout).

    python bench/propagation.py                            # 50k and 200k, D 768, knn 500
    python bench/propagation.py --sizes 1000000 --dim 1536 --classes 1000 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch
from strategies import _rss_kb, make_pool, timed

from alfm.propagation import build_graph, propagated_targets


def _resident(device: torch.device) -> int:
    """Bytes in use now: allocated CUDA memory, or the resident set size."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return _rss_kb("VmRSS") * 1024


def bench_size(n: int, args: argparse.Namespace) -> dict[str, object]:
    """One row: graph and propagation seconds and peak extra memory at pool size ``n``."""
    device = torch.device(args.device)
    x, labels, first = make_pool(n, args.dim, args.classes, args.seed, device, args.noise)
    base = _resident(device)
    graph_s, graph_peak, graph = timed(device, lambda: build_graph(x, args.knn, args.gamma))
    graph_resident = _resident(device) - base

    def one_round() -> tuple[torch.Tensor, torch.Tensor]:
        f = graph.propagate(first, labels[first], args.classes, args.alpha, args.n_iter)
        return propagated_targets(f)

    round_s, round_peak, (_, weights) = timed(device, one_round)
    matrix = graph.matrix
    graph_bytes = sum(
        t.numel() * t.element_size()
        for t in (matrix.crow_indices(), matrix.col_indices(), matrix.values())
    )
    return {
        "n": n,
        "dim": args.dim,
        "classes": args.classes,
        "knn": args.knn,
        "n_iter": args.n_iter,
        "graph_seconds": graph_s,
        "round_seconds": round_s,
        "graph_peak_gib": graph_peak / 2**30,
        "round_peak_gib": round_peak / 2**30,
        "total_peak_gib": max(graph_peak, graph_resident + round_peak) / 2**30,
        "graph_gib": graph_bytes / 2**30,
        "features_gib": x.numel() * 4 / 2**30,
        "nnz": matrix._nnz(),
        "steps": graph.last_steps,
        "mean_degree": float(graph.degree.double().mean()),
        "trained_rows": int((weights > 0).sum()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="50000,200000", help="pool sizes N, comma-separated")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--knn", type=int, default=500)
    parser.add_argument("--gamma", type=float, default=1.0)
    parser.add_argument("--alpha", type=float, default=0.9)
    parser.add_argument("--n-iter", type=int, default=100)
    parser.add_argument("--noise", type=float, default=1.5, help="within-class noise")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor()}, "
        f"load {os.getloadavg()[0]:.2f}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print(
        "\n| N | D | C | knn | graph s | graph peak GiB | round s (n_iter steps + targets) | "
        "round peak GiB | total peak GiB | graph GiB | features GiB | mean D | steps |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in (int(s) for s in args.sizes.split(",")):
        row = bench_size(n, args)
        rows.append(row)
        print(
            f"| {n:,} | {row['dim']} | {row['classes']} | {row['knn']} | "
            f"{row['graph_seconds']:.1f} | {row['graph_peak_gib']:.2f} | "
            f"{row['round_seconds']:.1f} | {row['round_peak_gib']:.2f} | "
            f"{row['total_peak_gib']:.2f} | {row['graph_gib']:.2f} | {row['features_gib']:.2f} | "
            f"{row['mean_degree']:.0f} | {row['steps']} |",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
