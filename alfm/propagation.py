"""Label propagation over a kNN graph of the pool (the reference's ``ssl``), sparse, O(N·k).

The reference (``ALFM/src/clustering/label_prop.py``) and what is reproduced here:

- a graph over the L2-normalized train features: each point's k nearest neighbours (itself
  excluded), similarity ``(1 − d²/4)^γ`` of the squared Euclidean distance d² (the cosine mapped
  to [0, 1] for γ = 1) clipped to [0, 1], A its (N, N) sparse matrix, W = A + Aᵀ (mutual
  neighbours get the sum of both weights);
- S = D^-½ W D^-½ with D the number of nonzero entries of each row of W — the reference's choice;
  Zhou et al. (2004) normalize by the weight sums Σ_j W_ij;
- F₀ = Y (one-hot rows for the labeled points, zero rows elsewhere), n_iter steps of
  F ← (1 − α)·S·F + α·Y, then the labeled rows reset to Y. The reference's α weights the labels:
  Zhou et al. iterate F ← α·S·F + (1 − α)·Y, so the reference's α = 0.9 is their α = 0.1;
- the classifier trains on every pool row, on argmax F weighted by 1 − H(F̂)/log C, the
  normalized entropy of the row F̂ = F / Σ F (what the reference's training step does with soft
  targets).

FIX (where the reference gives NaN): a row of W without nonzero entries gets S-row zero (the
reference divides by D = 0), a row of F without mass (no path to a labeled point) gets weight
0 (the reference divides by its zero sum), and similarities are clipped to [0, 1] before the
power γ (a rounding-negative base gives NaN for fractional γ).

The graph depends only on the features: :func:`build_graph` runs once per run (exact kNN from
:func:`alfm.kernels.knn`, so it is deterministic), :meth:`PropagationGraph.propagate` every
round. Memory stays O(N·k): the kNN lists, their transpose, then S as one CSR matrix of W's
nonzero entries; never anything N × N. It runs on the features' device, CPU or CUDA.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from alfm.config import Config, setting
from alfm.kernels import knn, l2_normalize

#: Entries (rows × k) handled per chunk while the graph is built.
CHUNK_ENTRIES = 2**23


@dataclass(frozen=True)
class SslConfig(Config):
    """Label propagation of a run (defaults from the reference); off by default. Its other
    settings only act when ``enable`` is true, so giving them (or a non-default value) with
    ``enable: false`` is an error, not a no-op."""

    section = "ssl"
    key_format = "ssl.{}"

    enable: bool = setting(False, help="train on every pool point with propagated labels")
    alpha: float = setting(
        0.9, minimum=0, maximum=1, help="weight of the labels Y in F <- (1-alpha) S F + alpha Y"
    )
    knn: int = setting(500, minimum=1, help="neighbours per point (capped at pool size - 1)")
    gamma: float = setting(1.0, minimum=0, help="similarity power: (1 - d^2/4)^gamma")
    n_iter: int = setting(100, minimum=1, help="propagation steps per round")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.enable:
            for f in fields(self):
                if f.name != "enable" and getattr(self, f.name) != f.default:
                    raise ValueError(self._inert(f.name))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SslConfig:
        """Build from a mapping; unknown keys, and settings given while disabled, are errors."""
        config = super().from_dict(data)
        if not config.enable:
            given = sorted(set(data) - {"enable"})
            if given:
                raise ValueError(config._inert(given[0]))
        return config

    @staticmethod
    def _inert(name: str) -> str:
        return f"ssl.{name} has no effect while ssl.enable is false; remove it or enable ssl"


@dataclass
class PropagationGraph:
    """S = D^-½ W D^-½ of a pool as one sparse CSR (N, N) matrix (W's nonzero entries only)."""

    matrix: Tensor
    #: D: nonzero entries per row of W (the reference's degree), int64 (N,).
    degree: Tensor
    #: Steps the last :meth:`propagate` took (fewer than ``n_iter`` when it stopped early).
    last_steps: int = 0

    @property
    def num_points(self) -> int:
        """N."""
        return int(self.degree.numel())

    def propagate(
        self, labeled: Tensor, labels: Tensor, num_classes: int, alpha: float, n_iter: int
    ) -> Tensor:
        """F (N, C) float32 after ``n_iter`` steps from the one-hot ``labels`` of the pool rows
        ``labeled``, the labeled rows reset to their one-hot labels.

        Stops early, with the very same F, once a step returns its input bit for bit (the
        product is deterministic, so every later step would too): with the reference's α = 0.9
        the map contracts by (1 − α)·ρ(S) ≤ 0.2 per step and F settles in a few dozen.
        """
        device = self.degree.device
        labeled = labeled.to(device=device, dtype=torch.int64)
        labels = labels.to(device=device, dtype=torch.int64)
        y = torch.zeros(self.num_points, num_classes, device=device)
        y[labeled, labels] = 1.0
        f, scaled_y = y.clone(), y * alpha
        self.last_steps = 0
        for _ in range(n_iter):
            step = torch.addmm(scaled_y, self.matrix, f, alpha=1 - alpha)
            if torch.equal(step, f):  # a floating-point fixed point: later steps change nothing
                break
            f = step
            self.last_steps += 1
        f[labeled] = y[labeled]
        return f


def build_graph(
    features: Tensor, knn_k: int, gamma: float, device: torch.device | str | None = None
) -> PropagationGraph:
    """The propagation graph of ``features`` (N, D) on ``device`` (default: the features'; the
    same code on CPU and CUDA); ``knn_k`` is capped at N − 1.

    Peak memory beyond the features: their normalized copy during the kNN search (done in query
    chunks), then the kNN lists and their transpose (8 bytes per entry each) plus S (8 bytes per
    nonzero entry of W, at most 2·N·k).
    """
    device = features.device if device is None else torch.device(device)
    n = features.shape[0]
    k = min(knn_k, n - 1)
    index_dtype = torch.int32 if 2 * n * max(k, 1) < 2**31 else torch.int64
    if k < 1:
        none = torch.zeros(0, dtype=index_dtype, device=device)
        crow = torch.zeros(n + 1, dtype=index_dtype, device=device)
        return PropagationGraph(_csr(crow, none, none.float(), n), crow[1:].long())
    unit = l2_normalize(features.to(device))
    cols, weight = _neighbours(unit, k, gamma, index_dtype)
    del unit
    crow, cols, values = _symmetrized(cols, weight, _transpose(cols, weight))
    degree = (crow[1:] - crow[:-1]).long()
    inv_sqrt = degree.double().clamp_min(1).rsqrt().float()  # D = 0 only with no entries at all
    chunk = max(1, CHUNK_ENTRIES // k)
    for start in range(0, n, chunk):  # S = D^-½ W D^-½, in place
        a, b = int(crow[start]), int(crow[min(n, start + chunk)])
        rows = torch.repeat_interleave(
            inv_sqrt[start : start + chunk], degree[start : start + chunk]
        )
        values[a:b].mul_(rows).mul_(inv_sqrt[cols[a:b].long()])
    return PropagationGraph(_csr(crow, cols, values, n), degree)


def _neighbours(
    unit: Tensor, k: int, gamma: float, index_dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """(columns (N, k), similarities (N, k)) of each row's k nearest other rows: exact kNN
    (:func:`alfm.kernels.knn`) in query chunks, so its (rows, k + 1) search output is never
    whole; each point is dropped from its own list (or the farthest hit, when exact ties pushed
    the point out, as :func:`~alfm.kernels.knn` does for self queries)."""
    n = unit.shape[0]
    cols = torch.empty(n, k, dtype=index_dtype, device=unit.device)
    weight = torch.empty(n, k, device=unit.device)
    chunk = max(1, CHUNK_ENTRIES // (k + 1))
    for start in range(0, n, chunk):
        part = slice(start, start + chunk)
        dist, idx = knn(unit, k + 1, queries=unit[part])
        keep = idx != torch.arange(start, start + idx.shape[0], device=idx.device).unsqueeze(1)
        keep[keep.sum(dim=1) > k, -1] = False
        cols[part] = idx[keep].view(-1, k)
        # (1 − d²/4)^γ clipped to [0, 1]: FIX clipped before the power (NaN for fractional γ)
        weight[part] = (
            dist[keep].view(-1, k).square_().mul_(-0.25).add_(1.0).clamp_(0, 1).pow_(gamma)
        )
    return cols, weight


def _transpose(cols: Tensor, weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Aᵀ as CSR (crow, sources, values) from A's (N, k) rows: a stable counting sort of the
    entries by column, chunk by chunk (each row of Aᵀ lists its sources in ascending order)."""
    n, k = cols.shape
    device = cols.device
    counts = torch.zeros(n, dtype=torch.int64, device=device)
    chunk = max(1, CHUNK_ENTRIES // k)
    for start in range(0, n, chunk):
        counts += torch.bincount(cols[start : start + chunk].reshape(-1).long(), minlength=n)
    crow = torch.zeros(n + 1, dtype=torch.int64, device=device)
    crow[1:] = counts.cumsum(0)
    free = crow[:-1].clone()  # next free slot of each row of Aᵀ
    sources = torch.empty(n * k, dtype=cols.dtype, device=device)
    values = torch.empty(n * k, device=device)
    for start in range(0, n, chunk):
        targets = cols[start : start + chunk].reshape(-1).long()
        order = torch.sort(targets, stable=True).indices
        ordered = targets[order]
        unique, repeats = torch.unique_consecutive(ordered, return_counts=True)
        first = torch.repeat_interleave(repeats.cumsum(0) - repeats, repeats)
        slots = free[ordered] + torch.arange(ordered.numel(), device=device) - first
        sources[slots] = torch.div(order, k, rounding_mode="floor").add_(start).to(cols.dtype)
        values[slots] = weight[start : start + chunk].reshape(-1)[order]
        free[unique] += repeats
    return crow, sources, values


def _symmetrized(
    cols: Tensor, weight: Tensor, transposed: tuple[Tensor, Tensor, Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """W = A + Aᵀ as CSR (crow, columns, values), its zero entries dropped (as scipy's sum
    does in the reference), built block of rows by block of rows from A's rows and Aᵀ's.

    W's buffers are allocated for the 2·N·k entries it may have and filled from the front, so
    only the pages of its actual entries are ever touched (resident). Each entry is the sum of
    at most two weights, so the result does not depend on the order of the additions.
    """
    n, k = cols.shape
    device = cols.device
    t_crow, t_sources, t_values = transposed
    crow = torch.zeros(n + 1, dtype=cols.dtype, device=device)
    out_cols = torch.empty(2 * n * k, dtype=cols.dtype, device=device)
    out_values = torch.empty(2 * n * k, device=device)
    filled = 0
    chunk = max(1, CHUNK_ENTRIES // (2 * k))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        a, b = int(t_crow[start]), int(t_crow[stop])
        local = torch.arange(stop - start, device=device)
        rows = torch.cat(
            [
                local.repeat_interleave(k),
                local.repeat_interleave(t_crow[start + 1 : stop + 1] - t_crow[start:stop]),
            ]
        )
        targets = torch.cat([cols[start:stop].reshape(-1).long(), t_sources[a:b].long()])
        values = torch.cat([weight[start:stop].reshape(-1), t_values[a:b]])
        positive = values > 0
        keys = rows[positive] * n + targets[positive]
        keys, order = torch.sort(keys)
        unique, inverse = torch.unique_consecutive(keys, return_inverse=True)
        summed = torch.zeros(unique.numel(), device=device).index_add_(
            0, inverse, values[positive][order]
        )
        m = unique.numel()
        out_cols[filled : filled + m] = (unique % n).to(cols.dtype)
        out_values[filled : filled + m] = summed
        per_row = torch.bincount(
            torch.div(unique, n, rounding_mode="floor"), minlength=stop - start
        )
        crow[start + 1 : stop + 1] = (per_row.cumsum(0) + filled).to(cols.dtype)
        filled += m
    return crow, out_cols[:filled], out_values[:filled]


def _csr(crow: Tensor, cols: Tensor, values: Tensor, n: int) -> Tensor:
    """An (n, n) sparse CSR tensor of valid parts (no invariant checks, no beta warning)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, cols, values, (n, n), check_invariants=False)


def propagated_targets(f: Tensor) -> tuple[Tensor, Tensor]:
    """(labels, weights) the classifier trains on from propagated ``f`` (N, C): argmax F, and
    1 − H(F̂)/log C with F̂ = F / Σ F (0 for rows without mass), as the reference weights its
    cross-entropy (``H`` with its ε = 1e-8 inside the log)."""
    total = f.sum(dim=1, keepdim=True)
    has_mass = total.squeeze(1) > 0
    p = f / total.clamp_min(torch.finfo(f.dtype).tiny)
    labels = f.argmax(dim=1)
    if f.shape[1] < 2:
        return labels, has_mass.float()
    entropy = -(p * torch.log(p + 1e-8)).sum(dim=1)
    weights = (1 - entropy / math.log(f.shape[1])).clamp_min_(0.0)
    return labels, torch.where(has_mass, weights, 0.0)
