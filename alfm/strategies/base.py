"""Strategy base class, query context, the strategy registry and the validating ``query`` entry.

A strategy is a small sklearn-style class: hyperparameters in ``__init__`` (stored as attributes of
the same name, typed by its annotations, which :func:`create_strategy` checks), an optional
``prepare(ctx, generator)`` that builds per-run state, a pure ``select(ctx, budget, generator)``
that returns indices into the pool, and randomness only from the generators it is given. Callers
use :func:`query`, which validates the inputs and the strategy's output.
"""

from __future__ import annotations

import abc
import difflib
import inspect
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from alfm.config import check_value, type_hints, type_name
from alfm.kernels import auto_chunk, device_generator, kmeans, l2_normalize, nearest_to_centroids
from alfm.probe import Probe
from alfm.registry import Registry

S = TypeVar("S", bound="type[Strategy]")


@dataclass
class QueryContext:
    """What a round knows: pool features, labeled indices and their labels, the trained probe.

    ``features`` is (N, D) float16/float32 on CPU or CUDA; ``labeled`` int64 indices into it;
    ``labels`` their classes in ``[0, num_classes)``; ``probe`` None for initial-pool strategies.
    """

    features: Tensor
    labeled: Tensor
    labels: Tensor
    num_classes: int
    probe: Probe | None = None
    _mask: Tensor | None = field(default=None, init=False, repr=False)

    @property
    def num_samples(self) -> int:
        """Pool size N."""
        return self.features.shape[0]

    @property
    def labeled_mask(self) -> Tensor:
        """Boolean (N,) mask of labeled points, on the features' device."""
        if self._mask is None:
            mask = torch.zeros(self.num_samples, dtype=torch.bool, device=self.features.device)
            mask[self.labeled.to(self.features.device)] = True
            self._mask = mask
        return self._mask

    @property
    def unlabeled(self) -> Tensor:
        """Unlabeled indices U, ascending int64 on the features' device."""
        return (~self.labeled_mask).nonzero().squeeze(1)


class Strategy(abc.ABC):
    """Base class of query strategies.

    Subclasses store every hyperparameter as an attribute named like its ``__init__`` parameter,
    set ``requires_probe`` (False for strategies that work on raw features alone, i.e. initial-pool
    strategies), implement :meth:`select` and, when they keep state across rounds, :meth:`prepare`.
    """

    name: ClassVar[str] = ""
    requires_probe: ClassVar[bool] = True

    def prepare(self, ctx: QueryContext, generator: torch.Generator) -> None:  # noqa: B027 (a hook)
        """Build the strategy's per-run state (e.g. a graph over the pool); stateless strategies
        do nothing (this default).

        The run engine calls it once per run in each process, before the strategy's first query
        there, with ``ctx`` holding the pool's features and ``num_classes`` (no labeled points, no
        probe) and a generator seeded from (seed, "prepare") alone, so a resumed run or a later
        job rebuilds exactly the same state. A strategy that needs state raises in :meth:`select`
        when it was not prepared for the features it is given.
        """

    @abc.abstractmethod
    def select(self, ctx: QueryContext, budget: int, generator: torch.Generator) -> Tensor:
        """Return ``budget`` distinct unlabeled indices (1 <= budget < |U| is guaranteed)."""

    @classmethod
    def param_names(cls) -> list[str]:
        """Names of the constructor's hyperparameters."""
        params = inspect.signature(cls.__init__).parameters
        varargs = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        return [p for p, spec in params.items() if p != "self" and spec.kind not in varargs]

    def get_params(self) -> dict[str, Any]:
        """Hyperparameters as passed to ``__init__`` (sklearn style)."""
        return {name: getattr(self, name) for name in self.param_names()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


def _is_strategy_class(obj: object) -> bool:
    return isinstance(obj, type) and issubclass(obj, Strategy) and not inspect.isabstract(obj)


STRATEGIES: Registry[type[Strategy]] = Registry(
    "strategy",
    plural="strategies",
    accepts=_is_strategy_class,
    expected="a (non-abstract) subclass of alfm.strategies.Strategy",
)


def register_strategy(name: str) -> Callable[[S], S]:
    """Class decorator registering a :class:`Strategy` subclass as ``name``."""

    def decorator(cls: S) -> S:
        if not (isinstance(cls, type) and issubclass(cls, Strategy)):
            raise TypeError(f"{cls!r} registered as strategy {name!r} is not a Strategy subclass")
        cls.name = name
        STRATEGIES.add(name, cls)
        return cls

    return decorator


def list_strategies(initial_pool: bool = False) -> list[str]:
    """Registered strategy names; with ``initial_pool`` only those that need no probe."""
    names = STRATEGIES.names()
    if initial_pool:
        names = [n for n in names if not STRATEGIES.get(n).requires_probe]
    return names


def get_strategy_class(name: str) -> type[Strategy]:
    """The class registered as ``name`` or imported from the dotted path ``pkg.mod:Class`` (a
    Strategy subclass, else an :class:`~alfm.registry.UnknownNameError`)."""
    return STRATEGIES.get(name)


def create_strategy(name: str, **params: Any) -> Strategy:
    """Instantiate strategy ``name`` (registered or ``pkg.mod:Class``) with hyperparameters.

    Unknown hyperparameters and values that do not fit the ``__init__`` annotation (``int``,
    ``float`` (ints accepted), ``bool``, ``str``, unions; bools are not ints) are one-line
    ValueErrors naming the strategy, the parameter, the expected type and the value.
    """
    cls = get_strategy_class(name)
    valid = cls.param_names()
    hints = type_hints(cls.__init__)
    for key, value in params.items():
        if key == "init" and key not in valid:
            raise ValueError(
                f"'init' is not a hyperparameter of strategy {name!r}: the initial pool is the "
                "run-level key 'init' (or a strategy entry's own 'init' in experiments.yaml)"
            )
        if key not in valid:
            hint = difflib.get_close_matches(key, valid, n=1)
            suggestion = f" Did you mean {hint[0]!r}?" if hint else ""
            raise ValueError(
                f"unknown hyperparameter {key!r} for strategy {name!r}.{suggestion} "
                f"Valid: {', '.join(valid) or '(none)'}"
            )
        if key in hints and not check_value(value, hints[key]):
            raise ValueError(
                f"strategy {name!r} hyperparameter {key!r} must be {type_name(hints[key])}, got "
                f"{value!r} ({type(value).__name__})"
            )
    return cls(**params)


def _check_finite(features: Tensor) -> None:
    # isfinite builds float and bool temporaries: budget ~16 bytes per entry.
    chunk = auto_chunk(features.shape[1], features.device, 16)
    for start in range(0, features.shape[0], chunk):
        block = features[start : start + chunk]
        # A row sum is finite when every entry is (one read, no N×D temporary); only a block
        # with a non-finite sum (a bad entry, or a float32 overflow) is checked entry by entry.
        if bool(torch.isfinite(block.sum(dim=1, dtype=torch.float32)).all()):
            continue
        finite = torch.isfinite(block).all(dim=1)
        if not finite.all():
            bad = start + int((~finite).nonzero()[0])
            raise ValueError(f"features contain NaN or infinite values (first bad row: {bad})")


def validate_context(ctx: QueryContext) -> None:
    """Raise ValueError naming the culprit if ``ctx`` is malformed."""
    f = ctx.features
    if not isinstance(f, Tensor) or f.dim() != 2:
        raise ValueError(f"features must be a 2-D (N, D) tensor, got {getattr(f, 'shape', f)!r}")
    if f.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise ValueError(f"features must be floating point, got {f.dtype}")
    _check_finite(f)
    if ctx.num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {ctx.num_classes}")
    lab = ctx.labeled
    if lab.dim() != 1 or lab.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"labeled must be 1-D integer indices, got {lab.dtype} {tuple(lab.shape)}")
    if lab.numel():
        if lab.min() < 0 or lab.max() >= f.shape[0]:
            bad = lab[(lab < 0) | (lab >= f.shape[0])].tolist()
            raise ValueError(f"labeled indices out of range [0, {f.shape[0]}): {bad[:10]}")
        uniq, counts = torch.unique(lab, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"labeled indices repeated: {uniq[counts > 1].tolist()[:10]}")
    if ctx.labels.shape != lab.shape:
        raise ValueError(
            f"labels must match labeled indices: {tuple(ctx.labels.shape)} vs {tuple(lab.shape)}"
        )
    if ctx.labels.numel() and (ctx.labels.min() < 0 or ctx.labels.max() >= ctx.num_classes):
        raise ValueError(f"labels must lie in [0, {ctx.num_classes}), got {ctx.labels.tolist()}")


def query(strategy: Strategy, ctx: QueryContext, budget: int, generator: torch.Generator) -> Tensor:
    """Validate, run ``strategy.select`` and check its output: min(budget, |U|) distinct
    unlabeled indices, returned as int64 on the CPU. ``budget >= |U|`` returns all of U.
    """
    if isinstance(budget, bool) or not isinstance(budget, numbers.Integral) or budget < 1:
        raise ValueError(f"budget must be an integer >= 1, got {budget!r}")
    budget = int(budget)
    validate_context(ctx)
    if strategy.requires_probe and ctx.probe is None:
        raise ValueError(f"strategy {strategy.name!r} needs a trained probe (ctx.probe is None)")
    unlabeled = ctx.unlabeled
    if budget >= unlabeled.numel():
        return unlabeled.cpu()
    picks = strategy.select(ctx, budget, generator)
    picks = torch.as_tensor(picks).to(device="cpu")
    name = strategy.name or type(strategy).__name__
    if picks.dim() != 1 or picks.dtype not in (torch.int64, torch.int32):
        raise RuntimeError(f"strategy {name!r} returned {picks.dtype} {tuple(picks.shape)}")
    if picks.numel() != budget:
        raise RuntimeError(f"strategy {name!r} returned {picks.numel()} indices, expected {budget}")
    if picks.min() < 0 or picks.max() >= ctx.num_samples:
        raise RuntimeError(f"strategy {name!r} returned indices outside [0, {ctx.num_samples})")
    if torch.unique(picks).numel() != budget:
        raise RuntimeError(f"strategy {name!r} returned repeated indices")
    if ctx.labeled_mask.cpu()[picks].any():
        raise RuntimeError(f"strategy {name!r} returned already-labeled indices")
    return picks.to(torch.int64)


# --- helpers shared by strategies -------------------------------------------------------------


def top_unlabeled(scores: Tensor, ctx: QueryContext, k: int) -> Tensor:
    """The ``k`` unlabeled indices with the highest ``scores`` (N,), best first."""
    unlabeled = ctx.unlabeled
    return unlabeled[torch.topk(scores[unlabeled], k).indices]


def random_fill(chosen: Tensor, pool: Tensor, budget: int, generator: torch.Generator) -> Tensor:
    """``chosen`` plus uniformly drawn distinct members of ``pool`` not in it, up to ``budget``."""
    missing = budget - chosen.numel()
    if missing <= 0:
        return chosen
    pool = pool.to(chosen.device)
    rest = pool[~torch.isin(pool, chosen)]
    gen = device_generator(generator, torch.device("cpu"))
    draw = torch.randperm(rest.numel(), generator=gen)[:missing].to(rest.device)
    return torch.cat([chosen, rest[draw]])


def cluster_representatives(
    features: Tensor,
    candidates: Tensor | None,
    k: int,
    generator: torch.Generator,
    overwrite: bool = False,
) -> Tensor:
    """k-means (k-means++ seeds) on L2-normalized ``features[candidates]`` (all rows when
    ``candidates`` is None); the candidate nearest each centroid. Returns up to ``k`` distinct
    candidates (fewer only when clusters collapse), as row indices when ``candidates`` is None.
    ``overwrite`` lets it normalize a float32 scratch ``features`` in place (saves a copy).
    """
    if candidates is None:
        x = l2_normalize(features, inplace=overwrite and features.dtype == torch.float32)
    else:
        rows = features[candidates.to(features.device)]  # a fresh copy: normalize it in place
        x = l2_normalize(rows, inplace=rows.dtype == torch.float32)
    centroids, assignment = kmeans(x, k, generator)
    picks = nearest_to_centroids(x, centroids, assignment)
    return picks if candidates is None else candidates[picks.to(candidates.device)]


class RankedSelection:
    """The reference's query options for strategies that rank U by a score (uncertainty,
    entropy, margins, BALD), with its meaning.

    - ``cluster_features``: take the top ``oversample``·B of the ranking, cluster their
      L2-normalized raw features into B k-means clusters, take the candidate nearest each centroid;
    - ``typical_features``: take the block of the ranking centred on its median instead of its top
      (B points, or ``oversample``·B that are then clustered with ``cluster_features``): the
      paper's "representative vs uncertain" study;
    - ``oversample`` (default 50) only with ``cluster_features`` (the reference ignores it
      otherwise, so naming it without clustering is an error here).

    Departures: clusters that collapse (duplicate points) are filled with the next candidates of
    the block instead of returning fewer than B; ranking ties are broken by index (stable sort).
    """

    cluster_features: bool
    typical_features: bool
    oversample: int | None

    #: The value ``oversample`` takes when ``cluster_features`` is on and it is not given.
    DEFAULT_OVERSAMPLE: ClassVar[int] = 50

    def _set_ranking_options(
        self, cluster_features: bool, typical_features: bool, oversample: int | None
    ) -> None:
        if oversample is not None and not cluster_features:
            raise ValueError(
                f"oversample={oversample} only applies with cluster_features=true (without it "
                "the reference takes exactly B points); drop it or set cluster_features"
            )
        if oversample is not None and oversample < 2:
            raise ValueError(
                f"oversample must be >= 2 (1 would cluster B points into B clusters), got "
                f"{oversample}"
            )
        self.cluster_features = cluster_features
        self.typical_features = typical_features
        self.oversample = oversample

    def block_size(self, budget: int, num_unlabeled: int) -> int:
        """How many ranked points the selection considers: B, or oversample·B with clustering."""
        factor = (self.oversample or self.DEFAULT_OVERSAMPLE) if self.cluster_features else 1
        return min(factor * budget, num_unlabeled)

    def select_ranked(
        self, scores: Tensor, ctx: QueryContext, budget: int, generator: torch.Generator
    ) -> Tensor:
        """B unlabeled indices from ``scores`` (N,), higher first, under the options above."""
        unlabeled = ctx.unlabeled
        size = self.block_size(budget, unlabeled.numel())
        if self.typical_features:  # the reference: start = |U| // 2 − size // 2
            order = torch.sort(scores[unlabeled], descending=True, stable=True).indices
            start = unlabeled.numel() // 2 - size // 2
            block = unlabeled[order[start : start + size]]
        else:
            block = top_unlabeled(scores, ctx, size)
        if size == budget:
            return block
        chosen = cluster_representatives(ctx.features, block, budget, generator)
        rest = block[~torch.isin(block, chosen)]  # collapsed clusters: next candidates in order
        return torch.cat([chosen, rest[: budget - chosen.numel()]])
