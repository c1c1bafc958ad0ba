"""Query-strategy benchmark: seconds and peak memory per strategy, next to scikit-activeml.

For every registered strategy and every pool size N it times a query of B points on a synthetic
Gaussian-mixture pool (N×D float32, C classes, |L| = C labeled points, one per class) with a probe
trained on L, and measures the peak extra memory of that query (CPU: growth of the process' peak
RSS, reset before each query through /proc/self/clear_refs; CUDA: peak allocated bytes) as a
multiple of the feature matrix. Every cell is ``--repeats`` calls in this one process (default
3): the median time and the largest peak are reported, so numbers from a noisy machine compare.
ProbCover's graph (``ProbCover.prepare``) is timed and measured apart (the ``probcover (graph)``
row), as a run builds it once and reuses it across rounds. Probe training is reported apart too.

Side by side, on the same pool and the same trained probe, it runs scikit-activeml's
implementation of each strategy we share with it, where it is installed and its expected memory
fits ``--sk-mem-gb`` (BADGE materializes N×C·D gradient embeddings, ProbCover an N×N matrix)
and N ≤ ``--sk-max-n``; skipped cells say why.

    python bench/strategies.py                                 # 10k, 50k, 200k on 2 CPU threads
    python bench/strategies.py --sizes 1000000 --dim 1536 --classes 1000 --budget 1000 \\
        --device cuda --no-skactiveml --json gpu.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

# OpenMP threads that spin at barriers steal the time slices of their siblings on an
# oversubscribed CPU (2-thread BALD at 50k: 40 s spinning vs 3.6 s passive on the shared 2-core
# machine): wait passively unless the caller says otherwise. Read when libgomp loads, so before
# torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402, N812

from alfm.probe import Probe, train_probe  # noqa: E402
from alfm.strategies import QueryContext, create_strategy, list_strategies, query  # noqa: E402


@dataclass
class Row:
    """One benchmark cell: a strategy (ours or scikit-activeml's) at one pool size."""

    strategy: str
    n: int
    seconds: float | None = None
    cpu_seconds: float | None = None
    graph_seconds: float | None = None
    peak_mb: float | None = None
    ratio: float | None = None
    sk_seconds: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------- measurement


def _rss_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


class PeakMemory:
    """Peak extra bytes of the enclosed work: CUDA allocator peak, or CPU peak-RSS growth."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.bytes = 0

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            self._base = _rss_kb("VmRSS") * 1024
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self._base
        else:
            self.bytes = _rss_kb("VmHWM") * 1024 - self._base


def timed(
    device: torch.device, fn: Callable[[], Any], repeats: int = 1
) -> tuple[float, float, int, Any]:
    """(median seconds, median process CPU seconds, largest peak extra bytes, last result) of
    ``repeats`` calls of ``fn()``. CPU seconds show how much of the cores the call got."""
    times, cpu, peaks = [], [], []
    for _ in range(repeats):
        with PeakMemory(device) as peak:
            start, start_cpu = time.perf_counter(), time.process_time()
            out = fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        peaks.append(peak.bytes)
    return statistics.median(times), statistics.median(cpu), max(peaks), out


def time_limited(fn: Callable[[], Any], limit: float, repeats: int = 1) -> float:
    """Median seconds of ``repeats`` calls of ``fn()``; raises TimeoutError once one runs past
    ``limit`` seconds (checked between Python bytecodes, so a long C call finishes first)."""
    return statistics.median(_time_limited(fn, limit) for _ in range(repeats))


def _time_limited(fn: Callable[[], Any], limit: float) -> float:

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------------------------------- data


def make_pool(
    n: int, dim: int, classes: int, seed: int, device: torch.device, noise: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gaussian-mixture features (N, D) float32, labels, and one labeled index per class."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g)
    labels = torch.arange(n) % classes  # every class present; shuffled below
    labels = labels[torch.randperm(n, generator=g)]
    features = torch.empty(n, dim)
    for start in range(0, n, 65536):  # no N×D temporary beyond the result
        part = labels[start : start + 65536]
        features[start : start + 65536] = centers[part] + noise * torch.randn(
            part.numel(), dim, generator=g
        )
    first = torch.full((classes,), n, dtype=torch.int64)
    first.scatter_reduce_(0, labels, torch.arange(n), reduce="amin")
    return features.to(device), labels.to(device), first.to(device)


# ------------------------------------------------------------------------------ scikit-activeml


def skactiveml_runner(
    x: np.ndarray, probe: Probe, classes: int, budget: int, labeled: np.ndarray, labels: np.ndarray
) -> dict[str, Callable[[], Any]]:
    """Per shared strategy, a zero-argument call of scikit-activeml's query on our pool/probe."""
    from skactiveml.base import SkactivemlClassifier
    from skactiveml.pool import (
        Badge,
        CoreSet,
        DropQuery,
        GreedyBALD,
        ProbCover,
        RandomSampling,
        TypiClust,
        UncertaintySampling,
    )

    class ProbeClassifier(SkactivemlClassifier):
        """Our trained probe behind scikit-activeml's classifier interface (already fitted)."""

        def __init__(self, classes=None, missing_label=np.nan, cost_matrix=None, random_state=0):
            super().__init__(classes, missing_label, cost_matrix, random_state)
            self.classes_ = np.arange(len(classes))

        def fit(self, X, y, sample_weight=None):  # noqa: N803 - sklearn names
            return self

        def predict_proba(self, X, return_embeddings=False):  # noqa: N803
            xt = torch.as_tensor(np.asarray(X, dtype=np.float32))
            proba = probe.predict_proba(xt).numpy().astype(np.float64)
            return (proba, probe.embed(xt).numpy()) if return_embeddings else proba

        def predict(self, X, return_embeddings=False):  # noqa: N803
            out = self.predict_proba(X, return_embeddings)
            if return_embeddings:
                return out[0].argmax(axis=1), out[1]
            return out.argmax(axis=1)

        def sample_proba(self, X, n_samples=20, random_state=None):  # noqa: N803
            """MC-dropout samples as a scikit-activeml user (and the reference) draws them: one
            standard PyTorch pass per sample, ``F.dropout`` on the input, then the eval-mode
            probe; not our fused passes and cheap masks, which are what BALD's row measures."""
            xt = torch.as_tensor(np.asarray(X, dtype=np.float32))
            torch.manual_seed(0)
            with torch.no_grad():
                passes = [
                    probe(F.dropout(xt, probe.dropout, training=True)).softmax(1).numpy()
                    for _ in range(n_samples)
                ]
            return np.stack(passes).astype(np.float64)

    y = np.full(len(x), np.nan)
    y[labeled] = labels
    clf = ProbeClassifier(classes=np.arange(classes))
    with torch.no_grad():
        z = probe.embed(torch.as_tensor(x)).numpy()
    x_norm = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    def unc(method: str) -> Callable[[], Any]:
        qs = UncertaintySampling(method=method, random_state=0)
        return lambda: qs.query(x, y, clf, fit_clf=False, batch_size=budget)

    return {
        "random": lambda: RandomSampling(random_state=0).query(x, y, batch_size=budget),
        "uncertainty": unc("least_confident"),
        "entropy": unc("entropy"),
        "margins": unc("margin_sampling"),
        "coreset": lambda: CoreSet(random_state=0).query(z, y, batch_size=budget),
        "badge": lambda: Badge(clf_embedding_flag_name="return_embeddings", random_state=0).query(
            x, y, clf, fit_clf=False, batch_size=budget
        ),
        "typiclust": lambda: TypiClust(k=20, random_state=0).query(x_norm, y, batch_size=budget),
        "probcover": lambda: ProbCover(n_classes=classes, random_state=0).query(
            x_norm, y, batch_size=budget
        ),
        "dropquery": lambda: DropQuery(
            n_dropout_samples=3, clf_embedding_flag_name="return_embeddings", random_state=0
        ).query(x, y, clf, fit_clf=False, batch_size=budget),
        "bald": lambda: GreedyBALD(
            sample_predictions_method_name="sample_proba",
            sample_predictions_dict={"n_samples": 20},
            random_state=0,
        ).query(x, y, clf, fit_ensemble=False, batch_size=budget),
    }


def skactiveml_bytes(name: str, n: int, dim: int, classes: int) -> float:
    """Rough peak bytes of scikit-activeml's implementation (float64 throughout)."""
    if name == "badge":
        return 8.0 * n * classes * dim * 2  # the gradient embeddings and a distance copy
    if name == "probcover":
        return 8.0 * n * n * 2  # the distance matrix and the purity mask
    if name == "bald":
        return 8.0 * n * classes * 20 * 3
    return 8.0 * n * dim * 3


# ------------------------------------------------------------------------------------- driver


def bench_size(n: int, args: argparse.Namespace, names: list[str], out: list[Row]) -> None:
    """Benchmark every strategy in ``names`` on a pool of ``n`` points, appending to ``out``."""
    device = torch.device(args.device)
    features, labels, labeled = make_pool(n, args.dim, args.classes, args.seed, device, args.noise)
    nbytes = features.numel() * features.element_size()
    train_s, _, _, probe = timed(
        device,
        lambda: train_probe(
            features[labeled], labels[labeled], args.classes, None, torch.Generator().manual_seed(0)
        ),
        args.repeats,
    )
    out.append(Row("(probe training)", n, seconds=train_s, note=f"{labeled.numel()} labeled"))
    ctx = QueryContext(features, labeled, labels[labeled], args.classes, probe)
    sk = sk_reason = None
    if args.skactiveml and n <= args.sk_max_n:
        try:
            sk = skactiveml_runner(
                features.cpu().numpy(),
                probe.cpu(),
                args.classes,
                args.budget,
                labeled.cpu().numpy(),
                labels[labeled].cpu().numpy(),
            )
            probe.to(device)
        except ImportError as err:
            sk_reason = f"scikit-activeml not importable ({err})"
    elif args.skactiveml:
        sk_reason = f"skactiveml skipped: N > --sk-max-n {args.sk_max_n}"
    for name in names:
        strategy = create_strategy(name)
        row = Row(name, n)
        if hasattr(strategy, "graph"):  # ProbCover: build (and cache) the graph apart
            pool = QueryContext(features, labeled[:0], labels[:0], args.classes)

            def prepare(s=strategy, pool=pool):
                s.prepare(pool, torch.Generator().manual_seed(args.seed))
                return s.graph(pool)

            row.graph_seconds, graph_cpu, graph_bytes, graph = timed(
                device, prepare, args.graph_repeats or args.repeats
            )
            out.append(
                Row(
                    f"{name} (graph)",
                    n,
                    seconds=row.graph_seconds,
                    cpu_seconds=graph_cpu,
                    peak_mb=graph_bytes / 2**20,
                    ratio=graph_bytes / nbytes,
                    note=f"δ = {graph.delta:.4f}, purity {graph.purity:.3f}, "
                    f"{graph.num_edges} edges",
                )
            )
        row.seconds, row.cpu_seconds, peak, _ = timed(
            device,
            lambda s=strategy: query(s, ctx, args.budget, torch.Generator().manual_seed(args.seed)),
            args.repeats,
        )
        row.peak_mb, row.ratio = peak / 2**20, peak / nbytes
        if sk is not None and name in sk:
            need = skactiveml_bytes(name, n, args.dim, args.classes)
            if need > args.sk_mem_gb * 2**30:
                row.note = f"skactiveml skipped: needs ~{need / 2**30:.0f} GiB"
            else:
                try:
                    row.sk_seconds = time_limited(sk[name], args.sk_timeout, args.repeats)
                except TimeoutError:
                    row.note = f"skactiveml stopped after {args.sk_timeout:.0f} s"
                    row.sk_seconds = None
                except Exception as err:  # report, do not abort the whole table
                    row.note = f"skactiveml failed: {type(err).__name__}: {err}"[:120]
        elif sk_reason and name in SHARED:
            row.note = sk_reason
        out.append(row)
        sk_text = f"  skactiveml {row.sk_seconds:.3f} s" if row.sk_seconds is not None else ""
        print(
            f"  {name:12s} N={n:>8d} {row.seconds:8.3f} s  ×{row.ratio:.2f}{sk_text} {row.note}",
            file=sys.stderr,
        )


SHARED = {
    "random",
    "uncertainty",
    "entropy",
    "margins",
    "coreset",
    "badge",
    "typiclust",
    "probcover",
    "dropquery",
    "bald",
}


def markdown(rows: list[Row], sizes: list[int]) -> str:
    """The results as one markdown table per pool size."""
    lines = []
    for n in sizes:
        lines += [
            f"\n### N = {n:,}\n",
            "| strategy | query s | CPU s | peak extra MiB | × features | skactiveml s | speed-up "
            "| note |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in (r for r in rows if r.n == n):
            speedup = r.sk_seconds / r.seconds if r.sk_seconds and r.seconds else None
            cells = [
                r.strategy,
                f"{r.seconds:.3f}" if r.seconds is not None else "",
                f"{r.cpu_seconds:.2f}" if r.cpu_seconds is not None else "",
                f"{r.peak_mb:.0f}" if r.peak_mb is not None else "",
                f"{r.ratio:.2f}" if r.ratio is not None else "",
                f"{r.sk_seconds:.2f}" if r.sk_seconds is not None else "",
                f"{speedup:.0f}×" if speedup else "",
                r.note,
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,50000,200000", help="comma-separated pool sizes")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--strategies", default="", help="comma-separated (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise", type=float, default=1.5, help="within-class noise scale")
    parser.add_argument("--no-skactiveml", dest="skactiveml", action="store_false")
    parser.add_argument("--sk-max-n", type=int, default=50000, help="largest N for skactiveml")
    parser.add_argument("--sk-mem-gb", type=float, default=4.0, help="skip skactiveml above this")
    parser.add_argument("--sk-timeout", type=float, default=300, help="seconds per skactiveml call")
    parser.add_argument("--repeats", type=int, default=3, help="calls per cell (median)")
    parser.add_argument(
        "--graph-repeats", type=int, default=0, help="ProbCover graph builds (0: --repeats)"
    )
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument(
        "--tf32", action="store_true", help="allow TF32 CUDA matmuls (default: full float32)"
    )
    args = parser.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.set_num_threads(args.threads)
    names = [s for s in args.strategies.split(",") if s] or list_strategies()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows: list[Row] = []
    load = os.getloadavg()
    for n in sizes:
        bench_size(n, args, names, rows)
    device_name = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor()
    )
    header = (
        f"# Strategy benchmark\n\nD = {args.dim}, C = {args.classes}, B = {args.budget}, "
        f"|L| = C, device {args.device} ({device_name or platform.machine()}), "
        f"{args.threads} CPU threads, {'TF32' if args.tf32 else 'float32'} matmuls, "
        f"torch {torch.__version__}, Python "
        f"{platform.python_version()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
        f"load average at the start {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} and at the end "
        f"{os.getloadavg()[0]:.1f} / {os.getloadavg()[1]:.1f} / {os.getloadavg()[2]:.1f} "
        f"(1, 5, 15 min). Seconds are medians of {args.repeats} calls (graph: "
        f"{args.graph_repeats or args.repeats}); peak memory is the largest extra over the "
        f"resident pool in those calls, as a multiple of the N×D float32 feature matrix."
    )
    print(header + "\n" + markdown(rows, sizes))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": [asdict(r) for r in rows]}, f, indent=1)
    if any((r.ratio or 0) >= 3 for r in rows):
        print("\nWARNING: some strategy exceeded 3× the feature matrix", file=sys.stderr)


if __name__ == "__main__":
    main()
