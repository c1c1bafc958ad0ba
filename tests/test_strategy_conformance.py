"""One conformance suite over every registered strategy plus a custom one loaded by dotted path.

Every strategy must return exactly min(B, |U|) distinct unlabeled indices, be deterministic for a
generator seed, and cope with float16/float32 features, C=2 and C=1000, classes missing from L,
B ≥ |U|, an empty L (initial-pool strategies), tiny pools and N = 1. Each is prepared as the run
engine prepares it (``prepare`` on the pool with no labeled points and a generator of its own)
before its queries; one that is not prepared either works (stateless) or says to call prepare.
Strategies that use a probe pass every test with each classifier (linear probe, residual
adapter) and with a probe trained on label-propagated targets (``ssl.enable``), as the run
engine trains it.
"""

from __future__ import annotations

import functools

import pytest
import torch
from strategy_helpers import gen, prepared
from torch import Tensor

from alfm.probe import Probe
from alfm.run import RoundSteps, RunConfig
from alfm.strategies import (
    QueryContext,
    Strategy,
    create_strategy,
    get_strategy_class,
    list_strategies,
    query,
)


class LargestNorm(Strategy):
    """A user-defined strategy (loaded by dotted path): the B unlabeled points of largest norm."""

    requires_probe = False

    def __init__(self, power: float = 2.0) -> None:
        self.power = power

    def select(self, ctx: QueryContext, budget: int, generator: torch.Generator) -> Tensor:
        unlabeled = ctx.unlabeled
        norms = ctx.features[unlabeled].float().norm(p=self.power, dim=1)
        return unlabeled[torch.topk(norms, budget).indices]


CUSTOM = f"{__name__}:LargestNorm"
ALL = [*list_strategies(), CUSTOM]
INITIAL = [name for name in ALL if not get_strategy_class(name).requires_probe]

D = 8


@functools.cache
def pool(n: int, c: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Gaussian blobs: ``min(c, 8)`` clusters whose points carry labels in [0, c)."""
    g = gen(seed)
    k = min(c, 8)
    centers = torch.randn(k, D, generator=g) * 3
    cluster = torch.randint(k, (n,), generator=g)
    labels = (cluster + k * torch.randint(max(1, c // k), (n,), generator=g)) % c
    return centers[cluster] + torch.randn(n, D, generator=g), labels


#: The probes strategies are checked with: (probe settings, ssl settings) of the run config.
CLASSIFIERS = {
    "linear": ({}, {}),
    "residual_adapter": ({"classifier": "residual_adapter"}, {}),
    "ssl": ({}, {"enable": True, "knn": 10, "n_iter": 20}),
}
PROBE_USERS = [name for name in ALL if get_strategy_class(name).requires_probe]
#: Every strategy with the linear probe, and each that uses a probe with the others.
WITH_CLASSIFIERS = [
    pytest.param(name, classifier, id=f"{name}-{classifier}")
    for name in ALL
    for classifier in CLASSIFIERS
    if classifier == "linear" or name in PROBE_USERS
]


@functools.cache
def probe_for(n: int, c: int, labeled: tuple[int, ...], classifier: str = "linear") -> Probe:
    """The probe a run trains on the labeled rows of ``pool(n, c)`` with ``classifier``."""
    x, y = pool(n, c)
    idx = torch.tensor(labeled, dtype=torch.int64)
    probe, ssl = CLASSIFIERS[classifier]
    config = RunConfig(
        features="pool", strategy="random", seed=0, probe={**probe, "max_epochs": 60}, ssl=ssl
    )
    return RoundSteps(config, x, c).train_classifier(idx, y[idx], gen(1))


def context(
    name: str,
    n: int = 240,
    c: int = 4,
    labeled: tuple[int, ...] = tuple(range(0, 240, 20)),
    dtype: torch.dtype = torch.float32,
    classifier: str = "linear",
) -> QueryContext:
    x, y = pool(n, c)
    idx = torch.tensor(labeled, dtype=torch.int64)
    needs_probe = get_strategy_class(name).requires_probe
    probe = probe_for(n, c, labeled, classifier) if needs_probe else None
    return QueryContext(x.to(dtype), idx, y[idx], c, probe)


def ready(name: str, ctx: QueryContext) -> Strategy:
    """``create_strategy(name)`` prepared for ``ctx``'s pool, as the run engine does."""
    return prepared(create_strategy(name), ctx)


def check(picks: Tensor, ctx: QueryContext, budget: int) -> None:
    unlabeled = set(ctx.unlabeled.tolist())
    expected = min(budget, len(unlabeled))
    assert picks.dtype == torch.int64 and picks.dim() == 1 and picks.device.type == "cpu"
    assert picks.numel() == expected
    assert len(set(picks.tolist())) == expected
    assert set(picks.tolist()) <= unlabeled


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("name", "classifier"), WITH_CLASSIFIERS)
def test_budget_distinct_unlabeled(name, classifier, dtype):
    ctx = context(name, dtype=dtype, classifier=classifier)
    before = ctx.features.clone()
    picks = query(ready(name, ctx), ctx, 10, gen())
    check(picks, ctx, 10)
    assert torch.equal(ctx.features, before), "strategies must not modify the features"


@pytest.mark.parametrize(("name", "classifier"), WITH_CLASSIFIERS)
def test_same_seed_same_indices(name, classifier):
    ctx, other = context(name, classifier=classifier), context(name, classifier=classifier)
    first = query(ready(name, ctx), ctx, 7, gen(42))
    again = query(ready(name, other), other, 7, gen(42))
    assert torch.equal(first, again)


@pytest.mark.parametrize("c", [2, 1000])
@pytest.mark.parametrize(("name", "classifier"), WITH_CLASSIFIERS)
def test_two_and_a_thousand_classes(name, classifier, c):
    ctx = context(name, c=c, classifier=classifier)
    check(query(ready(name, ctx), ctx, 9, gen()), ctx, 9)


@pytest.mark.parametrize(("name", "classifier"), WITH_CLASSIFIERS)
def test_classes_missing_from_labeled(name, classifier):
    x, y = pool(240, 6)
    only_two = tuple(i for i in range(240) if int(y[i]) < 2)[:10]
    ctx = context(name, c=6, labeled=only_two, classifier=classifier)
    assert set(ctx.labels.tolist()) == {0, 1}
    check(query(ready(name, ctx), ctx, 12, gen()), ctx, 12)


@pytest.mark.parametrize("budget", [230, 500])
@pytest.mark.parametrize(("name", "classifier"), WITH_CLASSIFIERS)
def test_budget_at_least_unlabeled_returns_all(name, classifier, budget):
    ctx = context(name, classifier=classifier)
    picks = query(ready(name, ctx), ctx, budget, gen())
    assert sorted(picks.tolist()) == ctx.unlabeled.tolist()


@pytest.mark.parametrize("name", INITIAL)
def test_initial_pool_from_empty_labeled(name):
    ctx, other = context(name, labeled=()), context(name, labeled=())
    picks = query(ready(name, ctx), ctx, 8, gen())
    check(picks, ctx, 8)
    assert torch.equal(picks, query(ready(name, other), other, 8, gen()))


@pytest.mark.parametrize(("name", "classifier"), WITH_CLASSIFIERS)
def test_tiny_pool(name, classifier):
    ctx = context(name, n=5, c=2, labeled=(0, 3), classifier=classifier)
    check(query(ready(name, ctx), ctx, 2, gen()), ctx, 2)


@pytest.mark.parametrize(("name", "classifier"), WITH_CLASSIFIERS)
def test_single_point_pool(name, classifier):
    x = torch.randn(1, D, generator=gen(3))
    probe = probe_for(240, 4, tuple(range(0, 240, 20)), classifier)
    ctx = QueryContext(x, torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), 4)
    ctx.probe = probe if get_strategy_class(name).requires_probe else None
    assert query(ready(name, ctx), ctx, 1, gen()).tolist() == [0]


@pytest.mark.parametrize(("name", "classifier"), WITH_CLASSIFIERS)
def test_unprepared_strategy_works_or_asks_for_prepare(name, classifier):
    ctx = context(name, classifier=classifier)
    try:
        picks = query(create_strategy(name), ctx, 6, gen())
    except RuntimeError as err:
        assert "prepare" in str(err) and "\n" not in str(err)
    else:
        check(picks, ctx, 6)


@pytest.mark.parametrize("name", ALL)
def test_params_round_trip(name):
    strategy = create_strategy(name)
    clone = create_strategy(name, **strategy.get_params())
    assert repr(clone) == repr(strategy)
    with pytest.raises(ValueError, match=r"unknown hyperparameter 'not_a_param'.*Valid"):
        create_strategy(name, not_a_param=1)


@pytest.mark.parametrize("name", PROBE_USERS)
def test_missing_probe_is_an_error(name):
    x, y = pool(240, 4)
    ctx = QueryContext(x, torch.tensor([0, 1]), y[:2], 4, None)
    with pytest.raises(ValueError, match="needs a trained probe"):
        query(create_strategy(name), ctx, 3, gen())


def test_registry_holds_every_strategy():
    expected = {
        "random", "uncertainty", "entropy", "margins", "bald", "powerbald", "coreset", "badge",
        "dropquery", "centroid", "alfamix", "typiclust", "probcover",
    }  # fmt: skip
    assert set(list_strategies()) == expected
    initial = {"random", "centroid", "typiclust", "probcover"}
    assert set(list_strategies(initial_pool=True)) == initial
    assert isinstance(create_strategy(CUSTOM, power=1.0), LargestNorm)
