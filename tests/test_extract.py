"""Extraction end to end: stores, determinism, kill -9 resume, bad inputs, shards, device
decoding, the CLI."""

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
from PIL import Image
from torch.utils.data import Dataset as TorchDataset

from alfm.backbones import create_backbone
from alfm.cli import main
from alfm.datasets import BadImageError, Dataset, create_dataset
from alfm.extract import default_store_path, extract_features, finalize_store, fold_batch_norms
from alfm.registry import UnknownNameError
from alfm.store import SKIPPED_LABEL, IncompleteStoreError, Shard, StoreWriter, open_store

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
    assert attrs["compute"] == "cpu fp32, conv-bn folded, channels_last"
    assert attrs["decode"] == "cpu" and attrs["compile"] is False
    (run,) = attrs["extraction"].values()
    assert run["shard"] == "0/1" and run["images"] == 384 and run["workers"] == 0
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
    assert everything.labels.tolist() == [0, 0, 0, 0, 1, SKIPPED_LABEL, 1, 1]
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
    store_path = tmp_path / "results/features/mobilenet_v2/imagefolder@32px-float32.zarr"
    assert store_path == tmp_path / default_store_path(
        "mobilenet_v2", "imagefolder", image_size=32, dtype="float32"
    )
    store = open_store(store_path)
    assert store.load("test").features.dtype == np.float32
    assert main(["extract", "--model", "nope", "--quiet"]) == 2
    assert "unknown backbone 'nope'" in capsys.readouterr().err


def test_default_store_path():
    assert str(default_store_path("open_clip:ViT-B-16/laion2b", "digits")) == (
        "results/features/open_clip_ViT-B-16_laion2b/digits.zarr"
    )
    # the workflow's path for the same settings (alfm.pipeline.store_tag)
    assert default_store_path("m", "d", "f", image_size=112, compile=True) == Path(
        "f/m/d@112px-compiled.zarr"
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


SHARDED = {**FAST, "chunk_rows": 32, "batch_size": 16}  # digits_head: 10 + 2 chunks


def test_shards_equal_unsharded_and_complete_only_after_finalize(tmp_path, capsys):
    whole = extract_features("mobilenet_v2", HEAD, tmp_path / "whole.zarr", **SHARDED)
    out = tmp_path / "sharded.zarr"
    for index in (2, 0):
        extract_features("mobilenet_v2", HEAD, out, shard=f"{index}/3", **SHARDED)
    with pytest.raises(IncompleteStoreError, match="incomplete"):
        open_store(out)
    # the missing shard names itself, from the recorded shard count or the one given
    with pytest.raises(
        IncompleteStoreError, match=r"shard 1/3: train chunks \[1, 4, 7\], test chunks \[0\]$"
    ):
        finalize_store(out)
    assert main(["extract", "--out", str(out), "--finalize", "--shards", "3"]) == 2
    assert "shard 1/3: train chunks [1, 4, 7], test chunks [0]" in capsys.readouterr().err
    writer = StoreWriter.resume(out)
    assert [writer.pending_chunks(s, Shard(1, 3)) for s in ("train", "test")] == [[1, 4, 7], [0]]
    extract_features("mobilenet_v2", HEAD, out, shard=Shard(1, 3), **SHARDED)
    with pytest.raises(IncompleteStoreError):
        open_store(out)
    finalize_store(out)
    _assert_same(_arrays(whole), _arrays(out))
    attrs = open_store(out).attrs
    assert sorted(attrs["extraction"]) == ["shard-0-of-3", "shard-1-of-3", "shard-2-of-3"]
    assert sum(r["images"] for r in attrs["extraction"].values()) == 384
    assert open_store(whole).attrs["sizes"] == attrs["sizes"]


def _jpeg_folder(root: Path, count: int) -> Path:
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / ("test" if i % 4 == 3 else "train") / f"c{i // 4 % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (30 + i, 40 + 2 * i, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        if i == 5:
            image.save(folder / f"{i}.png")  # decoded by PIL in the worker
        else:
            (image.convert("L") if i == 6 else image).save(folder / f"{i}.jpg", quality=85)
    return root


def test_device_decoding_equals_pil_decoding(tmp_path):
    """decode='gpu' runs the GPU pipeline's code (workers read bytes, the device decodes JPEG,
    the batched transform) on a CPU device; its store equals the PIL path's."""
    root = _jpeg_folder(tmp_path / "jpegs", 12)
    stores = {}
    for decode in ("cpu", "gpu"):
        stores[decode] = extract_features(
            "mobilenet_v2",
            "imagefolder",
            tmp_path / f"{decode}.zarr",
            root=root,
            decode=decode,
            chunk_rows=4,
            batch_size=3,
            **FAST,
        )
    _assert_same(_arrays(stores["cpu"]), _arrays(stores["gpu"]))
    runs = {d: open_store(p).attrs for d, p in stores.items()}
    assert runs["gpu"]["decode"] == "gpu" and runs["cpu"]["decode"] == "cpu"
    (gpu,) = runs["gpu"]["extraction"].values()
    assert (gpu["decoded_on_device"], gpu["decoded_by_pil"]) == (11, 1)


def test_bad_image_in_a_device_decoded_batch_is_named(tmp_path):
    root = _jpeg_folder(tmp_path / "jpegs", 8)
    victim = root / "train" / "c1" / "4.jpg"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 3])  # whole headers, a truncated scan
    out = tmp_path / "s.zarr"
    kwargs = {"root": root, "decode": "gpu", "chunk_rows": 4, "batch_size": 4, **FAST}
    with pytest.raises(BadImageError, match=r"cannot read image .*train/c1/4\.jpg"):
        extract_features("mobilenet_v2", "imagefolder", out, **kwargs)
    extract_features("mobilenet_v2", "imagefolder", out, skip_bad_images=True, **kwargs)
    store = open_store(out)
    assert store.attrs["skipped_images"] == {"train": ["train/c1/4.jpg"], "test": []}
    everything = store.load("train", include_skipped=True)
    assert not everything.features[list(everything.ids).index("train/c1/4.jpg")].any()


def test_fold_batch_norms_keeps_outputs():
    backbone = create_backbone("mobilenet_v2", image_size=32)
    images = torch.rand(4, 3, 32, 32)
    with torch.inference_mode():
        before = backbone.model(images)
        after = fold_batch_norms(backbone.model)(images)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.model.modules())
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)


def test_bad_options_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="decode must be one of auto, cpu, gpu"):
        extract_features("mobilenet_v2", HEAD, tmp_path / "s.zarr", decode="nvjpeg", **FAST)
    with pytest.raises(ValueError, match=r"shard must be i/N with 0 <= i < N, got 3/3"):
        extract_features("mobilenet_v2", HEAD, tmp_path / "s.zarr", shard="3/3", **FAST)
    assert main(["extract", "--dataset", HEAD, "--shard", "one", "--quiet"]) == 2
    assert "shard must be written i/N" in capsys.readouterr().err
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.slow
def test_compiled_model_matches_eager(tmp_path):
    eager = extract_features("mobilenet_v2", HEAD, tmp_path / "eager.zarr", **SHARDED)
    compiled = extract_features(
        "mobilenet_v2", HEAD, tmp_path / "compiled.zarr", compile=True, **SHARDED
    )
    for split in ("train", "test"):
        np.testing.assert_allclose(
            _arrays(compiled)[split].features.astype(np.float32),
            _arrays(eager)[split].features.astype(np.float32),
            atol=2e-2,
            rtol=1e-2,
        )
    (run,) = open_store(compiled).attrs["extraction"].values()
    assert run["compile"] is True and run["compile_seconds"] > 0


SHARD_EXTRACT = textwrap.dedent(
    f"""
    import functools, sys
    sys.path.insert(0, {str(Path(__file__).parent)!r})
    from test_extract import digits_head
    from alfm.extract import extract_features

    head = functools.partial(digits_head, delay=float(sys.argv[3]))
    extract_features(
        "mobilenet_v2", "__main__:head", sys.argv[1], shard=sys.argv[2], **{KILL_ARGS!r}
    )
    """
)


@pytest.mark.slow
def test_concurrent_shards_and_a_killed_shard_resume(tmp_path, monkeypatch):
    """Three shard processes start at once on a store that does not exist yet (one creates it,
    the others open it); shard 1 is killed with -9 mid-way and resumed; finalize gives the
    unsharded store."""
    out = tmp_path / "sharded.zarr"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    procs = {
        index: subprocess.Popen(
            [sys.executable, "-c", SHARD_EXTRACT, str(out), f"{index}/3", delay],
            env=env,
        )
        for index, delay in ((0, "0"), (1, "0.02"), (2, "0"))
    }
    deadline = time.time() + 600
    while _done(out) < 2 and procs[1].poll() is None and time.time() < deadline:
        time.sleep(0.05)
    # shard 1 owns train chunks 1, 4, 7: kill it once it has written some but not all
    while time.time() < deadline and procs[1].poll() is None:
        done = np.asarray(zarr.open_group(str(out), mode="r")["train/chunks_done"][:])
        if done[1] and not done[7]:
            break
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    assert procs[0].wait() == 0 and procs[2].wait() == 0 and procs[1].wait() == -signal.SIGKILL
    with pytest.raises(IncompleteStoreError, match=r"shard 1/3: train chunks \[[47, ]+\]"):
        finalize_store(out, shards=3)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "sharded.zarr"]
    assert leftovers == [], "a staging directory was left behind"
    chunk = out / "train" / "features" / "c" / "1" / "0"
    mtime = chunk.stat().st_mtime_ns
    monkeypatch.setattr(sys.modules["__main__"], "head", digits_head, raising=False)
    extract_features("mobilenet_v2", "__main__:head", out, shard="1/3", **KILL_ARGS)
    assert chunk.stat().st_mtime_ns == mtime, "a finished chunk was recomputed"
    finalize_store(out)
    whole = extract_features("mobilenet_v2", "__main__:head", tmp_path / "w.zarr", **KILL_ARGS)
    _assert_same(_arrays(out), _arrays(whole))
