"""Images from their source to uint8 tensors on the extraction device.

DataLoader workers turn each sample into one record: the file's JPEG bytes (when the device
decodes JPEG), or its pixels decoded on the CPU by PIL, or the reason it could not be read.
A batch's records travel packed into one uint8 tensor (:class:`EncodedBatch`), which the
DataLoader pins; :func:`decode_batch` then decodes the JPEG bytes on the device in one batched
``torchvision.io.decode_jpeg`` call, copies the CPU-decoded pixels over with one non-blocking
copy, and returns every image as a (C, H, W) uint8 tensor, C = 1 (grey) or 3 (RGB).

What the device decodes: 8-bit baseline, extended or progressive Huffman JPEG with one or three
components. Everything else (PNG, CMYK or YCCK JPEG, 12-bit or lossless JPEG, ...) is decoded
by PIL in the worker, as the CPU path does. A JPEG the device fails on is retried alone, then
decoded by PIL; only if PIL fails too is it a bad image, named by path.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset as TorchDataset

from alfm.datasets import BadImageError, FileSplit
from alfm.store import SKIPPED_LABEL

JPEG = "jpeg"  # record kinds
PIXELS = "pixels"
BAD = "bad"
# Start-of-frame markers: baseline, extended sequential and progressive Huffman (device OK);
# the other SOF markers (lossless, arithmetic coding, hierarchical) go to PIL.
_DEVICE_SOF = {0xC0, 0xC1, 0xC2}
_OTHER_SOF = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def device_decodable_jpeg(data: np.ndarray) -> bool:
    """Whether ``data`` (file bytes) is a JPEG that nvJPEG decodes as PIL does: 8-bit
    Huffman-coded (baseline, extended or progressive) with 1 or 3 components."""
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return False
    at = 2
    while at + 9 < len(data):
        if data[at] != 0xFF:
            return False
        marker = int(data[at + 1])
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            at += 2
            continue
        if marker in _DEVICE_SOF:
            precision, components = int(data[at + 4]), int(data[at + 9])
            return precision == 8 and components in (1, 3)
        if marker in _OTHER_SOF or marker == 0xDA:  # another frame type, or scan before a frame
            return False
        at += 2 + (int(data[at + 2]) << 8 | int(data[at + 3]))
    return False


def pixels_of(image: Image.Image) -> np.ndarray:
    """A PIL image as uint8 (C, H, W): grey images keep one channel, every other mode is
    converted to RGB (the per-image transform's ``convert("RGB")`` repeats grey the same way)."""
    array = np.asarray(image if image.mode == "L" else image.convert("RGB"))
    return np.ascontiguousarray(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))


def pil_decode(data: np.ndarray, path: str, sample_id: str) -> np.ndarray:
    """Pixels of encoded image bytes decoded by PIL; a failure is a ``BadImageError``."""
    try:
        with Image.open(io.BytesIO(data.tobytes())) as image:
            image.load()
            return pixels_of(image)
    except (OSError, ValueError, SyntaxError) as err:
        raise BadImageError(path, sample_id, err) from err


_NOTHING = np.zeros(0, dtype=np.uint8)  # the data of a bad record


@dataclass(frozen=True)
class Record:
    """One sample as a worker hands it over: ``data`` holds JPEG bytes or (C, H, W) pixels."""

    kind: str
    data: np.ndarray
    label: int
    sample_id: str
    path: str = ""
    reason: str = ""


class EncodedSamples(TorchDataset):
    """Records of a split's samples; file splits hand JPEG bytes over when ``device_jpeg``."""

    def __init__(self, split: TorchDataset, device_jpeg: bool) -> None:
        self.split = split
        self.device_jpeg = device_jpeg and isinstance(split, FileSplit)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> Record:
        if self.device_jpeg:
            path, label, sample_id = (
                self.split.paths[index],
                self.split.labels[index],
                self.split.ids[index],
            )
            try:
                data = np.fromfile(path, dtype=np.uint8)
                if device_decodable_jpeg(data):
                    return Record(JPEG, data, label, sample_id, str(path))
                return Record(PIXELS, pil_decode(data, str(path), sample_id), label, sample_id)
            except OSError as err:
                return Record(BAD, _NOTHING, SKIPPED_LABEL, sample_id, str(path), str(err))
            except BadImageError as err:
                return Record(BAD, _NOTHING, SKIPPED_LABEL, sample_id, err.path, err.reason)
        try:
            image, label, sample_id = self.split[index]
        except BadImageError as err:
            return Record(BAD, _NOTHING, SKIPPED_LABEL, err.sample_id, err.path, err.reason)
        return Record(PIXELS, pixels_of(image), int(label), str(sample_id))


@dataclass(frozen=True)
class EncodedBatch:
    """A batch of records packed into one uint8 ``payload`` (pinned by the DataLoader)."""

    payload: torch.Tensor
    offsets: tuple[int, ...]
    shapes: tuple[tuple[int, ...], ...]
    kinds: tuple[str, ...]
    labels: np.ndarray
    ids: tuple[str, ...]
    paths: tuple[str, ...]
    reasons: tuple[str, ...]

    @classmethod
    def pack(cls, records: Sequence[Record]) -> EncodedBatch:
        """The DataLoader's ``collate_fn``: one tensor for all records' bytes and pixels."""
        sizes = [r.data.size for r in records]
        payload = torch.from_numpy(np.concatenate([r.data.reshape(-1) for r in records]))
        return cls(
            payload=payload,
            offsets=tuple(int(o) for o in np.cumsum([0, *sizes[:-1]])),
            shapes=tuple(r.data.shape for r in records),
            kinds=tuple(r.kind for r in records),
            labels=np.array([r.label for r in records], dtype=np.int64),
            ids=tuple(r.sample_id for r in records),
            paths=tuple(r.path for r in records),
            reasons=tuple(r.reason for r in records),
        )

    def pin_memory(self) -> EncodedBatch:
        """The same batch with its payload in pinned memory (the DataLoader's pin thread)."""
        return replace(self, payload=self.payload.pin_memory())

    def part(self, index: int, payload: torch.Tensor | None = None) -> torch.Tensor:
        """Record ``index``'s data in its shape, a view of ``payload`` (default: this batch's;
        pass a copy of it on another device to get the view there)."""
        payload = self.payload if payload is None else payload
        start = self.offsets[index]
        return payload[start : start + int(np.prod(self.shapes[index]))].view(self.shapes[index])

    @property
    def bad(self) -> list[int]:
        """Positions of records that could not be read."""
        return [i for i, kind in enumerate(self.kinds) if kind == BAD]


@dataclass
class DecodeCounts:
    """How many images each decoder produced (provenance)."""

    device: int = 0
    cpu: int = 0


def decode_batch(
    batch: EncodedBatch, device: torch.device, counts: DecodeCounts
) -> tuple[list[torch.Tensor | None], dict[int, BadImageError]]:
    """Every record's image as a uint8 (C, H, W) tensor on ``device``, and the errors of the
    records that could not be read (their image is None), by position.

    A JPEG the device cannot decode is decoded by PIL; if PIL fails too, its error names the
    file.
    """
    images: list[torch.Tensor | None] = [None] * len(batch.kinds)
    errors = {
        i: BadImageError(batch.paths[i], batch.ids[i], batch.reasons[i])
        for i, kind in enumerate(batch.kinds)
        if kind == BAD
    }
    pixels = [i for i, kind in enumerate(batch.kinds) if kind == PIXELS]
    if pixels:
        payload = batch.payload.to(device, non_blocking=True)
        for i in pixels:
            images[i] = batch.part(i, payload)
        counts.cpu += len(pixels)
    jpegs = [i for i, kind in enumerate(batch.kinds) if kind == JPEG]
    if jpegs:
        for i, image in _decode_jpegs(batch, jpegs, device, counts).items():
            if isinstance(image, BadImageError):
                errors[i] = image
            else:
                images[i] = image
    return images, errors


def _decode_jpegs(
    batch: EncodedBatch, positions: list[int], device: torch.device, counts: DecodeCounts
) -> dict[int, torch.Tensor | BadImageError]:
    """The JPEG records at ``positions`` decoded on ``device`` in one call; if that fails,
    each alone, and PIL for those the device refuses (its error when PIL refuses too)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    encoded = {i: batch.part(i) for i in positions}
    try:
        decoded = decode_jpeg(list(encoded.values()), mode=ImageReadMode.UNCHANGED, device=device)
        counts.device += len(positions)
        return dict(zip(positions, decoded, strict=True))
    except RuntimeError:
        pass
    results: dict[int, torch.Tensor | BadImageError] = {}
    for i, data in encoded.items():
        try:
            results[i] = decode_jpeg(data, mode=ImageReadMode.UNCHANGED, device=device)
            counts.device += 1
            continue
        except RuntimeError:
            pass
        try:
            pixels = pil_decode(data.numpy(), batch.paths[i], batch.ids[i])
        except BadImageError as err:
            results[i] = err
            continue
        results[i] = torch.from_numpy(pixels).to(device)
        counts.cpu += 1
    return results
