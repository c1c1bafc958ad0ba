"""Alfa-Mix (Parvaneh et al., CVPR 2022) with the closed-form α of the DropQuery reference.

For an unlabeled embedding z (the probe's ``embed``: what its last Linear sees, with any
classifier) with prediction ŷ and g = ∇_z CE(W z + b, ŷ) = Wᵀ(p − onehot(ŷ)),
the reference mixes z with every anchor z* (the per-class mean of the labeled embeddings) using
the per-dimension ``α = ε ‖z* − z‖ g / (‖g‖ (z* − z))``, ε = ``eps / √D``, and calls z a
candidate when ``W (α z* + (1 − α) z) + b`` predicts another class than ŷ for some anchor.

Because ``α ⊙ (z* − z) = ε ‖z* − z‖ g / ‖g‖``, every mix lies on the ray ``z + t ĝ`` (ĝ = g/‖g‖)
at ``t = ε ‖z* − z‖``, and since the logits are affine in t the prediction stays ŷ on an interval
[0, t₀]. So z is a candidate exactly when the mix with its *farthest* anchor flips the prediction:
one pass over U with a |U|×C distance block per chunk, instead of C passes of a |U|×D×C product,
and no division by ``z* − z`` (FIX: the reference divides by it and gets NaN/inf where a
coordinate coincides; a zero gradient means no move and no candidate).

FIX: classes without labeled points get the mean of all labeled embeddings as their anchor (as the
original Alfa-Mix), where the reference averages an empty set (NaN).

Selection: with at least B candidates, k-means (k = B) on their L2-normalized embeddings and the
candidate nearest each centroid; otherwise all candidates plus a uniform random fill.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from alfm.kernels import auto_chunk, kmeans, nearest_to_centroids, pairwise_sq_distances
from alfm.strategies.base import QueryContext, Strategy, random_fill, register_strategy


def class_anchors(z_labeled: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """(C, D) per-class means of ``z_labeled``; classes without points get the overall mean."""
    z = z_labeled.float()
    if z.shape[0] == 0:
        raise ValueError("alfamix needs at least one labeled point to build anchors")
    labels = labels.to(device=z.device, dtype=torch.int64)
    sums = torch.zeros(num_classes, z.shape[1], device=z.device).index_add_(0, labels, z)
    counts = torch.bincount(labels, minlength=num_classes).unsqueeze(1)
    return torch.where(counts > 0, sums / counts.clamp_min(1), z.mean(dim=0, keepdim=True))


def prediction_flips(z: Tensor, anchors: Tensor, linear: nn.Linear, eps: float) -> Tensor:
    """Bool per row of ``z``: does some anchor's closed-form mix change the prediction?"""
    logits = linear(z)
    pred = logits.argmax(dim=1)
    residual = logits.softmax(dim=1)
    residual[torch.arange(z.shape[0], device=z.device), pred] -= 1.0
    grad = residual @ linear.weight  # ∇_z CE(linear(z), ŷ)
    norm = torch.linalg.vector_norm(grad, dim=1, keepdim=True)
    direction = torch.where(norm > 0, grad / norm.clamp_min(torch.finfo(grad.dtype).tiny), 0.0)
    farthest = pairwise_sq_distances(z, anchors).amax(dim=1, keepdim=True).sqrt_()
    mixed = z + (eps * farthest) * direction
    return linear(mixed).argmax(dim=1) != pred


@register_strategy("alfamix")
class AlfaMix(Strategy):
    """Alfa-Mix candidates (prediction flips under anchor mixing), then k-means diversity."""

    requires_probe = True

    def __init__(self, eps: float = 0.2) -> None:
        if not eps > 0:
            raise ValueError(f"alfamix needs eps > 0 (ε = eps / √D), got {eps}")
        self.eps = eps

    def candidates(self, ctx: QueryContext) -> Tensor:
        """Ascending unlabeled indices whose prediction flips for some anchor."""
        features, probe, unlabeled = ctx.features, ctx.probe, ctx.unlabeled
        if ctx.labeled.numel() == 0:  # no anchors to mix with
            return unlabeled[:0]
        d = features.shape[1]
        eps = self.eps / math.sqrt(d)
        labeled = ctx.labeled.to(features.device)
        chunk = auto_chunk(max(d, ctx.num_classes), features.device, 16)
        with torch.no_grad():
            anchors = class_anchors(probe.embed(features[labeled]), ctx.labels, ctx.num_classes)
            flips = [
                prediction_flips(probe.embed(features[part]), anchors, probe.linear, eps)
                for part in unlabeled.split(chunk)
            ]
        return unlabeled[torch.cat(flips)]

    def select(self, ctx: QueryContext, budget: int, generator: torch.Generator) -> Tensor:
        """``budget`` indices: clustered candidates, or all candidates plus a random fill."""
        candidates = self.candidates(ctx)
        if candidates.numel() > budget:
            z = self._unit_embeddings(ctx, candidates)
            centroids, assignment = kmeans(z, budget, generator)
            candidates = candidates[nearest_to_centroids(z, centroids, assignment)]
        return random_fill(candidates, ctx.unlabeled, budget, generator)

    @staticmethod
    def _unit_embeddings(ctx: QueryContext, indices: Tensor) -> Tensor:
        """L2-normalized z of ``indices``, filled chunk by chunk and normalized in place so that
        the peak stays one (|indices|, D) float32 matrix."""
        d = ctx.features.shape[1]
        z = torch.empty(indices.numel(), d, dtype=torch.float32, device=ctx.features.device)
        chunk = auto_chunk(d, ctx.features.device, 4)
        with torch.no_grad():
            for start in range(0, indices.numel(), chunk):
                part = indices[start : start + chunk]
                z[start : start + part.numel()] = ctx.probe.embed(ctx.features[part])
        return z.div_(torch.linalg.vector_norm(z, dim=1, keepdim=True).clamp_min_(1e-12))
