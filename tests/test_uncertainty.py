"""Least confidence, entropy and margins: scores and picks by hand, the clustering options."""

from __future__ import annotations

import math

import pytest
import torch
from strategy_helpers import LOGITS, PROBS, ctx_for, gen, identity_probe

from alfm.probe import Probe
from alfm.strategies import create_strategy, query
from alfm.strategies.bald import mutual_information
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


def ranked_pool() -> tuple[torch.Tensor, Probe]:
    """11 points whose least-confidence ranking is 0, 1, ..., 10 (most uncertain first) and whose
    L2-normalized features fall in two directions: i % 4 in (1, 2) → A, else B.

    The probe reads only feature 0 (logits = [x₀, 0]); features 1, 2 set the direction.
    """
    probe = Probe(3, 2)
    probe.norm.eps = 0.0
    with torch.no_grad():
        probe.linear.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
        probe.linear.bias.zero_()
    rows = [[0.3 * i, 100.0, 0.0] if i % 4 in (1, 2) else [0.3 * i, 0.0, 100.0] for i in range(11)]
    return torch.tensor(rows), probe.eval()


def test_typical_features_takes_the_median_centred_block():
    x, probe = ranked_pool()
    ctx = ctx_for(x, labeled=(0,), probe=probe, num_classes=2)
    # |U| = 10 ranked 1..10; the reference's start = |U| // 2 − B // 2 = 4: ranks 4, 5 → 5, 6.
    strategy = create_strategy("uncertainty", typical_features=True)
    assert sorted(query(strategy, ctx, 2, gen()).tolist()) == [5, 6]
    # With clustering (oversample 2): the 4 points from start 5 − 2 = 3 (ranks 3..6 → 4, 5, 6, 7),
    # clustered into 2 clusters: one point of A ∩ block = {5, 6}, one of B ∩ block = {4, 7}.
    strategy = create_strategy(
        "uncertainty", typical_features=True, cluster_features=True, oversample=2
    )
    picks = set(query(strategy, ctx, 2, gen()).tolist())
    assert len(picks & {5, 6}) == 1 and len(picks & {4, 7}) == 1


def test_cluster_features_picks_one_point_per_cluster_of_the_top_block():
    x, probe = ranked_pool()
    ctx = ctx_for(x, labeled=(0,), probe=probe, num_classes=2)
    # Top oversample·B = 4: points 1, 2 (A) and 3, 4 (B); one per cluster.
    strategy = create_strategy("uncertainty", cluster_features=True, oversample=2)
    picks = set(query(strategy, ctx, 2, gen()).tolist())
    assert len(picks & {1, 2}) == 1 and len(picks & {3, 4}) == 1
    assert sorted(query(create_strategy("uncertainty"), ctx, 2, gen()).tolist()) == [1, 2]


def test_cluster_features_returns_distinct_points_of_the_top_candidates():
    x = torch.randn(400, 4, generator=gen(1)) * 2
    ctx = ctx_for(x, labeled=(0, 1), probe=identity_probe(4))
    scores = entropy_score(x)
    scores[[0, 1]] = -math.inf
    top = set(torch.topk(scores, 5 * 10).indices.tolist())
    picks = query(create_strategy("entropy", cluster_features=True, oversample=10), ctx, 5, gen())
    assert set(picks.tolist()) <= top and picks.unique().numel() == 5
    default = create_strategy("entropy", cluster_features=True)  # oversample 50: 250 candidates
    assert default.block_size(5, 398) == 250 and default.block_size(5, 100) == 100


def test_enable_dropout_scores_one_dropout_pass():
    x = torch.randn(300, 4, generator=gen(2))
    probe = identity_probe(4)
    ctx = ctx_for(x, labeled=(0,), probe=probe)
    dropped = least_confidence(probe.chunk_logits(x, gen(7)))
    dropped[0] = -math.inf
    expected = torch.topk(dropped, 3).indices
    picks = query(create_strategy("uncertainty", enable_dropout=True), ctx, 3, gen(7))
    assert sorted(picks.tolist()) == sorted(expected.tolist())
    clean = query(create_strategy("uncertainty"), ctx, 3, gen(7))
    assert sorted(picks.tolist()) != sorted(clean.tolist())


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("margins", {"oversample": 10}, "oversample=10 only applies with cluster_features"),
        ("bald", {"typical_features": True, "oversample": 5}, "only applies with cluster"),
        ("entropy", {"cluster_features": True, "oversample": 1}, "oversample must be >= 2"),
        ("bald", {"enable_dropout": True}, "unknown hyperparameter 'enable_dropout'"),
        ("powerbald", {"cluster_features": True}, "unknown hyperparameter 'cluster_features'"),
        ("uncertainty", {"oversample": 2.5}, r"'oversample' must be int or None"),
    ],
)
def test_inert_or_invalid_options_are_errors(name, params, match):
    with pytest.raises(ValueError, match=match):
        create_strategy(name, **params)


def test_bald_takes_the_ranking_options():
    bald = create_strategy("bald", num_passes=4, cluster_features=True, typical_features=True)
    assert bald.get_params() == {
        "num_passes": 4,
        "cluster_features": True,
        "typical_features": True,
        "oversample": None,
    }
    x = torch.randn(300, 4, generator=gen(3))
    ctx = ctx_for(x, labeled=(0,), probe=identity_probe(4))
    assert query(bald, ctx, 4, gen()).unique().numel() == 4
    # typical alone: the 4 points of the MI ranking of U from position 299 // 2 − 2 = 147.
    scores = mutual_information(ctx.probe, x, 4, gen(5))[1:]
    order = torch.sort(scores, descending=True, stable=True).indices + 1
    typical = create_strategy("bald", num_passes=4, typical_features=True)
    assert sorted(query(typical, ctx, 4, gen(5)).tolist()) == sorted(order[147:151].tolist())
