"""Nothing silent, nothing lost (issue 12): dotted paths name only components, store identity,
chunk integrity, safe run outputs, locks and cleanup of orphaned temporary files."""

from __future__ import annotations

import pytest

from alfm import pipeline
from alfm.registry import UnknownNameError, registry
from alfm.strategies import create_strategy, get_strategy_class
from alfm.strategies.uncertainty import Margins

# --- defect 1: a dotted path names a component of its kind, never any callable --------------


@pytest.mark.parametrize("kind", ["dataset", "backbone", "strategy"])
def test_dotted_path_to_a_function_is_refused_before_it_is_called(tmp_path, kind):
    import alfm.backbones  # noqa: F401  (registers backbones)
    import alfm.datasets  # noqa: F401

    victim = tmp_path / "victim"
    victim.mkdir()
    with pytest.raises(UnknownNameError, match=f"{kind} 'shutil:rmtree' names 'rmtree', which"):
        registry(kind).get("shutil:rmtree")
    assert victim.is_dir()


def test_extract_refuses_a_dotted_dataset_that_is_not_a_dataset_factory(tmp_path):
    from alfm.extract import extract_features

    victim = tmp_path / "victim"
    victim.mkdir()
    with pytest.raises(UnknownNameError, match="not a dataset factory registered"):
        extract_features("mobilenet_v2", "shutil:rmtree", tmp_path / "x.zarr", root=victim)
    assert victim.is_dir() and not (tmp_path / "x.zarr").exists()


def test_dotted_strategy_must_be_a_strategy_subclass():
    assert get_strategy_class("alfm.strategies.uncertainty:Margins") is Margins
    with pytest.raises(UnknownNameError, match="not a .*subclass of alfm.strategies.Strategy"):
        create_strategy("alfm.pipeline:Grid")
    with pytest.raises(UnknownNameError, match="names 'Strategy'"):  # abstract
        create_strategy("alfm.strategies:Strategy")


def test_dotted_backbone_and_dataset_registered_through_the_api_resolve():
    from alfm.backbones import _BACKBONES
    from alfm.datasets.embedded import digits

    assert registry("dataset").get("alfm.datasets.embedded:digits") is digits
    factory = _BACKBONES.get("mobilenet_v2")
    assert registry("backbone").get("alfm.backbones:mobilenet_v2") is factory


def test_workflow_name_check_rejects_a_dotted_path_that_is_not_a_strategy():
    config = {
        "models": ["mobilenet_v2"],
        "datasets": ["digits"],
        "init": {"name": "random"},
        "strategies": ["random", "os:getcwd"],
    }
    with pytest.raises(pipeline.ConfigError, match=r"'strategies\[1\].name': strategy 'os:getcwd'"):
        pipeline.check_names(config)


def test_unknown_name_lists_known_strategies_in_plural():
    with pytest.raises(UnknownNameError, match="Did you mean 'margins'.*Known strategies: "):
        create_strategy("margin")
