"""Shared helpers of the strategy tests: generators, hand-set probes, contexts, checks."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from alfm.probe import Probe
from alfm.strategies import QueryContext, Strategy


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


def prepared(strategy: Strategy, ctx: QueryContext, seed: int = 0) -> Strategy:
    """``strategy`` after ``prepare`` as the run engine calls it: on ``ctx``'s features and
    classes, with no labeled points, no probe and a generator of its own; returns it."""
    none = torch.zeros(0, dtype=torch.int64, device=ctx.features.device)
    strategy.prepare(QueryContext(ctx.features, none, none, ctx.num_classes), gen(seed))
    return strategy
