"""Strategies on raw features alone (usable for the initial pool): random and centroid."""

from __future__ import annotations

import torch
from torch import Tensor

from alfm.kernels import device_generator
from alfm.strategies.base import (
    QueryContext,
    Strategy,
    cluster_representatives,
    random_fill,
    register_strategy,
)


@register_strategy("random")
class RandomStrategy(Strategy):
    """Uniformly random unlabeled points, without replacement."""

    requires_probe = False

    def select(self, ctx: QueryContext, budget: int, generator: torch.Generator) -> Tensor:
        unlabeled = ctx.unlabeled.cpu()
        gen = device_generator(generator, torch.device("cpu"))
        return unlabeled[torch.randperm(unlabeled.numel(), generator=gen)[:budget]]


@register_strategy("centroid")
class CentroidStrategy(Strategy):
    """DropQuery's initial pool: k-means (k = budget) on L2-normalized raw features of U, then the
    point nearest each centroid; collapsed clusters are filled at random.
    """

    requires_probe = False

    def select(self, ctx: QueryContext, budget: int, generator: torch.Generator) -> Tensor:
        unlabeled = ctx.unlabeled
        chosen = cluster_representatives(ctx.features, unlabeled, budget, generator)
        return random_fill(chosen, unlabeled, budget, generator)
