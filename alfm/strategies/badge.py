"""BADGE (Ash et al. 2020): k-means++ seeding on gradient embeddings g = (p − onehot(ŷ)) ⊗ z."""

from __future__ import annotations

import torch
from torch import Tensor

from alfm.kernels import kmeans_plusplus_outer
from alfm.strategies.base import QueryContext, Strategy, register_strategy


@register_strategy("badge")
class BADGE(Strategy):
    """k-means++ D² seeding of B centers among U on the last-layer gradient embedding, which is
    never materialized (distances come from the factors, see
    :func:`alfm.kernels.kmeans_plusplus_outer`). The first center is the largest-norm gradient,
    as in the BADGE paper (the reference starts from a uniform one). z is the probe's embedding,
    what its last Linear sees, so the gradient is the last layer's with any classifier.
    """

    def select(self, ctx: QueryContext, budget: int, generator: torch.Generator) -> Tensor:
        probe = ctx.probe

        def residual(xc: Tensor) -> Tensor:
            p = probe.chunk_logits(xc).softmax(dim=1)
            rows = torch.arange(p.shape[0], device=p.device)
            p[rows, p.argmax(dim=1)] -= 1.0
            return p

        a = probe.map_chunks(ctx.features, residual)
        z = probe.embed(ctx.features)
        return kmeans_plusplus_outer(a, z, budget, generator, mask=~ctx.labeled_mask)
