"""Budget schedules: how many samples are labeled at each evaluation round of an AL run.

The schedule is a pure function of the budget configuration, the number of classes and nothing
else, so a run extended to more evaluations reproduces a fresh longer run exactly (a longer
schedule starts with the shorter one).
"""

from __future__ import annotations

from dataclasses import dataclass

from alfm.config import Config, setting

SCHEDULES = ("linear", "doubling")


@dataclass(frozen=True)
class BudgetConfig(Config):
    """Labeling budget of a run.

    ``init_size``/``step_size`` (absolute counts) override ``init_per_class``/``step_per_class``
    (multiplied by the number of classes C). ``schedule="linear"`` labels ``init + k·step`` samples
    before evaluation k (k = 0 … evaluations−1); ``"doubling"`` labels ``init · 2^k`` (each round
    doubles the labeled set; the step settings are unused). ``evaluations`` counts evaluation
    rounds, the first on the initial pool, with no query after the last one.
    """

    section = "budget"
    key_format = "budget.{}"

    init_per_class: int = setting(1, minimum=1, help="initial pool per class")
    step_per_class: int = setting(1, minimum=1, help="labels added per round, per class")
    init_size: int | None = setting(
        None, minimum=1, help="absolute initial pool (overrides init_per_class)"
    )
    step_size: int | None = setting(
        None, minimum=1, help="absolute labels per round (overrides step_per_class)"
    )
    schedule: str = setting(
        "linear", enum=SCHEDULES, help="linear (constant step) or doubling (labeled set doubles)"
    )
    evaluations: int = setting(
        20, minimum=1, help="evaluation rounds, the first on the initial pool"
    )

    def initial_size(self, num_classes: int) -> int:
        """Size of the initial labeled pool for ``num_classes`` classes."""
        if self.init_size is not None:
            return self.init_size
        return self.init_per_class * num_classes

    def step(self, num_classes: int) -> int:
        """Samples added per round by the linear schedule."""
        if self.step_size is not None:
            return self.step_size
        return self.step_per_class * num_classes


def labeled_sizes(budget: BudgetConfig, num_classes: int) -> list[int]:
    """Labeled-set size before each of the ``budget.evaluations`` evaluation rounds."""
    _check_positive_int("num_classes", num_classes)
    init = budget.initial_size(num_classes)
    if budget.schedule == "doubling":
        return [init * 2**k for k in range(budget.evaluations)]
    step = budget.step(num_classes)
    return [init + k * step for k in range(budget.evaluations)]


def checked_schedule(budget: BudgetConfig, num_classes: int, pool_size: int) -> list[int]:
    """:func:`labeled_sizes`, checked against a pool of ``pool_size`` samples.

    Raises ``ValueError`` when the initial pool is larger than the pool or, naming the round
    (1-based) that runs dry, when a later round needs more samples than the pool holds.
    """
    sizes = labeled_sizes(budget, num_classes)
    if sizes[0] > pool_size:
        raise ValueError(
            f"the initial pool of {sizes[0]} samples is larger than the pool of {pool_size} "
            f"training samples (init_size={budget.init_size}, init_per_class="
            f"{budget.init_per_class}, {num_classes} classes)"
        )
    for round_number, size in enumerate(sizes, start=1):
        if size > pool_size:
            raise ValueError(
                f"the pool runs dry at round {round_number} of {budget.evaluations}: it needs "
                f"{size} labeled samples but the pool holds {pool_size}; ask for at most "
                f"{round_number - 1} evaluations or a smaller step"
            )
    return sizes


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
