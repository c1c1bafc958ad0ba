"""TypiClust (Hacohen et al., ICML 2022): the most typical point of the least-covered clusters.

As in the DropQuery reference (and the original TypiClust code): k-means with
``k = min(|L| + B, max_clusters)`` on the L2-normalized raw features; clusters with at most
``min_cluster_size`` points are dropped; the rest are visited round robin, fewest labeled points
first, then largest; in each visit the cluster's remaining unlabeled point with the highest
typicality is taken. Typicality is ``1 / mean squared distance to the min(knn, n // 2) nearest
neighbours`` among the cluster's remaining unlabeled points (squared, as faiss' ``IndexFlatL2`` in
both reference implementations). FIX: the reference returns fewer than B points when clusters
run dry; here an exhausted cluster leaves the rotation and, once every cluster is exhausted, the
rest is filled uniformly at random, so exactly ``min(B, |U|)`` points come back.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alfm.kernels import kmeans, knn, l2_normalize
from alfm.strategies.base import QueryContext, Strategy, random_fill, register_strategy


def most_typical(points: Tensor, knn_size: int = 20) -> int:
    """Row of ``points`` with the highest typicality among them (ties: the first row)."""
    n = points.shape[0]
    k = min(knn_size, n // 2)
    if k < 1:  # a single point
        return 0
    dist, _ = knn(points, k)
    return int(torch.argmin(dist.square().mean(dim=1)))


def cluster_visit_order(assignment: Tensor, labeled: Tensor, k: int, min_size: int) -> list[int]:
    """Cluster ids with more than ``min_size`` points, fewest labeled first, then largest."""
    sizes = torch.bincount(assignment, minlength=k).cpu()
    covered = torch.bincount(assignment[labeled], minlength=k).cpu()
    ids = [c for c in range(k) if sizes[c] > min_size]
    return sorted(ids, key=lambda c: (int(covered[c]), -int(sizes[c]), c))


@register_strategy("typiclust")
class Typiclust(Strategy):
    """TypiClust selection; also an initial-pool strategy (works with no labeled points)."""

    requires_probe = False

    def __init__(
        self,
        max_clusters: int = 500,
        min_cluster_size: int = 5,
        knn: int = 20,
        kmeans_iters: int = 20,
    ) -> None:
        if max_clusters < 1 or min_cluster_size < 0 or knn < 1 or kmeans_iters < 0:
            raise ValueError(
                "typiclust needs max_clusters >= 1, min_cluster_size >= 0, knn >= 1, "
                f"kmeans_iters >= 0; got {max_clusters}, {min_cluster_size}, {knn}, {kmeans_iters}"
            )
        self.max_clusters = max_clusters
        self.min_cluster_size = min_cluster_size
        self.knn = knn
        self.kmeans_iters = kmeans_iters

    def select(self, ctx: QueryContext, budget: int, generator: torch.Generator) -> Tensor:
        """``min(budget, |U|)`` indices, round robin over clusters by typicality."""
        x = l2_normalize(ctx.features)
        n = x.shape[0]
        labeled = ctx.labeled.to(device=x.device, dtype=torch.int64)
        budget = min(budget, n - labeled.numel())
        k = min(labeled.numel() + budget, self.max_clusters, n)
        _, assignment = kmeans(x, k, generator, n_iter=self.kmeans_iters)
        order = cluster_visit_order(assignment, labeled, k, self.min_cluster_size)

        available = torch.ones(n, dtype=torch.bool, device=x.device)
        available[labeled] = False
        sorted_idx = torch.argsort(assignment, stable=True)
        bounds = torch.bincount(assignment, minlength=k).cumsum(0).tolist()
        members = {c: sorted_idx[(bounds[c - 1] if c else 0) : bounds[c]] for c in order}

        selected: list[int] = []
        turn = 0
        while len(selected) < budget and order:
            turn %= len(order)
            cluster = members[order[turn]]
            pool = cluster[available[cluster]]
            if pool.numel() == 0:
                del order[turn]  # dry: leave the rotation, the next cluster takes this turn
                continue
            pick = int(pool[most_typical(x[pool], self.knn)])
            selected.append(pick)
            available[pick] = False
            turn += 1
        chosen = torch.tensor(selected, dtype=torch.int64, device=x.device)
        return random_fill(chosen, ctx.unlabeled, budget, generator)
