"""Nothing silent, nothing lost (issue 12): dotted paths name only components, store identity,
chunk integrity, safe run outputs, locks and cleanup of orphaned temporary files."""

from __future__ import annotations

import pytest

from alfm import pipeline
from alfm.datasets import Dataset
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
    with pytest.raises(UnknownNameError, match="not a dataset factory"):
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


def test_dotted_dataset_function_annotated_to_return_a_dataset_resolves():
    assert registry("dataset").get(f"{__name__}:tiny_manifest_dataset") is tiny_manifest_dataset
    with pytest.raises(UnknownNameError, match="annotated to return alfm.datasets.Dataset"):
        registry("dataset").get(f"{__name__}:unannotated")


def unannotated(root):
    raise AssertionError("must never be called")


# --- defect 2: a store's identity covers what defines its rows ------------------------------


def _write_manifest(folder, labels):
    """A manifest of the 6 digits images ``digits/<i>.png`` with the given labels (a/b)."""
    from PIL import Image

    from alfm.datasets import create_dataset

    images = folder / "digits"
    images.mkdir(parents=True, exist_ok=True)
    split = create_dataset("digits").split("train")
    lines = ["path,label,split"]
    for i, label in enumerate(labels):
        Image.fromarray(split.images[i]).save(images / f"{i}.png")
        lines.append(f"digits/{i}.png,{label},{'train' if i < 4 else 'test'}")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder


def tiny_manifest_dataset(root=None) -> Dataset:
    from alfm.datasets import create_dataset

    return create_dataset("manifest", root)


MANIFEST_A = ["a", "b", "a", "b", "a", "b"]
MANIFEST_B = ["b", "a", "a", "b", "b", "a"]  # same classes, same counts, other labels
FAST = {"image_size": 32, "num_workers": 0, "progress": False, "chunk_rows": 2}


def test_store_of_another_manifest_is_an_error_naming_the_differing_field(tmp_path):
    from alfm.extract import extract_features
    from alfm.store import open_store

    a = _write_manifest(tmp_path / "a", MANIFEST_A)
    b = _write_manifest(tmp_path / "b", MANIFEST_B)
    moved = tmp_path / "moved"
    out = tmp_path / "s.zarr"
    extract_features("mobilenet_v2", "manifest", out, root=a, **FAST)
    labels = open_store(out).load("train").labels.tolist()
    with pytest.raises(FileExistsError, match="made with content_digest='"):
        extract_features("mobilenet_v2", "manifest", out, root=b, **FAST)
    assert open_store(out).load("train").labels.tolist() == labels
    a.rename(moved)  # the same manifest elsewhere is the same store
    assert extract_features("mobilenet_v2", "manifest", out, root=moved, **FAST) == out


def test_killed_extraction_resumed_with_another_manifest_is_an_error(tmp_path):
    from alfm.extract import extract_features
    from alfm.store import StoreWriter

    a = _write_manifest(tmp_path / "a", MANIFEST_A)
    b = _write_manifest(tmp_path / "b", MANIFEST_B)
    out = tmp_path / "s.zarr"
    extract_features("mobilenet_v2", "manifest", out, root=a, shard="0/2", **FAST)
    assert StoreWriter.resume(out).pending_chunks("train"), "the store must be partial"
    with pytest.raises(FileExistsError, match="content_digest"):
        extract_features("mobilenet_v2", "manifest", out, root=b, **FAST)


def test_identity_mismatch_lists_every_differing_field(tmp_path):
    from alfm.store import StoreWriter

    path = tmp_path / "s.zarr"
    base = {"backbone": "m", "dataset": "d", "class_names": ["x", "y"], "num_classes": 2}
    StoreWriter.open(path, base, {"train": 4, "test": 2}, 3)
    other = {**base, "class_names": ["y", "x"], "content_digest": "abc"}
    with pytest.raises(
        FileExistsError,
        match="made with content_digest=None, not 'abc'; dtype='float16', not 'float32'; class_",
    ):
        StoreWriter.open(path, other, {"train": 4, "test": 2}, 3, dtype="float32")
