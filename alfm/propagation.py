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
round. Memory stays O(N·k): the kNN lists, then S as two CSR halves P = D^-½ A D^-½ and Pᵀ
(S·F = P·F + Pᵀ·F), never W merged or anything N × N. It runs on the features' device.
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
    """S = P + Pᵀ of a pool, P = D^-½ A D^-½ (sparse CSR, (N, N)), and ``transposed`` = Pᵀ
    (CSR too, so both products run as sparse × dense)."""

    forward: Tensor
    transposed: Tensor
    #: D: nonzero entries per row of W (the reference's degree), int64 (N,).
    degree: Tensor

    @property
    def num_points(self) -> int:
        """N."""
        return int(self.degree.numel())

    def diffuse(self, f: Tensor) -> Tensor:
        """S·F for dense ``f`` (N, C)."""
        return torch.addmm(self.forward @ f, self.transposed, f)

    def propagate(
        self, labeled: Tensor, labels: Tensor, num_classes: int, alpha: float, n_iter: int
    ) -> Tensor:
        """F (N, C) float32 after ``n_iter`` steps from the one-hot ``labels`` of the pool rows
        ``labeled``, the labeled rows reset to their one-hot labels.

        Stops early, with the very same F, once a step returns its input bit for bit (the
        products are deterministic, so every later step would too): with the reference's
        α = 0.9 the map contracts by (1 − α)·ρ(S) ≤ 0.2 per step and F settles in a few dozen.
        """
        device = self.degree.device
        labeled = labeled.to(device=device, dtype=torch.int64)
        labels = labels.to(device=device, dtype=torch.int64)
        y = torch.zeros(self.num_points, num_classes, device=device)
        y[labeled, labels] = 1.0
        f, scaled_y = y.clone(), y * alpha
        for _ in range(n_iter):
            step = self.diffuse(f).mul_(1 - alpha).add_(scaled_y)
            if torch.equal(step, f):  # a floating-point fixed point: later steps change nothing
                break
            f = step
        f[labeled] = y[labeled]
        return f


def build_graph(features: Tensor, knn_k: int, gamma: float) -> PropagationGraph:
    """The propagation graph of ``features`` (N, D), on their device; ``knn_k`` is capped at
    N − 1."""
    n = features.shape[0]
    device = features.device
    k = min(knn_k, n - 1)
    if k < 1:
        none = torch.zeros(0, dtype=torch.int64, device=device)
        empty = _csr(torch.zeros(n + 1, dtype=torch.int64, device=device), none, none.float(), n)
        return PropagationGraph(empty, empty, torch.zeros(n, dtype=torch.int64, device=device))
    unit = l2_normalize(features)
    dist, idx = knn(unit, k)
    del unit
    weight = dist  # in place: d → (1 − d²/4)^γ clipped to [0, 1]
    weight.square_().mul_(-0.25).add_(1.0).clamp_(0.0, 1.0).pow_(gamma)
    index_dtype = torch.int32 if n * k < 2**31 and n < 2**31 else torch.int64
    cols = _sorted_rows(idx, weight).to(index_dtype)
    del idx
    degree = _degree(cols, weight)
    inv_sqrt = torch.where(degree > 0, degree.double().clamp_min(1).rsqrt(), 0.0).float()
    chunk = max(1, CHUNK_ENTRIES // k)
    for start in range(0, n, chunk):  # P = D^-½ A D^-½, in place
        part = slice(start, start + chunk)
        weight[part].mul_(inv_sqrt[part, None]).mul_(inv_sqrt[cols[part].long()])
    crow = torch.arange(0, n * k + 1, k, dtype=index_dtype, device=device)
    forward = _csr(crow, cols.view(-1), weight.view(-1), n)
    return PropagationGraph(forward, _transpose(cols, weight, n), degree)


def _sorted_rows(idx: Tensor, weight: Tensor) -> Tensor:
    """Sort each row of the kNN lists by column (``weight`` permuted alike, in place); returns
    ``idx``, sorted."""
    chunk = max(1, CHUNK_ENTRIES // idx.shape[1])
    for start in range(0, idx.shape[0], chunk):
        part = slice(start, start + chunk)
        idx[part], order = idx[part].sort(dim=1)
        weight[part] = weight[part].gather(1, order)
    return idx


def _degree(cols: Tensor, weight: Tensor) -> Tensor:
    """Nonzero entries per row of W = A + Aᵀ: |out(i)| + |in(i)| − |out(i) ∩ in(i)| over the
    positive weights, the mutual pairs found by binary search of the sorted keys i·N + j."""
    n, k = cols.shape
    device = cols.device
    positive = weight > 0
    out_count = positive.sum(dim=1)
    in_count = torch.zeros(n, dtype=torch.int64, device=device)
    mutual = torch.zeros(n, dtype=torch.int64, device=device)
    rows = torch.arange(n, device=device).unsqueeze(1)
    keys = (rows * n + cols).view(-1)  # sorted: rows ascend, columns ascend within a row
    flat_positive = positive.view(-1)
    chunk = max(1, CHUNK_ENTRIES // k)
    for start in range(0, n, chunk):
        part = slice(start, start + chunk)
        targets, mask = cols[part].long(), positive[part]
        in_count += torch.bincount(targets[mask], minlength=n)
        reverse = targets * n + rows[part]  # the key of (j, i) for each edge (i, j)
        where = torch.searchsorted(keys, reverse.view(-1)).clamp_max_(keys.numel() - 1)
        found = (keys[where] == reverse.view(-1)) & flat_positive[where]
        mutual[part] = (found.view(reverse.shape) & mask).sum(dim=1)
    return out_count + in_count - mutual


def _transpose(cols: Tensor, weight: Tensor, n: int) -> Tensor:
    """Pᵀ as CSR from P's (N, k) rows: a stable sort of the columns, so each row of Pᵀ lists its
    sources in ascending order."""
    k = cols.shape[1]
    flat = cols.view(-1)
    order = torch.sort(flat, stable=True).indices
    sources = torch.div(order, k, rounding_mode="floor").to(cols.dtype)
    values = weight.view(-1)[order]
    del order
    counts = torch.bincount(flat.long(), minlength=n)
    crow = torch.zeros(n + 1, dtype=cols.dtype, device=cols.device)
    crow[1:] = counts.cumsum(0)
    return _csr(crow, sources, values, n)


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
