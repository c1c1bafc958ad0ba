"""ProbCover (Yehuda et al., NeurIPS 2022): greedy max coverage of δ-balls.

As in the DropQuery reference: on the L2-normalized raw features, pseudo-labels come from k-means
with ``k = C``; δ is found by bisection on [0, 1] (``delta_steps`` steps, starting at 0.5) so that
at least ``purity`` of the δ-balls are pure; the graph holds every pair closer than δ (self-loops
included); the points covered by L are dropped, then B times the point covering the most uncovered
points is taken and its ball marked covered.

Differences from the reference, all deliberate:
- Purity of every δ comes from one pass that finds, for each point, the distance to its nearest
  point with another pseudo-label (a ball of radius δ is pure iff that distance ≥ δ), so the
  bisection costs nothing beyond that pass and one graph build. Beyond ``purity_sample`` points
  (default 5000) that pass covers a uniform sample only, and the δ it picks is checked against
  the exact purities read off the built graph (stepping down through the tested δs when short):
  δ may then differ from the full-pool bisection's, the graph of a given δ never does. The range
  pass visits only the upper triangle (symmetry), screened in bfloat16 where the CPU has it.
- FIX: the graph is the one of the δ actually chosen — the largest tested δ that met the purity
  target (the smallest tested δ if none did) — where the reference kept the last tested graph and
  reported the next midpoint.
- FIX: once everything is covered the rest is filled uniformly at random (the reference keeps
  taking index 0).
- The graph is built once per run in :meth:`ProbCover.prepare` (as the reference builds it once
  per run), its k-means seeded by the run's (seed, "prepare") generator, so a resumed run or a
  later job rebuilds the same graph; ``select`` uses it for the features it was prepared on and
  refuses others.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import Tensor

from alfm.kernels import (
    device_generator,
    filter_range_graph,
    kmeans,
    l2_normalize,
    nearest_other_label_sq_distances,
    range_graph,
)
from alfm.strategies.base import QueryContext, Strategy, random_fill, register_strategy


@dataclass(frozen=True)
class CoverGraph:
    """A δ-ball graph in both orientations (CSR): the ball of ``i`` is
    ``cols[ptr[i]:ptr[i + 1]]``, the points whose balls hold ``j`` are
    ``rows_t[ptr_t[j]:ptr_t[j + 1]]``."""

    delta: float
    purity: float
    ptr: Tensor
    cols: Tensor
    ptr_t: Tensor
    rows_t: Tensor

    @property
    def num_nodes(self) -> int:
        """Number of points."""
        return self.ptr.numel() - 1

    @property
    def num_edges(self) -> int:
        """Number of (point, ball member) pairs, self-loops included."""
        return self.cols.numel()

    @classmethod
    def from_edges(
        cls, rows: Tensor, cols: Tensor, n: int, delta: float, purity: float
    ) -> CoverGraph:
        """Build both orientations from an edge list ``(rows, cols)`` over ``n`` points
        (:func:`~alfm.kernels.range_graph` already sorts it by row)."""
        index_dtype = torch.int32 if n < 2**31 else torch.int64
        if rows.numel() > 1 and bool((rows[1:] < rows[:-1]).any()):
            order = torch.argsort(rows, stable=True)
            rows, cols = rows[order], cols[order]
        rows_t = rows[torch.argsort(cols, stable=True)].to(index_dtype)
        return cls(delta, purity, _indptr(rows, n), cols.to(index_dtype), _indptr(cols, n), rows_t)


def _indptr(keys: Tensor, n: int) -> Tensor:
    ptr = torch.zeros(n + 1, dtype=torch.int64, device=keys.device)
    torch.cumsum(torch.bincount(keys, minlength=n), 0, out=ptr[1:])
    return ptr


def _gather(ptr: Tensor, values: Tensor, nodes: Tensor) -> Tensor:
    """Concatenation of ``values[ptr[v]:ptr[v + 1]]`` for every ``v`` in ``nodes`` (vectorized)."""
    starts, ends = ptr[nodes], ptr[nodes + 1]
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return values[:0].long()
    offsets = torch.repeat_interleave(starts - (torch.cumsum(lengths, 0) - lengths), lengths)
    return values[torch.arange(total, device=ptr.device) + offsets].long()


def _bisection(other_sq: Tensor, purity: float, steps: int) -> list[tuple[float, float]]:
    """The reference's bisection on [0, 1]: every tested ``(δ, purity of δ)`` in order."""
    delta, lower, upper = 0.5, 0.0, 1.0
    tested: list[tuple[float, float]] = []
    for _ in range(steps):
        achieved = int((other_sq >= delta**2).sum()) / max(1, other_sq.numel())
        tested.append((delta, achieved))
        if achieved < purity:
            upper, delta = delta, 0.5 * (lower + delta)
        else:
            lower, delta = delta, 0.5 * (upper + delta)
    return tested


def choose_delta(other_sq: Tensor, purity: float = 0.95, steps: int = 6) -> tuple[float, float]:
    """Bisection on [0, 1] as in the reference; returns the largest tested δ whose ball purity is
    at least ``purity`` (the smallest tested δ when none is), and that δ's purity."""
    tested = _bisection(other_sq, purity, steps)
    passing = [t for t in tested if t[1] >= purity]
    return max(passing) if passing else min(tested)


#: Points whose nearest other-pseudo-label distance estimates the purity of each δ when the pool
#: is larger (the default of :class:`ProbCover`'s ``purity_sample``).
PURITY_SAMPLE = 5000


def ball_purity(rows: Tensor, cols: Tensor, labels: Tensor) -> float:
    """Fraction of the graph's balls whose members all share their center's label."""
    n = labels.numel()
    impure = torch.zeros(n, dtype=torch.bool, device=labels.device)
    impure[rows[labels[rows] != labels[cols]]] = True
    return 1.0 - int(impure.sum()) / max(1, n)


def build_cover_graph(
    features: Tensor,
    num_classes: int,
    generator: torch.Generator,
    *,
    delta: float | None = None,
    purity: float = 0.95,
    delta_steps: int = 6,
    kmeans_iters: int = 20,
    purity_sample: int = PURITY_SAMPLE,
) -> CoverGraph:
    """ProbCover's δ-ball graph on L2-normalized ``features`` (δ by bisection unless given).

    Up to ``purity_sample`` points, the bisection uses every point's exact purity (one
    upper-triangle pass), then the graph is built. Beyond, it uses a uniform sample of
    ``purity_sample`` points (drawn from ``generator`` after the k-means; their distances to all
    points: purity_sample·N·D multiply-adds instead of N²D/2), the graph of the δ it picks is
    built in the one range pass, and the pick is checked: the exact purity of every tested δ up
    to it follows from that graph's edges (a ball is impure iff an edge leaves its label), and
    the largest tested δ whose exact purity meets ``purity`` is kept (the smallest tested δ when
    none does), its graph filtered from the built one. ``purity`` of the result is exact.
    """
    x = l2_normalize(features)
    n = x.shape[0]
    if delta is not None:
        rows, cols = range_graph(x, delta)
        return CoverGraph.from_edges(rows, cols, n, delta, float("nan"))
    _, pseudo = kmeans(x, min(num_classes, n), generator, n_iter=kmeans_iters)
    if n <= purity_sample:
        delta, achieved = choose_delta(
            nearest_other_label_sq_distances(x, pseudo), purity, delta_steps
        )
        rows, cols = range_graph(x, delta)
        return CoverGraph.from_edges(rows, cols, n, delta, achieved)
    gen = device_generator(generator, torch.device("cpu"))
    sample = torch.randperm(n, generator=gen)[:purity_sample].sort().values
    tested = _bisection(
        nearest_other_label_sq_distances(x, pseudo, rows=sample), purity, delta_steps
    )
    passing = [d for d, p in tested if p >= purity]
    built = max(passing) if passing else min(tested)[0]
    rows, cols, sq = range_graph(x, built, with_sq=True)
    del x
    candidates = sorted((d for d, _ in tested if d <= built), reverse=True)
    for delta in candidates:  # largest first: the first exactly pure enough is kept
        sub = filter_range_graph(rows, cols, sq, delta) if delta < built else (rows, cols, sq)
        achieved = ball_purity(sub[0], sub[1], pseudo)
        if achieved >= purity:
            break
    return CoverGraph.from_edges(sub[0], sub[1], n, delta, achieved)


def max_coverage(
    graph: CoverGraph, labeled: Tensor, budget: int, generator: torch.Generator
) -> Tensor:
    """Greedy max coverage: ``min(budget, |U|)`` unlabeled points, random once all is covered."""
    n = graph.num_nodes
    device = graph.ptr.device
    labeled = labeled.to(device=device, dtype=torch.int64)
    available = torch.ones(n, dtype=torch.bool, device=device)
    available[labeled] = False
    budget = min(budget, int(available.sum()))
    uncovered = torch.ones(n, dtype=torch.bool, device=device)
    degree = (graph.ptr[1:] - graph.ptr[:-1]).clone()

    def cover(centers: Tensor) -> None:
        ball = _gather(graph.ptr, graph.cols, centers)
        fresh = ball[uncovered[ball]].unique()
        uncovered[fresh] = False
        degree.sub_(torch.bincount(_gather(graph.ptr_t, graph.rows_t, fresh), minlength=n))

    cover(labeled)
    selected: list[int] = []
    while len(selected) < budget:
        best = int(torch.argmax(degree))
        if int(degree[best]) == 0:  # everything is covered
            break
        selected.append(best)
        cover(torch.tensor([best], device=device))
    chosen = torch.tensor(selected, dtype=torch.int64, device=device)
    return random_fill(chosen, available.nonzero().squeeze(1), budget, generator)


@register_strategy("probcover")
class ProbCover(Strategy):
    """ProbCover selection; also an initial-pool strategy (works with no labeled points)."""

    requires_probe = False

    def __init__(
        self,
        delta: float | None = None,
        purity: float = 0.95,
        delta_steps: int = 6,
        kmeans_iters: int = 20,
        purity_sample: int = PURITY_SAMPLE,
    ) -> None:
        if delta is not None and not delta > 0:
            raise ValueError(f"probcover delta must be > 0 or None (bisection), got {delta}")
        if not 0 < purity <= 1 or delta_steps < 1 or kmeans_iters < 0 or purity_sample < 1:
            raise ValueError(
                "probcover needs 0 < purity <= 1, delta_steps >= 1, kmeans_iters >= 0, "
                f"purity_sample >= 1; got {purity}, {delta_steps}, {kmeans_iters}, {purity_sample}"
            )
        self.delta = delta
        self.purity = purity
        self.delta_steps = delta_steps
        self.kmeans_iters = kmeans_iters
        self.purity_sample = purity_sample
        self._prepared: tuple[weakref.ref[Tensor], tuple, CoverGraph] | None = None

    def prepare(self, ctx: QueryContext, generator: torch.Generator) -> None:
        """Build the δ-ball graph of ``ctx.features`` (pseudo-label k-means from ``generator``)."""
        graph = build_cover_graph(
            ctx.features,
            ctx.num_classes,
            generator,
            delta=self.delta,
            purity=self.purity,
            delta_steps=self.delta_steps,
            kmeans_iters=self.kmeans_iters,
            purity_sample=self.purity_sample,
        )
        self._prepared = (weakref.ref(ctx.features), _features_key(ctx), graph)

    def graph(self, ctx: QueryContext) -> CoverGraph:
        """The graph :meth:`prepare` built for ``ctx``'s features (the same tensor)."""
        if self._prepared is not None:
            features, key, graph = self._prepared
            if features() is ctx.features and key == _features_key(ctx):
                return graph
        raise RuntimeError(
            "probcover was not prepared for these features: call strategy.prepare(ctx, "
            "generator) once per run before querying (alfm.run does)"
        )

    def select(self, ctx: QueryContext, budget: int, generator: torch.Generator) -> Tensor:
        """``min(budget, |U|)`` indices by greedy max coverage of the prepared δ-ball graph."""
        return max_coverage(self.graph(ctx), ctx.labeled, budget, generator)


def _features_key(ctx: QueryContext) -> tuple:
    features = ctx.features
    return (tuple(features.shape), features.dtype, features.device, ctx.num_classes)
