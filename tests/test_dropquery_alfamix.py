"""DropQuery and Alfa-Mix: hand-computed mismatch counts, candidate rules, anchors and flips."""

from __future__ import annotations

import math

import pytest
import torch
from strategy_helpers import LinearProbe, assert_valid, blobs, context, ctx_for, gen, identity_probe
from torch import Tensor, nn

from alfm.probe import stacked_dropout_scales
from alfm.strategies import QueryContext, create_strategy, query
from alfm.strategies.alfamix import AlfaMix, class_anchors, prediction_flips
from alfm.strategies.dropquery import DropQuery


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
    dropped = stacked_dropout_scales(5, 20, 4, 0.75, g, cpu) == 0  # the masks of the 5 passes
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
    }
    with pytest.raises(
        ValueError,
        match="'init' is not a hyperparameter of strategy 'dropquery'.*run-level key 'init'",
    ):
        create_strategy("dropquery", init="centroid")
    with pytest.raises(ValueError, match="dropout"):
        create_strategy("dropquery", dropout=1.5)


def test_alfamix_anchors_for_missing_classes_are_the_labeled_mean_not_nan():
    z = torch.tensor([[0.0, 2.0], [2.0, 0.0], [4.0, 4.0]])
    anchors = class_anchors(z, torch.tensor([0, 0, 2]), num_classes=4)
    overall = z.mean(dim=0)
    assert torch.isfinite(anchors).all()
    torch.testing.assert_close(anchors[0], torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(anchors[2], torch.tensor([4.0, 4.0]))
    torch.testing.assert_close(anchors[1], overall)
    torch.testing.assert_close(anchors[3], overall)


def test_alfamix_flip_hand_case():
    # logits = z, z = (0.1, 0): ŷ = 0, p = softmax(0.1, 0); g = p − e0 ∝ (−1, 1); ε = 0.2/√2.
    # The mix with an anchor at distance d is z + ε d ĝ = (0.1 − 0.1 d, 0.1 d): flips iff d > 0.5.
    linear = LinearProbe([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0]).linear
    z = torch.tensor([[0.1, 0.0]])
    eps = 0.2 / math.sqrt(2)
    assert not prediction_flips(z, torch.tensor([[0.1, 0.4]]), linear, eps).item()
    assert prediction_flips(z, torch.tensor([[0.1, 0.6]]), linear, eps).item()
    # the farthest anchor decides, wherever it sits
    assert prediction_flips(z, torch.tensor([[0.1, 0.4], [0.1, -0.6]]), linear, eps).item()
    # a confident point (zero gradient in float32) never moves
    assert not prediction_flips(
        torch.tensor([[200.0, 0.0]]), torch.tensor([[0.0, 9.0]]), linear, eps
    )


def test_alfamix_flips_equal_the_materialized_per_anchor_interpolation():
    g = gen(3)
    z = torch.randn(400, 5, generator=g)
    anchors = torch.randn(3, 5, generator=g) * 2
    linear = nn.Linear(5, 3)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(3, 5, generator=g))
        linear.bias.copy_(torch.randn(3, generator=g))
    eps = 0.2 / math.sqrt(5)
    with torch.no_grad():
        fast = prediction_flips(z, anchors, linear, eps)
    # the reference: per anchor, the per-dimension closed-form α, then lerp and predict
    z_var = z.clone().requires_grad_(True)
    logits = linear(z_var)
    pred = logits.argmax(dim=1)
    loss = nn.functional.cross_entropy(logits, pred, reduction="sum")
    grad = torch.autograd.grad(loss, z_var)[0]
    slow = torch.zeros(400, dtype=torch.bool)
    with torch.no_grad():
        for anchor in anchors:
            diff = anchor - z
            alpha = (
                eps
                * diff.norm(dim=1, keepdim=True)
                * grad
                / (grad.norm(dim=1, keepdim=True) * diff)
            )
            slow |= linear(alpha * anchor + (1 - alpha) * z).argmax(dim=1) != pred
    assert 20 < int(fast.sum()) < 380
    assert torch.equal(fast, slow)


def test_alfamix_select_with_missing_classes_and_few_candidates():
    # 1-D pool, logits = (x, −x): points near 0 are uncertain. Labeled: only class 0 at x = 3.
    x = torch.tensor([[3.0], [0.05], [-0.02], [2.0], [4.0], [5.0], [6.0]])
    probe = LinearProbe([[1.0], [-1.0]], [0.0, 0.0])
    ctx = context(x, [0], [0, 0, 1, 0, 0, 0, 0], num_classes=5, probe=probe)
    strategy = AlfaMix(eps=0.2)
    # ε = 0.2, every anchor is 3; the mix moves x by ε |3 − x| towards 0 and flips iff that step
    # exceeds |x|: only x = 0.05 and x = −0.02
    assert strategy.candidates(ctx).tolist() == [1, 2]
    chosen = strategy.select(ctx, 4, gen(1))
    assert_valid(chosen, 7, [0], 4)
    assert chosen[:2].tolist() == [1, 2]  # all candidates, then random fill
    assert torch.equal(chosen, strategy.select(ctx, 4, gen(1)))


def test_alfamix_clusters_candidates_when_there_are_enough():
    x, y = blobs(300, 8, 4)
    g = gen(2)
    probe = LinearProbe(torch.randn(4, 8, generator=g).tolist(), [0.0] * 4)
    ctx = context(x, [0, 1, 2], y, num_classes=4, probe=probe)
    strategy = AlfaMix(eps=5.0)
    candidates = set(strategy.candidates(ctx).tolist())
    assert len(candidates) > 10
    chosen = strategy.select(ctx, 10, gen(4))
    assert_valid(chosen, 300, [0, 1, 2], 10)
    assert set(chosen.tolist()) <= candidates
    assert torch.equal(chosen, strategy.select(ctx, 10, gen(4)))
