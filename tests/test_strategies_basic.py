"""Hand-computed cases for random, centroid, uncertainty/entropy/margins, BALD/PowerBALD, coreset,
BADGE and DropQuery, plus the registry's and ``query``'s errors on bad input.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

from alfm.kernels import d2_sampling, outer_sq_distances
from alfm.probe import Probe, ProbeConfig, keep_mask, train_probe
from alfm.strategies import QueryContext, create_strategy, query
from alfm.strategies.bald import mutual_information
from alfm.strategies.dropquery import DropQuery
from alfm.strategies.uncertainty import entropy, entropy_score, least_confidence, margin_score


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def identity_probe(dim: int, dropout: float = 0.75) -> Probe:
    """A probe with z = x and logits = x (BatchNorm mean 0, var 1, eps 0; identity weights)."""
    probe = Probe(dim, dim, dropout)
    probe.norm.eps = 0.0
    with torch.no_grad():
        probe.linear.weight.copy_(torch.eye(dim))
        probe.linear.bias.zero_()
    return probe.eval()


def ctx_for(x: Tensor, labeled=(), probe=None, num_classes: int = 4) -> QueryContext:
    idx = torch.tensor(labeled, dtype=torch.int64)
    return QueryContext(x, idx, torch.zeros(len(idx), dtype=torch.int64), num_classes, probe)


# Rows are log-probabilities (log 0 → −1e4, whose softmax is exactly 0 in float32).
PROBS = torch.tensor(
    [
        [0.97, 0.01, 0.01, 0.01],  # 0 confident (labeled)
        [0.34, 0.33, 0.33, 0.00],  # 1 lowest max p
        [0.40, 0.20, 0.20, 0.20],  # 2 highest entropy
        [0.50, 0.50, 0.00, 0.00],  # 3 smallest margin
        [0.90, 0.05, 0.05, 0.00],  # 4
        [0.70, 0.10, 0.10, 0.10],  # 5
    ]
)
LOGITS = PROBS.clamp_min(1e-30).log().clamp_min(-1e4)


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


# --- DropQuery ----------------------------------------------------------------------------------


class FixedMismatch(DropQuery):
    """DropQuery with prescribed mismatch counts, to pin the candidate rule."""

    def __init__(self, counts: Tensor, **params) -> None:
        super().__init__(**params)
        self.counts = counts

    def mismatches(self, ctx: QueryContext, generator: torch.Generator) -> Tensor:
        return self.counts


def dropquery_pool(n: int = 200) -> QueryContext:
    x = torch.randn(n, 4, generator=gen(8))
    return ctx_for(x, labeled=(n - 1,), probe=identity_probe(4))


def test_dropquery_mismatch_counts_by_hand():
    x = torch.tensor([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]] * 10)
    ctx = ctx_for(x, probe=identity_probe(4))
    counts = DropQuery(num_passes=5).mismatches(ctx, gen(9))
    # Row type A predicts class 1; when its only non-zero input is dropped all logits tie and
    # argmax gives class 0: a mismatch. Row type B predicts class 0 either way: never.
    g = gen(9)
    cpu = torch.device("cpu")
    dropped = torch.stack([~keep_mask((20, 4), 0.75, g, cpu) for _ in range(5)])
    assert counts[0::2].tolist() == dropped[:, 0::2, 1].sum(dim=0).tolist()
    assert (counts[1::2] == 0).all()
    assert (DropQuery(dropout=0.0).mismatches(ctx, gen()) == 0).all()


def test_dropquery_keeps_strict_threshold_when_enough_candidates():
    counts = torch.zeros(200, dtype=torch.int64)
    counts[:60] = 2
    counts[60:] = 1
    picks = query(FixedMismatch(counts), dropquery_pool(), 2, gen())
    assert set(picks.tolist()) <= set(range(60))  # 60 ≥ 25·2 points with mismatch > 1


def test_dropquery_relaxes_threshold_to_one():
    ctx = dropquery_pool()
    ctx.features[:10] = torch.tensor([5.0, 0.0, 0.0, 0.0])  # mismatch 2: all one point P
    ctx.features[10:55] = torch.tensor([0.0, 5.0, 0.0, 0.0])  # mismatch 1: all one point Q
    counts = torch.zeros(200, dtype=torch.int64)
    counts[:10] = 2
    counts[10:55] = 1
    picks = query(FixedMismatch(counts), ctx, 2, gen())
    # Only 10 < 50 points have mismatch > 1, so mismatch ≥ 1 qualifies: one pick per point type.
    assert sorted(p // 10 > 0 for p in picks.tolist()) == [False, True]
    assert set(picks.tolist()) <= set(range(55))
    strict = query(FixedMismatch(counts, candidate_factor=5), ctx, 2, gen())
    assert set(strict.tolist()) <= set(range(10))  # 10 ≥ 5·2: no relaxation


def test_dropquery_random_fill_when_too_few_candidates():
    counts = torch.zeros(200, dtype=torch.int64)
    counts[17] = 3
    ctx = dropquery_pool()
    picks = query(FixedMismatch(counts), ctx, 4, gen(3))
    assert picks[0] == 17 and picks.unique().numel() == 4 and 199 not in picks.tolist()
    assert torch.equal(picks, query(FixedMismatch(counts), ctx, 4, gen(3)))
    assert not torch.equal(picks, query(FixedMismatch(counts), ctx, 4, gen(4)))
    none = query(FixedMismatch(torch.zeros(200, dtype=torch.int64)), ctx, 3, gen())
    assert none.unique().numel() == 3


def test_dropquery_parameters():
    strategy = create_strategy("dropquery", num_passes=5, dropout=0.5, candidate_factor=10)
    assert strategy.get_params() == {
        "num_passes": 5,
        "dropout": 0.5,
        "candidate_factor": 10,
        "init": "centroid",
    }
    with pytest.raises(ValueError, match="dropout"):
        create_strategy("dropquery", dropout=1.5)


# --- errors -------------------------------------------------------------------------------------


def test_unknown_strategy_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown strategy 'entropi'.*'entropy'.*badge.*random"):
        create_strategy("entropi")


def test_misspelled_hyperparameter_is_named():
    with pytest.raises(ValueError, match=r"'num_pases'.*Did you mean 'num_passes'.*Valid"):
        create_strategy("bald", num_pases=3)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_features(bad):
    x = torch.randn(10, 3)
    x[6, 1] = bad
    with pytest.raises(ValueError, match="NaN or infinite.*row: 6"):
        query(create_strategy("random"), ctx_for(x), 2, gen())


@pytest.mark.parametrize("budget", [0, -3, 2.5, True, "3"])
def test_bad_budget(budget):
    with pytest.raises(ValueError, match="budget must be an integer >= 1"):
        query(create_strategy("random"), ctx_for(torch.randn(10, 3)), budget, gen())


@pytest.mark.parametrize(
    ("labeled", "match"),
    [((3, 10), "out of range"), ((-1,), "out of range"), ((2, 5, 2), r"repeated: \[2\]")],
)
def test_bad_labeled_indices(labeled, match):
    with pytest.raises(ValueError, match=match):
        query(create_strategy("random"), ctx_for(torch.randn(10, 3), labeled=labeled), 2, gen())


def test_numpy_integer_budget_is_accepted():
    picks = query(create_strategy("random"), ctx_for(torch.randn(10, 3)), np.int64(3), gen())
    assert picks.numel() == 3


def test_labels_must_match_labeled():
    ctx = QueryContext(torch.randn(10, 3), torch.tensor([1, 2]), torch.tensor([0]), 2)
    with pytest.raises(ValueError, match="labels must match"):
        query(create_strategy("random"), ctx, 2, gen())
    ctx = QueryContext(torch.randn(10, 3), torch.tensor([1, 2]), torch.tensor([0, 5]), 2)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        query(create_strategy("random"), ctx, 2, gen())
