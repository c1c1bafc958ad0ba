"""Shared numeric verbs for the query strategies: distances, k-center, k-means, kNN, range graphs.

Everything is torch on the input's device (CPU or CUDA). Work is chunked so that the peak extra
memory is O(N·D + chunk·N): no function ever forms an N×N (or |L|×|U|) matrix at once. Chunk sizes
come from a per-device memory budget (:data:`CHUNK_BYTES`) unless given. Float16 inputs are computed
in float32. Randomness comes only from the ``generator`` argument (a CPU generator may drive CUDA
work: see :func:`device_generator`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import warnings
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import ParamSpec, TypeVar

import torch
from torch import Tensor
from tqdm.auto import tqdm

#: Bytes one chunk's temporary distance block may use, per device type.
CHUNK_BYTES: dict[str, int] = {"cpu": 128 * 2**20, "cuda": 1024 * 2**20}

# Show progress bars only for work larger than this many multiply-adds.
_PROGRESS_WORK = 5e10


_P = ParamSpec("_P")
_R = TypeVar("_R")


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None


def releases_heap(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Decorates a pass of many block-sized temporaries: afterwards, freed heap memory goes back
    to the OS (``malloc_trim``). glibc serves allocations below its dynamic mmap threshold (up to
    32 MiB) from the heap and keeps what is freed there, so the next pass's blocks could not
    reuse it: ProbCover's graph at 50k peaked at 9× the feature matrix instead of 2.9×. A fixed
    low threshold (``MALLOC_MMAP_THRESHOLD_``) fixes that too but page-faults every block: BALD
    2× slower here."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        finally:
            trim = _malloc_trim()
            if trim is not None:
                trim(0)

    return wrapper


def _f32(x: Tensor) -> Tensor:
    """``x`` as float32 (no copy when it already is)."""
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point tensor, got {x.dtype}")
    return x if x.dtype == torch.float32 else x.float()


def _check_2d(x: Tensor, name: str) -> None:
    if x.dim() != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) tensor, got shape {tuple(x.shape)}")


def auto_chunk(n_cols: int, device: torch.device, bytes_per_entry: int = 8) -> int:
    """Rows per chunk so that a ``rows × n_cols`` block stays within :data:`CHUNK_BYTES`."""
    budget = CHUNK_BYTES.get(device.type, CHUNK_BYTES["cuda"])
    return max(1, budget // max(1, n_cols * bytes_per_entry))


def device_generator(generator: torch.Generator, device: torch.device) -> torch.Generator:
    """A generator usable on ``device``: ``generator`` itself, or one seeded from it."""
    if generator.device.type == torch.device(device).type:
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    derived = torch.Generator(device=device)
    derived.manual_seed(seed)
    return derived


def l2_normalize(x: Tensor, inplace: bool = False) -> Tensor:
    """Rows of ``x`` scaled to unit L2 norm, float32 (zero rows stay zero).

    ``inplace`` overwrites a float32 ``x`` instead of allocating a copy.
    """
    _check_2d(x, "x")
    if inplace and x.dtype != torch.float32:
        raise TypeError(f"in-place normalization needs float32, got {x.dtype}")
    out = x if inplace else x.float().clone() if x.dtype == torch.float32 else x.float()
    norms = torch.linalg.vector_norm(out, dim=1, keepdim=True).clamp_min_(1e-12)
    return out.div_(norms)


#: Let :func:`matmul_nt` use oneDNN's inner product on the CPU (set False to force ``addmm``).
USE_ONEDNN = True

# Products with fewer multiply-adds than this use addmm (oneDNN's per-shape setup costs more).
_ONEDNN_MIN_WORK = 2**20


def _onednn_linear() -> Callable[..., Tensor] | None:
    """``torch.ops.mkldnn._linear_pointwise`` when this torch build has it, else None."""
    if not torch.backends.mkldnn.is_available():
        return None
    return getattr(torch.ops.mkldnn, "_linear_pointwise", None)


_LINEAR = _onednn_linear()


def matmul_nt(a: Tensor, b: Tensor, bias: Tensor | None = None) -> Tensor:
    """``a @ b.T (+ bias)`` for 2-D float32 ``a`` (M, K), ``b`` (N, K) and ``bias`` (N,).

    On the CPU the product goes through oneDNN's float32 inner product (what ``nn.Linear`` uses
    for ``mkldnn`` tensors), not MKL's sgemm behind ``addmm``: MKL runs its AVX2 kernels on AMD
    CPUs, and on this AVX-512 EPYC oneDNN is 1.7–4.6× faster on the shapes used here (distance
    blocks, k-means, dropout passes). Same float32 arithmetic, another summation order. Small
    products, other devices and dtypes use ``addmm``.
    """
    m, k = a.shape
    if (
        USE_ONEDNN
        and _LINEAR is not None
        and a.device.type == "cpu"
        and a.dtype == b.dtype == torch.float32
        and m * k * b.shape[0] >= _ONEDNN_MIN_WORK
        and k > 0
    ):
        return _LINEAR(a, b, bias, "none", [], "")
    if bias is None:
        return a @ b.T
    return torch.addmm(bias.unsqueeze(0), a, b.T)


def _sq_norms(x: Tensor) -> Tensor:
    """Squared row norms of float32 ``x`` without an N×D temporary."""
    return torch.linalg.vector_norm(x, dim=1).square_()


def pairwise_sq_distances(a: Tensor, b: Tensor) -> Tensor:
    """Squared Euclidean distances between the rows of ``a`` and ``b`` (a small block), float32."""
    _check_2d(a, "a")
    _check_2d(b, "b")
    a, b = _f32(a), _f32(b)
    return _block(a, _sq_norms(a), b, _sq_norms(b))


def _block(a: Tensor, a_sq: Tensor, b: Tensor, b_sq: Tensor) -> Tensor:
    """``‖a_i − b_j‖²`` from precomputed squared norms, clamped at 0."""
    return _partial_block(a, b, b_sq).add_(a_sq.unsqueeze(1)).clamp_min_(0.0)


def _partial_block(a: Tensor, b: Tensor, b_sq: Tensor) -> Tensor:
    """``‖b_j‖² − 2 a_i·b_j``: squared distances minus the row constant ``‖a_i‖²``.

    Row-wise minima, top-k and thresholds need only this (one pass over the block, not three).
    The factor −2 (exact) goes on the operand with fewer rows, so the copy stays small.
    """
    if a.shape[0] <= b.shape[0]:
        return matmul_nt(a * -2.0, b, b_sq)
    return matmul_nt(a, b * -2.0, b_sq)


def min_sq_distances(
    x: Tensor, centers: Tensor, chunk_size: int | None = None, x_sq: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Per row of ``x``: squared distance to its nearest row of ``centers``, and that index.

    ``x_sq`` may pass the squared row norms of ``x`` (saves one pass over ``x``)."""
    _check_2d(x, "x")
    _check_2d(centers, "centers")
    if centers.shape[0] == 0:
        raise ValueError("min_sq_distances needs at least one center")
    if x.shape[1] != centers.shape[1]:
        raise ValueError(f"dimension mismatch: x has D={x.shape[1]}, centers D={centers.shape[1]}")
    n = x.shape[0]
    mins = torch.empty(n, dtype=torch.float32, device=x.device)
    args = torch.empty(n, dtype=torch.int64, device=x.device)
    for idx, xc, partial in _partial_chunks(x, _f32(centers), chunk=chunk_size):
        torch.min(partial, dim=1, out=(mins[idx], args[idx]))
        mins[idx].add_(_sq_norms(xc) if x_sq is None else x_sq[idx]).clamp_min_(0.0)
    return mins, args


def _partial_chunks(
    x: Tensor, centers: Tensor, rows: Tensor | None = None, chunk: int | None = None
) -> Iterator[tuple[Tensor | slice, Tensor, Tensor]]:
    """``(rows of x, those rows as float32, ‖c‖² − 2 x·c for them)`` chunk by chunk over ``x``
    (or over ``x[rows]``, gathered per chunk) for float32 ``centers``: the values whose row minima
    plus ``‖x‖²`` are :func:`min_sq_distances`."""
    c_sq = _sq_norms(centers)
    n = x.shape[0] if rows is None else rows.numel()
    chunk = chunk or auto_chunk(centers.shape[0], x.device)
    for start in range(0, n, chunk):
        idx = slice(start, start + chunk) if rows is None else rows[start : start + chunk]
        xc = _f32(x[idx] if rows is None else x.index_select(0, idx))
        yield idx, xc, _partial_block(xc, centers, c_sq)


def _progress(total: int, work: float, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, leave=False, disable=work < _PROGRESS_WORK)


#: Farthest points :func:`kcenter_greedy` keeps as candidates between two full passes.
KCENTER_CANDIDATES = 64


def kcenter_greedy(
    x: Tensor,
    labeled: Tensor,
    budget: int,
    generator: torch.Generator,
    candidates: int = KCENTER_CANDIDATES,
) -> Tensor:
    """Greedy k-center: ``budget`` indices (in pick order) each farthest from all centers so far.

    Starts from the min distance of every point to ``labeled`` (chunked); with no labeled points
    the first center is drawn uniformly with ``generator``. Never picks a labeled point twice.

    The picks are those of the plain one-pass-per-pick greedy (up to floating-point rounding,
    ties to the lowest index), found with fewer passes: after a full pass, the farthest
    ``candidates`` points and their distances to one another are kept; the next pick is the
    candidate farthest from all centers as long as that distance beats the largest distance
    outside the candidates (which picks can only lower), so one full pass (a matrix product
    over the new centers) serves a run of picks.
    """
    _check_2d(x, "x")
    x = _f32(x)
    n = x.shape[0]
    labeled = labeled.to(device=x.device, dtype=torch.int64)
    available = n - labeled.numel()
    if not 0 <= budget <= available:
        raise ValueError(f"budget {budget} must be in [0, {available}] (unlabeled points)")
    if candidates < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}")
    x_sq = _sq_norms(x)
    picks: list[int] = []
    if budget == 0:
        return torch.empty(0, dtype=torch.int64, device=x.device)
    if labeled.numel():
        centers = labeled
    else:
        picks.append(int(torch.randint(n, (1,), generator=generator, device=generator.device)))
        centers = torch.tensor(picks, device=x.device)
    mind = torch.full((n,), math.inf, device=x.device)
    with _progress(budget, budget * n * x.shape[1], "k-center") as bar:
        bar.update(len(picks))
        while len(picks) < budget:
            mind = torch.minimum(mind, min_sq_distances(x, x[centers])[0], out=mind)
            mind[centers] = -1.0
            new = _farthest_run(x, x_sq, mind, min(candidates, budget - len(picks)))
            picks += new
            centers = torch.tensor(new, device=x.device)
            bar.update(len(new))
    return torch.tensor(picks, dtype=torch.int64, device=x.device)


def _farthest_run(x: Tensor, x_sq: Tensor, mind: Tensor, limit: int) -> list[int]:
    """Up to ``limit`` consecutive greedy k-center picks from the current distances ``mind``
    (taken points at -1), using only the farthest points' distances to one another."""
    first = int(torch.argmax(mind))  # the plain rule: the farthest point, lowest index on ties
    if limit == 1 or mind.numel() < 3:
        return [first]
    top_values, top_idx = torch.topk(mind, min(limit + 2, mind.numel()))
    # Everything outside the candidates is at most the smallest value topk returned.
    bound = float(top_values[-1])
    keep = top_idx[:-1][top_idx[:-1] != first]
    rows = torch.cat([torch.tensor([first], device=x.device), keep])
    within = _block(x[rows], x_sq[rows], x[rows], x_sq[rows])[:, 1:].tolist()
    values = mind[keep].tolist()
    ids = keep.tolist()
    picks = [first]
    values = [min(v, within[0][j]) for j, v in enumerate(values)]
    while len(picks) < limit:
        best = max(range(len(ids)), key=lambda j: (values[j], -ids[j]), default=None)
        if best is None or not values[best] > bound:
            break
        picks.append(ids[best])
        column = within[best + 1]
        values = [min(v, column[j]) for j, v in enumerate(values)]
        values[best] = -1.0
    return picks


#: Signature of a squared-distance oracle for :func:`d2_sampling`: ``(rows, centers) -> (r, m)``
#: squared distances between the points ``rows`` (a slice or an index tensor) and ``centers``.
SqDistances = Callable[[slice | Tensor, Tensor], Tensor]

#: New centers :func:`d2_sampling` accepts before folding them into the full distance vector.
D2_BATCH = 64


def d2_sampling(
    n: int,
    k: int,
    sq_dist: SqDistances,
    generator: torch.Generator,
    device: torch.device,
    *,
    first: int | None = None,
    mask: Tensor | None = None,
    batch: int = D2_BATCH,
    desc: str = "k-means++",
    work: float = 0.0,
) -> Tensor:
    """k-means++ D² sampling of ``k`` distinct indices out of ``n`` points (pick order).

    Every pick after the first is drawn with probability proportional to its squared distance to
    the nearest earlier pick, exactly as in plain k-means++, but without one pass over all points
    per pick: candidates are drawn from the distances as of the last full pass (the proposal) and
    accepted with probability current / proposal distance (rejection sampling, exact because the
    current distances never exceed the proposal's), where only the candidates' distances to the
    picks made since that pass are computed. A full pass folds in up to ``batch`` new picks at
    once (one matrix product), so ``k`` picks cost about ``k / batch`` passes.

    Only rows where ``mask`` is True (default: all) are eligible; ``first`` defaults to a uniform
    eligible row. Once every remaining eligible point duplicates a pick, picks are uniform.
    """
    eligible = (
        torch.ones(n, dtype=torch.bool, device=device)
        if mask is None
        else mask.to(device=device, dtype=torch.bool).clone()
    )
    available = int(eligible.sum())
    if not 1 <= k <= available:
        raise ValueError(f"k={k} must be in [1, {available}] (eligible points)")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    gen = device_generator(generator, device)

    def uniform_eligible() -> int:
        free = eligible.nonzero().squeeze(1)
        return int(free[torch.randint(free.numel(), (1,), generator=gen, device=device)])

    if first is None:
        first = uniform_eligible()
    elif not 0 <= first < n or not eligible[first]:
        raise ValueError(f"first={first} is not an eligible row")
    picks, pending = [first], [first]
    eligible[first] = False
    mind = torch.full((n,), math.inf, dtype=torch.float32, device=device)
    with _progress(k, work, desc) as bar:
        bar.update()
        while len(picks) < k:
            _fold_min(mind, sq_dist, torch.tensor(pending, device=device))
            pending = []
            mind.masked_fill_(~eligible, 0.0)
            total = mind.sum()
            if not (total > 0 and torch.isfinite(total)):  # all left duplicate a pick
                new = [uniform_eligible()]
            else:
                new = _accept_candidates(mind, sq_dist, gen, min(batch, k - len(picks)))
            for pick in new:
                eligible[pick] = False
            picks += new
            pending += new
            bar.update(len(new))
    return torch.tensor(picks, dtype=torch.int64, device=device)


def _fold_min(mind: Tensor, sq_dist: SqDistances, centers: Tensor) -> None:
    """Lower ``mind`` to each point's squared distance to its nearest row of ``centers``."""
    n = mind.shape[0]
    chunk = auto_chunk(centers.numel(), mind.device)
    for start in range(0, n, chunk):
        rows = slice(start, min(n, start + chunk))
        torch.minimum(mind[rows], sq_dist(rows, centers).amin(dim=1), out=mind[rows])


def _accept_candidates(
    proposal: Tensor, sq_dist: SqDistances, gen: torch.Generator, limit: int
) -> list[int]:
    """Up to ``limit`` D² picks by rejection from ``proposal`` (stops at the first run of
    ``4 · limit`` candidates); see :func:`d2_sampling`."""
    draws = torch.multinomial(proposal, 4 * limit, replacement=True, generator=gen)
    current = proposal[draws]
    thresholds = torch.rand(draws.numel(), generator=gen, device=draws.device).mul_(current)
    draw_list, threshold_list, current_list = draws.tolist(), thresholds.tolist(), current.tolist()
    accepted: list[int] = []
    for j, candidate in enumerate(draw_list):
        if current_list[j] > threshold_list[j]:
            accepted.append(candidate)
            if len(accepted) == limit:
                break
            center = draws[j : j + 1]
            torch.minimum(current, sq_dist(draws, center)[:, 0], out=current)
            current.masked_fill_(draws == candidate, 0.0)
            current_list = current.tolist()
    return accepted


def kmeans_plusplus(
    x: Tensor, k: int, generator: torch.Generator, first: int | None = None
) -> Tensor:
    """k-means++ seeding: ``k`` distinct indices by D² sampling (first uniform unless ``first``)."""
    _check_2d(x, "x")
    x = _f32(x)
    x_sq = _sq_norms(x)

    def sq_dist(rows: slice | Tensor, centers: Tensor) -> Tensor:
        return _block(x[rows], x_sq[rows], x[centers], x_sq[centers])

    n, d = x.shape
    return d2_sampling(n, k, sq_dist, generator, x.device, first=first, work=k * n * d)


def outer_sq_distances(a: Tensor, b: Tensor, i: int | Tensor) -> Tensor:
    """``‖a_j⊗b_j − a_i⊗b_i‖²`` for all rows j, without materializing the outer products.

    Uses ``‖a⊗b − c⊗d‖² = ‖a‖²‖b‖² − 2(a·c)(b·d) + ‖c‖²‖d‖²``.
    """
    a, b = _f32(a), _f32(b)
    centers = torch.as_tensor(i, device=a.device).reshape(1)
    return _outer_sq_distances(a, b, _sq_norms(a) * _sq_norms(b))(slice(None), centers)[:, 0]


def _outer_sq_distances(a: Tensor, b: Tensor, norms: Tensor) -> SqDistances:
    """Squared-distance oracle between implicit rows ``a_j ⊗ b_j`` (``norms`` = their ‖·‖²)."""

    def sq_dist(rows: slice | Tensor, centers: Tensor) -> Tensor:
        cross = matmul_nt(a[rows], a[centers]).mul_(matmul_nt(b[rows], b[centers]))
        return cross.mul_(-2.0).add_(norms[rows].unsqueeze(1)).add_(norms[centers]).clamp_min_(0)

    return sq_dist


def kmeans_plusplus_outer(
    a: Tensor,
    b: Tensor,
    k: int,
    generator: torch.Generator,
    first: int | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """k-means++ D² seeding on the implicit embeddings ``a_i ⊗ b_i`` (BADGE), never materialized.

    Only rows where ``mask`` is True (default: all) can be picked. ``first`` defaults to the
    eligible row with the largest embedding norm (as in the BADGE paper).
    """
    _check_2d(a, "a")
    _check_2d(b, "b")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"a and b need the same rows, got {a.shape[0]} and {b.shape[0]}")
    a, b = _f32(a), _f32(b)
    norms = _sq_norms(a) * _sq_norms(b)
    if mask is not None:
        mask = mask.to(device=a.device, dtype=torch.bool)
    if first is None and a.shape[0]:
        first = int(torch.argmax(norms if mask is None else norms.masked_fill(~mask, -1.0)))
    n = a.shape[0]
    work = k * n * (a.shape[1] + b.shape[1])
    sq_dist = _outer_sq_distances(a, b, norms)
    return d2_sampling(
        n, k, sq_dist, generator, a.device, first=first, mask=mask, desc="BADGE", work=work
    )


def _feature_variance(x: Tensor, x_sq: Tensor) -> Tensor:
    """Mean over dimensions of the per-dimension variance of ``x``, from the squared row norms
    ``x_sq`` (``(Σ‖x‖² − N‖mean‖²) / (N·D)`` in float64: no pass over ``x`` beyond its mean)."""
    mean = x.mean(dim=0).double()  # not mean(dtype=float64): that converts all of x first
    total = x_sq.sum(dtype=torch.float64) - x.shape[0] * mean.square().sum()
    return total.clamp_min(0.0) / max(1, x.numel())


def cluster_sums(x: Tensor, assignment: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per cluster id in ``[0, k)``: the sum of its rows of float32 ``x`` (k, D), and its size.

    On the CPU a sparse (k × N) one-hot CSR product, summing in row order like ``index_add_``
    (same result) but 1.5–5× faster here; ``index_add_`` elsewhere.
    """
    counts = torch.bincount(assignment, minlength=k)
    if x.device.type != "cpu":
        return torch.zeros(k, x.shape[1], device=x.device).index_add_(0, assignment, x), counts
    ptr = torch.zeros(k + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=ptr[1:])
    order = torch.argsort(assignment, stable=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
        onehot = torch.sparse_csr_tensor(
            ptr, order, torch.ones(order.numel()), size=(k, x.shape[0]), check_invariants=False
        )
        return onehot @ x, counts


#: Skip the rows of a Lloyd iteration whose assignment provably cannot change (set False to
#: recompute every row every iteration; same result).
USE_KMEANS_BOUNDS = True

#: Stale rows above this fraction of the pool are recomputed in one pass over all rows (a gather
#: of that many rows costs about as much as the products it saves).
BOUNDS_FULL_FRACTION = 0.5


def _sq_distance_error(d: int, x_norm: float, c_norm: float, device: torch.device) -> float:
    """A rigorous bound on the rounding error of a float32 ``‖x‖² + ‖c‖² − 2x·c`` for rows of norm
    ≤ ``x_norm`` and centers ≤ ``c_norm``: ``γ_D (‖x‖ + ‖c‖)²`` for the dot product and the norms
    plus four roundings of the sum (TF32 products on CUDA when enabled). A worst case: typical
    errors are ~√D times smaller, and the rounding of the bounds' own updates ~100× smaller."""
    tf32 = device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
    u = 2.0**-11 if tf32 else 2.0**-24
    return (d * u / max(1e-12, 1.0 - d * u) + 4 * u) * (x_norm + c_norm) ** 2


class _LloydAssignment:
    """Each row's nearest centroid, with Elkan's bounds where they fit in memory (k ≤ D: at most
    the feature matrix's size): an upper bound on the distance to its own centroid and a lower
    one on the distance to each other centroid (N × k float32), both widened by a rigorous bound
    on float32 rounding (:func:`_sq_distance_error`) and moved by the centroid shifts. A row
    whose bounds stay apart by twice that keeps its centroid without a product: exactly what
    recomputing it in float32 would give. Without bounds every row is recomputed every time."""

    def __init__(self, x: Tensor, x_sq: Tensor, centroids: Tensor) -> None:
        n, k = x.shape[0], centroids.shape[0]
        self.x, self.x_sq, self.x_norm = x, x_sq, float(x_sq.max().sqrt())
        self.bounded = USE_KMEANS_BOUNDS and 1 < k <= x.shape[1]
        self.assign = torch.empty(n, dtype=torch.int64, device=x.device)
        self.upper = torch.empty(n, device=x.device) if self.bounded else None
        self.lower = torch.empty(n, k, device=x.device) if self.bounded else None
        self.error = 0.0
        self.refresh(centroids, None)

    def refresh(self, centroids: Tensor, rows: Tensor | None) -> None:
        """Recompute ``rows`` (default all) against ``centroids`` and reset their bounds."""
        c_norm = float(torch.linalg.vector_norm(centroids, dim=1).max())
        self.error = _sq_distance_error(self.x.shape[1], self.x_norm, c_norm, self.x.device)
        for idx, _, partial in _partial_chunks(self.x, centroids, rows):
            best, args = torch.min(partial, dim=1)
            self.assign[idx] = args
            if self.bounded:
                x_sq = self.x_sq[idx]
                best.add_(x_sq).clamp_min_(0.0)
                self.upper[idx] = best.add_(self.error).sqrt_()
                sq = partial.add_(x_sq.unsqueeze(1)).clamp_min_(0.0)
                sq.sub_(self.error).clamp_min_(0.0).sqrt_()
                self.lower[idx] = sq.scatter_(1, args.unsqueeze(1), math.inf)

    def update(self, centroids: Tensor, moved: Tensor) -> None:
        """The assignment to ``centroids``, which moved by at most ``moved`` (k,) since the last
        call: only rows whose bounds no longer separate their centroid are recomputed."""
        if not self.bounded:
            self.refresh(centroids, None)
            return
        moved = moved * (1.0 + 1e-6)  # covers the float32 rounding of the shifts themselves
        self.upper.add_(moved[self.assign])
        other = self.lower.sub_(moved).amin(dim=1)  # own centroid: inf − shift = inf
        stale = (self.upper.square() + 2 * self.error >= other.square()) | (other <= 0)
        stale = stale.nonzero().squeeze(1)
        if stale.numel() > BOUNDS_FULL_FRACTION * self.assign.numel():
            self.refresh(centroids, None)
        elif stale.numel():
            self.refresh(centroids, stale)


@releases_heap
def kmeans(
    x: Tensor, k: int, generator: torch.Generator, n_iter: int = 20, tol: float = 1e-4
) -> tuple[Tensor, Tensor]:
    """Lloyd k-means from k-means++ seeds: ``(centroids (k, D) float32, assignment (N,) int64)``.

    Stops after ``n_iter`` iterations or once the total squared centroid shift is at most
    ``tol`` × the mean feature variance (scikit-learn's rule). An emptied cluster is re-seeded at
    the point farthest from its centroid, so clusters stay non-empty while distinct points remain.
    Rows whose centroid provably stays the nearest are not recomputed (:class:`_LloydAssignment`):
    the result is that of plain Lloyd, 1.4–1.6× faster at 50k × 768, k = 200 here.
    """
    _check_2d(x, "x")
    x = _f32(x)
    n, d = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be in [1, {n}] (number of points)")
    centroids = x[kmeans_plusplus(x, k, generator)].clone()
    x_sq = _sq_norms(x)
    threshold = tol * _feature_variance(x, x_sq)
    nearest = _LloydAssignment(x, x_sq, centroids)
    for _ in tqdm(range(n_iter), desc="k-means", leave=False, disable=n_iter * n * k * d < 5e10):
        sums, counts = cluster_sums(x, nearest.assign, k)
        new = torch.where(
            (counts > 0).unsqueeze(1), sums / counts.clamp_min(1).unsqueeze(1).float(), centroids
        )
        empty = (counts == 0).nonzero().squeeze(1)
        if empty.numel():  # the farthest points, from exact distances to the old centroids
            mind = min_sq_distances(x, centroids, x_sq=x_sq)[0]
            new[empty] = x[torch.topk(mind, empty.numel()).indices]
        diff = new - centroids
        shift = diff.square().sum()
        centroids = new
        nearest.update(centroids, torch.linalg.vector_norm(diff, dim=1))
        if shift <= threshold:
            break
    return centroids, nearest.assign


def nearest_to_centroids(x: Tensor, centroids: Tensor, assignment: Tensor | None = None) -> Tensor:
    """Distinct indices, one per non-empty cluster: the member nearest its cluster's centroid.

    Ordered by cluster id. ``assignment`` defaults to each point's nearest centroid.
    """
    _check_2d(x, "x")
    _check_2d(centroids, "centroids")
    if assignment is None:
        _, assignment = min_sq_distances(x, centroids)
    assignment = assignment.to(x.device)
    n = x.shape[0]
    chunk = auto_chunk(x.shape[1], x.device, 16)  # a gathered centroid row and a difference
    dist = torch.empty(n, dtype=torch.float32, device=x.device)
    c = _f32(centroids)
    for start in range(0, n, chunk):
        diff = _f32(x[start : start + chunk]) - c[assignment[start : start + chunk]]
        dist[start : start + chunk] = diff.square_().sum(dim=1)
    return argmin_per_group(dist, assignment)


def argmin_per_group(values: Tensor, groups: Tensor) -> Tensor:
    """Index of the smallest value within each group present (ties: lowest index), by group id."""
    order = torch.argsort(values, stable=True)
    order = order[torch.argsort(groups[order], stable=True)]
    sorted_groups = groups[order]
    first = torch.ones(order.numel(), dtype=torch.bool, device=order.device)
    first[1:] = sorted_groups[1:] != sorted_groups[:-1]
    return order[first]


#: Let :func:`knn` use faiss on the CPU when it is installed (set False to force torch).
USE_FAISS = True


def _faiss() -> ModuleType | None:
    """The faiss module when it is importable, else None."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _faiss_knn(
    faiss: ModuleType, x: Tensor, q: Tensor, k: int, self_query: bool
) -> tuple[Tensor, Tensor]:
    """:func:`knn` through faiss' exact flat L2 index (CPU, as many threads as torch uses)."""
    faiss.omp_set_num_threads(torch.get_num_threads())
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x.contiguous().numpy())
    sq, ids = index.search(_f32(q).contiguous().numpy(), k + self_query)
    sq, ids = torch.from_numpy(sq), torch.from_numpy(ids)
    if self_query:  # drop each point itself, or the farthest hit when ties pushed it out
        keep = ids != torch.arange(ids.shape[0]).unsqueeze(1)
        keep[keep.sum(dim=1) > k, -1] = False
        sq, ids = sq[keep].view(-1, k), ids[keep].view(-1, k)
    return sq.clamp_min_(0.0).sqrt_(), ids


def knn(
    x: Tensor, k: int, queries: Tensor | None = None, chunk_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """Exact k nearest neighbours: ``(dist (n, k) Euclidean float32, idx (n, k) int64)``, nearest
    first. Queries default to ``x`` itself, in which case each point is excluded from its own list.

    On the CPU, faiss' exact ``IndexFlatL2`` does the search when faiss is installed (and
    :data:`USE_FAISS`): ~1.6× faster than the torch path here (its own blocked top-k), same
    neighbours up to the order of exact ties.
    """
    _check_2d(x, "x")
    self_query = queries is None
    if not self_query:
        _check_2d(queries, "queries")
    x = _f32(x)
    q = x if self_query else queries
    n = x.shape[0]
    limit = n - 1 if self_query else n
    if not 1 <= k <= limit:
        raise ValueError(f"k={k} must be in [1, {limit}] (points available as neighbours)")
    if x.device.type == "cpu" and USE_FAISS and (faiss := _faiss()) is not None:
        return _faiss_knn(faiss, x, q, k, self_query)
    x_sq = _sq_norms(x)
    chunk = chunk_size or auto_chunk(n, x.device)
    m = q.shape[0]
    dist = torch.empty(m, k, dtype=torch.float32, device=x.device)
    idx = torch.empty(m, k, dtype=torch.int64, device=x.device)
    with _progress(m, m * n * x.shape[1], "kNN") as bar:
        for start in range(0, m, chunk):
            qc = _f32(q[start : start + chunk])
            d = _partial_block(qc, x, x_sq)
            if self_query:
                rows = torch.arange(d.shape[0], device=x.device)
                d[rows, rows + start] = math.inf
            vals, ids = torch.topk(d, k, dim=1, largest=False, sorted=True)
            vals.add_(_sq_norms(qc).unsqueeze(1)).clamp_min_(0.0)
            dist[start : start + chunk] = vals.sqrt_()
            idx[start : start + chunk] = ids
            bar.update(d.shape[0])
    return dist, idx


def _square_block(device: torch.device) -> int:
    """Side of a square float32 distance block within :data:`CHUNK_BYTES`."""
    return max(1, math.isqrt(CHUNK_BYTES.get(device.type, CHUNK_BYTES["cuda"]) // 4))


def _upper_blocks(n: int, block: int) -> list[tuple[slice, slice]]:
    """Square blocks ``(rows, cols)`` covering the upper triangle (diagonal included) of n × n."""
    starts = range(0, n, block)
    return [
        (slice(i, min(n, i + block)), slice(j, min(n, j + block)))
        for i in starts
        for j in starts
        if j >= i
    ]


@releases_heap
def nearest_other_label_sq_distances(
    x: Tensor, labels: Tensor, block: int | None = None, rows: Tensor | None = None
) -> Tensor:
    """Per row: squared distance to the nearest row with a different label (inf if none).

    One pass over the upper triangle of the distance matrix in square blocks: each block serves
    its rows and, by symmetry, its columns, so the pass costs N²D/2 multiply-adds. With ``rows``
    (indices), only those rows' distances come back, from a pass over ``rows`` × all points
    (|rows|·N·D multiply-adds).
    """
    _check_2d(x, "x")
    x = _f32(x)
    n = x.shape[0]
    labels = labels.to(x.device)
    x_sq = _sq_norms(x)
    side = block or _square_block(x.device)
    if rows is not None:
        rows = rows.to(device=x.device, dtype=torch.int64)
        out = torch.full((rows.numel(),), math.inf, dtype=torch.float32, device=x.device)
        starts = range(0, rows.numel(), side)
        with _progress(len(starts), rows.numel() * n * x.shape[1], "purity (sample)") as bar:
            for start in starts:
                r = rows[start : start + side]
                for cols in range(0, n, side):
                    c = slice(cols, min(n, cols + side))
                    d = _block(x[r], x_sq[r], x[c], x_sq[c])
                    d.masked_fill_(labels[r].unsqueeze(1) == labels[c].unsqueeze(0), math.inf)
                    part = out[start : start + side]
                    torch.minimum(part, d.amin(dim=1), out=part)
                bar.update()
        return out
    out = torch.full((n,), math.inf, dtype=torch.float32, device=x.device)
    blocks = _upper_blocks(n, side)
    with _progress(len(blocks), n * n * x.shape[1] / 2, "purity") as bar:
        for r, c in blocks:
            d = _block(x[r], x_sq[r], x[c], x_sq[c])
            d.masked_fill_(labels[r].unsqueeze(1) == labels[c].unsqueeze(0), math.inf)
            torch.minimum(out[r], d.amin(dim=1), out=out[r])
            if r != c:
                torch.minimum(out[c], d.amin(dim=0), out=out[c])
            bar.update()
    return out


#: Screen :func:`range_graph` blocks with a bfloat16 product on CPUs where oneDNN has bfloat16
#: (set False to decide every pair from the float32 product alone).
USE_BF16_SCREEN = True

#: Slack of the bfloat16 screen, in units of ``max‖a‖·max‖b‖`` of the block: bfloat16 inputs
#: (2⁻⁹ relative each) and output (2⁻⁹) move a dot product by at most ~2⁻⁸ + 2⁻⁹ of that
#: (plus float32 accumulation, ~D·2⁻²⁴); 2⁻⁶ leaves a factor 2.7.
SCREEN_SLACK = 2.0**-6

#: A screened block whose candidate pairs exceed this fraction of its entries is recomputed as
#: one float32 product; fewer candidates are checked pair by pair.
SCREEN_PAIR_FRACTION = 1 / 512

# Candidate pairs checked at once (two gathered D-vectors each).
_PAIR_CHUNK = 8192


def _bf16_screen(device: torch.device) -> bool:
    return (
        USE_BF16_SCREEN
        and device.type == "cpu"
        and torch.backends.mkldnn.is_available()
        and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    )


@releases_heap
def range_graph(
    x: Tensor, delta: float, block: int | None = None, with_sq: bool = False
) -> tuple[Tensor, ...]:
    """All pairs ``(i, j)`` with ``‖x_i − x_j‖ < delta``, self-loops always included.

    Returns ``(rows, cols)`` int64, sorted by row then column; the graph is exactly symmetric.
    With ``with_sq`` also each pair's float32 squared distance (0 on self-loops), with which
    :func:`filter_range_graph` shrinks the graph to a smaller δ without another pass.

    One pass over the upper triangle of the distance matrix in square blocks (N²D/2
    multiply-adds); each pair is decided once and mirrored. On CPUs with oneDNN bfloat16 the
    blocks are first screened by a bfloat16 product (2× the float32 throughput here) against a
    threshold lowered by a rigorous bound on its error (:data:`SCREEN_SLACK`); only the pairs
    that pass are decided in float32 (``‖x_j‖² − 2 x_i·x_j < δ² − ‖x_i‖²``, as without the
    screen), so the graph is the float32 one.
    """
    _check_2d(x, "x")
    if not delta >= 0:
        raise ValueError(f"delta must be >= 0, got {delta}")
    x = _f32(x)
    n = x.shape[0]
    x_sq = _sq_norms(x)
    delta_sq = float(delta) ** 2
    screen = _bf16_screen(x.device) and x.shape[1] > 0
    xb = x.bfloat16() if screen else None
    norms = x_sq.sqrt()
    every = torch.arange(n, device=x.device)
    rows_out, cols_out, sq_out = [every], [every], [torch.zeros(n, device=x.device)]
    blocks = _upper_blocks(n, block or _square_block(x.device))
    with _progress(len(blocks), n * n * x.shape[1] / 2, "range graph") as bar:
        for rows, cols in blocks:
            if screen:
                r, c, partial = _screened_block(x, x_sq, norms, xb, rows, cols, delta_sq)
            else:
                r, c, partial = _exact_block(x, x_sq, rows, cols, delta_sq)
            r, c = r + rows.start, c + cols.start
            rows_out += [r, c]
            cols_out += [c, r]
            if with_sq:
                sq = partial.add_(x_sq[r]).clamp_min_(0.0)
                sq_out += [sq, sq]
            bar.update()
    del xb
    r, c = torch.cat(rows_out), torch.cat(cols_out)
    del rows_out, cols_out
    order = torch.argsort(r * n + c)
    if not with_sq:
        return r[order], c[order]
    sq = torch.cat(sq_out)
    del sq_out
    return r[order], c[order], sq[order]


def _exact_block(
    x: Tensor, x_sq: Tensor, rows: slice, cols: slice, delta_sq: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Pairs of one upper block within δ (block-local indices, strictly above the diagonal of a
    diagonal block), decided from the float32 product, and their ``‖x_j‖² − 2 x_i·x_j``."""
    limit = (delta_sq - x_sq[rows]).unsqueeze(1)
    partial = _partial_block(x[rows], x[cols], x_sq[cols])
    close = partial < limit
    if rows == cols:  # strictly above the diagonal; self-loops are added once
        close.triu_(diagonal=1)
    r, c = close.nonzero(as_tuple=True)
    return r, c, partial[r, c]


def _screened_block(
    x: Tensor, x_sq: Tensor, norms: Tensor, xb: Tensor, rows: slice, cols: slice, delta_sq: float
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`_exact_block` after a bfloat16 screen: a pair within δ has
    ``x_i·x_j > (‖x_i‖² + ‖x_j‖² − δ²) / 2``, so its bfloat16 dot product exceeds that bound's
    block minimum less the slack; only those candidates are decided in float32."""
    scale = float(norms[rows].max()) * float(norms[cols].max())
    bound = (float(x_sq[rows].min()) + float(x_sq[cols].min()) - delta_sq) / 2
    bound -= SCREEN_SLACK * scale + abs(bound) * 2.0**-7  # the bfloat16 rounding of the bound
    candidate = torch.matmul(xb[rows], xb[cols].T) > torch.tensor(bound, dtype=torch.bfloat16)
    if rows == cols:
        candidate.triu_(diagonal=1)
    r, c = candidate.nonzero(as_tuple=True)
    del candidate
    if r.numel() > SCREEN_PAIR_FRACTION * (rows.stop - rows.start) * (cols.stop - cols.start):
        return _exact_block(x, x_sq, rows, cols, delta_sq)
    partial = torch.empty(r.numel(), device=x.device)
    for start in range(0, r.numel(), _PAIR_CHUNK):
        ri = r[start : start + _PAIR_CHUNK] + rows.start
        ci = c[start : start + _PAIR_CHUNK] + cols.start
        dots = torch.linalg.vecdot(x[ri], x[ci])
        partial[start : start + _PAIR_CHUNK] = x_sq[ci] - 2.0 * dots
    keep = partial < delta_sq - x_sq[r + rows.start]
    return r[keep], c[keep], partial[keep]


def filter_range_graph(
    rows: Tensor, cols: Tensor, sq: Tensor, delta: float
) -> tuple[Tensor, Tensor, Tensor]:
    """The pairs of a :func:`range_graph` (``with_sq``) closer than ``delta`` (≤ its δ), self-loops
    kept; still sorted and symmetric."""
    keep = (sq < float(delta) ** 2) | (rows == cols)
    return rows[keep], cols[keep], sq[keep]
