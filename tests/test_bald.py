"""BALD and PowerBALD: mutual information against a direct computation, zero probabilities."""

from __future__ import annotations

import pytest
import torch
from strategy_helpers import LOGITS, ctx_for, gen, identity_probe

from alfm.probe import Probe, stacked_dropout_scales
from alfm.strategies import create_strategy, query
from alfm.strategies.bald import mutual_information
from alfm.strategies.uncertainty import entropy


def test_mutual_information_matches_direct_computation():
    x = torch.randn(30, 4, generator=gen(2)) * 3
    x[7] = 0.0  # constant logits under any dropout mask: MI exactly 0
    probe = identity_probe(4)
    mi = mutual_information(probe, x, 5, gen(3))
    passes = list(probe.dropout_pass_logits(x, 5, gen(3)).softmax(dim=2))  # the same masks
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


def test_dropout_pass_logits_are_masked_products():
    x = torch.randn(50, 6, generator=gen(4))
    probe = Probe(6, 3, dropout=0.75).eval()
    logits = probe.dropout_pass_logits(x, 7, gen(5))
    scales = stacked_dropout_scales(7, 50, 6, 0.75, gen(5), x.device)
    weight, bias = probe.folded_linear()
    assert logits.shape == (7, 50, 3)
    assert torch.allclose(logits, (x * scales) @ weight.T + bias, atol=1e-5)
    assert not torch.equal(logits[0], logits[1]), "passes need their own masks"


@pytest.mark.parametrize("rate", [0.5, 0.75, 0.875, 0.3])
def test_stacked_dropout_scales_keep_one_minus_rate(rate):
    scales = stacked_dropout_scales(20, 100, 300, rate, gen(6), torch.device("cpu"))
    assert scales.shape == (20, 100, 300)
    assert scales.unique().tolist() == pytest.approx([0.0, 1 / (1 - rate)])
    kept = (scales > 0).float().mean().item()  # 600k entries: 5 sigma < 0.004
    assert abs(kept - (1 - rate)) < 0.004
    per_pass = (scales > 0).float().mean(dim=(1, 2))
    assert not torch.equal(scales[0], scales[1]) and (per_pass - (1 - rate)).abs().max() < 0.02
