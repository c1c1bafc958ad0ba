"""Extraction end to end: stores, determinism, kill -9 resume, bad inputs, the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import Dataset as TorchDataset

from alfm.backbones import create_backbone
from alfm.cli import main
from alfm.datasets import BadImageError, Dataset, create_dataset
from alfm.extract import default_store_path, extract_features
from alfm.registry import UnknownNameError
from alfm.store import IncompleteStoreError, open_store

FAST = {"image_size": 32, "num_workers": 0, "progress": False}


def _arrays(path):
    store = open_store(path)
    return {s: store.load(s) for s in ("train", "test")}


def _assert_same(a, b):
    for split in ("train", "test"):
        np.testing.assert_array_equal(a[split].features, b[split].features)
        np.testing.assert_array_equal(a[split].labels, b[split].labels)
        np.testing.assert_array_equal(a[split].ids, b[split].ids)


class _Head(TorchDataset):
    """The first ``n`` samples of a split, each taking ``delay`` seconds to load."""

    def __init__(self, split, n: int, delay: float = 0.0) -> None:
        self.split, self.n, self.delay = split, n, delay

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        time.sleep(self.delay)
        return self.split[index]


def digits_head(root=None, delay: float = 0.0) -> Dataset:
    """320 train and 64 test digits: 10 + 2 chunks of 32 rows."""
    data = create_dataset("digits")
    splits = {
        "train": _Head(data.split("train"), 320, delay),
        "test": _Head(data.split("test"), 64, delay),
    }
    return Dataset("digits_head", data.class_names, splits)


HEAD = f"{__name__}:digits_head"  # importable: pytest puts tests/ on sys.path


def test_store_is_right_and_deterministic(tmp_path):
    first = extract_features("mobilenet_v2", HEAD, tmp_path / "a.zarr", chunk_rows=100, **FAST)
    store = open_store(first)
    attrs = store.attrs
    assert attrs["complete"] is True and attrs["weights_sha256"].startswith("b0353104")
    assert (attrs["backbone"], attrs["dataset"], attrs["dtype"]) == (
        "mobilenet_v2",
        HEAD,
        "float16",
    )
    assert attrs["num_classes"] == 10 and attrs["preprocessing"]["center_crop"] == 32
    assert attrs["skipped_images"] == {"train": [], "test": []}
    data = _arrays(first)
    assert data["train"].features.shape == (320, 1280) and data["test"].features.shape == (64, 1280)
    # rows are the backbone applied to the dataset's images, in order
    backbone = create_backbone("mobilenet_v2", image_size=32)
    test = digits_head().split("test")
    batch = torch.stack([backbone.transform(test[i][0]) for i in (0, 63)])
    with torch.inference_mode():
        expected = backbone.model(batch).numpy()
    np.testing.assert_allclose(
        data["test"].features[[0, 63]].astype(np.float32), expected, atol=2e-2, rtol=1e-2
    )
    assert list(data["test"].ids[[0, 63]]) == [test[0][2], test[63][2]]
    np.testing.assert_array_equal(
        data["train"].labels, create_dataset("digits").split("train").labels[:320]
    )
    # determinism: a second extraction (here with a worker process) is bit-identical
    second = extract_features(
        "mobilenet_v2",
        HEAD,
        tmp_path / "b.zarr",
        chunk_rows=100,
        image_size=32,
        num_workers=1,
        progress=False,
    )
    _assert_same(data, _arrays(second))
    # a complete store is left alone
    extract_features("mobilenet_v2", HEAD, first, chunk_rows=100, **FAST)
    assert open_store(first).attrs["created"] == attrs["created"]


def test_bad_inputs_leave_nothing_complete(tmp_path):
    out = tmp_path / "s.zarr"
    with pytest.raises(UnknownNameError, match="unknown backbone 'mobilenet'.*mobilenet_v2"):
        extract_features("mobilenet", "digits", out, **FAST)
    with pytest.raises(UnknownNameError, match="unknown dataset 'digit'.*digits"):
        extract_features("mobilenet_v2", "digit", out, **FAST)
    with pytest.raises(FileNotFoundError, match="expected .*vit_small_patch14_dinov2"):
        dinov2_size = {**FAST, "image_size": 28}  # DINOv2 takes multiples of its patch size 14
        extract_features("dinov2_vits14", "digits", out, model_dir=tmp_path / "m", **dinov2_size)
    assert not out.exists()
    extract_features("mobilenet_v2", HEAD, out, **FAST)
    with pytest.raises(
        FileExistsError, match=f"on dataset '{HEAD}', not model 'mobilenet_v2' on dataset 'digits'"
    ):
        extract_features("mobilenet_v2", "digits", out, **FAST)
    with pytest.raises(FileExistsError, match="dtype='float16', not 'float32'"):
        extract_features("mobilenet_v2", HEAD, out, dtype="float32", **FAST)
    assert open_store(out).attrs["dataset"] == HEAD


def _manifest(root, records):
    lines = ["path,label,split"] + [f"{p},{c},{s}" for p, c, s in records]
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")


def test_corrupt_image_error_or_skip(tmp_path, image_files):
    root, records = image_files
    (root / "train" / "dog" / "dog1.png").write_bytes(b"garbage")
    _manifest(root, records)
    out = tmp_path / "m.zarr"
    with pytest.raises(BadImageError, match=r"cannot read image .*train/dog/dog1\.png"):
        extract_features("mobilenet_v2", "manifest", out, root=root, **FAST)
    with pytest.raises(IncompleteStoreError):
        open_store(out)
    extract_features("mobilenet_v2", "manifest", out, root=root, skip_bad_images=True, **FAST)
    store = open_store(out)
    assert store.attrs["skipped_images"] == {"train": ["train/dog/dog1.png"], "test": []}
    train = store.load("train")
    assert len(train.ids) == 7 and "train/dog/dog1.png" not in set(train.ids)
    everything = store.load("train", include_skipped=True)
    assert everything.labels.tolist() == [0, 0, 0, 0, 1, -1, 1, 1]
    assert not everything.features[5].any() and everything.features[4].any()


def test_cli_on_image_folder(tmp_path, image_files, capsys, monkeypatch):
    root, _ = image_files
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "extract",
            "--dataset",
            "imagefolder",
            "--root",
            str(root),
            "--image-size",
            "32",
            "--workers",
            "0",
            "--dtype",
            "float32",
            "--quiet",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "train 8 × test 4 rows, dim 1280, float32" in out
    store = open_store(tmp_path / default_store_path("mobilenet_v2", "imagefolder"))
    assert store.load("test").features.dtype == np.float32
    assert main(["extract", "--model", "nope", "--quiet"]) == 2
    assert "unknown backbone 'nope'" in capsys.readouterr().err


def test_default_store_path():
    assert str(default_store_path("open_clip:ViT-B-16/laion2b", "digits")) == (
        "results/features/open_clip_ViT-B-16_laion2b/digits.zarr"
    )


KILL_ARGS = {
    "image_size": 32,
    "chunk_rows": 32,
    "batch_size": 16,
    "num_workers": 0,
    "progress": False,
}
# The child registers a slow variant of digits_head as ``__main__:head``; the parent resumes the
# same store in-process with ``__main__:head`` bound to the fast variant (same data).
SLOW_EXTRACT = textwrap.dedent(
    f"""
    import functools, sys
    sys.path.insert(0, {str(Path(__file__).parent)!r})
    from test_extract import digits_head
    from alfm.extract import extract_features

    head = functools.partial(digits_head, delay=0.01)
    extract_features("mobilenet_v2", "__main__:head", sys.argv[1], **{KILL_ARGS!r})
    """
)


def _done(path):
    try:
        return int(np.sum(zarr.open_group(str(path), mode="r")["train/chunks_done"][:]))
    except Exception:  # not created yet
        return 0


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted(tmp_path, monkeypatch):
    killed = tmp_path / "killed.zarr"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_EXTRACT, str(killed)], env=env)
    deadline = time.time() + 600  # generous: loaded CI machines start torch slowly
    while _done(killed) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = _done(killed)
    assert 3 <= done_before < 10, "the kill should land mid-extraction"
    with pytest.raises(IncompleteStoreError, match="incomplete"):
        open_store(killed)
    chunk = killed / "train" / "features" / "c" / "0" / "0"
    mtime = chunk.stat().st_mtime_ns
    monkeypatch.setattr(sys.modules["__main__"], "head", digits_head, raising=False)
    extract_features("mobilenet_v2", "__main__:head", killed, **KILL_ARGS)
    assert chunk.stat().st_mtime_ns == mtime, "a finished chunk was recomputed"
    whole = tmp_path / "whole.zarr"
    extract_features("mobilenet_v2", "__main__:head", whole, **KILL_ARGS)
    _assert_same(_arrays(killed), _arrays(whole))
