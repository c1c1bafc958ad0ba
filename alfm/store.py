"""The feature store: one zarr v3 group per (model, dataset), written chunk by chunk, resumable.

Layout::

    store.zarr/                  group attrs: backbone, weights_sha256, preprocessing, dataset,
      train/                       num_classes, class_names, dtype, versions, created, complete, ...
        features   (N, D)        float16 (default) or float32, chunked along rows
        labels     (N,)          int64: a class, UNKNOWN_LABEL (-1) or SKIPPED_LABEL (-2)
        ids        (N,)          str
        chunks_done (n_chunks,)  bool, set after a chunk's three arrays are written
        checksums (n_chunks,)    uint64: blake2b of the chunk's rows (features, labels, ids)
        chunk_bytes (n_chunks, 3) int64: sizes of the chunk's features/labels/ids files
      (group attrs ``checksums`` and ``chunk_bytes``: both, per split, once complete)
      test/ ...

Every chunk write is atomic (zarr's local store writes through a temporary file and a rename),
``chunks_done`` is set only after a chunk's rows are in place, and the group attribute
``complete`` becomes true only after every chunk of both splits is done. A killed writer therefore
never leaves a store that reads as complete, and a rerun continues with the missing chunks.

Integrity: :func:`open_store` checks that every chunk file a complete store records exists with
the size written (cheap: no chunk is read), so a deleted or truncated chunk is an error naming
the store, split and chunk instead of fill values (zeros, label -1) or a raw decompression
error; :func:`verify_store` (``alfm check``) reads every chunk and compares its checksum.
Temporary files a killed writer left (zarr's ``*.partial``, a half-built creation folder) are
removed when their chunk is written again, when the store is finished, and (creation folders of
dead processes on this host) when a store is next created beside them.

Shards: several processes may write one store at once, each its own chunks (:class:`Shard`:
chunk ``g`` of the train-then-test chunk sequence belongs to shard ``g mod N``). Whichever comes
first creates the store: it is built in a private temporary directory and renamed into place,
so the others (on any host sharing the file system) either find no store or a whole one. Each
process records what it did in a child group ``extract_runs/<shard>`` (its attributes); only
:meth:`StoreWriter.finish`, once every chunk is done, writes the store's own attributes.

Two labels are not classes: ``UNKNOWN_LABEL`` (-1) marks an image whose class nobody knows yet (an
unlabeled dataset, for ``alfm label``); ``SKIPPED_LABEL`` (-2) marks an unreadable image skipped
during extraction (its id is also listed in the ``skipped_images`` attribute, its features are
zeros). :meth:`FeatureStore.load` leaves skipped rows out and keeps unknown ones.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import zarr

SPLITS = ("train", "test")
DTYPES = ("float16", "float32")
DEFAULT_CHUNK_ROWS = 2048
UNKNOWN_LABEL = -1  # an image whose class is not known (yet)
SKIPPED_LABEL = -2  # an unreadable image skipped during extraction
# Attributes that define a store's rows: resuming into (or reusing) a store that differs in any
# of them is an error naming them rather than a silent mix of two extractions, and a run's
# identity includes them. ``content_digest`` (:func:`content_digest`) stands for the dataset's
# rows themselves (ids and labels, wherever its root lies), ``preprocessing`` for the image size
# and view, ``weights_sha256`` and ``random_init`` for the weights.
IDENTITY_KEYS = (
    "backbone",
    "dataset",
    "content_digest",
    "weights_sha256",
    "random_init",
    "preprocessing",
    "dtype",
    "dim",
    "sizes",
    "num_classes",
    "class_names",
)
_VERSION_PACKAGES = ("alfm", "torch", "torchvision", "timm", "open_clip_torch", "zarr", "numpy")


RUNS_GROUP = "extract_runs"


class IncompleteStoreError(RuntimeError):
    """A store whose writer has not finished (still running, killed or failed)."""


class CorruptStoreError(ValueError):
    """A store whose recorded chunks are missing, truncated, unreadable or altered."""


# The row arrays of a split, in the column order of ``chunk_bytes``.
ROW_ARRAYS = ("features", "labels", "ids")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based): the chunks ``g`` with ``g mod count == index``,
    numbering the train chunks first, then the test chunks."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard must be i/N with 0 <= i < N, got {self.index}/{self.count}")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"i/N"`` as a shard (``"1/4"``: the second of four)."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if match is None:
            raise ValueError(f"shard must be written i/N (e.g. 0/4), got {text!r}")
        return cls(int(match[1]), int(match[2]))

    @property
    def name(self) -> str:
        """``shard-<i>-of-<N>``: the shard's record in ``extract_runs``."""
        return f"shard-{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True)
class SplitData:
    """One split of a store: ``features`` (N, D), ``labels`` (N,) int64, ``ids`` (N,) str."""

    features: np.ndarray
    labels: np.ndarray
    ids: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.features)
        if self.features.ndim != 2:
            raise ValueError(f"features must be 2-D (N, D), got shape {self.features.shape}")
        if self.labels.shape != (n,) or self.ids.shape != (n,):
            raise ValueError(
                f"features, labels and ids must have the same number of rows, got "
                f"{self.features.shape}, {self.labels.shape}, {self.ids.shape}"
            )


class FeatureStore:
    """A complete feature store opened for reading (see :func:`open_store`)."""

    def __init__(self, path: Path, group: zarr.Group) -> None:
        self.path = path
        self._group = group
        self.attrs: dict[str, Any] = dict(group.attrs)

    def num_rows(self, split: str) -> int:
        """Number of samples in ``split``."""
        return int(self._split(split)["features"].shape[0])

    def load(self, split: str, *, include_skipped: bool = False) -> SplitData:
        """Read one split fully into memory.

        Rows of images skipped during extraction (``SKIPPED_LABEL``) are left out unless
        ``include_skipped``; rows of unknown class (``UNKNOWN_LABEL``) are kept.
        """
        labels = np.asarray(self._read(split, "labels"), dtype=np.int64)
        keep = slice(None) if include_skipped else labels != SKIPPED_LABEL
        return SplitData(
            features=np.asarray(self._read(split, "features"))[keep],
            labels=labels[keep],
            ids=np.asarray(self._read(split, "ids"), dtype=object).astype(str)[keep],
        )

    def _read(self, split: str, name: str) -> np.ndarray:
        """A whole array of ``split``; a chunk that cannot be decoded is a
        :class:`CorruptStoreError` naming it."""
        array = self._split(split)[name]
        try:
            return array[:]
        except Exception:  # zarr and its codecs raise many types; find and name the chunk
            chunk_rows = array.chunks[0]
            for index in range(-(-array.shape[0] // chunk_rows)):
                _read_chunk(self.path, split, array, name, index)
            raise

    def _split(self, split: str) -> zarr.Group:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; a store has splits {', '.join(SPLITS)}")
        return self._group[split]

    def __repr__(self) -> str:
        return (
            f"FeatureStore({str(self.path)!r}, backbone={self.attrs.get('backbone')!r}, "
            f"dataset={self.attrs.get('dataset')!r}, train={self.num_rows('train')}, "
            f"test={self.num_rows('test')})"
        )


def _open_group(path: Path) -> zarr.Group:
    if not (path / "zarr.json").is_file():
        raise FileNotFoundError(f"no feature store at {path} (no zarr.json)")
    try:
        return zarr.open_group(str(path), mode="r", zarr_format=3)
    except Exception as err:  # zarr raises several types for unreadable metadata
        raise IncompleteStoreError(f"feature store {path} cannot be read: {err}") from err


def open_store(path: str | Path) -> FeatureStore:
    """Open a complete store; ``IncompleteStoreError`` if its writer did not finish, and
    :class:`CorruptStoreError` naming the split and chunk when a recorded chunk file is missing,
    has another size than written, or the arrays disagree with the recorded row counts."""
    path = Path(path)
    group = _open_group(path)
    if group.attrs.get("complete") is not True:
        done = {
            split: f"{int(np.sum(group[split]['chunks_done'][:]))}/"
            f"{group[split]['chunks_done'].shape[0]}"
            for split in SPLITS
            if split in group
        }
        raise IncompleteStoreError(
            f"feature store {path} is incomplete (chunks done: {done}); rerun the extraction "
            "to resume it"
        )
    for split in SPLITS:
        _check_chunk_files(path, group, split)
    return FeatureStore(path, group)


def verify_store(path: str | Path) -> dict[str, dict[str, Any]]:
    """Check a store fully (``alfm check``): :func:`open_store`'s checks, then every chunk of
    every split is read and its checksum compared with the one recorded when it was written.

    Returns, per split, ``rows``, ``chunks`` and ``checksums`` (whether checksums were recorded:
    stores written before they were are only read). A failure is a :class:`CorruptStoreError`
    naming the store, split and chunk.
    """
    store = open_store(path)
    report = {}
    for split in SPLITS:
        group = store._group[split]
        n_chunks = int(group["chunks_done"].shape[0])
        recorded = (store.attrs.get("checksums") or {}).get(split)
        for index in range(n_chunks):
            rows = [_read_chunk(store.path, split, group[name], name, index) for name in ROW_ARRAYS]
            if recorded is not None and f"{_checksum(*rows):016x}" != recorded[index]:
                raise CorruptStoreError(
                    f"feature store {store.path}: {split} chunk {index} does not match the "
                    "checksum recorded when it was written (altered or damaged); re-extract it"
                )
        report[split] = {
            "rows": store.num_rows(split),
            "chunks": n_chunks,
            "checksums": recorded is not None,
        }
    return report


def _chunk_file(path: Path, split: str, array: zarr.Array, index: int) -> Path:
    """The file of chunk ``index`` (along rows) of ``array`` of ``split`` in the store."""
    coords = (index,) + (0,) * (array.ndim - 1)
    return path / split / array.basename / array.metadata.encode_chunk_key(coords)


def _read_chunk(path: Path, split: str, array: zarr.Array, name: str, index: int) -> np.ndarray:
    """The rows of chunk ``index`` of ``array``; an undecodable chunk is a
    :class:`CorruptStoreError` naming it."""
    rows = array.chunks[0]
    try:
        return array[index * rows : (index + 1) * rows]
    except Exception as err:  # zarr and its codecs raise many types
        file = _chunk_file(path, split, array, index).relative_to(path)
        raise CorruptStoreError(
            f"feature store {path}: {split} chunk {index} ({name}, file {file}) cannot be read "
            f"({type(err).__name__}: {err}); re-extract the store"
        ) from err


def _check_chunk_files(path: Path, group: zarr.Group, split: str) -> None:
    """Row counts agree with the recorded sizes, and every chunk file exists with the size
    recorded when it was written (the ``chunk_bytes`` attribute; stores from before it was
    recorded: the features and ids files exist). Reads no chunk."""
    sub = group[split]
    arrays = {name: sub[name] for name in ROW_ARRAYS}
    expected = (group.attrs.get("sizes") or {}).get(split)
    counts = {name: int(array.shape[0]) for name, array in arrays.items()}
    if len(set(counts.values())) != 1 or (expected is not None and counts["ids"] != expected):
        raise CorruptStoreError(
            f"feature store {path}: {split} row counts {counts} disagree with the recorded "
            f"{expected} rows"
        )
    n_chunks = -(-counts["ids"] // arrays["features"].chunks[0])
    sizes = (group.attrs.get("chunk_bytes") or {}).get(split)
    if sizes is not None and len(sizes) != n_chunks:
        raise CorruptStoreError(
            f"feature store {path}: {split} has {n_chunks} chunks, {len(sizes)} were recorded"
        )
    for index in range(n_chunks):
        for column, name in enumerate(ROW_ARRAYS):
            if sizes is None and name == "labels":
                continue  # an all-UNKNOWN_LABEL chunk equals the fill value and has no file
            file = _chunk_file(path, split, arrays[name], index)
            size = file.stat().st_size if file.is_file() else None
            want = None if sizes is None else int(sizes[index][column])
            if size is None and want != 0:
                problem = "is missing"
            elif want is not None and (size or 0) != want:
                problem = f"has {size or 0} bytes, {want} were written (truncated or altered)"
            else:
                continue
            raise CorruptStoreError(
                f"feature store {path}: {split} chunk {index} ({name}, file "
                f"{file.relative_to(path)}) {problem}; re-extract the store"
            )


def _checksum(features: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> int:
    """blake2b (64 bits) of one chunk's rows as stored."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(np.ascontiguousarray(features).tobytes())
    digest.update(np.asarray(labels, dtype="<i8").tobytes())
    digest.update("\n".join(map(str, ids)).encode())
    return int.from_bytes(digest.digest(), "little")


def store_identity(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """What defines a store's rows: its :data:`IDENTITY_KEYS` attributes (None when absent)."""
    return {key: attrs.get(key) for key in IDENTITY_KEYS}


def content_digest(
    class_names: Sequence[str], splits: Mapping[str, tuple[Sequence[str], Sequence[int] | None]]
) -> str:
    """A digest (32 hex digits) of a dataset's rows: its class names and, per split, the ids and
    labels in order (``labels`` None where a source cannot list them without reading every
    image: then the ids alone). Ids are paths relative to the dataset's root (or positions),
    so a dataset moved elsewhere keeps its digest; a manifest with other rows or labels, or a
    folder with other files, gets another one. Image bytes are not read."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps([str(c) for c in class_names]).encode())
    for split in sorted(splits):
        ids, labels = splits[split]
        digest.update(f"\0split {split} {len(ids)}\0".encode())
        digest.update("\n".join(map(str, ids)).encode())
        if labels is not None:
            digest.update(np.asarray(labels, dtype="<i8").tobytes())
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages that shape the features."""
    versions = {"python": platform.python_version()}
    for name in _VERSION_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


class StoreWriter:
    """Writes a store chunk by chunk; reopening the same path resumes it.

    Use :meth:`open` to create or resume, :meth:`pending_chunks` for the work left,
    :meth:`write_chunk` per chunk and :meth:`finish` to mark the store complete.
    """

    def __init__(self, path: Path, group: zarr.Group, chunk_rows: int) -> None:
        self.path = path
        self._group = group
        self.chunk_rows = chunk_rows

    @classmethod
    def open(
        cls,
        path: str | Path,
        attrs: Mapping[str, Any],
        sizes: Mapping[str, int],
        dim: int,
        *,
        dtype: str = "float16",
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
    ) -> StoreWriter:
        """Create a new store at ``path`` or resume the one there if it holds the same extraction.

        ``attrs`` must contain ``backbone`` and ``dataset``; ``sizes`` maps each split to its
        number of rows and ``dim`` is the feature dimension. A store of another model or dataset
        at ``path`` is a ``FileExistsError`` naming both.
        """
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
        if set(sizes) != set(SPLITS):
            raise ValueError(f"sizes must give the rows of {SPLITS}, got {sorted(sizes)}")
        for key in ("backbone", "dataset"):
            if key not in attrs:
                raise ValueError(f"store attrs need {key!r}")
        path = Path(path)
        attrs = json.loads(json.dumps(dict(attrs)))  # compare as stored: tuples become lists
        attrs = {**attrs, "dtype": dtype, "dim": int(dim), "chunk_rows": int(chunk_rows)}
        attrs["sizes"] = {split: int(sizes[split]) for split in SPLITS}
        if not (path / "zarr.json").is_file():
            # a store renamed into place by another shard appears whole, zarr.json included
            if path.exists() and (not path.is_dir() or any(path.iterdir())):
                raise FileExistsError(
                    f"{path} exists and is not a feature store; choose another --out"
                )
            build = functools.partial(
                _build_empty_store,
                attrs=attrs,
                sizes=sizes,
                dim=dim,
                dtype=dtype,
                chunk_rows=chunk_rows,
            )
            _create_store(path, build)
        group = _open_group(path)
        _check_same(path, dict(group.attrs), attrs)
        group = zarr.open_group(str(path), mode="r+", zarr_format=3)
        return cls(path, group, chunk_rows)

    @classmethod
    def resume(cls, path: str | Path) -> StoreWriter:
        """Open an existing store for writing as it is (no identity to check: finalizing)."""
        path = Path(path)
        group = _open_group(path)
        return cls(
            path, zarr.open_group(str(path), mode="r+", zarr_format=3), group.attrs["chunk_rows"]
        )

    @property
    def complete(self) -> bool:
        """Whether the store has been finished."""
        return self._group.attrs.get("complete") is True

    def num_chunks(self, split: str) -> int:
        """Number of row chunks of ``split``."""
        return int(self._group[split]["chunks_done"].shape[0])

    def chunk_slice(self, split: str, index: int) -> slice:
        """Rows covered by chunk ``index`` of ``split``."""
        n = int(self._group[split]["features"].shape[0])
        return slice(index * self.chunk_rows, min((index + 1) * self.chunk_rows, n))

    def pending_chunks(self, split: str, shard: Shard = Shard()) -> list[int]:
        """Chunks of ``split`` not yet written that belong to ``shard`` (default: all), in
        order."""
        done = np.asarray(self._group[split]["chunks_done"][:], dtype=bool)
        first = sum(self.num_chunks(s) for s in SPLITS[: SPLITS.index(split)])
        return [int(i) for i in np.flatnonzero(~done) if (first + i) % shard.count == shard.index]

    def record_run(self, shard: Shard, record: Mapping[str, Any]) -> None:
        """Record what one process did for ``shard`` (``extract_runs/<shard>``; replaces an
        earlier record of the same shard). Safe while other shards write theirs."""
        runs = zarr.open_group(str(self.path / RUNS_GROUP), mode="a", zarr_format=3)
        entry = runs.require_group(shard.name)
        entry.attrs.update(
            {
                **json.loads(json.dumps(dict(record))),
                "shard": str(shard),
                "host": socket.gethostname(),
                "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            }
        )

    def run_records(self) -> dict[str, dict[str, Any]]:
        """Every process record, by shard name."""
        if RUNS_GROUP not in self._group:
            return {}
        runs = self._group[RUNS_GROUP]
        return {name: dict(entry.attrs) for name, entry in sorted(runs.groups())}

    def write_chunk(
        self, split: str, index: int, features: np.ndarray, labels: np.ndarray, ids: np.ndarray
    ) -> None:
        """Write the rows of one whole chunk, then mark it done."""
        rows = self.chunk_slice(split, index)
        n = rows.stop - rows.start
        group = self._group[split]
        if features.shape != (n, group["features"].shape[1]) or len(labels) != n or len(ids) != n:
            raise ValueError(
                f"chunk {index} of {split} needs {n} rows of dim {group['features'].shape[1]}, "
                f"got features {features.shape}, {len(labels)} labels, {len(ids)} ids"
            )
        self._discard_partial_writes(split, index)
        values = {
            "features": np.asarray(features, dtype=group["features"].dtype),
            "labels": np.asarray(labels, dtype=np.int64),
            "ids": np.asarray(ids, dtype=str),
        }
        for name in ROW_ARRAYS:
            group[name][rows] = values[name]
        if "checksums" in group:  # stores created before checksums were recorded have none
            group["checksums"][index] = _checksum(*values.values())
            group["chunk_bytes"][index] = [
                file.stat().st_size if file.is_file() else 0
                for file in (_chunk_file(self.path, split, group[n], index) for n in ROW_ARRAYS)
            ]
        group["chunks_done"][index] = True

    def _discard_partial_writes(self, split: str, index: int) -> None:
        """Remove the temporary files (zarr's ``<chunk file>.<hex>.partial``) that a writer
        killed while writing chunk ``index`` of ``split`` left; only the writer of a chunk
        writes its files, so no other process's write is touched."""
        group = self._group[split]
        for name in (*ROW_ARRAYS, "checksums", "chunk_bytes", "chunks_done"):
            if name in group:
                file = _chunk_file(self.path, split, group[name], index)
                for orphan in file.parent.glob(f"{file.name}.*.partial"):
                    orphan.unlink(missing_ok=True)

    def skipped_ids(self) -> dict[str, list[str]]:
        """Ids of the rows written with ``SKIPPED_LABEL`` (skipped images), per split."""
        skipped = {}
        for split in SPLITS:
            labels = np.asarray(self._group[split]["labels"][:])
            ids = np.asarray(self._group[split]["ids"][:], dtype=object)
            skipped[split] = [str(i) for i in ids[labels == SKIPPED_LABEL]]
        return skipped

    def finish(self, extra_attrs: Mapping[str, Any] | None = None, *, shards: int = 1) -> None:
        """Mark the store complete; every chunk of every split must be done.

        Otherwise ``IncompleteStoreError`` lists the missing chunks by the shard of ``shards``
        that owns them, so a missing shard names itself.
        """
        missing = {}
        for index in range(shards):
            shard = Shard(index, shards)
            chunks = {split: self.pending_chunks(split, shard) for split in SPLITS}
            if any(chunks.values()):
                missing[shard] = chunks
        if missing:
            owners = "; ".join(
                (f"shard {shard}: " if shards > 1 else "")
                + ", ".join(f"{split} chunks {c}" for split, c in chunks.items() if c)
                for shard, chunks in missing.items()
            )
            raise IncompleteStoreError(f"cannot finish {self.path}: chunks missing: {owners}")
        integrity: dict[str, dict[str, Any]] = {"checksums": {}, "chunk_bytes": {}}
        for split in SPLITS:
            group = self._group[split]
            if "checksums" in group:  # consolidated here, so that opening reads no chunk
                integrity["checksums"][split] = [f"{c:016x}" for c in group["checksums"][:]]
                integrity["chunk_bytes"][split] = np.asarray(group["chunk_bytes"][:]).tolist()
        if not integrity["checksums"]:
            integrity = {}
        for orphan in self.path.rglob("*.partial"):  # every writer is done: killed writes' files
            orphan.unlink(missing_ok=True)
        self._group.attrs.update({**(extra_attrs or {}), **integrity, "complete": True})


def _create_store(path: Path, build: Callable[[Path], None]) -> None:
    """Build the empty store (``build(staging)``) in a private directory beside ``path`` and
    rename it into place; when another process got there first, its store stays and this one is
    dropped."""
    prefix = f".{path.name}.creating-{socket.gethostname()}-"
    for stale in path.parent.glob(f"{glob.escape(prefix)}*"):  # left by killed creators here
        pid = stale.name.removeprefix(prefix)
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    staging = path.with_name(f"{prefix}{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        build(staging)
    except BaseException:  # a full disk, say: leave no half-built folder
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        os.rename(staging, path)  # atomic; replaces an empty directory, fails on a full one
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (path / "zarr.json").is_file():
            raise


def _build_empty_store(
    staging: Path,
    attrs: Mapping[str, Any],
    sizes: Mapping[str, int],
    dim: int,
    dtype: str,
    chunk_rows: int,
) -> None:
    """The empty arrays and attributes of a new store, written at ``staging``."""
    group = zarr.open_group(str(staging), mode="w", zarr_format=3)
    for split in SPLITS:
        n = int(sizes[split])
        n_chunks = -(-n // chunk_rows)
        rows = max(1, min(chunk_rows, n))
        sub = group.create_group(split)
        sub.create_array("features", shape=(n, dim), chunks=(rows, dim), dtype=dtype)
        sub.create_array("labels", shape=(n,), chunks=(rows,), dtype="int64", fill_value=-1)
        sub.create_array("ids", shape=(n,), chunks=(rows,), dtype=str)
        sub.create_array("chunks_done", shape=(n_chunks,), chunks=(1,), dtype=bool)
        sub.create_array("checksums", shape=(n_chunks,), chunks=(1,), dtype="uint64")
        sub.create_array(
            "chunk_bytes", shape=(n_chunks, 3), chunks=(1, 3), dtype="int64", fill_value=-1
        )
    group.attrs.update(
        {
            **attrs,
            "versions": package_versions(),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "complete": False,
        }
    )


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _check_same(path: Path, existing: dict[str, Any], wanted: dict[str, Any]) -> None:
    """A store at ``path`` made otherwise than ``wanted``: a ``FileExistsError`` naming the other
    model or dataset, else listing every differing identity field (a field absent from
    ``wanted`` is not compared)."""
    if (existing.get("backbone"), existing.get("dataset")) != (
        wanted["backbone"],
        wanted["dataset"],
    ):
        raise FileExistsError(
            f"{path} holds the store of model {existing.get('backbone')!r} on dataset "
            f"{existing.get('dataset')!r}, not model {wanted['backbone']!r} on dataset "
            f"{wanted['dataset']!r}; choose another output path or delete it"
        )
    differing = [
        f"{key}={_short(existing.get(key))}, not {_short(wanted[key])}"
        for key in (*IDENTITY_KEYS, "chunk_rows")
        if key in wanted and existing.get(key) != wanted[key]
    ]
    if differing:
        raise FileExistsError(
            f"{path} holds a store of {wanted['backbone']!r} on {wanted['dataset']!r} made with "
            f"{'; '.join(differing)}; choose another output path or delete it to re-extract"
        )


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def write_store(
    path: str | Path,
    train: SplitData,
    test: SplitData,
    attrs: Mapping[str, Any] | None = None,
    *,
    dtype: str = "float16",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    overwrite: bool = False,
) -> FeatureStore:
    """Write a complete store from in-memory splits (synthetic and test stores).

    An existing ``path`` is a ``FileExistsError`` unless ``overwrite``, which deletes it first.
    Missing attributes get defaults: ``backbone``/``dataset`` "synthetic", ``num_classes`` from the
    labels, ``class_names`` "0".."C-1", ``weights_sha256`` and ``preprocessing`` None,
    ``random_init`` False, ``content_digest`` that of the given ids and labels.
    """
    path = Path(path)
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        shutil.rmtree(path)
    data = {"train": train, "test": test}
    dims = {split.features.shape[1] for split in data.values()}
    if len(dims) != 1:
        raise ValueError(f"train and test features differ in dimension: {sorted(dims)}")
    num_classes = int(max(np.max(s.labels, initial=-1) for s in data.values())) + 1
    full = {
        "backbone": "synthetic",
        "dataset": "synthetic",
        "weights_sha256": None,
        "random_init": False,
        "preprocessing": None,
        "num_classes": num_classes,
        "class_names": [str(c) for c in range(num_classes)],
        **(attrs or {}),
    }
    if "content_digest" not in full:
        full["content_digest"] = content_digest(
            full["class_names"], {name: (s.ids.tolist(), s.labels) for name, s in data.items()}
        )
    writer = StoreWriter.open(
        path,
        full,
        {split: len(s.features) for split, s in data.items()},
        dims.pop(),
        dtype=dtype,
        chunk_rows=chunk_rows,
    )
    for split, s in data.items():
        for index in writer.pending_chunks(split):
            rows = writer.chunk_slice(split, index)
            writer.write_chunk(split, index, s.features[rows], s.labels[rows], s.ids[rows])
    writer.finish()
    return open_store(path)
