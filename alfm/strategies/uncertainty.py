"""Uncertainty sampling from one pass of the probe: least confidence, entropy, margins.

Each scores every pool point chunk by chunk (no (N, C) array is kept) and takes the top B of U.
The reference's options, with its meaning: ``enable_dropout`` (scores from one dropout pass of the
probe instead of the clean one) and :class:`~alfm.strategies.base.RankedSelection`'s
``cluster_features``/``oversample``/``typical_features``. Before this version
``typical_features`` meant "clustered, most typical point per cluster"; that is gone (the
reference never did it).
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor

from alfm.kernels import device_generator
from alfm.strategies.base import QueryContext, RankedSelection, Strategy, register_strategy

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


class ScoreStrategy(RankedSelection, Strategy):
    """Base of strategies that rank U by a per-point score of the probe's logits."""

    def __init__(
        self,
        enable_dropout: bool = False,
        cluster_features: bool = False,
        typical_features: bool = False,
        oversample: int | None = None,
    ) -> None:
        self.enable_dropout = enable_dropout
        self._set_ranking_options(cluster_features, typical_features, oversample)

    @staticmethod
    @abc.abstractmethod
    def score(logits: Tensor) -> Tensor:
        """(n,) informativeness of each row of a logits chunk; higher is queried first."""

    def select(self, ctx: QueryContext, budget: int, generator: torch.Generator) -> Tensor:
        probe = ctx.probe
        gen = device_generator(generator, ctx.features.device) if self.enable_dropout else None
        folded = probe.folded_linear()
        scores = probe.map_chunks(
            ctx.features, lambda xc: self.score(probe.chunk_logits(xc, gen, folded=folded))
        )
        return self.select_ranked(scores, ctx, budget, generator)


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
