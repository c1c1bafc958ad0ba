"""Coreset and BADGE: k-center on a line, BADGE against materialized gradient embeddings."""

from __future__ import annotations

import torch
from strategy_helpers import ctx_for, gen, identity_probe

from alfm.kernels import d2_sampling, outer_sq_distances
from alfm.probe import ProbeConfig, train_probe
from alfm.strategies import create_strategy, query


def test_coreset_on_a_line():
    line = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0], [11.0], [20.0]])
    ctx = ctx_for(line, labeled=(0,), probe=identity_probe(1), num_classes=1)
    assert query(create_strategy("coreset"), ctx, 3, gen()).tolist() == [6, 4, 3]


def test_badge_equals_materialized_kmeans_plusplus():
    x = torch.randn(150, 5, generator=gen(6))
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    labeled = tuple(range(0, 150, 10))
    probe = train_probe(x[list(labeled)], y[list(labeled)], 3, ProbeConfig(max_epochs=30), gen())
    ctx = ctx_for(x, labeled=labeled, probe=probe, num_classes=3)
    picks = query(create_strategy("badge"), ctx, 6, gen(7))

    p = probe.predict_proba(x)
    a = p - torch.nn.functional.one_hot(p.argmax(dim=1), 3)
    z = probe.embed(x)
    g = (a.unsqueeze(2) * z.unsqueeze(1)).reshape(150, -1)  # materialized gradient embeddings
    taken = torch.zeros(150, dtype=torch.bool)
    taken[list(labeled)] = True
    first = int(g.norm(dim=1).masked_fill(taken, -1).argmax())
    assert torch.allclose(
        outer_sq_distances(a, z, first), (g - g[first]).square().sum(1), atol=1e-4
    )

    def materialized(rows, centers):  # the same sampler on the materialized embeddings
        return torch.cdist(g[rows], g[centers]).square()

    mask = ~taken
    ref = d2_sampling(150, 6, materialized, gen(7), torch.device("cpu"), first=first, mask=mask)
    assert picks.tolist() == ref.tolist()
