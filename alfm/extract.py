"""Feature extraction: a backbone over a dataset into a resumable zarr feature store.

Batches never straddle a store chunk, so a resumed extraction computes every chunk exactly as an
uninterrupted one does (bit-identical arrays on the same device). On CUDA: pinned memory,
channels_last and bf16 autocast; on the CPU: fp32.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from torch.utils.data import Dataset as TorchDataset
from tqdm.auto import tqdm

from alfm.backbones import Backbone, ImageTransform, create_backbone
from alfm.datasets import BadImageError, create_dataset
from alfm.devices import resolve_device
from alfm.pipeline import path_name
from alfm.store import DEFAULT_CHUNK_ROWS, SKIPPED_LABEL, SPLITS, StoreWriter

DEFAULT_BATCH_SIZE = 128


def default_store_path(model: str, dataset: str, base: str | Path = "results/features") -> Path:
    """``<base>/<model>/<dataset>.zarr`` with the names' :func:`alfm.pipeline.path_name`, where
    the workflow keeps the store."""
    return Path(base) / path_name(model) / f"{path_name(dataset)}.zarr"


def default_workers() -> int:
    """DataLoader workers: one core is left to the main process, at most 8."""
    return min(8, max(0, (os.cpu_count() or 1) - 1))


class TransformedSamples(TorchDataset):
    """(tensor, label, id, bad path, reason) per sample; an unreadable image gives zeros,
    ``SKIPPED_LABEL`` and its path and reason (empty strings for good images)."""

    def __init__(self, split: TorchDataset, transform: ImageTransform) -> None:
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str, str, str]:
        try:
            image, label, sample_id = self.split[index]
        except BadImageError as err:
            blank = torch.zeros(3, self.transform.crop, self.transform.crop)
            return blank, SKIPPED_LABEL, err.sample_id, err.path, err.reason
        return self.transform(image), label, str(sample_id), "", ""


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
    progress: bool = True,
) -> Path:
    """Extract ``model`` features of both splits of ``dataset`` into the store at ``out``.

    ``out`` defaults to :func:`default_store_path`. A partial store of the same extraction is
    resumed; a complete one is left as it is. A corrupt image raises ``BadImageError`` naming the
    file, unless ``skip_bad_images``: then its row gets ``SKIPPED_LABEL`` and zero features, and
    the ``skipped_images`` attribute lists it (``FeatureStore.load`` drops such rows). Images of
    unknown class (an unlabeled dataset) keep their features and ``UNKNOWN_LABEL``. Returns the
    store path.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    out = Path(out) if out is not None else default_store_path(model, dataset)
    backbone = create_backbone(
        model, model_dir=model_dir, random_init=random_init, image_size=image_size
    )
    data = create_dataset(dataset, root)
    splits = {name: data.split(name) for name in SPLITS}
    dev = resolve_device(device)
    attrs = {
        "backbone": model,
        "weights_sha256": backbone.weights_sha256,
        "random_init": random_init,
        "preprocessing": backbone.preprocessing,
        "dataset": dataset,
        "dataset_root": str(Path(root).expanduser().resolve()) if root is not None else None,
        "num_classes": data.num_classes,
        "class_names": data.class_names,
        "compute": "cuda bf16 autocast" if dev.type == "cuda" else f"{dev.type} fp32",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    sizes = {name: len(split) for name, split in splits.items()}
    writer = StoreWriter.open(out, attrs, sizes, backbone.dim, dtype=dtype, chunk_rows=chunk_rows)
    if writer.complete:
        return out
    net = prepare_model(backbone, dev)
    workers = default_workers() if num_workers is None else num_workers
    pending = {name: writer.pending_chunks(name) for name in SPLITS}
    total = sum(
        writer.chunk_slice(n, i).stop - writer.chunk_slice(n, i).start
        for n, idx in pending.items()
        for i in idx
    )
    start = time.perf_counter()
    with tqdm(
        total=total, unit="img", desc=f"extract {model} {dataset}", disable=not progress
    ) as bar:
        for name in SPLITS:
            _extract_split(
                writer,
                name,
                pending[name],
                TransformedSamples(splits[name], backbone.transform),
                net,
                dev,
                batch_size,
                workers,
                skip_bad_images,
                bar,
            )
    seconds = time.perf_counter() - start
    writer.finish(
        {
            "skipped_images": writer.skipped_ids(),
            "extract_seconds": round(seconds, 3),
            "images_per_second": round(total / seconds, 1) if seconds > 0 else None,
        }
    )
    return out


def prepare_model(backbone: Backbone, device: torch.device) -> torch.nn.Module:
    """The backbone's model in eval mode on ``device`` (channels_last on CUDA)."""
    net = backbone.model.eval().to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    return net


@torch.inference_mode()
def embed_batch(net: torch.nn.Module, images: torch.Tensor, device: torch.device) -> np.ndarray:
    """Features of one batch as float32 numpy (bf16 autocast and channels_last on CUDA)."""
    images = images.to(device, non_blocking=True)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            features = net(images)
    else:
        features = net(images)
    return features.float().cpu().numpy()


def _extract_split(
    writer: StoreWriter,
    split: str,
    chunks: list[int],
    samples: TransformedSamples,
    net: torch.nn.Module,
    device: torch.device,
    batch_size: int,
    workers: int,
    skip_bad_images: bool,
    bar: tqdm,
) -> None:
    if not chunks:
        return
    slices = [writer.chunk_slice(split, i) for i in chunks]
    loader = DataLoader(
        samples,
        batch_sampler=ChunkBatches(slices, batch_size),
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    batches = iter(loader)
    for index, rows in zip(chunks, slices, strict=True):
        parts: list[tuple[np.ndarray, np.ndarray, list[str]]] = []
        count = 0
        while count < rows.stop - rows.start:
            images, labels, ids, paths, reasons = next(batches)
            bad = [i for i, path in enumerate(paths) if path]
            if bad and not skip_bad_images:
                first = bad[0]
                raise BadImageError(paths[first], ids[first], reasons[first])
            features = embed_batch(net, images, device)
            features[np.asarray(labels) == SKIPPED_LABEL] = 0
            parts.append((features, labels.numpy(), list(ids)))
            count += len(ids)
            bar.update(len(ids))
        writer.write_chunk(
            split,
            index,
            np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
            np.array([i for p in parts for i in p[2]]),
        )
