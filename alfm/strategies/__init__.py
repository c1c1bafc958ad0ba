"""Query strategies: one registry, sklearn-style classes, a validating :func:`query` entry point.

Importing this package registers every built-in strategy.
"""

from alfm.strategies import init
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
    "create_strategy",
    "get_strategy_class",
    "init",
    "list_strategies",
    "query",
    "register_strategy",
]
