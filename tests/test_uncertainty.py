"""Least confidence, entropy and margins: scores and picks by hand, the clustering options."""

from __future__ import annotations

import math

import pytest
import torch
from strategy_helpers import LOGITS, PROBS, ctx_for, gen, identity_probe

from alfm.strategies import create_strategy, query
from alfm.strategies.uncertainty import entropy, entropy_score, least_confidence, margin_score


def test_scores_by_hand():
    h = entropy(PROBS)
    expected = [-sum(p * math.log(p) for p in row if p > 0) for row in PROBS.tolist()]
    assert torch.allclose(h, torch.tensor(expected), atol=1e-5) and torch.isfinite(h).all()
    assert torch.allclose(entropy_score(LOGITS), h, atol=1e-5)
    assert torch.allclose(least_confidence(LOGITS), 1 - PROBS.max(dim=1).values, atol=1e-6)
    top2 = PROBS.topk(2, dim=1).values
    assert torch.allclose(margin_score(LOGITS), top2[:, 1] - top2[:, 0], atol=1e-6)
    assert torch.equal(margin_score(torch.zeros(3, 1)), -torch.ones(3))  # one class: p₂ = 0


@pytest.mark.parametrize(
    ("name", "expected"),
    [("uncertainty", [1, 2]), ("entropy", [2, 1]), ("margins", [3, 1])],
)
def test_uncertainty_family_picks_known_points(name, expected):
    ctx = ctx_for(LOGITS, labeled=(0,), probe=identity_probe(4))
    assert query(create_strategy(name), ctx, 2, gen()).tolist() == expected


@pytest.mark.parametrize("option", ["cluster_features", "typical_features"])
def test_cluster_and_typical_options_stay_within_top_candidates(option):
    x = torch.randn(400, 4, generator=gen(1)) * 2
    probe = identity_probe(4)
    ctx = ctx_for(x, labeled=(0, 1), probe=probe)
    scores = entropy_score(x)
    scores[[0, 1]] = -math.inf
    top = set(torch.topk(scores, 2 * 10).indices.tolist())
    strategy = create_strategy("entropy", candidate_factor=10, **{option: True})
    picks = query(strategy, ctx, 2, gen())
    assert set(picks.tolist()) <= top and picks.unique().numel() == 2
    with pytest.raises(ValueError, match="at most one"):
        create_strategy("margins", cluster_features=True, typical_features=True)
