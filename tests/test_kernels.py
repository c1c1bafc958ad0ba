"""alfm.kernels: each verb against a brute-force (materialized) reference and hand cases."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest
import torch

from alfm import kernels as K


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def points() -> torch.Tensor:
    return torch.randn(257, 12, generator=gen(1))


def test_l2_normalize_unit_rows_and_zero_rows():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0], [-2.0, 0.0]], dtype=torch.float16)
    out = K.l2_normalize(x)
    assert out.dtype == torch.float32
    assert torch.allclose(out, torch.tensor([[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]]))
    y = torch.tensor([[3.0, 4.0]])
    K.l2_normalize(y)
    assert torch.equal(y, torch.tensor([[3.0, 4.0]])), "input must not be modified"


def test_pairwise_sq_distances_matches_cdist(points):
    d = K.pairwise_sq_distances(points[:20], points[5:40].half())
    assert d.dtype == torch.float32 and d.shape == (20, 35)
    ref = torch.cdist(points[:20], points[5:40].half().float()).square()
    assert torch.allclose(d, ref, atol=1e-3)
    same = K.pairwise_sq_distances(points[:5], points[:5])
    assert (same >= 0).all() and torch.allclose(same.diagonal(), torch.zeros(5), atol=1e-4)


@pytest.mark.parametrize("chunk", [None, 1, 7])
def test_min_sq_distances_matches_brute_force(points, chunk):
    centers = points[[3, 50, 99, 200]]
    mins, args = K.min_sq_distances(points, centers, chunk_size=chunk)
    ref = torch.cdist(points, centers).square()
    assert torch.allclose(mins, ref.min(dim=1).values, atol=1e-4)
    assert torch.equal(args, ref.argmin(dim=1))
    assert mins[3] < 1e-4 and args[3] == 0


def test_min_sq_distances_errors(points):
    with pytest.raises(ValueError, match="at least one center"):
        K.min_sq_distances(points, points[:0])
    with pytest.raises(ValueError, match="dimension mismatch"):
        K.min_sq_distances(points, points[:3, :5])


def test_kcenter_on_a_line():
    line = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0], [11.0], [20.0]])
    # Farthest from 0 is 20; then 10 (10 away from both); then 3 (3 away from 0, 7 from 10).
    picks = K.kcenter_greedy(line, torch.tensor([0]), 3, gen())
    assert picks.tolist() == [6, 4, 3]
    # Labeled {0, 20}: farthest is 10; then 3 (3 from 0) beats 11 (1 from 10).
    assert K.kcenter_greedy(line, torch.tensor([0, 6]), 2, gen()).tolist() == [4, 3]


def test_kcenter_without_labeled_is_seeded_and_distinct():
    x = torch.randn(100, 5, generator=gen(2))
    a = K.kcenter_greedy(x, torch.tensor([], dtype=torch.int64), 100, gen(3))
    b = K.kcenter_greedy(x, torch.tensor([], dtype=torch.int64), 100, gen(3))
    assert torch.equal(a, b) and a.unique().numel() == 100
    with pytest.raises(ValueError, match="budget 101"):
        K.kcenter_greedy(x, torch.tensor([], dtype=torch.int64), 101, gen())


@pytest.mark.parametrize("candidates", [1, 4, 64])
@pytest.mark.parametrize("clustered", [False, True])
def test_kcenter_equals_plain_greedy(candidates, clustered):
    g = gen(13)
    x = torch.randn(300, 6, generator=g)
    if clustered:  # a few far blobs: long runs of picks between full passes
        x = x + 25 * torch.randn(8, 6, generator=g)[torch.randint(8, (300,), generator=g)]
    labeled = torch.tensor([3, 50, 77])
    picks = K.kcenter_greedy(x, labeled, 60, gen(), candidates=candidates)
    mind = torch.cdist(x, x[labeled]).square().amin(dim=1)
    mind[labeled] = -1
    ref = []
    for _ in range(60):
        nxt = int(torch.argmax(mind))
        ref.append(nxt)
        mind = torch.minimum(mind, torch.cdist(x, x[nxt : nxt + 1]).square()[:, 0])
        mind[ref] = -1
    assert picks.tolist() == ref


def test_kcenter_with_duplicates_never_repeats():
    x = torch.zeros(10, 3)
    picks = K.kcenter_greedy(x, torch.tensor([2, 5]), 8, gen())
    assert sorted(picks.tolist()) == [0, 1, 3, 4, 6, 7, 8, 9]


def test_kmeans_plusplus_distinct_and_deterministic():
    x = torch.tensor([[0.0, 0.0]] * 5 + [[1.0, 0.0]] * 5)
    picks = K.kmeans_plusplus(x, 6, gen(4))
    assert picks.unique().numel() == 6  # only 2 distinct points: falls back to uniform draws
    assert torch.equal(picks, K.kmeans_plusplus(x, 6, gen(4)))
    assert set(picks[:2].tolist()) & set(range(5)) and set(picks[:2].tolist()) & set(range(5, 10))
    with pytest.raises(ValueError, match="k=11"):
        K.kmeans_plusplus(x, 11, gen())


@pytest.mark.parametrize("batch", [1, 64])
def test_d2_sampling_is_exact_k_means_plus_plus(batch):
    """Picks 2 and 3 (the third by rejection from a stale proposal when batch > 1) follow the
    D² law: P(j, l) = d²(j) / Σd² · min(d²(l), (x_l − x_j)²) / Σ min(…)."""
    x = torch.tensor([[0.0], [1.0], [3.0], [6.0], [10.0], [15.0]])
    x_sq = x.square().sum(1)

    def sq_dist(rows, centers):
        return (x[rows] - x[centers].T).square()

    expected = torch.zeros(6, 6, dtype=torch.float64)
    d2 = x_sq.double()
    for j in range(1, 6):
        after = torch.minimum(d2, (x[:, 0] - x[j, 0]).double().square())
        expected[j] = d2[j] / d2.sum() * after / after.sum()
    trials = 4000
    counts = torch.zeros(6, 6, dtype=torch.float64)
    for seed in range(trials):
        picks = K.d2_sampling(6, 3, sq_dist, gen(seed), torch.device("cpu"), first=0, batch=batch)
        counts[picks[1], picks[2]] += 1
    freq = counts / trials
    tolerance = 4 * (expected * (1 - expected) / trials).sqrt() + 1e-3
    assert ((freq - expected).abs() <= tolerance).all(), (freq, expected)


def test_kmeans_recovers_separated_blobs():
    g = gen(5)
    blobs = torch.cat([torch.randn(50, 4, generator=g) + 20 * i for i in range(3)])
    centroids, assign = K.kmeans(blobs, 3, gen(6))
    assert centroids.shape == (3, 4) and assign.shape == (150,)
    for i in range(3):
        assert assign[50 * i : 50 * (i + 1)].unique().numel() == 1
    assert assign.unique().numel() == 3
    c2, a2 = K.kmeans(blobs, 3, gen(6))
    assert torch.equal(centroids, c2) and torch.equal(assign, a2)
    members = blobs[assign == assign[0]]
    assert torch.allclose(centroids[assign[0]], members.mean(dim=0), atol=1e-4)


def test_kmeans_with_k_equal_n_gives_singletons():
    x = torch.randn(7, 3, generator=gen(7))
    _, assign = K.kmeans(x, 7, gen())
    assert sorted(assign.tolist()) == list(range(7))


def _near_tie_pool() -> torch.Tensor:
    """Blobs, exact duplicates and points within float32 rounding of two blobs' bisector."""
    g = gen(21)
    centers = torch.randn(6, 24, generator=g) * 3
    blobs = torch.cat([c + torch.randn(400, 24, generator=g) for c in centers])
    middle = (centers[0] + centers[1]) / 2
    ties = middle + 1e-6 * torch.randn(200, 24, generator=g)
    return torch.cat([blobs, blobs[:300], ties])


@pytest.mark.parametrize("k", [2, 7, 24, 30])  # 30 > D: no bounds (their memory)
def test_kmeans_bounds_give_plain_lloyd(monkeypatch, k):
    """Elkan's bounds skip rows, yet centroids and assignment equal plain Lloyd's bit for bit."""
    x = _near_tie_pool()
    partial = []
    chunks = K._partial_chunks

    def counting(x, centers, rows=None, chunk=None):
        partial.append(rows is not None)
        return chunks(x, centers, rows, chunk)

    monkeypatch.setattr(K, "_partial_chunks", counting)
    bounded = K.kmeans(x, k, gen(3), n_iter=30, tol=0.0)
    assert any(partial) == (k <= x.shape[1])  # some iteration recomputed only a subset
    monkeypatch.setattr(K, "USE_KMEANS_BOUNDS", False)
    plain = K.kmeans(x, k, gen(3), n_iter=30, tol=0.0)
    assert torch.equal(bounded[0], plain[0]) and torch.equal(bounded[1], plain[1])


@pytest.mark.parametrize("offset, step", [(2e-2, 4e-2), (1e-6, 1e-6)])
def test_lloyd_bounds_recompute_every_row_that_can_change(offset, step):
    """Points within ±offset of the bisector of two random centroids; the first centroid then
    moves by ``step`` and points cross over: the bounded update must equal a fresh float32
    assignment, also where the gaps are near float32 rounding (offset 1e-6 at norm ~30)."""
    g = gen(23)
    d = 16
    c = torch.randn(3, d, generator=g) * 8
    axis = (c[1] - c[0]) / (c[1] - c[0]).norm()
    noise = torch.randn(4000, d, generator=g) * 3
    noise -= (noise @ axis).unsqueeze(1) * axis  # orthogonal to the axis
    t = offset * (2 * torch.rand(4000, 1, generator=g) - 1)
    x = (c[0] + c[1]) / 2 + noise + t * axis
    nearest = K._LloydAssignment(x, K._sq_norms(x), c)
    before = nearest.assign.clone()
    moved = c.clone()
    moved[0] += step * torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    nearest.update(moved, torch.linalg.vector_norm(moved - c, dim=1))
    expected = K.min_sq_distances(x, moved)[1]
    assert (expected != before).sum() > 20  # assignments change
    assert torch.equal(nearest.assign, expected)


def test_kmeans_bounds_survive_emptied_clusters(monkeypatch):
    """Duplicated points empty clusters (re-seeded at the farthest points): same as plain."""
    g = gen(22)
    x = torch.cat([torch.randn(5, 8, generator=g).repeat(40, 1), torch.randn(30, 8, generator=g)])
    bounded = K.kmeans(x, 8, gen(4), n_iter=15, tol=0.0)
    monkeypatch.setattr(K, "USE_KMEANS_BOUNDS", False)
    plain = K.kmeans(x, 8, gen(4), n_iter=15, tol=0.0)
    assert torch.equal(bounded[0], plain[0]) and torch.equal(bounded[1], plain[1])


def test_nearest_to_centroids_and_argmin_per_group():
    x = torch.tensor([[0.0], [0.9], [2.0], [10.0], [10.2], [35.0]])
    centroids = torch.tensor([[1.0], [10.0], [50.0]])
    assert K.nearest_to_centroids(x, centroids).tolist() == [1, 3, 5]  # cluster 2 holds only 35
    # A given assignment is respected: cluster 1 (centroid 10) holds 0, 0.9, 2 → 2 is nearest.
    assign = torch.tensor([1, 1, 1, 0, 0, 0])
    assert K.nearest_to_centroids(x, centroids, assign).tolist() == [3, 2]
    values = torch.tensor([3.0, 1.0, 1.0, 0.5, 2.0])
    groups = torch.tensor([4, 4, 4, 0, 0])
    assert K.argmin_per_group(values, groups).tolist() == [3, 1]


@pytest.fixture(params=["torch", "faiss"])
def knn_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a kNN test on the torch path and, where faiss is installed, on the faiss path."""
    if request.param == "faiss" and K._faiss() is None:
        pytest.skip("faiss not installed")
    monkeypatch.setattr(K, "USE_FAISS", request.param == "faiss")
    return request.param


def test_knn_excludes_self_among_duplicates(knn_backend):
    x = torch.zeros(10, 3)
    dist, idx = K.knn(x, 3)
    assert idx.shape == (10, 3) and (dist == 0).all()
    assert (idx != torch.arange(10).unsqueeze(1)).all()
    assert all(len(set(row)) == 3 for row in idx.tolist())


@pytest.mark.parametrize("chunk", [None, 5])
def test_knn_matches_brute_force(points, chunk, knn_backend):
    dist, idx = K.knn(points, 4, chunk_size=chunk)
    full = torch.cdist(points, points)
    full.fill_diagonal_(float("inf"))
    ref_d, ref_i = torch.topk(full, 4, largest=False)
    assert torch.allclose(dist, ref_d, atol=1e-3) and torch.equal(idx, ref_i)
    assert (idx != torch.arange(257).unsqueeze(1)).all()
    qd, qi = K.knn(points, 1, queries=points[:3])
    assert qi.squeeze(1).tolist() == [0, 1, 2] and torch.allclose(qd, torch.zeros(3, 1), atol=2e-3)
    with pytest.raises(ValueError, match="k=257"):
        K.knn(points, 257)


@pytest.fixture(params=["float32", "screen+block", "screen+pairs"])
def range_path(request, monkeypatch):
    """Each way :func:`range_graph` decides pairs: the float32 product alone, or the bfloat16
    screen followed by a float32 block product or by a pair-by-pair float32 check."""
    if request.param == "float32":
        monkeypatch.setattr(K, "USE_BF16_SCREEN", False)
    elif not K._bf16_screen(torch.device("cpu")):
        pytest.skip("no oneDNN bfloat16 on this CPU")
    else:
        monkeypatch.setattr(K, "SCREEN_PAIR_FRACTION", 0.0 if "block" in request.param else 1.0)
    return request.param


@pytest.mark.parametrize("chunk", [None, 3, 100])
def test_range_graph_matches_brute_force(points, chunk, range_path):
    x = K.l2_normalize(points)
    rows, cols = K.range_graph(x, 0.9, block=chunk)
    full = torch.cdist(x, x) < 0.9
    full.fill_diagonal_(True)
    ref_r, ref_c = full.nonzero(as_tuple=True)
    assert torch.equal(rows, ref_r) and torch.equal(cols, ref_c)
    r0, c0 = K.range_graph(x, 0.0)
    assert torch.equal(r0, torch.arange(257)) and torch.equal(c0, torch.arange(257))


def test_range_graph_distances_and_filter(points, range_path):
    x = K.l2_normalize(points) * 2  # not unit rows: the screen's bound scales with the norms
    rows, cols, sq = K.range_graph(x, 1.8, block=50, with_sq=True)
    ref = torch.cdist(x, x).square()
    assert torch.allclose(sq, ref[rows, cols], atol=1e-4)
    assert torch.equal(sq[rows == cols], torch.zeros(257))
    small = K.filter_range_graph(rows, cols, sq, 1.2)
    fresh = K.range_graph(x, 1.2)
    assert torch.equal(small[0], fresh[0]) and torch.equal(small[1], fresh[1])


def test_nearest_other_label_for_sampled_rows(points):
    labels = torch.randint(4, (257,), generator=gen(12))
    full = K.nearest_other_label_sq_distances(points, labels)
    sample = torch.tensor([0, 5, 77, 256, 130])
    for block in (None, 2, 64):
        out = K.nearest_other_label_sq_distances(points, labels, block=block, rows=sample)
        assert torch.allclose(out, full[sample], rtol=1e-5, atol=1e-5)


def test_nearest_other_label_sq_distances_hand_case():
    x = torch.tensor([[0.0], [1.0], [3.0], [4.0]])
    out = K.nearest_other_label_sq_distances(x, torch.tensor([0, 0, 1, 1]))
    assert out.tolist() == [9.0, 4.0, 4.0, 9.0]
    assert K.nearest_other_label_sq_distances(x, torch.zeros(4, dtype=torch.int64)).isinf().all()


@pytest.mark.parametrize("block", [None, 3, 64])
def test_nearest_other_label_matches_brute_force(points, block):
    labels = torch.randint(4, (points.shape[0],), generator=gen(12))
    out = K.nearest_other_label_sq_distances(points, labels, block=block)
    full = torch.cdist(points, points).square()
    full[labels.unsqueeze(1) == labels.unsqueeze(0)] = math.inf
    assert torch.allclose(out, full.amin(dim=1), rtol=1e-4, atol=1e-3)


def test_outer_distances_equal_materialized():
    a = torch.randn(40, 3, generator=gen(8))
    b = torch.randn(40, 5, generator=gen(9))
    g = (a.unsqueeze(2) * b.unsqueeze(1)).reshape(40, -1)
    for i in (0, 17):
        ref = (g - g[i]).square().sum(dim=1)
        assert torch.allclose(K.outer_sq_distances(a, b, i), ref, atol=1e-4)


def test_kmeans_plusplus_outer_start_and_mask():
    a = torch.randn(60, 3, generator=gen(10))
    b = torch.randn(60, 4, generator=gen(11))
    norms = a.norm(dim=1) * b.norm(dim=1)
    picks = K.kmeans_plusplus_outer(a, b, 5, gen())
    assert picks[0] == norms.argmax() and picks.unique().numel() == 5
    mask = torch.arange(60) >= 30
    masked = K.kmeans_plusplus_outer(a, b, 30, gen(), mask=mask)
    assert sorted(masked.tolist()) == list(range(30, 60))
    assert masked[0] == 30 + norms[30:].argmax()


def test_device_generator_identity_on_same_device():
    g = gen()
    assert K.device_generator(g, torch.device("cpu")) is g


def test_chunk_size_does_not_change_results(monkeypatch, points):
    ref = K.kmeans(points, 5, gen(12))
    monkeypatch.setitem(K.CHUNK_BYTES, "cpu", 4096)
    assert K.auto_chunk(257, torch.device("cpu")) == 1
    small = K.kmeans(points, 5, gen(12))
    assert torch.allclose(ref[0], small[0], atol=1e-5) and torch.equal(ref[1], small[1])


@pytest.mark.slow
def test_peak_memory_stays_chunked():
    """12k points: one N×N float32 matrix would be 576 MB; chunked verbs stay far below."""
    script = textwrap.dedent(
        """
        import resource, torch
        from alfm import kernels as K
        torch.set_num_threads(2)
        x = torch.randn(12000, 8, generator=torch.Generator().manual_seed(0))
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        K.min_sq_distances(x, x)
        K.knn(x, 5)
        K.range_graph(K.l2_normalize(x), 0.3)
        K.kcenter_greedy(x, torch.arange(3000), 50, torch.Generator().manual_seed(0))
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    extra_mb = float(out.stdout.strip().splitlines()[-1])
    assert extra_mb < 400, f"peak extra memory {extra_mb:.0f} MB suggests an N×N matrix"


def test_block_passes_release_the_heap(monkeypatch):
    """k-means, the range graph and the label-distance pass hand freed heap back afterwards,
    also when they fail (glibc keeps freed block temporaries otherwise)."""
    calls = []
    monkeypatch.setattr(K, "_malloc_trim", lambda: calls.append)
    x = torch.randn(40, 3, generator=gen(30))
    K.kmeans(x, 3, gen())
    K.range_graph(x, 0.5)
    K.nearest_other_label_sq_distances(x, torch.arange(40) % 2)
    assert calls == [0, 0, 0]
    with pytest.raises(ValueError, match="delta"):
        K.range_graph(x, -1.0)
    assert calls == [0, 0, 0, 0]
