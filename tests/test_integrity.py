"""Nothing silent, nothing lost (issue 12): dotted paths name only components, store identity,
chunk integrity, safe run outputs, locks and cleanup of orphaned temporary files."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from dataset_helpers import digits_manifest

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
    digits_manifest(folder, labels)
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


# --- defect 5 (and 7, 8): run outputs are never overwritten by another run, locked, cleaned ---


@pytest.fixture(scope="module")
def run_store(tmp_path_factory):
    from test_run import make_store

    return make_store(tmp_path_factory.mktemp("run") / "s.zarr", n=120, test=40, classes=4, dim=8)


def _run_config(store, **changes):
    from alfm.run import RunConfig

    base = {
        "features": str(store),
        "strategy": "random",
        "seed": 0,
        "budget": {"init_size": 8, "step_size": 8, "evaluations": 2},
        "probe": {"max_epochs": 20, "patience": 5},
        "device": "cpu",
    }
    return RunConfig.from_dict({**base, **changes})


def _run(config, out, **kwargs):
    from alfm.run import run_active_learning

    return run_active_learning(config, out, progress=False, **kwargs)


def test_an_unrelated_file_at_out_is_never_overwritten(run_store, tmp_path):
    out = tmp_path / "important.csv"
    out.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="important.csv exists and is not an alfm run result"):
        _run(_run_config(run_store), out)
    assert out.read_text() == "a,b\n1,2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["important.csv"]


def test_another_runs_result_is_not_overwritten_once_its_checkpoint_is_gone(run_store, tmp_path):
    out = tmp_path / "r.parquet"
    _run(_run_config(run_store), out)
    (tmp_path / "r.parquet.ckpt").unlink()
    before = out.read_bytes()
    with pytest.raises(ValueError, match="holds another run .*strategy: 'random' there, 'margins"):
        _run(_run_config(run_store, strategy="margins"), out)
    assert out.read_bytes() == before
    _run(_run_config(run_store), out)  # the same run may recompute its own result
    assert out.exists()


def test_fewer_evaluations_do_not_rewrite_a_longer_finished_run(run_store, tmp_path):
    import pandas as pd

    out = tmp_path / "r.parquet"
    _run(_run_config(run_store, budget={"init_size": 8, "step_size": 8, "evaluations": 3}), out)
    before = out.read_bytes()
    shorter = _run_config(run_store, budget={"init_size": 8, "step_size": 8, "evaluations": 2})
    with pytest.raises(ValueError, match="holds 3 rounds of this run; writing 2 would drop"):
        _run(shorter, out)
    assert out.read_bytes() == before
    assert len(pd.read_parquet(out)) == 3
    assert len(_run(shorter, out, shorten=True)) == 2  # the workflow's state file may shorten


def test_a_run_held_by_another_process_is_refused_with_its_pid(run_store, tmp_path):
    from alfm.run import RunLockedError, run_lock

    out = tmp_path / "r.parquet"
    with run_lock(out):
        holder = (tmp_path / ".r.parquet.lock").read_text()
        assert holder.startswith(f"PID {os.getpid()} on ")
        with pytest.raises(
            RunLockedError, match=f"being written by another process .PID {os.getpid()}"
        ):
            _run(_run_config(run_store), out)
    assert not (tmp_path / ".r.parquet.lock").exists() and not out.exists()
    _run(_run_config(run_store), out)
    assert not (tmp_path / ".r.parquet.lock").exists()


def test_two_processes_on_one_out_one_wins_and_one_is_refused(run_store, tmp_path):
    """The issue's race: two runs with different configs at once on one --out."""
    out = tmp_path / "r.parquet"
    args = ["--features", str(run_store), "--seed", "0", "--init-size", "8", "--step-size", "8",
            "--evaluations", "6", "--device", "cpu", "--out", str(out), "--quiet"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "alfm", "run", *args]
    first = subprocess.Popen([*cmd, "--strategy", "random"], env=env, stderr=subprocess.PIPE)
    lock = tmp_path / ".r.parquet.lock"
    deadline = time.time() + 300
    while not lock.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    second = subprocess.run(
        [*cmd, "--strategy", "margins"], env=env, capture_output=True, text=True, timeout=300
    )
    assert first.wait(timeout=300) == 0
    assert second.returncode == 2, second.stderr
    refusals = ("being written by another process", "holds another run", "different run")
    assert any(text in second.stderr for text in refusals), second.stderr
    from alfm.run import read_run_metadata

    assert read_run_metadata(out)["config"]["strategy"] == "random"


def test_output_paths_and_seed_are_checked_before_anything_is_computed(run_store, tmp_path):
    from alfm.run import RunConfig

    folder = tmp_path / "out.parquet"
    folder.mkdir()
    with pytest.raises(ValueError, match="out.parquet is a directory; --out must name a file"):
        _run(_run_config(run_store), folder)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="file is not a directory"):
        _run(_run_config(run_store), tmp_path / "file" / "r.parquet")
    with pytest.raises(
        ValueError, match=r"'seed' must be an integer >= 0 and <= 9223372036854775807"
    ):
        RunConfig.from_dict({"features": "x", "strategy": "random", "seed": 2**64})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "out.parquet"]
    assert not any(folder.iterdir())


def test_orphaned_temporary_files_of_a_killed_write_are_removed(run_store, tmp_path):
    out = tmp_path / "r.parquet"
    hexes = ["0" * 32, "a" * 32, "b" * 32]
    orphans = [
        tmp_path / f".r.parquet{s}.{h}.tmp"
        for s, h in zip(("", ".ckpt", ".indices.npz"), hexes, strict=True)
    ]
    other = tmp_path / f".other.parquet.{'c' * 32}.tmp"
    for path in [*orphans, other]:
        path.write_bytes(b"half written")
    _run(_run_config(run_store), out)
    assert not any(p.exists() for p in orphans)
    assert other.exists(), "another run's files are not touched"


def test_partial_chunk_writes_of_a_killed_extraction_are_removed(tmp_path):
    from alfm.store import StoreWriter

    path = tmp_path / "s.zarr"
    writer = StoreWriter.open(path, {"backbone": "m", "dataset": "d"}, {"train": 4, "test": 2}, 2,
                              chunk_rows=2)  # fmt: skip
    orphan = path / "train" / "features" / "c" / "1" / f"0.{'d' * 32}.partial"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"half")
    writer.write_chunk("train", 0, np.ones((2, 2)), np.arange(2), np.array(["a", "b"]))
    assert orphan.exists(), "chunk 1 is not this write's"
    writer.write_chunk("train", 1, np.ones((2, 2)), np.arange(2), np.array(["c", "d"]))
    assert not orphan.exists()
    import socket

    stale = tmp_path / f".t.zarr.creating-{socket.gethostname()}-999999999"
    stale.mkdir()
    StoreWriter.open(
        tmp_path / "t.zarr", {"backbone": "m", "dataset": "d"}, {"train": 1, "test": 1}, 2
    )
    assert not stale.exists()
