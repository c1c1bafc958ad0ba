"""Feature extraction: a backbone over a dataset into a resumable, shardable zarr feature store.

The pipeline, per batch of rows (batches never straddle a store chunk, so a resumed or sharded
extraction computes every chunk exactly as an uninterrupted one does):

1. Images reach the extraction device as uint8 tensors: in-memory arrays are sliced directly
   (no worker processes, no PIL); other datasets go through DataLoader workers that read file
   bytes (JPEG for the device to decode) or decode with PIL (:mod:`alfm.decoding`).
2. :class:`alfm.preprocess.BatchTransform` resizes, crops and normalizes the batch on the device
   with the per-image CPU transform's pixels. On CUDA this runs on a side stream, so the next
   batch is decoded and transformed while the model runs on the current one.
3. The model (eval mode, batch norms folded into their convolutions, channels_last; bf16
   autocast on CUDA, fp32 on the CPU, torch threads capped at the cores available; optionally
   ``torch.compile``) embeds the batch.
4. A background thread copies the features to the host (pinned, non-blocking on CUDA) and writes
   each chunk once its rows are in, behind a bounded queue, so a write never stalls the model.

Sharding (``shard="i/N"``): a process extracts only its shard's chunks (see
:class:`alfm.store.Shard`) and records its run; :func:`finalize_store` checks every chunk and
marks the store complete. Without a shard, :func:`extract_features` does both.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.utils.data import DataLoader, Sampler
from torch.utils.data import Dataset as TorchDataset
from tqdm.auto import tqdm

from alfm.backbones import Backbone, create_backbone
from alfm.datasets import ArraySplit, FileSplit, create_dataset
from alfm.decoding import DecodeCounts, EncodedBatch, EncodedSamples, decode_batch
from alfm.devices import resolve_device
from alfm.pipeline import path_name, store_tag
from alfm.preprocess import BatchTransform
from alfm.store import DEFAULT_CHUNK_ROWS, SKIPPED_LABEL, SPLITS, Shard, StoreWriter

DEFAULT_BATCH_SIZE = 128
DECODE_MODES = ("auto", "cpu", "gpu")


def default_store_path(
    model: str, dataset: str, base: str | Path = "results/features", **settings: Any
) -> Path:
    """``<base>/<model>/<dataset><tag>.zarr`` with the names' :func:`alfm.pipeline.path_name`
    and the :func:`alfm.pipeline.store_tag` of the extraction ``settings`` (``image_size``,
    ``dtype``, ``device``, ``decode``, ``compile``): where the workflow keeps the store."""
    return Path(base) / path_name(model) / f"{path_name(dataset)}{store_tag(settings)}.zarr"


def default_workers() -> int:
    """DataLoader workers: one core is left to the main process, at most 8."""
    return min(8, max(0, (os.cpu_count() or 1) - 1))


class ChunkBatches(Sampler[list[int]]):
    """Batches of at most ``batch_size`` rows that never cross a chunk boundary."""

    def __init__(self, chunks: list[slice], batch_size: int) -> None:
        self.chunks = chunks
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for rows in self.chunks:
            for start in range(rows.start, rows.stop, self.batch_size):
                yield list(range(start, min(start + self.batch_size, rows.stop)))

    def __len__(self) -> int:
        return sum(-(-(r.stop - r.start) // self.batch_size) for r in self.chunks)


def extract_features(
    model: str,
    dataset: str,
    out: str | Path | None = None,
    *,
    root: str | Path | None = None,
    model_dir: str | Path | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_workers: int | None = None,
    device: str = "auto",
    dtype: str = "float16",
    random_init: bool = False,
    skip_bad_images: bool = False,
    image_size: int | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    decode: str = "auto",
    compile: bool = False,
    shard: str | Shard | None = None,
    progress: bool = True,
) -> Path:
    """Extract ``model`` features of both splits of ``dataset`` into the store at ``out``.

    ``out`` defaults to :func:`default_store_path`. A partial store of the same extraction is
    resumed; a complete one is left as it is. A corrupt image raises ``BadImageError`` naming the
    file, unless ``skip_bad_images``: then its row gets ``SKIPPED_LABEL`` and zero features, and
    the ``skipped_images`` attribute lists it (``FeatureStore.load`` drops such rows). Images of
    unknown class (an unlabeled dataset) keep their features and ``UNKNOWN_LABEL``.

    ``decode``: where JPEG files are decoded: ``gpu`` by ``torchvision.io.decode_jpeg`` on the
    extraction device (nvJPEG on CUDA; on a CPU device torchvision's decoder in the main
    process), ``cpu`` by PIL in the workers, ``auto`` on the device when it is CUDA. Other
    images are always decoded by PIL. ``compile``: ``torch.compile`` the model (its compile time
    is recorded apart from the extraction time). ``shard``: ``"i/N"`` extracts shard i of N only
    (on the GPU of :func:`shard_device`) and leaves the store incomplete until
    :func:`finalize_store`. Returns the store path.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if num_workers is not None and num_workers < 0:
        raise ValueError(f"num_workers must be 0 or more, got {num_workers}")
    if decode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {', '.join(DECODE_MODES)}, got {decode!r}")
    part = Shard.parse(shard) if isinstance(shard, str) else shard or Shard()
    if out is None:
        settings = {"image_size": image_size, "dtype": dtype, "device": device}
        out = default_store_path(model, dataset, decode=decode, compile=compile, **settings)
    out = Path(out)
    dev = shard_device(resolve_device(device), part)
    backbone = create_backbone(
        model, model_dir=model_dir, random_init=random_init, image_size=image_size
    )
    data = create_dataset(dataset, root)
    splits = {name: data.split(name) for name in SPLITS}
    attrs = {
        "backbone": model,
        "weights_sha256": backbone.weights_sha256,
        "random_init": random_init,
        "preprocessing": backbone.preprocessing,
        "dataset": dataset,
        "dataset_root": str(Path(root).expanduser().resolve()) if root is not None else None,
        "content_digest": data.content_digest(),
        "num_classes": data.num_classes,
        "class_names": data.class_names,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    sizes = {name: len(split) for name, split in splits.items()}
    writer = StoreWriter.open(out, attrs, sizes, backbone.dim, dtype=dtype, chunk_rows=chunk_rows)
    if writer.complete:
        return out
    plan = {name: writer.pending_chunks(name, part) for name in SPLITS}
    if any(plan.values()):
        settings = _Settings(
            device=dev,
            batch_size=batch_size,
            workers=default_workers() if num_workers is None else num_workers,
            decode=decode,
            compile=compile,
            skip_bad_images=skip_bad_images,
        )
        label = f"extract {model} {dataset}" + (f" shard {part}" if part.count > 1 else "")
        record = _extract_chunks(writer, plan, splits, backbone, settings, label, progress)
        writer.record_run(part, record)
    if shard is None:
        finalize_store(out)
    return out


def shard_device(device: torch.device, shard: Shard) -> torch.device:
    """The GPU of ``shard`` when ``device`` is CUDA without an index: shard i of N takes visible
    GPU i mod the GPUs visible, so shards started at once on a multi-GPU node share them out (a
    SLURM allocation sees its own GPU only: the first)."""
    if device.type != "cuda" or device.index is not None or shard.count == 1:
        return device
    return torch.device("cuda", shard.index % torch.cuda.device_count())


def finalize_store(path: str | Path, shards: int | None = None) -> Path:
    """Check every chunk of the store at ``path`` and mark it complete.

    ``IncompleteStoreError`` names the shards (of ``shards``; default: the largest shard count
    among the recorded runs) whose chunks are missing. The store's attributes then summarize the
    runs: ``extraction`` (every run's record), ``compute``, ``decode``, ``compile`` (one value,
    or the list of values when runs differ), ``extract_seconds`` and ``images_per_second``
    (over all runs), ``skipped_images``. A complete store is left as it is.
    """
    writer = StoreWriter.resume(path)
    if writer.complete:
        return Path(path)
    records = writer.run_records()
    if shards is None:
        shards = max((Shard.parse(r["shard"]).count for r in records.values()), default=1)
    seconds = sum(r["seconds"] for r in records.values())
    images = sum(r["images"] for r in records.values())

    def agreed(key: str) -> Any:
        values = list(dict.fromkeys(r[key] for r in records.values()))
        return values[0] if len(values) == 1 else values

    writer.finish(
        {
            "extraction": records,
            "compute": agreed("compute"),
            "decode": agreed("decode"),
            "compile": agreed("compile"),
            "extract_seconds": round(seconds, 3),
            "images_per_second": round(images / seconds, 1) if seconds > 0 else None,
            "skipped_images": writer.skipped_ids(),
        },
        shards=shards,
    )
    return Path(path)


@dataclass(frozen=True)
class _Settings:
    device: torch.device
    batch_size: int
    workers: int
    decode: str
    compile: bool
    skip_bad_images: bool


@dataclass
class Batch:
    """A batch on the device: images (N, 3, S, S); labels (``SKIPPED_LABEL`` for unreadable
    images), ids."""

    images: torch.Tensor
    labels: np.ndarray
    ids: list[str]


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm2d that directly follows a Conv2d in an ``nn.Sequential``
    into that convolution (in place). The outputs change by float rounding only."""
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:], strict=False):
            conv, norm = module._modules[first], module._modules[second]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                module._modules[first] = fuse_conv_bn_eval(conv, norm)
                module._modules[second] = nn.Identity()
    return model


def prepare_model(backbone: Backbone, device: torch.device) -> nn.Module:
    """The backbone's model in eval mode on ``device``: batch norms folded, channels_last."""
    net = fold_batch_norms(backbone.model.eval())
    return net.to(device, memory_format=torch.channels_last)


def describe_compute(device: torch.device) -> str:
    """The numerics of :func:`embed_batch` on ``device`` (provenance)."""
    precision = "bf16 autocast" if device.type == "cuda" else "fp32"
    return f"{device.type} {precision}, conv-bn folded, channels_last"


def embed_batch(net: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """Float32 features of a batch already on the model's device (bf16 autocast on CUDA)."""
    images = images.contiguous(memory_format=torch.channels_last)
    cuda = images.device.type == "cuda"
    with (
        torch.inference_mode(),
        torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext(),
    ):
        return net(images).float()


def compile_model(
    net: nn.Module, example: torch.Tensor
) -> tuple[Callable[[torch.Tensor], torch.Tensor], float]:
    """``torch.compile(net)`` for batches shaped like ``example`` and its compile seconds (the
    first call, on ``example``)."""
    compiled = torch.compile(net, dynamic=False)
    start = time.perf_counter()
    embed_batch(compiled, example)
    _synchronize(example.device)
    return compiled, time.perf_counter() - start


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _SideStream:
    """Work queued on a second CUDA stream (decoding, preprocessing) that the model's stream
    waits for; a no-op on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def __enter__(self) -> None:
        self._context = torch.cuda.stream(self.stream) if self.stream else nullcontext()
        self._context.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._context.__exit__(*exc)

    def hand_over(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor``, made safe to use on the current stream."""
        if self.stream is not None:
            current = torch.cuda.current_stream(tensor.device)
            current.wait_stream(self.stream)
            tensor.record_stream(current)
        return tensor


def _array_batches(
    split: ArraySplit,
    chunks: list[slice],
    batch_size: int,
    transform: BatchTransform,
    side: _SideStream,
    device: torch.device,
) -> Iterator[Batch]:
    """Batches sliced straight from a split's uint8 image array (no workers, no PIL)."""
    for rows in ChunkBatches(chunks, batch_size):
        span = slice(rows[0], rows[-1] + 1)
        pixels = torch.from_numpy(split.images[span])
        pixels = pixels[:, None] if pixels.ndim == 3 else pixels.permute(0, 3, 1, 2)
        if device.type == "cuda":
            pixels = pixels.pin_memory()
        with side:
            images = transform(pixels.to(device, non_blocking=True))
        yield Batch(side.hand_over(images), split.labels[span].copy(), split.ids[span])


def _loaded_batches(
    split: TorchDataset,
    chunks: list[slice],
    settings: _Settings,
    device_jpeg: bool,
    transform: BatchTransform,
    side: _SideStream,
    counts: DecodeCounts,
) -> Iterator[Batch]:
    """Batches read by DataLoader workers (:mod:`alfm.decoding`), decoded and transformed on
    the device. An unreadable image is a ``BadImageError`` unless skipped (``SKIPPED_LABEL``)."""
    loader = DataLoader(
        EncodedSamples(split, device_jpeg),
        batch_sampler=ChunkBatches(chunks, settings.batch_size),
        num_workers=settings.workers,
        collate_fn=EncodedBatch.pack,
        pin_memory=settings.device.type == "cuda",
    )
    for encoded in loader:
        with side:
            decoded, errors = decode_batch(encoded, settings.device, counts)
            if errors and not settings.skip_bad_images:
                raise errors[min(errors)]
            good = [i for i, image in enumerate(decoded) if image is not None]
            size = transform.crop
            images = torch.zeros(len(decoded), 3, size, size, device=settings.device)
            if good:
                index = torch.as_tensor(good, device=settings.device)
                images.index_copy_(0, index, transform([decoded[i] for i in good]))
        labels = encoded.labels.copy()
        labels[list(errors)] = SKIPPED_LABEL
        yield Batch(side.hand_over(images), labels, list(encoded.ids))


class _ChunkSink:
    """Device-to-host copies and chunk writes in a background thread behind a bounded queue.

    Batches of a chunk are gathered until the chunk is full, then written (zeros for skipped
    rows). An error in the thread is raised in the caller at its next ``put`` or at
    ``close``; chunks completed before an error in the caller are still written.
    """

    def __init__(self, writer: StoreWriter, capacity: int) -> None:
        self.writer = writer
        self.queue: queue.Queue = queue.Queue(maxsize=capacity)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="alfm-chunk-writer", daemon=True)
        self.thread.start()

    def put(self, split: str, chunk: int, features: torch.Tensor, batch: Batch) -> None:
        if self.error is not None:
            raise self.error
        event = None
        if features.device.type == "cuda":
            host = torch.empty(features.shape, dtype=features.dtype, pin_memory=True)
            host.copy_(features, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            features = host
        self.queue.put((split, chunk, features, event, batch.labels, batch.ids))

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        parts: dict[tuple[str, int], list[tuple[np.ndarray, np.ndarray, list[str]]]] = {}
        while (item := self.queue.get()) is not None:
            if self.error is not None:
                continue  # drain, so that the caller never blocks on a full queue
            split, chunk, features, event, labels, ids = item
            try:
                if event is not None:
                    event.synchronize()
                features = features.numpy()
                features[labels == SKIPPED_LABEL] = 0
                gathered = parts.setdefault((split, chunk), [])
                gathered.append((features, labels, ids))
                rows = self.writer.chunk_slice(split, chunk)
                if sum(len(p[1]) for p in gathered) == rows.stop - rows.start:
                    self.writer.write_chunk(
                        split,
                        chunk,
                        np.concatenate([p[0] for p in gathered]),
                        np.concatenate([p[1] for p in gathered]),
                        np.array([i for p in gathered for i in p[2]]),
                    )
                    del parts[(split, chunk)]
            except BaseException as err:  # handed to the caller
                self.error = err


def _extract_chunks(
    writer: StoreWriter,
    plan: dict[str, list[int]],
    splits: dict[str, TorchDataset],
    backbone: Backbone,
    settings: _Settings,
    label: str,
    progress: bool,
) -> dict[str, Any]:
    """Extract the chunks of ``plan`` (split → chunk indices); the run's record."""
    device = settings.device
    transform = BatchTransform(backbone.transform)
    side = _SideStream(device)
    counts = DecodeCounts()
    files = any(isinstance(splits[name], FileSplit) for name in SPLITS if plan[name])
    device_jpeg = files and (
        settings.decode == "gpu" or (settings.decode == "auto" and device.type == "cuda")
    )
    net: Callable[[torch.Tensor], torch.Tensor] = prepare_model(backbone, device)
    compile_seconds = None
    if settings.compile:
        example = torch.zeros(settings.batch_size, 3, transform.crop, transform.crop, device=device)
        net, compile_seconds = compile_model(net, example)
    slices = {name: [writer.chunk_slice(name, i) for i in plan[name]] for name in SPLITS}
    total = sum(r.stop - r.start for rows in slices.values() for r in rows)
    per_chunk = -(-writer.chunk_rows // settings.batch_size)
    sink = _ChunkSink(writer, capacity=2 * per_chunk + 2)
    start = time.perf_counter()
    try:
        if device.type == "cpu":  # more torch threads than cores only slows the model down
            torch.set_num_threads(min(torch.get_num_threads(), _available_cores()))
        with tqdm(total=total, unit="img", desc=label, disable=not progress) as bar:
            for name in SPLITS:
                if not plan[name]:
                    continue
                split = splits[name]
                if _is_image_array(split):
                    batches = _array_batches(
                        split, slices[name], settings.batch_size, transform, side, device
                    )
                else:
                    batches = _loaded_batches(
                        split, slices[name], settings, device_jpeg, transform, side, counts
                    )
                for chunk, rows in zip(plan[name], slices[name], strict=True):
                    for _ in range(-(-(rows.stop - rows.start) // settings.batch_size)):
                        batch = next(batches)
                        sink.put(name, chunk, _embed(net, batch.images, settings), batch)
                        bar.update(len(batch.ids))
    finally:
        sink.close()
    seconds = time.perf_counter() - start
    arrays = not any(not _is_image_array(splits[name]) for name in SPLITS if plan[name])
    return {
        "device": str(device),
        "compute": describe_compute(device),
        "decode": "none (in-memory arrays)" if arrays else ("gpu" if device_jpeg else "cpu"),
        "decoded_on_device": counts.device,
        "decoded_by_pil": counts.cpu,
        "compile": settings.compile,
        "compile_seconds": None if compile_seconds is None else round(compile_seconds, 3),
        "batch_size": settings.batch_size,
        "workers": 0 if arrays else settings.workers,
        "images": total,
        "seconds": round(seconds, 3),
        "images_per_second": round(total / seconds, 1) if seconds > 0 else None,
    }


def _embed(
    net: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, settings: _Settings
) -> torch.Tensor:
    """Features of a batch; a compiled model sees full batches only (zero padding)."""
    count = len(images)
    if settings.compile and count < settings.batch_size:
        padding = images.new_zeros(settings.batch_size - count, *images.shape[1:])
        images = torch.cat([images, padding])
    return embed_batch(net, images)[:count]


def _available_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _is_image_array(split: TorchDataset) -> bool:
    """An in-memory split whose uint8 images (N, H, W) or (N, H, W, 3) can be sliced as is."""
    if not isinstance(split, ArraySplit):
        return False
    images = split.images
    return images.dtype == np.uint8 and (
        images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)
    )
