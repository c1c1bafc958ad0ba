"""alfm.propagation: the graph and the propagation against a dense numpy evaluation of the
reference's formulas, the training targets by hand, SslConfig errors, small pools."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alfm import propagation
from alfm.propagation import SslConfig, build_graph, propagated_targets

#: Six points in 3-D, no two at the same distance from a third (so the kNN lists have no ties).
SIX = np.array(
    [
        [1.0, 0.1, 0.0],
        [0.9, 0.4, 0.1],
        [0.2, 1.0, 0.3],
        [-0.1, 0.8, 0.9],
        [-1.0, 0.2, -0.3],
        [0.3, -0.9, 0.6],
    ]
)


def dense_reference(
    x: np.ndarray, k: int, gamma: float, labeled: list[int], labels: list[int], c: int,
    alpha: float, n_iter: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """(S, D, F) of the reference's formulas, dense, in float64."""
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sq = ((unit[:, None] - unit[None]) ** 2).sum(-1)
    np.fill_diagonal(sq, np.inf)
    a = np.zeros_like(sq)
    for i, row in enumerate(np.argsort(sq, axis=1)[:, :k]):
        a[i, row] = np.clip(0.25 * (4 - sq[i, row]), 0, 1) ** gamma
    w = a + a.T
    d = (w != 0).sum(axis=1)
    s = w / np.sqrt(d)[:, None] / np.sqrt(d)[None, :]
    y = np.zeros((len(x), c))
    y[labeled, labels] = 1
    f = y.copy()
    for _ in range(n_iter):
        f = (1 - alpha) * s @ f + alpha * y
    f[labeled] = y[labeled]
    return s, d, f


def dense_s(graph) -> np.ndarray:
    return graph.matrix.to_dense().double().numpy()


@pytest.mark.parametrize(("k", "gamma", "alpha"), [(2, 1.0, 0.9), (3, 2.5, 0.3)])
def test_six_point_graph_equals_dense_numpy(k: int, gamma: float, alpha: float) -> None:
    labeled, labels = [0, 3], [1, 0]
    s, d, f = dense_reference(SIX, k, gamma, labeled, labels, 2, alpha, 7)
    graph = build_graph(torch.tensor(SIX, dtype=torch.float32) * 3.0, k, gamma)  # scale-free
    assert graph.degree.tolist() == d.tolist()
    assert graph.matrix._nnz() == d.sum() <= 2 * 6 * k  # W's nonzero entries: O(N·k)
    np.testing.assert_allclose(dense_s(graph), s, atol=1e-6)
    ours = graph.propagate(torch.tensor(labeled), torch.tensor(labels), 2, alpha, 7)
    np.testing.assert_allclose(ours.double().numpy(), f, atol=1e-6)
    assert ours[0].tolist() == [0.0, 1.0] and ours[3].tolist() == [1.0, 0.0]


def test_degree_counts_nonzero_weights_only() -> None:
    """Antipodal neighbours (d² = 4) get weight 0 and do not count in D, as in the reference
    (``W.nonzero()``); mutual neighbours count once."""
    x = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1.0]])
    s, d, _ = dense_reference(x, 5, 1.0, [0], [0], 2, 0.9, 1)
    graph = build_graph(torch.tensor(x, dtype=torch.float32), 5, 1.0)
    assert d.tolist() == [4] * 6
    assert graph.degree.tolist() == [4] * 6
    np.testing.assert_allclose(dense_s(graph), s, atol=1e-7)


@pytest.mark.parametrize("chunk_entries", [None, 100])
def test_random_pool_equals_dense_numpy(
    chunk_entries: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Also with chunks of a few rows: every chunked step (kNN queries, transpose, W's blocks,
    the scaling) crosses chunk boundaries."""
    if chunk_entries is not None:
        monkeypatch.setattr(propagation, "CHUNK_ENTRIES", chunk_entries)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 12, generator=g)
    labeled = list(range(0, 300, 29))
    labels = [i % 5 for i in labeled]
    s, d, f = dense_reference(x.double().numpy(), 15, 1.5, labeled, labels, 5, 0.9, 100)
    graph = build_graph(x, 15, 1.5)
    assert graph.degree.tolist() == d.tolist()
    np.testing.assert_allclose(dense_s(graph), s, atol=1e-6)
    ours = graph.propagate(torch.tensor(labeled), torch.tensor(labels), 5, 0.9, 100)
    np.testing.assert_allclose(ours.double().numpy(), f, atol=1e-6)


def test_early_stop_at_a_fixed_point_equals_every_step() -> None:
    """propagate stops once a step returns its input; the result is the n_iter-step one."""
    x = torch.randn(400, 8, generator=torch.Generator().manual_seed(1))
    graph = build_graph(x, 20, 1.0)
    labeled, labels = torch.arange(0, 400, 40), torch.arange(10) % 3
    y = torch.zeros(400, 3)
    y[labeled, labels] = 1.0
    f = y.clone()
    steps = 0
    for _ in range(100):
        step = torch.addmm(y * 0.9, graph.matrix, f, alpha=0.1)
        steps += not torch.equal(step, f)
        f = step
    f[labeled] = y[labeled]
    assert steps < 100  # a fixed point is reached, so the early stop happens
    assert torch.equal(graph.propagate(labeled, labels, 3, 0.9, 100), f)
    assert graph.last_steps == steps


def test_small_pools_cap_knn() -> None:
    x = torch.tensor(SIX[:3], dtype=torch.float32)
    graph = build_graph(x, 500, 1.0)  # k capped at N − 1 = 2
    s, d, _ = dense_reference(SIX[:3], 2, 1.0, [0], [0], 2, 0.9, 1)
    np.testing.assert_allclose(dense_s(graph), s, atol=1e-6)
    single = build_graph(x[:1], 500, 1.0)
    f = single.propagate(torch.tensor([0]), torch.tensor([1]), 2, 0.9, 10)
    assert f.tolist() == [[0.0, 1.0]]


def test_propagated_targets_by_hand() -> None:
    f = torch.tensor([[2.0, 0.0, 0.0], [0.5, 0.25, 0.25], [0.1, 0.1, 0.1], [0.0, 0.0, 0.0]])
    labels, weights = propagated_targets(f)
    assert labels[:2].tolist() == [0, 0]
    entropy = -(0.5 * math.log(0.5 + 1e-8) + 2 * 0.25 * math.log(0.25 + 1e-8))
    expected = [1 - (-math.log(1 + 1e-8)) / math.log(3), 1 - entropy / math.log(3), 0.0, 0.0]
    np.testing.assert_allclose(weights.numpy(), expected, atol=1e-6)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"enable": True, "alpha": 1.5}, r"ssl.alpha must be a number >= 0 and <= 1, got 1.5"),
        ({"enable": True, "n_iter": 0}, r"ssl.n_iter must be an integer >= 1, got 0"),
        ({"enable": "yes"}, r"ssl.enable must be true or false"),
        ({"enable": True, "k": 10}, r"unknown ssl key\(s\) k; known keys: alpha, enable"),
        ({"alpha": 0.9}, r"ssl.alpha has no effect while ssl.enable is false"),
        ({"enable": False, "gamma": 2}, r"ssl.gamma has no effect while ssl.enable is false"),
    ],
)
def test_config_errors(data: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SslConfig.from_dict(data)


def test_config_defaults_are_the_reference() -> None:
    assert SslConfig.from_dict({"enable": True}).to_dict() == {
        "enable": True, "alpha": 0.9, "knn": 500, "gamma": 1.0, "n_iter": 100
    }  # fmt: skip
    with pytest.raises(ValueError, match="ssl.knn has no effect"):
        SslConfig(knn=10)
