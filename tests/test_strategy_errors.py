"""The registry's and ``query``'s errors on bad input: unknown names and hyperparameters, bad
hyperparameter types, non-finite features, bad budgets, labeled indices and labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from strategy_helpers import ctx_for, gen

from alfm.strategies import QueryContext, create_strategy, query


def test_unknown_strategy_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown strategy 'entropi'.*'entropy'.*badge.*random"):
        create_strategy("entropi")


def test_misspelled_hyperparameter_is_named():
    with pytest.raises(ValueError, match=r"'num_pases'.*Did you mean 'num_passes'.*Valid"):
        create_strategy("bald", num_pases=3)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_features(bad):
    x = torch.randn(10, 3)
    x[6, 1] = bad
    with pytest.raises(ValueError, match="NaN or infinite.*row: 6"):
        query(create_strategy("random"), ctx_for(x), 2, gen())


@pytest.mark.parametrize("budget", [0, -3, 2.5, True, "3"])
def test_bad_budget(budget):
    with pytest.raises(ValueError, match="budget must be an integer >= 1"):
        query(create_strategy("random"), ctx_for(torch.randn(10, 3)), budget, gen())


@pytest.mark.parametrize(
    ("labeled", "match"),
    [((3, 10), "out of range"), ((-1,), "out of range"), ((2, 5, 2), r"repeated: \[2\]")],
)
def test_bad_labeled_indices(labeled, match):
    with pytest.raises(ValueError, match=match):
        query(create_strategy("random"), ctx_for(torch.randn(10, 3), labeled=labeled), 2, gen())


def test_numpy_integer_budget_is_accepted():
    picks = query(create_strategy("random"), ctx_for(torch.randn(10, 3)), np.int64(3), gen())
    assert picks.numel() == 3


def test_labels_must_match_labeled():
    ctx = QueryContext(torch.randn(10, 3), torch.tensor([1, 2]), torch.tensor([0]), 2)
    with pytest.raises(ValueError, match="labels must match"):
        query(create_strategy("random"), ctx, 2, gen())
    ctx = QueryContext(torch.randn(10, 3), torch.tensor([1, 2]), torch.tensor([0, 5]), 2)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        query(create_strategy("random"), ctx, 2, gen())


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("bald", {"num_passes": 2.5}, r"'num_passes' must be int, got 2.5 \(float\)"),
        ("dropquery", {"num_passes": "3"}, r"'num_passes' must be int, got '3' \(str\)"),
        ("typiclust", {"knn": True}, r"'knn' must be int, got True \(bool\)"),
        ("probcover", {"delta": "0.5"}, r"'delta' must be float or None, got '0.5' \(str\)"),
        ("entropy", {"cluster_features": 1}, r"'cluster_features' must be bool, got 1 \(int\)"),
        ("bald", {"typical_features": None}, r"'typical_features' must be bool, got None"),
    ],
)
def test_hyperparameter_of_another_type_is_named_at_creation(name, params, match):
    with pytest.raises(ValueError, match=f"strategy {name!r} hyperparameter .*{match}"):
        create_strategy(name, **params)


def test_ints_are_accepted_for_float_hyperparameters():
    assert create_strategy("powerbald", beta=2).beta == 2
    assert create_strategy("probcover", delta=1).delta == 1
    assert create_strategy("dropquery", dropout=None).dropout is None
