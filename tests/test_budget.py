"""Budget schedules: hand-computed sizes, overrides, validation and pool checks."""

from __future__ import annotations

import pytest

from alfm.budget import BudgetConfig, checked_schedule, labeled_sizes


def test_default_linear_schedule_is_c_to_20c() -> None:
    assert labeled_sizes(BudgetConfig(), 10) == [10 * k for k in range(1, 21)]


def test_per_class_linear() -> None:
    budget = BudgetConfig(init_per_class=2, step_per_class=3, evaluations=4)
    assert labeled_sizes(budget, 5) == [10, 25, 40, 55]


def test_absolute_sizes_override_per_class() -> None:
    budget = BudgetConfig(
        init_per_class=7, step_per_class=7, init_size=4, step_size=6, evaluations=3
    )
    assert labeled_sizes(budget, 100) == [4, 10, 16]


def test_doubling() -> None:
    budget = BudgetConfig(init_size=3, schedule="doubling", evaluations=5)
    assert labeled_sizes(budget, 10) == [3, 6, 12, 24, 48]


def test_longer_schedule_extends_shorter() -> None:
    for schedule in ("linear", "doubling"):
        short = labeled_sizes(BudgetConfig(schedule=schedule, evaluations=3), 4)
        long = labeled_sizes(BudgetConfig(schedule=schedule, evaluations=6), 4)
        assert long[:3] == short


def test_round_trip_dict() -> None:
    budget = BudgetConfig(init_size=5, schedule="doubling", evaluations=3)
    assert BudgetConfig.from_dict(budget.to_dict()) == budget


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"evaluations": 0}, r"budget.evaluations must be an integer >= 1, got 0"),
        ({"init_per_class": 1.5}, r"budget.init_per_class must be an integer >= 1, got 1.5"),
        ({"step_size": -2}, r"budget.step_size must be an integer >= 1 or null, got -2"),
        ({"evaluations": True}, r"budget.evaluations must be an integer >= 1, got True"),
        ({"schedule": "exponential"}, r"budget.schedule must be one of linear, doubling"),
        ({"evalutions": 3}, r"unknown budget key\(s\) evalutions; known keys: evaluations, "),
    ],
)
def test_invalid_budget(data: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BudgetConfig.from_dict(data)


def test_initial_pool_larger_than_pool() -> None:
    with pytest.raises(
        ValueError, match="initial pool of 50 samples is larger than the pool of 40"
    ):
        checked_schedule(BudgetConfig(init_per_class=10), 5, 40)


def test_pool_runs_dry_names_round() -> None:
    budget = BudgetConfig(init_size=10, step_size=10, evaluations=6)
    assert checked_schedule(budget, 3, 60) == [10, 20, 30, 40, 50, 60]
    with pytest.raises(ValueError, match="runs dry at round 5 of 6.*needs 50.*holds 45"):
        checked_schedule(budget, 3, 45)
