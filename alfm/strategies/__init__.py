"""Query strategies: one registry, sklearn-style classes, a validating :func:`query` entry point.

Importing this package registers every built-in strategy.
"""

from alfm.strategies import (
    alfamix,
    badge,
    bald,
    coreset,
    dropquery,
    initial_pool,
    probcover,
    typiclust,
    uncertainty,
)
from alfm.strategies.base import (
    STRATEGIES,
    QueryContext,
    Strategy,
    create_strategy,
    get_strategy_class,
    list_strategies,
    query,
    register_strategy,
)

__all__ = [
    "STRATEGIES",
    "QueryContext",
    "Strategy",
    "alfamix",
    "badge",
    "bald",
    "coreset",
    "create_strategy",
    "dropquery",
    "get_strategy_class",
    "initial_pool",
    "list_strategies",
    "probcover",
    "query",
    "register_strategy",
    "typiclust",
    "uncertainty",
]
