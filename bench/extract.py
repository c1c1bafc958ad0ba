"""Extraction throughput: model-only and end to end (images → feature store), side by side.

Examples::

    python bench/extract.py --image-size 112 --threads 2     # the default store, here
    python bench/extract.py --model dinov2_vitg14 --random-init --device cuda --jpegs 20000 \\
        --batch-size 128 --runs model,cpu,gpu,compiled
    python bench/extract.py --model dinov2_vits14 --random-init --device cuda --jpegs 20000 \\
        --copies 3 --batch-size 512 --runs model,cpu,gpu,compiled --check-transform

Runs (``--runs``, comma list; all in one process, so the rows share the machine's state):

- ``baseline``: the backbone's model as built (eval, NCHW, batch norms unfolded) on a resident
  random batch: what extraction ran before batch-norm folding and channels_last.
- ``model``: the model as extraction prepares it (:func:`alfm.extract.prepare_model`) on a
  resident batch; ``compiled`` adds ``torch.compile`` (a model-only row and an end-to-end row).
- ``cpu`` / ``gpu``: ``extract_features`` end to end with ``decode`` = cpu (PIL in workers) or
  gpu (JPEG decoded on the device), on ``--dataset`` or, with ``--jpegs N``, on N JPEG files of
  ``--jpeg-size`` it first writes (``--copies K`` hard-links them K times: K·N files).

Every end-to-end row gives images/s, its fraction of the model-only rate at the same batch
(``model`` for eager rows, the compiled model-only rate for the compiled row), and on CUDA the
GPU utilisation sampled by ``nvidia-smi`` every 200 ms during the row and the peak GPU memory.
The backbone is built once and reused by every row (construction is not extraction).
``--check-transform`` compares, on 64 of the JPEG files, the device path's pixels (device
decode + batched transform) with the per-image PIL transform, and the features of the ``cpu``
and ``gpu`` stores (per-image cosine). Prints a markdown table; ``--json PATH`` keeps the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import alfm.extract
from alfm.backbones import Backbone, create_backbone
from alfm.datasets import FileSplit, load_image
from alfm.decoding import DecodeCounts, EncodedBatch, EncodedSamples, decode_batch
from alfm.devices import resolve_device
from alfm.extract import compile_model, embed_batch, extract_features, prepare_model
from alfm.preprocess import BatchTransform
from alfm.store import open_store


def _write_jpeg(task: tuple[Path, int, int, int]) -> None:
    path, seed, height, width = task
    rng = np.random.default_rng(seed)
    rows = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    cols = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    freq = rng.uniform(1, 8, size=(3, 2))
    phase = rng.uniform(0, 6.3, size=3)
    channels = [np.sin(6.3 * (freq[c, 0] * rows + freq[c, 1] * cols) + phase[c]) for c in range(3)]
    pixels = np.stack(channels, -1) * 100 + 128 + rng.normal(0, 12, (height, width, 3))
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def write_jpegs(root: Path, count: int, size: tuple[int, int], copies: int, classes: int = 10):
    """``count`` JPEG files (80% train, 20% test) in an image-folder layout under ``root``,
    written by all cores, each hard-linked ``copies - 1`` more times.

    Content is smooth random colour fields plus noise, so JPEG sizes resemble photographs.
    """
    tasks = []
    for i in range(count):
        folder = root / ("test" if i % 5 == 4 else "train") / f"c{(i // 5) % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        tasks.append((folder / f"{i:07d}.jpg", i, size[1], size[0]))
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_write_jpeg, tasks, chunksize=256))
    for copy in range(1, copies):
        for path, *_ in tasks:
            os.link(path, path.with_name(f"{path.stem}-{copy}.jpg"))


class GpuSampler:
    """GPU utilisation (%) sampled by ``nvidia-smi`` every 200 ms while active."""

    def __init__(self, device: torch.device) -> None:
        self.samples: list[float] = []
        self.index = device.index or 0
        self.proc: subprocess.Popen | None = None
        self.thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        if shutil.which("nvidia-smi") is None:
            return self
        query = ["--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200"]
        self.proc = subprocess.Popen(
            ["nvidia-smi", f"--id={self.index}", *query], stdout=subprocess.PIPE, text=True
        )
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip().isdigit():
                self.samples.append(float(line))

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()

    def summary(self) -> str:
        if not self.samples:
            return ""
        return f"{np.mean(self.samples):.0f}% (median {np.median(self.samples):.0f}%)"


def model_only(net, backbone: Backbone, args, device: torch.device) -> float:
    """Images/s of ``net`` on one resident random batch (after warm-up)."""
    size = backbone.transform.crop
    batch = torch.randn(args.batch_size, 3, size, size, device=device)
    for _ in range(args.warmup):
        embed_batch(net, batch)
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.iters):
        embed_batch(net, batch)
    _sync(device)
    return args.iters * args.batch_size / (time.perf_counter() - start)


def end_to_end(dataset: str, root, args, device, out: Path, decode: str, compiled: bool) -> dict:
    """``extract_features`` end to end; its store's own timing (model build excluded)."""
    start = time.perf_counter()
    path = extract_features(
        args.model,
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
        decode=decode,
        compile=compiled,
    )
    attrs = open_store(path).attrs
    (run,) = attrs["extraction"].values()
    return {
        "images": run["images"],
        "seconds": run["seconds"],
        "images_per_s": run["images_per_second"],
        "decode": run["decode"],
        "compile_s": run["compile_seconds"],
        "wall_s_with_setup": round(time.perf_counter() - start, 1),
    }


def check_transform(root: Path, backbone: Backbone, device: torch.device, gpu: Path, cpu: Path):
    """Device path vs per-image PIL transform on 64 files, and features of the two stores."""
    paths = sorted(root.rglob("*.jpg"))[:64]
    split = FileSplit(paths, [0] * len(paths), [p.name for p in paths])
    records = [EncodedSamples(split, device_jpeg=True)[i] for i in range(len(paths))]
    images, _ = decode_batch(EncodedBatch.pack(records), device, DecodeCounts())
    transform = BatchTransform(backbone.transform)
    on_device = transform(images).cpu()
    decoded_on_cpu = [
        torch.from_numpy(np.array(load_image(p, p.name))).permute(2, 0, 1) for p in paths
    ]
    same_pixels = transform([image.to(device) for image in decoded_on_cpu]).cpu()
    reference = torch.stack([backbone.transform(load_image(p, p.name)) for p in paths])
    level = 255 * torch.tensor(backbone.transform.std).view(1, 3, 1, 1)
    rows = {
        "transform on the device (same pixels), max levels off": (same_pixels - reference),
        "device decode + transform, max levels off": (on_device - reference),
    }
    result = {name: round(float((d.abs() * level).max()), 3) for name, d in rows.items()}
    a, b = (open_store(p).load("train").features.astype(np.float32) for p in (gpu, cpu))
    cosine = (a * b).sum(1) / np.maximum(
        np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12
    )
    result["features gpu vs cpu decode: min cosine"] = round(float(cosine.min()), 6)
    result["features gpu vs cpu decode: mean cosine"] = round(float(cosine.mean()), 6)
    return result


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--dataset", default="animal_mnist", help="without --jpegs")
    parser.add_argument("--root", help="dataset root")
    parser.add_argument("--jpegs", type=int, default=0, help="write N JPEG files, extract those")
    parser.add_argument("--jpeg-size", default="224x224", help="WxH of the JPEG files")
    parser.add_argument("--copies", type=int, default=1, help="hard-link the files K times")
    parser.add_argument("--runs", default="baseline,model,cpu", help="comma list (docstring)")
    parser.add_argument("--check-transform", action="store_true")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--random-init", action="store_true")
    parser.add_argument("--model-dir")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--tmp", help="folder for the files and stores (default: a temp dir)")
    parser.add_argument("--json", help="write the rows to this JSON file")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    runs = args.runs.split(",")
    backbone = create_backbone(
        args.model,
        model_dir=args.model_dir,
        random_init=args.random_init,
        image_size=args.image_size,
    )
    baseline_net = backbone.model.eval().to(device)
    baseline = model_only(baseline_net, backbone, args, device) if "baseline" in runs else None
    net = prepare_model(backbone, device)
    # every extract_features call below reuses this backbone instead of building it again
    alfm.extract.create_backbone = lambda *a, **k: backbone
    rows = []
    context = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "batch": args.batch_size,
        "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }

    def row(mode: str, rate: float, **extra) -> None:
        rows.append(
            {"mode": mode, "model": args.model, **context, "images_per_s": round(rate, 1), **extra}
        )
        print(rows[-1], flush=True)

    if baseline is not None:
        row("model only, as built (NCHW, batch norms unfolded)", baseline)
    rates = {}
    if "model" in runs:
        rates["eager"] = model_only(net, backbone, args, device)
        row("model only", rates["eager"])
    if "compiled" in runs:
        size = backbone.transform.crop
        example = torch.zeros(args.batch_size, 3, size, size, device=device)
        compiled, seconds = compile_model(net, example)
        rates["compiled"] = model_only(compiled, backbone, args, device)
        row("model only, compiled", rates["compiled"], compile_s=round(seconds, 1))
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp_path = Path(tmp)
        dataset, root = args.dataset, Path(args.root) if args.root else None
        if args.jpegs:
            dataset, root = "imagefolder", tmp_path / "jpegs"
            width, height = (int(v) for v in args.jpeg_size.lower().split("x"))
            start = time.perf_counter()
            write_jpegs(root, args.jpegs, (width, height), args.copies)
            seconds = time.perf_counter() - start
            print(f"wrote {args.jpegs * args.copies} JPEG files in {seconds:.1f} s")
        stores = {}
        for mode, decode, compiled in (
            ("cpu", "cpu", False),
            ("gpu", "gpu", False),
            ("compiled", "gpu" if device.type == "cuda" else "cpu", True),
        ):
            if mode not in runs:
                continue
            stores[mode] = tmp_path / f"{mode}.zarr"
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            with GpuSampler(device) as sampler:
                result = end_to_end(dataset, root, args, device, stores[mode], decode, compiled)
            reference = rates.get("compiled" if compiled else "eager")
            extra = {
                **result,
                "of_model_only": round(result["images_per_s"] / reference, 3)
                if reference
                else None,
            }
            if device.type == "cuda":
                extra["gpu_util"] = sampler.summary()
                extra["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            label = f"end to end, decode {decode}" + (", compiled" if compiled else "")
            rows.append({"mode": label, "model": args.model, **context, **extra})
            print(rows[-1], flush=True)
        if args.check_transform:
            if not (args.jpegs and {"cpu", "gpu"} <= set(stores)):
                parser.error("--check-transform needs --jpegs N and the cpu and gpu runs")
            checks = check_transform(root, backbone, device, stores["gpu"], stores["cpu"])
            rows.append({"mode": "check", "model": args.model, **context, **checks})
            print(json.dumps(checks, indent=1))
    keys = list(dict.fromkeys(k for r in rows for k in r))
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
