"""Extraction throughput: model-only and end to end (files on disk → feature store).

Examples::

    python bench/extract.py                                  # default store, this machine
    python bench/extract.py --model dinov2_vitg14 --random-init --jpegs 20000 --batch-size 256
    python bench/extract.py --model dinov2_vits14 --random-init --jpegs 50000 --gpu-decode

Modes: ``model`` times the backbone alone on a resident random batch; ``store`` runs
``extract_features`` on ``--dataset`` (or, with ``--jpegs N``, on N 224-px JPEG files it first
writes to a temporary image folder); ``--gpu-decode`` adds an end-to-end run that reads JPEG
bytes in DataLoader workers and decodes them on the GPU (``torchvision.io.decode_jpeg``).
open_clip is imported only for open_clip backbones, so the script runs where it is missing.
Prints a markdown table and, with ``--json PATH``, writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset
from tqdm.auto import tqdm

from alfm.backbones import create_backbone
from alfm.datasets import create_dataset
from alfm.devices import resolve_device
from alfm.extract import (
    ChunkBatches,
    default_workers,
    embed_batch,
    extract_features,
    prepare_model,
)
from alfm.store import SPLITS, StoreWriter


def write_jpegs(root: Path, count: int, size: int = 224, classes: int = 10) -> None:
    """``count`` JPEG files (80% train, 20% test) in an image-folder layout under ``root``.

    Content is smooth random colour fields plus noise, so JPEG sizes resemble photographs.
    """
    rng = np.random.default_rng(0)
    grid = np.linspace(0, 1, size, dtype=np.float32)
    for i in tqdm(range(count), desc="write jpegs", unit="img"):
        split = "test" if i % 5 == 4 else "train"
        folder = root / split / f"c{(i // 5) % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        freq = rng.uniform(1, 8, size=(3, 2))
        phase = rng.uniform(0, 6.3, size=3)
        channels = [
            np.sin(freq[c, 0] * 6.3 * grid[:, None] + freq[c, 1] * 6.3 * grid[None, :] + phase[c])
            for c in range(3)
        ]
        pixels = (np.stack(channels, -1) * 100 + 128 + rng.normal(0, 12, (size, size, 3))).clip(
            0, 255
        )
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:07d}.jpg", quality=90)


def model_only(model: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Images/s of the backbone alone on one resident batch (after warm-up)."""
    backbone = create_backbone(
        model, model_dir=args.model_dir, random_init=args.random_init, image_size=args.image_size
    )
    net = prepare_model(backbone, device)
    size = backbone.transform.crop
    batch = torch.randn(args.batch_size, 3, size, size, device=device)
    if device.type == "cuda":
        batch = batch.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with (
            torch.inference_mode(),
            torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"),
        ):
            net(batch)

    for _ in range(args.warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.iters):
        step()
    _sync(device)
    seconds = time.perf_counter() - start
    return _row("model only", model, args, device, args.iters * args.batch_size, seconds)


def store_run(model: str, dataset: str, root: Path | None, args, device, out: Path) -> dict:
    """End to end through ``extract_features`` (backbone build excluded from the rate)."""
    start = time.perf_counter()
    path = extract_features(
        model,
        dataset,
        out,
        root=root,
        model_dir=args.model_dir,
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=str(device),
        dtype=args.dtype,
        random_init=args.random_init,
        image_size=args.image_size,
    )
    wall = time.perf_counter() - start
    from alfm.store import open_store

    store = open_store(path)
    images = store.num_rows("train") + store.num_rows("test")
    row = _row(
        f"end to end ({dataset})", model, args, device, images, store.attrs["extract_seconds"]
    )
    row["wall_seconds_with_setup"] = round(wall, 2)
    return row


class JpegBytes(TorchDataset):
    """Raw file bytes, label and id of an image-folder split.

    The bytes travel from the workers as numpy arrays (pickled by value): hundreds of small
    tensors per batch would each be shared through a file descriptor, which runs out.
    """

    def __init__(self, split) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        return (
            np.fromfile(self.split.paths[index], dtype=np.uint8),
            self.split.labels[index],
            self.split.ids[index],
        )


def gpu_decode_run(model: str, root: Path, args, device: torch.device, out: Path) -> dict:
    """End to end with JPEG decoding and preprocessing on the GPU, written to a store."""
    from torchvision.io import decode_jpeg

    backbone = create_backbone(
        model, model_dir=args.model_dir, random_init=args.random_init, image_size=args.image_size
    )
    data = create_dataset("imagefolder", root)
    splits = {s: data.split(s) for s in SPLITS}
    attrs = {
        "backbone": model,
        "dataset": "imagefolder",
        "weights_sha256": backbone.weights_sha256,
        "preprocessing": {**backbone.preprocessing, "decode": "gpu"},
    }
    writer = StoreWriter.open(
        out, attrs, {s: len(d) for s, d in splits.items()}, backbone.dim, dtype=args.dtype
    )
    net = prepare_model(backbone, device)
    workers = default_workers() if args.workers is None else args.workers
    total = sum(len(d) for d in splits.values())
    start = time.perf_counter()
    with tqdm(total=total, unit="img", desc="gpu decode") as bar:
        for split, ds in splits.items():
            chunks = writer.pending_chunks(split)
            slices = [writer.chunk_slice(split, i) for i in chunks]
            loader = DataLoader(
                JpegBytes(ds),
                batch_sampler=ChunkBatches(slices, args.batch_size),
                num_workers=workers,
                collate_fn=lambda batch: tuple(zip(*batch, strict=True)),
            )
            batches = iter(loader)
            for index, rows in zip(chunks, slices, strict=True):
                feats, labels, ids = [], [], []
                while sum(len(i) for i in ids) < rows.stop - rows.start:
                    raw, label, sample_id = next(batches)
                    decoded = decode_jpeg([torch.from_numpy(r) for r in raw], device=device)
                    images = torch.stack([backbone.transform(image) for image in decoded])
                    feats.append(embed_batch(net, images, device))
                    labels.append(np.asarray(label))
                    ids.append(list(sample_id))
                    bar.update(len(sample_id))
                writer.write_chunk(
                    split,
                    index,
                    np.concatenate(feats),
                    np.concatenate(labels),
                    np.array([i for part in ids for i in part]),
                )
    seconds = time.perf_counter() - start
    writer.finish()
    return _row("end to end, GPU decode", model, args, device, total, seconds)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _row(mode: str, model: str, args, device: torch.device, images: int, seconds: float) -> dict:
    return {
        "mode": mode,
        "model": model,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
        "batch": args.batch_size,
        "images": images,
        "seconds": round(seconds, 2),
        "images_per_s": round(images / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument(
        "--dataset", default="animal_mnist", help="for the store run without --jpegs"
    )
    parser.add_argument("--root", help="dataset root")
    parser.add_argument("--jpegs", type=int, default=0, help="write N JPEGs and extract those")
    parser.add_argument("--gpu-decode", action="store_true", help="also run GPU JPEG decoding")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--random-init", action="store_true")
    parser.add_argument("--model-dir")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--modes", default="model,store", help="comma list of model,store")
    parser.add_argument("--json", help="write the rows to this JSON file")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = resolve_device(args.device)
    modes = set(args.modes.split(","))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        if "model" in modes:
            rows.append(model_only(args.model, args, device))
        dataset, root = args.dataset, Path(args.root) if args.root else None
        if args.jpegs:
            dataset, root = "imagefolder", tmp_path / "jpegs"
            write_jpegs(root, args.jpegs)
        if "store" in modes:
            rows.append(store_run(args.model, dataset, root, args, device, tmp_path / "s.zarr"))
        if args.gpu_decode:
            if device.type != "cuda" or not args.jpegs:
                parser.error("--gpu-decode needs a CUDA device and --jpegs N")
            rows.append(gpu_decode_run(args.model, root, args, device, tmp_path / "g.zarr"))
    keys = list(dict.fromkeys(k for row in rows for k in row))
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row.get(k, "")) for k in keys) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
