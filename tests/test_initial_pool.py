"""Random and centroid, the initial-pool strategies on raw features alone."""

from __future__ import annotations

import torch
from strategy_helpers import ctx_for, gen

from alfm.strategies import create_strategy, query


def test_random_is_uniform_over_unlabeled():
    x = torch.randn(6, 2)
    ctx = ctx_for(x, labeled=(1, 4))
    counts = torch.zeros(6)
    for seed in range(400):
        counts[query(create_strategy("random"), ctx, 1, gen(seed))] += 1
    assert counts[1] == 0 and counts[4] == 0
    assert ((counts[[0, 2, 3, 5]] > 60) & (counts[[0, 2, 3, 5]] < 140)).all()


def test_centroid_takes_the_point_nearest_each_centroid():
    rows = []
    for k in range(3):
        center = torch.zeros(3)
        center[k] = 5.0
        rows.append(center)
        for j in range(3):
            if j != k:
                for sign in (1.0, -1.0):
                    offset = torch.zeros(3)
                    offset[j] = 0.5 * sign
                    rows.append(center + offset)
    x = torch.stack(rows)  # clusters of 5 along e1, e2, e3; the exact axis points are 0, 5, 10
    picks = query(create_strategy("centroid"), ctx_for(x), 3, gen())
    assert sorted(picks.tolist()) == [0, 5, 10]
