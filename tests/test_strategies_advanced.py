"""Hand-computed cases for Alfa-Mix, Typiclust and ProbCover (issue 3, part B)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from alfm.kernels import CHUNK_BYTES
from alfm.strategies.alfamix import AlfaMix, class_anchors, prediction_flips
from alfm.strategies.base import QueryContext
from alfm.strategies.probcover import (
    CoverGraph,
    ProbCover,
    build_cover_graph,
    choose_delta,
    max_coverage,
)
from alfm.strategies.typiclust import (
    Typiclust,
    cluster_visit_order,
    most_typical,
    most_typical_per_pool,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def blobs(
    n: int = 600, d: int = 16, c: int = 6, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A Gaussian mixture: ``c`` well-separated class centers plus unit noise."""
    g = gen(seed)
    centers = torch.randn(c, d, generator=g) * 4
    labels = torch.randint(c, (n,), generator=g)
    return centers[labels] + torch.randn(n, d, generator=g), labels


def context(x, labeled, labels, num_classes, probe=None) -> QueryContext:
    labeled = torch.as_tensor(labeled, dtype=torch.int64)
    return QueryContext(x, labeled, torch.as_tensor(labels)[labeled], num_classes, probe)


class LinearProbe:
    """A probe whose embedding is the raw input: logits = W x + b (hand-set weights)."""

    def __init__(self, weight, bias) -> None:
        self.linear = nn.Linear(len(weight[0]), len(weight))
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor(weight, dtype=torch.float32))
            self.linear.bias.copy_(torch.tensor(bias, dtype=torch.float32))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return x.float()


def assert_valid(chosen: torch.Tensor, n: int, labeled, budget: int) -> None:
    labeled = set(torch.as_tensor(labeled).tolist())
    expected = min(budget, n - len(labeled))
    assert chosen.dtype == torch.int64 and chosen.shape == (expected,)
    assert len(set(chosen.tolist())) == expected
    assert not labeled & set(chosen.tolist())


# ----------------------------------------------------------------------------------- Alfa-Mix


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


# ---------------------------------------------------------------------------------- Typiclust


def test_most_typical_hand_case():
    # k = min(20, 4 // 2) = 2 neighbours; mean squared distances 2.5, 1, 2.5, 72.5
    points = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    assert most_typical(points) == 1
    assert most_typical(points[:1]) == 0


def test_most_typical_per_pool_matches_one_pool_at_a_time(monkeypatch):
    x = torch.randn(400, 7, generator=gen(21))
    perm = torch.randperm(400, generator=gen(22))
    sizes = [1, 2, 3, 9, 40, 41, 150, 154]
    pools = list(torch.split(perm, sizes))
    expected = []
    for pool in pools:
        d = torch.cdist(x[pool], x[pool]).square().fill_diagonal_(math.inf)
        k = min(20, pool.numel() // 2)
        spread = d.topk(k, dim=1, largest=False).values.mean(dim=1) if k else torch.zeros(1)
        expected.append(int(pool[torch.argmin(spread)]))
    # a small block budget splits the pools over several padded batches
    monkeypatch.setitem(CHUNK_BYTES, "cpu", 4 * 150 * 150 * 3)
    assert most_typical_per_pool(x, pools).tolist() == expected
    # ... and the two largest exceed one block: they go through the chunked kNN
    monkeypatch.setitem(CHUNK_BYTES, "cpu", 4 * 149 * 149)
    assert most_typical_per_pool(x, pools).tolist() == expected
    with pytest.raises(ValueError, match="at least one point"):
        most_typical_per_pool(x, [perm[:0]])


def test_cluster_visit_order_fewest_labeled_then_largest():
    # sizes: c0 = 7, c1 = 9, c2 = 8, c3 = 3 (too small); one labeled point in c1
    assignment = torch.tensor([0] * 7 + [1] * 9 + [2] * 8 + [3] * 3)
    labeled = torch.tensor([7])
    assert cluster_visit_order(assignment, labeled, 4, min_size=5) == [2, 0, 1]
    assert cluster_visit_order(assignment, labeled, 4, min_size=7) == [2, 1]


def three_direction_clusters() -> torch.Tensor:
    """6 points around e1, 6 around e2, 3 around e3 (norms vary; normalization removes them)."""
    offsets = torch.tensor([[0.0, 0.0], [0.05, 0.0], [-0.05, 0.0], [0.0, 0.05], [0.0, -0.05]])
    rows = []
    for axis, count in ((0, 6), (1, 6), (2, 3)):
        for i in range(count):
            v = torch.zeros(5)
            v[axis] = 1.0
            off = offsets[i] if i < 5 else torch.tensor([0.09, 0.09])
            v[3:] = off
            rows.append(v * (1 + i))
    return torch.stack(rows)


def test_typiclust_round_robin_then_random_fill_when_clusters_run_dry():
    x = three_direction_clusters()
    strategy = Typiclust(max_clusters=3)
    ctx = context(x, [], torch.zeros(15, dtype=torch.int64), num_classes=3)
    chosen = strategy.select(ctx, 14, gen(0))
    assert_valid(chosen, 15, [], 14)
    # The first two picks are the centers of the two big clusters (offset 0, indices 0 and 6);
    # those clusters are then exhausted (12 picks) and 2 of the 3-point cluster fill at random.
    assert set(chosen[:2].tolist()) == {0, 6}
    assert set(chosen[:12].tolist()) == set(range(12))
    assert set(chosen[12:].tolist()) < {12, 13, 14}
    assert torch.equal(chosen, strategy.select(ctx, 14, gen(0)))


def test_typiclust_visits_the_uncovered_cluster_first():
    x = three_direction_clusters()
    strategy = Typiclust(max_clusters=3)
    ctx = context(x, [0], torch.zeros(15, dtype=torch.int64), num_classes=3)
    chosen = strategy.select(ctx, 2, gen(0))
    assert chosen.tolist()[0] == 6  # cluster e2 has no labeled point, cluster e1 has one
    assert chosen.tolist()[1] in {1, 2, 3, 4, 5}


def test_typiclust_all_clusters_too_small_is_random_but_complete():
    x, y = blobs(12, 4, 2)
    chosen = Typiclust(min_cluster_size=100).select(context(x, [], y, 2), 3, gen(5))
    assert_valid(chosen, 12, [], 3)


# ---------------------------------------------------------------------------------- ProbCover


def graph_from_balls(balls: dict[int, list[int]], n: int) -> CoverGraph:
    rows = torch.tensor([i for i, ball in balls.items() for _ in ball])
    cols = torch.tensor([j for ball in balls.values() for j in ball])
    return CoverGraph.from_edges(rows, cols, n, delta=1.0, purity=1.0)


BALLS = {0: [0, 1, 2, 3], 1: [1, 0], 2: [2, 0], 3: [3, 0, 4], 4: [4, 3, 5], 5: [5, 4], 6: [6]}


def test_probcover_greedy_coverage_then_random_fill():
    graph = graph_from_balls(BALLS, 7)
    # degrees 4,2,2,3,3,2,1 → 0 (covers 0-3); then {4,5,6} left: 4 covers 2 → 4; then 6
    chosen = max_coverage(graph, torch.tensor([], dtype=torch.int64), 5, gen(0))
    assert chosen[:3].tolist() == [0, 4, 6]
    assert set(chosen[3:].tolist()) < {1, 2, 3, 5}
    assert_valid(chosen, 7, [], 5)
    # L = {0} covers 0-3; 4 then 6 cover the rest; the other 4 unlabeled points are the fill
    fills = {
        tuple(max_coverage(graph, torch.tensor([0]), 6, gen(s))[2:].tolist()) for s in range(8)
    }
    assert len(fills) > 1  # the fill is random (the reference always took index 0)


def test_probcover_coverage_of_labeled_set_hand_case():
    graph = graph_from_balls(BALLS, 7)
    # after L = {3}: degrees 0→2 (1, 2), 1→1, 2→1, 4→1 (5), 5→1, 6→1: pick 0, then 4 (covers 5),
    # then 6; then everything is covered
    chosen = max_coverage(graph, torch.tensor([3]), 3, gen(0))
    assert chosen.tolist() == [0, 4, 6]


def test_choose_delta_keeps_the_largest_tested_delta_that_is_pure_enough():
    other = torch.tensor([0.7] * 19 + [0.1]) ** 2
    # tested: 0.5 ✓(0.95), 0.75 ✗, 0.625 ✓, 0.6875 ✓, 0.71875 ✗, 0.703125 ✗
    assert choose_delta(other, 0.95, 6) == (0.6875, 0.95)
    # nothing meets the target: the smallest tested delta (0.5 / 2**5)
    assert choose_delta(torch.full((5,), 1e-6), 0.95, 6) == (0.015625, 0.0)


def test_build_cover_graph_on_two_groups():
    # two tight groups of unit vectors 90° apart: pure at every δ < √2 − spread
    a = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.01, 0.0], [1.0, 0.0, 0.01]])
    b = torch.tensor([[0.0, 1.0, 0.0], [0.01, 1.0, 0.0], [0.0, 1.0, 0.01]])
    graph = build_cover_graph(torch.cat([a, b]) * 3, 2, gen(0))
    assert graph.delta == 0.984375 and graph.purity == 1.0  # bisection climbs to 1 − 2**-6
    assert graph.num_edges == 2 * 9  # each group is a clique, self-loops included
    fixed = build_cover_graph(torch.cat([a, b]), 2, gen(0), delta=0.001)
    assert fixed.num_edges == 6 and math.isnan(fixed.purity)


def test_probcover_strategy_reuses_its_graph_and_stays_deterministic(monkeypatch):
    x, y = blobs(400, 8, 5)
    strategy = ProbCover()
    ctx = context(x, [0, 1], y, 5)
    first = strategy.select(ctx, 20, gen(7))
    assert_valid(first, 400, [0, 1], 20)
    import alfm.strategies.probcover as module

    def fail(*args, **kwargs):
        raise AssertionError("graph rebuilt")

    monkeypatch.setattr(module, "build_cover_graph", fail)
    assert torch.equal(first, strategy.select(ctx, 20, gen(7)))  # cached graph, same indices
    monkeypatch.undo()
    assert torch.equal(first, ProbCover().select(ctx, 20, gen(7)))  # fresh instance, same seed


@pytest.mark.parametrize("name", ["typiclust", "probcover"])
def test_initial_pool_strategies_with_empty_labeled_set(name):
    x, y = blobs(200, 8, 4)
    strategy = Typiclust() if name == "typiclust" else ProbCover()
    assert strategy.requires_probe is False
    chosen = strategy.select(context(x, [], y, 4), 8, gen(1))
    assert_valid(chosen, 200, [], 8)
    assert torch.equal(chosen, strategy.select(context(x, [], y, 4), 8, gen(1)))


@pytest.mark.parametrize("name", ["alfamix", "typiclust", "probcover"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_through_query_with_a_trained_probe(name, dtype):
    from alfm.probe import ProbeConfig, train_probe
    from alfm.strategies import create_strategy, query

    x, y = blobs(300, 8, 5)
    labeled = torch.tensor([0, 1, 2, 3])  # some of the 5 classes are missing
    probe = train_probe(x[labeled], y[labeled], 5, ProbeConfig(max_epochs=30), gen(0))
    ctx = context(x.to(dtype), labeled, y, 5, probe)
    chosen = query(create_strategy(name), ctx, 12, gen(3))
    assert_valid(chosen, 300, labeled, 12)
    assert torch.equal(chosen, query(create_strategy(name), ctx, 12, gen(3)))
