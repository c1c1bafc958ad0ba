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

import math

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from alfm.kernels import CHUNK_BYTES, kmeans, knn, l2_normalize, matmul_nt
from alfm.strategies.base import QueryContext, Strategy, random_fill, register_strategy

#: Pools batched together have more than this fraction of the batch's largest pool size (the
#: padded width): padding wastes at most ~1.8× of the distance block's entries.
PAD_FILL = 0.75


def most_typical(points: Tensor, knn_size: int = 20) -> int:
    """Row of ``points`` with the highest typicality among them (ties: the first row)."""
    return int(most_typical_per_pool(points, [torch.arange(points.shape[0])], knn_size)[0])


def most_typical_per_pool(x: Tensor, pools: list[Tensor], knn_size: int = 20) -> Tensor:
    """For each pool (indices into ``x``), the member with the highest typicality within it:
    ``1 / mean squared distance to its min(knn_size, n // 2) nearest other members`` (ties: the
    first member; a single member is its own pick).

    Pools are processed together in padded batches of similar size (one batched distance block
    per batch, within :data:`~alfm.kernels.CHUNK_BYTES`), not one call per pool; a pool whose
    own distance block would exceed that goes through the chunked :func:`~alfm.kernels.knn`.
    """
    picks = torch.empty(len(pools), dtype=torch.int64, device=x.device)
    sizes = torch.tensor([p.numel() for p in pools])
    if sizes.numel() and int(sizes.min()) < 1:
        raise ValueError("every pool needs at least one point")
    order = torch.argsort(sizes, descending=True).tolist()
    budget = CHUNK_BYTES.get(x.device.type, CHUNK_BYTES["cuda"]) // 4
    start = 0
    while start < len(order) and int(sizes[order[start]]) ** 2 > budget:  # too large to pad
        pool = pools[order[start]]
        k = min(knn_size, pool.numel() // 2)
        spread = knn(x[pool], k)[0].square().mean(dim=1)  # chunked kNN
        picks[order[start]] = pool[torch.argmin(spread)]
        start += 1
    while start < len(order):
        width = int(sizes[order[start]])
        count = max(1, budget // max(1, width * (width + x.shape[1])))  # features + distances
        group = order[start : start + count]
        group = [i for i in group if sizes[i] > PAD_FILL * width] or group[:1]
        picks[group] = _most_typical_padded(x, [pools[i] for i in group], width, knn_size)
        start += len(group)
    return picks


def _most_typical_padded(x: Tensor, pools: list[Tensor], width: int, knn_size: int) -> Tensor:
    """:func:`most_typical_per_pool` for pools of at most ``width`` members, in one batch."""
    device = x.device
    index = pad_sequence([p.to(device) for p in pools], batch_first=True)  # (G, S), 0-padded
    lengths = torch.tensor([p.numel() for p in pools], device=device)
    valid = torch.arange(width, device=device) < lengths.unsqueeze(1)
    feats = x.index_select(0, index.view(-1)).float().view(len(pools), width, -1)  # (G, S, D)
    sq = torch.linalg.vector_norm(feats, dim=2).square_()
    dist = torch.empty(len(pools), width, width, device=device)
    for g in range(len(pools)):  # one oneDNN product per pool beats MKL's batched one here
        dist[g] = matmul_nt(feats[g] * -2.0, feats[g], sq[g])
    dist.add_(sq.unsqueeze(2)).clamp_min_(0.0)
    dist.masked_fill_(~valid.unsqueeze(1), math.inf)
    dist.diagonal(dim1=1, dim2=2).fill_(math.inf)
    counts = valid.sum(dim=1)
    neighbours = torch.clamp(counts // 2, max=knn_size)  # k per pool (0 for a single member)
    kmax = max(1, int(neighbours.max()))
    nearest = torch.topk(dist, min(kmax, width), dim=2, largest=False, sorted=False).values
    used = torch.arange(nearest.shape[2], device=device) < neighbours.view(-1, 1, 1)
    spread = torch.where(used, nearest, 0.0).sum(dim=2) / neighbours.clamp_min(1).view(-1, 1)
    spread.masked_fill_(~valid, math.inf)
    return index.gather(1, torch.argmin(spread, dim=1, keepdim=True)).squeeze(1)


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
        by_cluster = torch.argsort(assignment, stable=True)

        selected: list[int] = []
        while len(selected) < budget and order:
            # One sweep of the rotation: picks in one cluster never change another's pool, so
            # every cluster's most typical point is found in one batched call.
            left = by_cluster[available[by_cluster]]  # unlabeled points, grouped by cluster
            counts = torch.bincount(assignment[left], minlength=k).tolist()
            pools = dict(enumerate(torch.split(left, counts)))
            order = [c for c in order if pools[c].numel()]  # dry clusters leave the rotation
            sweep = order[: budget - len(selected)]
            if not sweep:
                break
            picks = most_typical_per_pool(x, [pools[c] for c in sweep], self.knn)
            selected += picks.tolist()
            available[picks] = False
        chosen = torch.tensor(selected, dtype=torch.int64, device=x.device)
        return random_fill(chosen, ctx.unlabeled, budget, generator)
