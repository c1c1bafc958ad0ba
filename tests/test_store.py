"""The zarr feature store: round trip, completion marker, resume and identity checks."""

from __future__ import annotations

import numpy as np
import pytest

from alfm.store import (
    SKIPPED_LABEL,
    UNKNOWN_LABEL,
    CorruptStoreError,
    IncompleteStoreError,
    Shard,
    SplitData,
    StoreWriter,
    open_store,
    verify_store,
    write_store,
)


def _split(n: int, dim: int, seed: int, prefix: str) -> SplitData:
    rng = np.random.default_rng(seed)
    return SplitData(
        features=rng.normal(size=(n, dim)).astype(np.float32),
        labels=rng.integers(0, 3, n),
        ids=np.array([f"{prefix}{i}" for i in range(n)]),
    )


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip(tmp_path, dtype):
    train, test = _split(23, 5, 0, "tr"), _split(7, 5, 1, "te")
    store = write_store(
        tmp_path / "s.zarr", train, test, {"dataset": "toy"}, dtype=dtype, chunk_rows=4
    )
    assert store.attrs["complete"] is True
    assert store.attrs["dataset"] == "toy" and store.attrs["backbone"] == "synthetic"
    assert store.attrs["dtype"] == dtype and store.attrs["num_classes"] == 3
    assert "zarr" in store.attrs["versions"]
    for split, data in (("train", train), ("test", test)):
        got = open_store(tmp_path / "s.zarr").load(split)
        assert got.features.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got.features, data.features.astype(dtype))
        np.testing.assert_array_equal(got.labels, data.labels)
        assert got.labels.dtype == np.int64
        assert list(got.ids) == list(data.ids)
    assert store.num_rows("train") == 23


def test_missing_and_existing_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="no feature store"):
        open_store(tmp_path / "none.zarr")
    write_store(tmp_path / "s.zarr", _split(3, 2, 0, "a"), _split(2, 2, 1, "b"))
    with pytest.raises(FileExistsError, match="overwrite"):
        write_store(tmp_path / "s.zarr", _split(3, 2, 0, "a"), _split(2, 2, 1, "b"))
    store = write_store(
        tmp_path / "s.zarr", _split(4, 2, 0, "a"), _split(2, 2, 1, "b"), overwrite=True
    )
    assert store.num_rows("train") == 4
    with pytest.raises(ValueError, match="unknown split 'val'"):
        store.load("val")


def _writer(path, **attrs):
    base = {"backbone": "m", "dataset": "d", **attrs}
    return StoreWriter.open(path, base, {"train": 10, "test": 3}, 2, chunk_rows=4)


def test_partial_store_is_incomplete_and_resumes(tmp_path):
    path = tmp_path / "s.zarr"
    writer = _writer(path)
    assert writer.num_chunks("train") == 3 and writer.pending_chunks("test") == [0]
    writer.write_chunk("train", 1, np.ones((4, 2)), np.arange(4), np.array(list("abcd")))
    with pytest.raises(IncompleteStoreError, match="incomplete"):
        open_store(path)
    with pytest.raises(IncompleteStoreError, match="chunks missing"):
        writer.finish()
    resumed = _writer(path)
    assert resumed.pending_chunks("train") == [0, 2]
    assert resumed.chunk_slice("train", 2) == slice(8, 10)
    with pytest.raises(ValueError, match="needs 2 rows"):
        resumed.write_chunk("train", 2, np.ones((4, 2)), np.arange(4), np.array(list("abcd")))
    resumed.write_chunk("train", 0, np.zeros((4, 2)), np.arange(4), np.array(list("efgh")))
    resumed.write_chunk("train", 2, np.zeros((2, 2)), np.arange(2), np.array(list("ij")))
    resumed.write_chunk("test", 0, np.zeros((3, 2)), np.arange(3), np.array(list("klm")))
    resumed.finish()
    data = open_store(path).load("train")
    assert "".join(data.ids) == "efghabcdij"
    np.testing.assert_array_equal(data.features[4:8], np.ones((4, 2)))


def test_other_model_or_dataset_is_refused(tmp_path):
    path = tmp_path / "s.zarr"
    _writer(path)
    with pytest.raises(FileExistsError, match="model 'm' on dataset 'd', not model 'x'"):
        StoreWriter.open(path, {"backbone": "x", "dataset": "d"}, {"train": 10, "test": 3}, 2)
    with pytest.raises(FileExistsError, match="weights_sha256"):
        _writer(path, weights_sha256="abc")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not a feature store"):
        _writer(tmp_path / "other")


def _open_at_once(path, barrier, results) -> None:
    barrier.wait()
    writer = _writer(path)
    results.put(writer._group.attrs["created"] + "|" + str(writer.pending_chunks("train")))


def test_concurrent_creation_makes_one_store(tmp_path):
    """Processes opening a missing store at the same instant: one creates it, all open it."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    path = tmp_path / "s.zarr"
    path.mkdir()  # an empty directory is replaced, as a missing one is created
    barrier, results = context.Barrier(4), context.Queue()
    procs = [context.Process(target=_open_at_once, args=(path, barrier, results)) for _ in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    assert [proc.exitcode for proc in procs] == [0, 0, 0, 0]
    assert len({results.get(timeout=5) for _ in procs}) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def test_shards_split_the_chunks_and_finish_names_missing_ones(tmp_path):
    writer = _writer(tmp_path / "s.zarr")  # train: 3 chunks, test: 1 (global chunks 0..3)
    plans = [
        [writer.pending_chunks(split, Shard(i, 2)) for split in ("train", "test")] for i in range(2)
    ]
    assert plans == [[[0, 2], []], [[1], [0]]]
    with pytest.raises(ValueError, match="shard must be i/N"):
        Shard(2, 2)
    assert Shard.parse(" 1/2 ") == Shard(1, 2) and str(Shard(1, 2)) == "1/2"
    for index in (0, 2):
        rows = writer.chunk_slice("train", index)
        n = rows.stop - rows.start
        writer.write_chunk("train", index, np.ones((n, 2)), np.arange(n), np.arange(n).astype(str))
    writer.record_run(Shard(0, 2), {"seconds": 1.5})
    with pytest.raises(IncompleteStoreError, match=r"shard 1/2: train chunks \[1\], test chunks"):
        writer.finish(shards=2)
    assert list(writer.run_records()) == ["shard-0-of-2"]
    assert writer.run_records()["shard-0-of-2"]["shard"] == "0/2"


def test_unknown_labels_are_kept_and_skipped_rows_dropped(tmp_path):
    """-1 (a class nobody knows yet) is a row of the pool; -2 (an unreadable image) is not."""
    train = _split(6, 2, 0, "tr")
    labels = np.array([0, UNKNOWN_LABEL, 1, SKIPPED_LABEL, UNKNOWN_LABEL, 2])
    train = SplitData(train.features, labels, train.ids)
    store = write_store(tmp_path / "s.zarr", train, _split(2, 2, 1, "te"), chunk_rows=4)
    got = store.load("train")
    assert got.labels.tolist() == [0, -1, 1, -1, 2]
    assert list(got.ids) == ["tr0", "tr1", "tr2", "tr4", "tr5"]
    assert store.load("train", include_skipped=True).labels.tolist() == labels.tolist()


def _chunked_store(path):
    return write_store(path, _split(20, 3, 0, "a"), _split(8, 3, 1, "b"), chunk_rows=4).path


@pytest.mark.parametrize("array", ["features", "labels", "ids"])
def test_deleted_chunk_is_an_error_naming_store_split_and_chunk(tmp_path, array):
    path = _chunked_store(tmp_path / "s.zarr")
    key = "c/2/0" if array == "features" else "c/2"
    (path / "train" / array / key).unlink()
    for check in (open_store, verify_store):
        with pytest.raises(CorruptStoreError, match=rf"{path}: train chunk 2 \({array}, .*missing"):
            check(path)


def test_truncated_chunk_is_an_error_naming_it_not_a_decompression_error(tmp_path):
    path = _chunked_store(tmp_path / "s.zarr")
    chunk = path / "test" / "features" / "c" / "1" / "0"
    chunk.write_bytes(chunk.read_bytes()[:10])
    with pytest.raises(CorruptStoreError, match=r"test chunk 1 \(features, .*has 10 bytes"):
        open_store(path)


def test_truncated_chunk_of_a_store_without_recorded_sizes_is_named_on_load(tmp_path):
    import zarr

    path = _chunked_store(tmp_path / "s.zarr")
    group = zarr.open_group(str(path), mode="r+", zarr_format=3)
    for key in ("chunk_bytes", "checksums"):
        del group.attrs[key]  # as written before they were recorded
    chunk = path / "train" / "features" / "c" / "3" / "0"
    chunk.write_bytes(chunk.read_bytes()[:10])
    store = open_store(path)
    with pytest.raises(CorruptStoreError, match=r"train chunk 3 \(features, .*cannot be read"):
        store.load("train")
    with pytest.raises(CorruptStoreError, match="train chunk 3"):
        verify_store(path)


def test_verify_store_compares_checksums(tmp_path):
    path = _chunked_store(tmp_path / "s.zarr")
    report = verify_store(path)
    assert report["train"] == {"rows": 20, "chunks": 5, "checksums": True}
    a, b = (path / "train" / "ids" / "c" / str(i) for i in (0, 1))
    a_bytes = a.read_bytes()
    b.write_bytes(a_bytes)  # same size (ids a0..a3 vs a4..a7), other rows: open cannot tell
    assert len(a_bytes) == len(b.read_bytes())
    open_store(path)
    with pytest.raises(CorruptStoreError, match="train chunk 1 does not match the checksum"):
        verify_store(path)
