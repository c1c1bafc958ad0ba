"""A table of bad inputs through the command line (``python -m alfm ...`` in a subprocess).

For every case: exit code 2, exactly one line on stderr naming the culprit, no traceback, and
the file tree under the test's folder (inputs, outputs, every store) unchanged, compared by a
hash of every path and file content before and after. The cases cover issue 12's defects and
the errors that already worked (unknown names with "did you mean", bad budgets, bad probe keys,
NaN features, incomplete stores). Stores are tiny and built once per module.
"""

from __future__ import annotations

import hashlib
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from dataset_helpers import digits_manifest

from alfm.store import UNKNOWN_LABEL, SplitData, StoreWriter, write_store

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
# Flags every case of a command gets unless it gives them itself (a small, fast run or store).
DEFAULTS = {
    "run": {"--seed": "0", "--init-size": "8", "--step-size": "8", "--evaluations": "3",
            "--device": "cpu", "--quiet": None},
    "extract": {"--image-size": "32", "--workers": "0", "--quiet": None},
}  # fmt: skip


def _split(rng: np.random.Generator, n: int, classes: int = 4, dim: int = 8) -> SplitData:
    labels = np.arange(n) % classes
    features = rng.normal(size=(classes, dim))[labels] * 2 + rng.normal(size=(n, dim))
    return SplitData(features.astype(np.float32), labels, np.array([f"s{i}" for i in range(n)]))


def _chunked(path: Path) -> Path:
    rng = np.random.default_rng(1)
    return write_store(path, _split(rng, 128), _split(rng, 64), chunk_rows=32).path


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[:7])


DINO_FILE = "vit_small_patch14_dinov2.lvd142m.safetensors"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every input the cases use, under one folder."""
    from alfm.extract import extract_features
    from alfm.run import run_active_learning

    root = tmp_path_factory.mktemp("bad_inputs")
    stores = root / "stores"
    rng = np.random.default_rng(0)
    write_store(stores / "good.zarr", _split(rng, 120), _split(rng, 40))
    nan = _split(rng, 120)
    nan.features[3, 1] = np.nan
    write_store(stores / "nan.zarr", nan, _split(rng, 40))
    unlabeled = _split(rng, 120)
    unlabeled.labels[:5] = UNKNOWN_LABEL
    write_store(stores / "unlabeled.zarr", unlabeled, _split(rng, 40))
    writer = StoreWriter.open(
        stores / "incomplete.zarr", {"backbone": "m", "dataset": "d"}, {"train": 8, "test": 4}, 2,
        chunk_rows=4,
    )  # fmt: skip
    writer.write_chunk("train", 0, np.ones((4, 2)), np.arange(4), np.array(list("abcd")))
    deleted = _chunked(stores / "deleted.zarr")
    (deleted / "train" / "features" / "c" / "1" / "0").unlink()
    _truncate(_chunked(stores / "truncated.zarr") / "train" / "labels" / "c" / "2")
    faulty = _chunked(stores / "faulty.zarr")  # one deleted and one truncated chunk
    (faulty / "test" / "ids" / "c" / "1").unlink()
    _truncate(faulty / "train" / "features" / "c" / "3" / "0")

    finished = root / "finished"
    config = {
        "features": str(stores / "good.zarr"),
        "strategy": "random",
        "seed": 0,
        "budget": {"init_size": 8, "step_size": 8, "evaluations": 3},
        "device": "cpu",
    }
    run_active_learning(config, finished / "r.parquet", progress=False)
    run_active_learning(
        {**config, "strategy": "margins"}, finished / "other.parquet", progress=False
    )
    (finished / "other.parquet.ckpt").unlink()

    images = root / "images"
    digits_manifest(images, ["a", "b", "a", "b", "a", "b"], "a.csv")
    digits_manifest(images, ["b", "a", "a", "b", "b", "a"], "b.csv")
    digits_manifest(images, ["a", "", "a", "b", "a", "b"], "empty_label.csv")
    extract_features("mobilenet_v2", "manifest", stores / "a.zarr", root=images / "a.csv",
                     image_size=32, num_workers=0, progress=False)  # fmt: skip
    (root / "models" / "timm").mkdir(parents=True)
    (root / "models" / "timm" / DINO_FILE).write_bytes(b"not a weights file")
    return root


TOKENS = {  # shorthands of the case table; {world} and {case} are filled in when run
    "{good}": "--features {world}/stores/good.zarr",
    "{out}": "--out {case}/r.parquet",
    "{stores}": "{world}/stores",
}


@dataclass(frozen=True)
class Case:
    """One bad input: ``args`` (``{world}``/``{case}`` filled in), the culprit's text that the
    error line must hold, and ``setup`` preparing the case folder (see :func:`_setup`)."""

    id: str
    args: tuple[str, ...]
    culprit: str
    setup: str = ""
    full_disk: bool = False


def _case(id: str, args: str, culprit: str, **kwargs) -> Case:
    for token, text in TOKENS.items():
        args = args.replace(token, text)
    return Case(id, tuple(_with_defaults(args.split())), culprit, **kwargs)


def _expand(arg: str, world: Path, folder: Path) -> str:
    return arg.replace("{world}", str(world)).replace("{case}", str(folder))


def _with_defaults(words: list[str]) -> list[str]:
    if "--finalize" in words:
        return words
    for flag, value in DEFAULTS.get(words[0], {}).items():
        if flag not in words:
            words += [flag] if value is None else [flag, value]
    return words


CASES = [
    # alfm run: names, hyperparameters, budgets, probes
    _case("unknown-strategy", "run {good} --strategy margin {out}",
          "Did you mean 'margins'"),
    _case("unknown-init", "run {good} --strategy random --init centroids {out}",
          "Did you mean 'centroid'"),
    _case("dotted-strategy-function", "run {good} --strategy shutil:rmtree "
          "{out}", "strategy 'shutil:rmtree' names 'rmtree'"),
    _case("dotted-strategy-abstract", "run {good} --strategy alfm.strategies:Strategy "
          "{out}", "not a (non-abstract) subclass"),
    _case("dotted-strategy-missing", "run {good} --strategy nowhere.mod:S {out}",
          "cannot import strategy 'nowhere.mod:S'"),
    _case("unknown-hyperparameter", "run {good} --strategy margins --strategy-params "
          '{"foo":1} {out}', "unknown hyperparameter 'foo'"),
    _case("num-passes-float", "run {good} --strategy bald --strategy-params "
          '{"num_passes":2.5} {out}', "'num_passes' must be int"),
    _case("num-passes-string", "run {good} --strategy bald --strategy-params "
          '{"num_passes":"3"} {out}', "'num_passes' must be int"),
    _case("params-not-object", "run {good} --strategy margins --strategy-params [1] "
          "{out}", "--strategy-params"),
    _case("init-needs-probe", "run {good} --strategy random --init margins {out}",
          "init strategy 'margins' needs a trained probe"),
    _case("evaluations-zero", "run {good} --strategy random --evaluations 0 {out}",
          "evaluations"),
    _case("pool-runs-dry", "run {good} --strategy random --evaluations 40 {out}",
          "the pool runs dry at round"),
    _case("init-larger-than-pool", "run {good} --strategy random --init-size 500 "
          "{out}", "larger than the pool"),
    _case("probe-unknown-key", "run {good} --strategy random --probe "
          '{"lr_x":1} {out}', "lr_x"),
    _case("probe-bad-value", "run {good} --strategy random --probe "
          '{"lr":0} {out}', "probe.lr must be a number > 0"),
    _case("seed-huge", "run {good} --strategy random --seed 18446744073709551616 "
          "{out}", "'seed' must be an integer >= 0 and <= 9223372036854775807"),
    _case("seed-negative", "run {good} --strategy random --seed -1 {out}",
          "'seed' must be an integer >= 0"),
    _case("stop-round-zero", "run {good} --strategy random --stop-round 0 {out}",
          "stop_round must be an integer in 1..3"),
    _case("run-device-tpu", "run {good} --strategy random --device tpu {out}",
          "argument --device: invalid choice: 'tpu'"),
    # alfm run: stores
    _case("store-missing", "run --features {case}/none.zarr --strategy random {out}",
          "no feature store at"),
    _case("store-incomplete", "run --features {stores}/incomplete.zarr --strategy random "
          "{out}", "is incomplete (chunks done"),
    _case("store-nan", "run --features {stores}/nan.zarr --strategy random "
          "{out}", "1 train rows have NaN or infinite features"),
    _case("store-unknown-labels", "run --features {stores}/unlabeled.zarr --strategy random "
          "{out}", "5 train rows have unknown labels"),
    _case("store-deleted-chunk", "run --features {stores}/deleted.zarr --strategy random "
          "{out}", "train chunk 1 (features, file train/features/c/1/0) is missing"),
    _case("store-truncated-chunk", "run --features {stores}/truncated.zarr --strategy random "
          "{out}", "train chunk 2 (labels, file train/labels/c/2) has 7 bytes"),
    # alfm run: outputs
    _case("out-directory", "run {good} --strategy random --out {case}/dir.parquet",
          "dir.parquet is a directory", setup="dir"),
    _case("out-under-a-file", "run {good} --strategy random --out {case}/file.txt/r.parquet",
          "file.txt is not a directory", setup="file"),
    _case("out-unrelated-file", "run {good} --strategy random --out {case}/important.csv",
          "important.csv exists and is not an alfm run result", setup="csv"),
    _case("out-another-run", "run {good} --strategy random --out {case}/other.parquet",
          "holds another run (run.strategy: 'margins' there, 'random' here)", setup="finished"),
    _case("out-fewer-evaluations", "run {good} --strategy random --evaluations 2 "
          "{out}", "holds 3 rounds of this run; writing 2", setup="finished"),
    _case("out-locked", "run {good} --strategy random {out}",
          "being written by another process (PID", setup="lock"),
    _case("out-full-disk", "run {good} --strategy random {out}",
          "File too large", full_disk=True),
    # alfm extract
    _case("unknown-model", "extract --model mobilenet --dataset digits --out {case}/s.zarr",
          "Did you mean 'mobilenet_v2'"),
    _case("unknown-dataset", "extract --dataset digit --out {case}/s.zarr",
          "Did you mean 'digits'"),
    _case("dotted-dataset-rmtree", "extract --dataset shutil:rmtree --root {case}/victim "
          "--out {case}/s.zarr", "dataset 'shutil:rmtree' names 'rmtree'", setup="victim"),
    _case("extract-device-tpu", "extract --dataset digits --device tpu --out {case}/s.zarr",
          "device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    _case("image-size-negative", "extract --dataset digits --image-size -5 --out {case}/s.zarr",
          "image_size must be a positive integer, got -5"),
    _case("image-size-zero", "extract --dataset digits --image-size 0 --out {case}/s.zarr",
          "image_size must be a positive integer, got 0"),
    _case("batch-size-zero", "extract --dataset digits --batch-size 0 --out {case}/s.zarr",
          "batch_size must be positive"),
    _case("workers-negative", "extract --dataset digits --workers -1 --out {case}/s.zarr",
          "num_workers must be 0 or more"),
    _case("shard-out-of-range", "extract --dataset digits --shard 5/2 --out {case}/s.zarr",
          "shard must be i/N"),
    _case("dtype-float64", "extract --dataset digits --dtype float64 --out {case}/s.zarr",
          "argument --dtype: invalid choice"),
    _case("corrupt-weights", "extract --model dinov2_vits14 --image-size 28 --dataset digits "
          "--model-dir {world}/models --out {case}/s.zarr", DINO_FILE),
    _case("manifest-empty-label", "extract --dataset manifest --out {case}/s.zarr "
          "--root {world}/images/empty_label.csv", "empty_label.csv"),
    _case("store-of-another-manifest", "extract --dataset manifest --root {world}/images/b.csv "
          "--out {case}/a.zarr", "made with content_digest=", setup="store_a"),
    _case("extract-out-is-a-file", "extract --dataset digits --out {case}/important.csv",
          "important.csv exists and is not a feature store", setup="csv"),
    _case("finalize-incomplete", "extract --finalize --out {stores}/incomplete.zarr",
          "chunks missing: train chunks [1], test chunks [0]"),
    _case("extract-full-disk", "extract --dataset digits --out {case}/s.zarr", "File too large",
          full_disk=True),
    # alfm check
    _case("check-deleted-chunk", "check {stores}/good.zarr {stores}/deleted.zarr",
          "deleted.zarr: train chunk 1 (features, file train/features/c/1/0) is missing"),
    _case("check-truncated-chunk", "check {stores}/truncated.zarr",
          "train chunk 2 (labels, file train/labels/c/2) has 7 bytes"),
    _case("check-incomplete", "check {stores}/incomplete.zarr", "is incomplete"),
    _case("check-missing", "check {case}/none.zarr", "no feature store at"),
]  # fmt: skip


def _setup(case: Case, world: Path, folder: Path) -> subprocess.Popen | None:
    """Prepare the case folder; returns a process to stop afterwards (the lock holder)."""
    if case.setup == "dir":
        (folder / "dir.parquet").mkdir()
    elif case.setup == "file":
        (folder / "file.txt").write_text("x")
    elif case.setup == "csv":
        (folder / "important.csv").write_text("a,b\n1,2\n")
    elif case.setup == "finished":
        for path in (world / "finished").iterdir():
            shutil.copy2(path, folder / path.name)
    elif case.setup == "victim":
        (folder / "victim").mkdir()
        (folder / "victim" / "precious.txt").write_text("keep me")
    elif case.setup == "store_a":
        shutil.copytree(world / "stores" / "a.zarr", folder / "a.zarr")
    elif case.setup == "lock":
        holder = subprocess.Popen(
            [sys.executable, "-c", LOCK_HOLDER, str(folder / ".r.parquet.lock")],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout.readline().strip() == "locked"
        return holder
    return None


LOCK_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"PID {os.getpid()} on test\\n".encode())
print("locked", flush=True)
time.sleep(600)
"""


def _full_disk() -> None:
    """In the child: every file may grow to 512 bytes, then writes fail (EFBIG) as on a full
    disk (SIGXFSZ ignored, so the write returns the error instead of killing the process)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (512, 512))


def tree_hash(root: Path) -> dict[str, str]:
    """Every path under ``root`` with its content's sha256 (folders: "dir")."""
    return {
        str(p.relative_to(root)): "dir"
        if p.is_dir()
        else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case: Case, world: Path) -> None:
    folder = world / "cases" / case.id
    folder.mkdir(parents=True)
    holder = _setup(case, world, folder)
    try:
        before = tree_hash(world)
        args = [_expand(a, world, folder) for a in case.args]
        result = subprocess.run(
            [sys.executable, "-m", "alfm", *args],
            capture_output=True,
            text=True,
            env=ENV,
            cwd=folder,
            timeout=600,
            preexec_fn=_full_disk if case.full_disk else None,
        )
        after = tree_hash(world)
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert case.culprit in lines[0], lines[0]
    assert lines[0].startswith("alfm "), lines[0]
    assert after == before, "the bad input changed files"


def test_fault_a_store_with_a_deleted_and_a_truncated_chunk_is_rejected_everywhere(world):
    """Issue 12's fault test: ``alfm run``, ``alfm check`` and the workflow's job (one AL job
    through :func:`alfm.pipeline.advance_and_publish`, what the AL rule runs) each reject the
    store, naming the chunk."""
    from alfm.pipeline import advance_and_publish
    from alfm.store import CorruptStoreError

    faulty = world / "stores" / "faulty.zarr"
    named = r"(train chunk 3 \(features|test chunk 1 \(ids)"
    before = tree_hash(world)
    run_args = ["run", "--features", str(faulty), "--strategy", "random", "--out"]
    for args in (["check", str(faulty)], _with_defaults([*run_args, str(world / "f.parquet")])):
        result = subprocess.run(
            [sys.executable, "-m", "alfm", *args], capture_output=True, text=True, env=ENV
        )
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert re.search(named, result.stderr), result.stderr
    run = {"features": str(faulty), "strategy": "random", "seed": 0, "device": "cpu",
           "budget": {"init_size": 8, "step_size": 8, "evaluations": 2}}  # fmt: skip
    with pytest.raises(CorruptStoreError, match=named):
        advance_and_publish([run], [world / "state"], [world / "upto2.parquet"], progress=False)
    assert tree_hash(world) == before
