"""The classifiers a round can train (the reference's ``classifier``), by name.

Every classifier is the probe of :mod:`alfm.probe` — input dropout → adapter → BatchNorm1d(D,
affine=False) → Linear(D, C) — and differs only in its adapter, the module between the dropout
and the BatchNorm: none for ``linear``, the reference's bottleneck MLP for ``residual_adapter``.
So the embedding z strategies use (the BatchNorm output, what precedes the last Linear), the
dropout passes and the closed-form last-layer gradients of BADGE and Alfa-Mix work unchanged on
either. ``alfm list classifiers`` lists them; ``package.module:Name`` loads a user's
:class:`Classifier`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from alfm.registry import Registry


@dataclass(frozen=True)
class Classifier:
    """A registered classifier: its adapter builder and the probe settings it reads.

    ``adapter(dim, **settings)`` returns the (N, D) → (N, D) module applied after the input
    dropout, with a ``reset_parameters(generator)`` method (None: no adapter); ``settings``
    names the :class:`~alfm.probe.ProbeConfig` fields passed to it (the others of
    :data:`ADAPTER_SETTINGS` have no effect with this classifier, so giving them is an error).
    """

    adapter: Callable[..., nn.Module | None]
    settings: tuple[str, ...] = ()


CLASSIFIERS: Registry[Classifier] = Registry("classifier")

#: ProbeConfig fields that only some classifiers read.
ADAPTER_SETTINGS = ("scale", "init_alpha")


def get_classifier(name: str) -> Classifier:
    """The classifier registered as ``name`` (or loaded from ``module:Name``)."""
    classifier = CLASSIFIERS.get(name)
    if not isinstance(classifier, Classifier):
        raise ValueError(f"classifier {name!r} is a {type(classifier).__name__}, not a Classifier")
    return classifier


def list_classifiers() -> list[str]:
    """Registered classifier names."""
    return CLASSIFIERS.names()


class ResidualMLP(nn.Module):
    """The reference's residual adapter: σ(α)·mlp(x) + (1 − σ(α))·x with a bottleneck
    mlp = GELU ∘ Linear(D/scale → D) ∘ GELU ∘ Linear(D → D/scale) (``D // scale`` hidden units,
    exact erf GELU as ``nn.GELU()``) and a learned scalar α starting at ``init_alpha``.
    """

    def __init__(self, dim: int, scale: int = 4, init_alpha: float = -2.0) -> None:
        super().__init__()
        hidden = dim // scale
        if hidden < 1:
            raise ValueError(f"probe.scale={scale} leaves no hidden unit for {dim} features")
        self.alpha = nn.Parameter(torch.tensor(float(init_alpha)))
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim), nn.GELU()
        )

    def forward(self, x: Tensor) -> Tensor:
        """The mixed features, same shape as ``x``."""
        alpha = torch.sigmoid(self.alpha)
        return alpha * self.mlp(x) + (1 - alpha) * x

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """PyTorch's default Linear initialization (weights and biases uniform in ±1/√fan_in,
        what ``kaiming_uniform_(a=√5)`` amounts to) with draws from ``generator``; α keeps
        ``init_alpha``."""
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                bound = 1.0 / math.sqrt(layer.in_features)
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)


def _no_adapter(dim: int) -> None:
    return None


#: input dropout → BatchNorm1d(affine=False) → Linear: the linear probe.
CLASSIFIERS.add("linear", Classifier(_no_adapter))
#: input dropout → σ(α)·mlp(x) + (1 − σ(α))·x → BatchNorm1d(affine=False) → Linear.
CLASSIFIERS.add("residual_adapter", Classifier(ResidualMLP, ("scale", "init_alpha")))


def build_adapter(name: str, dim: int, settings: dict[str, Any]) -> nn.Module | None:
    """The adapter of classifier ``name`` for ``dim`` features, from the probe ``settings``
    (a mapping holding at least the classifier's own settings)."""
    classifier = get_classifier(name)
    return classifier.adapter(dim, **{key: settings[key] for key in classifier.settings})
