"""ProbCover (Yehuda et al., NeurIPS 2022): greedy max coverage of δ-balls.

As in the DropQuery reference: on the L2-normalized raw features, pseudo-labels come from k-means
with ``k = C``; δ is found by bisection on [0, 1] (``delta_steps`` steps, starting at 0.5) so that
at least ``purity`` of the δ-balls are pure; the graph holds every pair closer than δ (self-loops
included); the points covered by L are dropped, then B times the point covering the most uncovered
points is taken and its ball marked covered.

Differences from the reference, all deliberate:
- Purity of every δ comes from one pass that finds, for each point, the distance to its nearest
  point with another pseudo-label (a ball of radius δ is pure iff that distance ≥ δ), so the
  bisection costs nothing beyond that pass and one graph build; both passes visit only the upper
  triangle of the distance matrix (symmetry), N²D/2 multiply-adds each.
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

from alfm.kernels import kmeans, l2_normalize, nearest_other_label_sq_distances, range_graph
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


def choose_delta(other_sq: Tensor, purity: float = 0.95, steps: int = 6) -> tuple[float, float]:
    """Bisection on [0, 1] as in the reference; returns the largest tested δ whose ball purity is
    at least ``purity`` (the smallest tested δ when none is), and that δ's purity."""
    delta, lower, upper = 0.5, 0.0, 1.0
    tested: list[tuple[float, float]] = []
    for _ in range(steps):
        achieved = int((other_sq >= delta**2).sum()) / max(1, other_sq.numel())
        tested.append((delta, achieved))
        if achieved < purity:
            upper, delta = delta, 0.5 * (lower + delta)
        else:
            lower, delta = delta, 0.5 * (upper + delta)
    passing = [t for t in tested if t[1] >= purity]
    return max(passing) if passing else min(tested)


def build_cover_graph(
    features: Tensor,
    num_classes: int,
    generator: torch.Generator,
    *,
    delta: float | None = None,
    purity: float = 0.95,
    delta_steps: int = 6,
    kmeans_iters: int = 20,
) -> CoverGraph:
    """ProbCover's δ-ball graph on L2-normalized ``features`` (δ by bisection unless given)."""
    x = l2_normalize(features)
    if delta is None:
        k = min(num_classes, x.shape[0])
        _, pseudo = kmeans(x, k, generator, n_iter=kmeans_iters)
        delta, achieved = choose_delta(
            nearest_other_label_sq_distances(x, pseudo), purity, delta_steps
        )
    else:
        achieved = float("nan")
    rows, cols = range_graph(x, delta)
    del x
    return CoverGraph.from_edges(rows, cols, features.shape[0], delta, achieved)


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
    ) -> None:
        if delta is not None and not delta > 0:
            raise ValueError(f"probcover delta must be > 0 or None (bisection), got {delta}")
        if not 0 < purity <= 1 or delta_steps < 1 or kmeans_iters < 0:
            raise ValueError(
                "probcover needs 0 < purity <= 1, delta_steps >= 1, kmeans_iters >= 0; got "
                f"{purity}, {delta_steps}, {kmeans_iters}"
            )
        self.delta = delta
        self.purity = purity
        self.delta_steps = delta_steps
        self.kmeans_iters = kmeans_iters
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
