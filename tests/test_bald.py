"""BALD and PowerBALD: mutual information against a direct computation, zero probabilities."""

from __future__ import annotations

import torch
from strategy_helpers import LOGITS, ctx_for, gen, identity_probe

from alfm.strategies import create_strategy, query
from alfm.strategies.bald import mutual_information
from alfm.strategies.uncertainty import entropy


def test_mutual_information_matches_direct_computation():
    x = torch.randn(30, 4, generator=gen(2)) * 3
    x[7] = 0.0  # constant logits under any dropout mask: MI exactly 0
    probe = identity_probe(4)
    mi = mutual_information(probe, x, 5, gen(3))
    g = gen(3)
    passes = [probe.dropout_logits(x, g).softmax(dim=1) for _ in range(5)]
    mean = torch.stack(passes).mean(dim=0)
    direct = entropy(mean) - torch.stack([entropy(p) for p in passes]).mean(dim=0)
    assert torch.allclose(mi, direct.clamp_min(0), atol=1e-5)
    assert mi[7] == 0 and (mi >= 0).all()
    assert torch.equal(mutual_information(probe, x, 1, gen()), torch.zeros(30))


def test_bald_and_powerbald_with_zero_probabilities():
    x = torch.zeros(20, 4)
    x[3] = torch.tensor([2.0, 1.9, -1e4, -1e4])  # dropout flips its prediction; zeros elsewhere
    x[5] = LOGITS[3]
    ctx = ctx_for(x, labeled=(0,), probe=identity_probe(4))
    mi = mutual_information(ctx.probe, x, 20, gen())
    assert torch.isfinite(mi).all() and mi[3] > 0 and (mi[[1, 2, 4]] == 0).all()
    assert query(create_strategy("bald"), ctx, 1, gen()).tolist() == [int(mi.argmax())]
    # PowerBALD: every other point has s clamped to 1e-12 (log ≈ −27.6): Gumbel noise cannot win.
    picks = query(create_strategy("powerbald"), ctx, 2, gen(5))
    assert 3 in picks.tolist() and picks.unique().numel() == 2
