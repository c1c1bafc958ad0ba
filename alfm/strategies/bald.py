"""BALD and PowerBALD: mutual information between predictions and probe weights, estimated with
dropout passes of the probe (Gal et al. 2017; Kirsch et al. 2023 for the power/Gumbel variant).
"""

from __future__ import annotations

import torch
from torch import Tensor

from alfm.kernels import device_generator
from alfm.probe import Probe
from alfm.strategies.base import (
    QueryContext,
    RankedSelection,
    Strategy,
    register_strategy,
    top_unlabeled,
)
from alfm.strategies.uncertainty import EPS, entropy


def mutual_information(
    probe: Probe, features: Tensor, num_passes: int, generator: torch.Generator
) -> Tensor:
    """(N,) BALD score ``H(mean p) − mean H(p)`` over ``num_passes`` dropout passes, ≥ 0.

    The passes of a cache-sized block of rows run as one matrix product and are reduced at once
    (:meth:`~alfm.probe.Probe.map_dropout_passes`), so memory is O(block · passes · C): nothing
    of size passes × N × C is ever stored.
    """

    def block_mi(xb: Tensor, logits: Tensor) -> Tensor:
        p = logits.softmax(dim=2)
        pass_entropy = entropy(p.view(-1, p.shape[2])).view(num_passes, -1)
        return (entropy(p.mean(dim=0)) - pass_entropy.mean(dim=0)).clamp_min_(0.0)

    scores = torch.empty(features.shape[0], device=features.device)
    return probe.map_dropout_passes(features, num_passes, generator, block_mi, scores)


class _MutualInformation(Strategy):
    def __init__(self, num_passes: int = 20) -> None:
        if num_passes < 1:
            raise ValueError(f"num_passes must be >= 1, got {num_passes}")
        self.num_passes = num_passes


@register_strategy("bald")
class BALD(RankedSelection, _MutualInformation):
    """Top B of U by mutual information over ``num_passes`` dropout passes, or the reference's
    ``cluster_features``/``oversample``/``typical_features`` selection of that ranking
    (:class:`~alfm.strategies.base.RankedSelection`). No ``enable_dropout``: BALD's passes always
    use dropout. PowerBALD has none of these options (nor has the reference's): its ranking is
    already randomized.
    """

    def __init__(
        self,
        num_passes: int = 20,
        cluster_features: bool = False,
        typical_features: bool = False,
        oversample: int | None = None,
    ) -> None:
        super().__init__(num_passes)
        self._set_ranking_options(cluster_features, typical_features, oversample)

    def select(self, ctx: QueryContext, budget: int, generator: torch.Generator) -> Tensor:
        scores = mutual_information(ctx.probe, ctx.features, self.num_passes, generator)
        return self.select_ranked(scores, ctx, budget, generator)


@register_strategy("powerbald")
class PowerBALD(_MutualInformation):
    """Top B of ``beta · log(s) + Gumbel(0, 1)`` (sampling ∝ s^beta without replacement), with the
    mutual information s clamped above zero.
    """

    def __init__(self, num_passes: int = 20, beta: float = 1.0) -> None:
        super().__init__(num_passes)
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.beta = beta

    def select(self, ctx: QueryContext, budget: int, generator: torch.Generator) -> Tensor:
        scores = mutual_information(ctx.probe, ctx.features, self.num_passes, generator)
        gen = device_generator(generator, scores.device)
        u = torch.rand(scores.shape, generator=gen, device=scores.device).clamp_(EPS, 1.0 - 1e-7)
        gumbel = -torch.log(-torch.log(u))
        return top_unlabeled(self.beta * scores.clamp_min(EPS).log() + gumbel, ctx, budget)
