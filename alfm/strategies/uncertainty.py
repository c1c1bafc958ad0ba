"""Uncertainty sampling from one clean pass of the probe: least confidence, entropy, margins.

Each scores every pool point chunk by chunk (no (N, C) array is kept) and takes the top B of U.
Options kept from the reference: ``cluster_features`` (take the top ``candidate_factor``·B, cluster
them into B k-means clusters on L2-normalized raw features, take the candidate nearest each
centroid) and ``typical_features`` (the same clusters, but take the most typical candidate of each
cluster: highest 1 / mean distance to its ``min(20, n//2)`` nearest candidates).
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor

from alfm.kernels import argmin_per_group, kmeans, knn, l2_normalize
from alfm.strategies.base import QueryContext, Strategy, register_strategy, top_unlabeled

#: Probabilities are clamped to at least this before taking logs (no NaN for p = 0).
EPS = 1e-12


def entropy(probs: Tensor) -> Tensor:
    """Row-wise Shannon entropy ``−Σ p log p`` in nats, finite for zero probabilities."""
    return -(probs * probs.clamp_min(EPS).log()).sum(dim=1)


def least_confidence(logits: Tensor) -> Tensor:
    """``1 − max p``: higher is more uncertain."""
    return 1.0 - logits.softmax(dim=1).amax(dim=1)


def entropy_score(logits: Tensor) -> Tensor:
    """Predictive entropy of the softmax of ``logits``."""
    return entropy(logits.softmax(dim=1))


def margin_score(logits: Tensor) -> Tensor:
    """``−(p₁ − p₂)``: negated gap between the two largest probabilities (p₂ = 0 when C = 1)."""
    probs = logits.softmax(dim=1)
    if probs.shape[1] == 1:
        return -probs[:, 0]
    top = torch.topk(probs, 2, dim=1).values
    return top[:, 1] - top[:, 0]


class ScoreStrategy(Strategy):
    """Base of strategies that rank U by a per-point score of the probe's clean logits."""

    def __init__(
        self,
        cluster_features: bool = False,
        typical_features: bool = False,
        candidate_factor: int = 50,
    ) -> None:
        if cluster_features and typical_features:
            raise ValueError("choose at most one of cluster_features and typical_features")
        if candidate_factor < 1:
            raise ValueError(f"candidate_factor must be >= 1, got {candidate_factor}")
        self.cluster_features = cluster_features
        self.typical_features = typical_features
        self.candidate_factor = candidate_factor

    @staticmethod
    @abc.abstractmethod
    def score(logits: Tensor) -> Tensor:
        """(n,) informativeness of each row of a logits chunk; higher is queried first."""

    def select(self, ctx: QueryContext, budget: int, generator: torch.Generator) -> Tensor:
        scores = ctx.probe.map_chunks(
            ctx.features, lambda xc: self.score(ctx.probe.chunk_logits(xc))
        )
        if not (self.cluster_features or self.typical_features):
            return top_unlabeled(scores, ctx, budget)
        num_unlabeled = ctx.num_samples - ctx.labeled.numel()
        ranked = top_unlabeled(scores, ctx, min(self.candidate_factor * budget, num_unlabeled))
        x = l2_normalize(ctx.features[ranked])
        centroids, assignment = kmeans(x, budget, generator)
        if self.typical_features and x.shape[0] >= 2:
            dist, _ = knn(x, max(1, min(20, x.shape[0] // 2)))
            value = dist.mean(dim=1)  # lowest mean distance = most typical
        else:
            value = (x - centroids[assignment]).square_().sum(dim=1)
        chosen = argmin_per_group(value, assignment)
        # Collapsed clusters (duplicate points): fill with the next best-scored candidates.
        rest = torch.ones(ranked.numel(), dtype=torch.bool, device=ranked.device)
        rest[chosen] = False
        fill = rest.nonzero().squeeze(1)[: budget - chosen.numel()]
        return ranked[torch.cat([chosen, fill])]


@register_strategy("uncertainty")
class LeastConfidence(ScoreStrategy):
    """Least confidence: lowest max p."""

    score = staticmethod(least_confidence)


@register_strategy("entropy")
class Entropy(ScoreStrategy):
    """Highest predictive entropy (p clamped, so no NaN)."""

    score = staticmethod(entropy_score)


@register_strategy("margins")
class Margins(ScoreStrategy):
    """Smallest margin between the two most probable classes."""

    score = staticmethod(margin_score)
