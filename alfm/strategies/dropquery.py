"""DropQuery (Gupte et al., TMLR 2024): points whose prediction flips under input dropout,
diversified by k-means on the probe embedding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alfm.kernels import matmul_nt
from alfm.strategies.base import (
    QueryContext,
    Strategy,
    cluster_representatives,
    random_fill,
    register_strategy,
)


@register_strategy("dropquery")
class DropQuery(Strategy):
    """(1) clean pass: ŷ; (2) ``num_passes`` dropout passes (rate ``dropout``, default the probe's)
    give hard labels; (3) mismatch = passes whose label ≠ ŷ; (4) candidates: mismatch >
    ⌊M/2⌋, lowering the threshold by one while fewer than ``candidate_factor``·B qualify and it is
    > 0; (5) fewer than B candidates: all plus random fill from U; (6) else k-means (k = B) on the
    candidates' L2-normalized z, the candidate nearest each centroid. The paper pairs it with the
    centroid initial pool: that is the run's ``init`` (or the strategy entry's own ``init``), not
    a hyperparameter (an ``init`` one used to be accepted and ignored).
    """

    def __init__(
        self,
        num_passes: int = 3,
        dropout: float | None = None,
        candidate_factor: int = 25,
    ) -> None:
        if num_passes < 1:
            raise ValueError(f"num_passes must be >= 1, got {num_passes}")
        if dropout is not None and not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be None or in [0, 1), got {dropout}")
        if candidate_factor < 1:
            raise ValueError(f"candidate_factor must be >= 1, got {candidate_factor}")
        self.num_passes = num_passes
        self.dropout = dropout
        self.candidate_factor = candidate_factor

    def mismatches(self, ctx: QueryContext, generator: torch.Generator) -> Tensor:
        """(N,) number of dropout passes whose predicted class differs from the clean one."""
        probe, features = ctx.probe, ctx.features
        folded = probe.folded_linear()

        def block_mismatches(xb: Tensor, dropped: Tensor) -> Tensor:
            clean = matmul_nt(xb, *folded).argmax(dim=1)
            return (dropped.argmax(dim=2) != clean).sum(dim=0)

        total = torch.empty(features.shape[0], dtype=torch.int64, device=features.device)
        return probe.map_dropout_passes(
            features, self.num_passes, generator, block_mismatches, total, self.dropout,
            block_passes=self.num_passes + 1,
        )  # fmt: skip

    def select(self, ctx: QueryContext, budget: int, generator: torch.Generator) -> Tensor:
        unlabeled = ctx.unlabeled
        mismatch = self.mismatches(ctx, generator)[unlabeled]
        threshold = self.num_passes // 2
        target = self.candidate_factor * budget
        while int((mismatch > threshold).sum()) < target and threshold > 0:
            threshold -= 1
        candidates = unlabeled[mismatch > threshold]
        if candidates.numel() < budget:
            return random_fill(candidates, unlabeled, budget, generator)
        z = ctx.probe.embed(ctx.features, rows=candidates)
        chosen = candidates[cluster_representatives(z, None, budget, generator, overwrite=True)]
        return random_fill(chosen, candidates, budget, generator)
