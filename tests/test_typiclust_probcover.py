"""Typiclust and ProbCover: typicality, cluster order, δ by bisection, greedy coverage, the
prepared graph; both as initial-pool strategies."""

from __future__ import annotations

import math

import pytest
import torch
from strategy_helpers import assert_valid, blobs, context, gen, prepared

from alfm.kernels import (
    CHUNK_BYTES,
    kmeans,
    l2_normalize,
    nearest_other_label_sq_distances,
    range_graph,
)
from alfm.probe import ProbeConfig, train_probe
from alfm.strategies import create_strategy, probcover, query
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


def test_cover_graph_of_a_fixed_delta_gives_the_brute_force_picks():
    """The one-pass (screened) builder against a dense evaluation of every pair."""
    x, _ = blobs(500, 16, 5)
    unit = l2_normalize(x)
    dense = torch.cdist(unit.double(), unit.double()) < 0.35
    dense.fill_diagonal_(True)
    r, c = dense.nonzero(as_tuple=True)
    oracle = CoverGraph.from_edges(r, c, 500, 0.35, float("nan"))
    graph = build_cover_graph(x, 5, gen(0), delta=0.35)
    assert torch.equal(graph.ptr, oracle.ptr) and torch.equal(graph.cols, oracle.cols)
    labeled = torch.tensor([3, 40])
    assert torch.equal(
        max_coverage(graph, labeled, 30, gen(1)), max_coverage(oracle, labeled, 30, gen(1))
    )


def test_delta_from_a_purity_sample_is_checked_exactly():
    x, _ = blobs(600, 8, 12)
    full = build_cover_graph(x, 12, gen(3))  # 600 <= PURITY_SAMPLE: every point's purity
    for size in (50, 200):
        graph = build_cover_graph(x, 12, gen(3), purity_sample=size)
        unit = l2_normalize(x)
        rows, cols = range_graph(unit, graph.delta)
        assert torch.equal(graph.cols, cols.int()) and graph.num_edges == rows.numel()
        # the reported purity is the exact one of that δ, as the full pass computes it
        _, pseudo = kmeans(unit, 12, gen(3))
        other = nearest_other_label_sq_distances(unit, pseudo)
        assert graph.purity == pytest.approx(float((other >= graph.delta**2).float().mean()))
        assert graph.purity >= 0.95
        assert abs(graph.delta - full.delta) <= 0.125  # a sampled estimate, not the same δ


def test_probcover_prepare_builds_the_one_graph_every_query_uses(monkeypatch):
    x, y = blobs(400, 8, 12)  # 12 classes in 8 dimensions: δ depends on the k-means seed
    ctx = context(x, [0, 1], y, 12)
    strategy = prepared(ProbCover(), ctx, seed=4)
    graph = strategy.graph(ctx)

    def fail(*args, **kwargs):
        raise AssertionError("graph rebuilt")

    monkeypatch.setattr(probcover, "build_cover_graph", fail)
    first = strategy.select(ctx, 20, gen(7))
    assert_valid(first, 400, [0, 1], 20)
    assert_valid(strategy.select(ctx, 20, gen(8)), 400, [0, 1], 20)  # another round's generator
    assert strategy.graph(ctx) is graph  # one graph (one δ) whatever generators the queries get
    assert torch.equal(first, strategy.select(ctx, 20, gen(7)))
    monkeypatch.undo()
    again = prepared(ProbCover(), ctx, seed=4)  # as in a new process: the same prepare seed
    rebuilt = again.graph(ctx)
    assert (rebuilt.delta, rebuilt.purity) == (graph.delta, graph.purity)
    assert torch.equal(rebuilt.ptr, graph.ptr) and torch.equal(rebuilt.cols, graph.cols)
    assert torch.equal(first, again.select(ctx, 20, gen(7)))
    # δ depends on the prepare seed, which is why the seed must be the run's, not a round's
    deltas = {prepared(ProbCover(), ctx, seed=s).graph(ctx).delta for s in range(4)}
    assert len(deltas) > 1


def test_probcover_select_needs_a_graph_prepared_for_these_features():
    x, y = blobs(100, 8, 3)
    ctx = context(x, [0], y, 3)
    with pytest.raises(RuntimeError, match=r"probcover was not prepared .*call strategy.prepare"):
        ProbCover().select(ctx, 5, gen())
    strategy = prepared(ProbCover(), ctx)
    for other in (context(x.clone(), [0], y, 3), context(x, [0], y, 4)):
        with pytest.raises(RuntimeError, match="not prepared for these features"):
            strategy.select(other, 5, gen())


@pytest.mark.parametrize("name", ["typiclust", "probcover"])
def test_initial_pool_strategies_with_empty_labeled_set(name):
    x, y = blobs(200, 8, 4)
    strategy = prepared(Typiclust() if name == "typiclust" else ProbCover(), context(x, [], y, 4))
    assert strategy.requires_probe is False
    chosen = strategy.select(context(x, [], y, 4), 8, gen(1))
    assert_valid(chosen, 200, [], 8)
    assert torch.equal(chosen, strategy.select(context(x, [], y, 4), 8, gen(1)))


@pytest.mark.parametrize("name", ["alfamix", "typiclust", "probcover"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_through_query_with_a_trained_probe(name, dtype):
    x, y = blobs(300, 8, 5)
    labeled = torch.tensor([0, 1, 2, 3])  # some of the 5 classes are missing
    probe = train_probe(x[labeled], y[labeled], 5, ProbeConfig(max_epochs=30), gen(0))
    ctx = context(x.to(dtype), labeled, y, 5, probe)
    chosen = query(prepared(create_strategy(name), ctx), ctx, 12, gen(3))
    assert_valid(chosen, 300, labeled, 12)
    assert torch.equal(chosen, query(prepared(create_strategy(name), ctx), ctx, 12, gen(3)))
