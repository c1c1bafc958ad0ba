"""Coreset (Sener & Savarese 2018): greedy k-center on the probe's embedding z."""

from __future__ import annotations

import torch
from torch import Tensor

from alfm.kernels import kcenter_greedy
from alfm.strategies.base import QueryContext, Strategy, register_strategy


@register_strategy("coreset")
class Coreset(Strategy):
    """Greedy k-center in z (Euclidean): start from each point's min distance to L (chunked, never
    |L|×|U| at once), then B times take the farthest point and update. With L empty the first
    center is uniform.
    """

    def select(self, ctx: QueryContext, budget: int, generator: torch.Generator) -> Tensor:
        z = ctx.probe.embed(ctx.features)
        return kcenter_greedy(z, ctx.labeled, budget, generator)
