"""Batched preprocessing on tensors: a backbone's ``ImageTransform`` for a whole batch, on any
device, with the pixels of the per-image CPU transform.

:class:`BatchTransform` takes uint8 images (C, H, W) with C = 1 (grey) or 3 (RGB), groups them
by shape and resizes, center-crops, scales and normalizes each group in batched tensor ops:

- A transform that resizes tensors (``pil_resize`` off, e.g. MobileNetV2) gets torch's
  antialiased float resize of the whole group followed by rounding to uint8, exactly what
  ``ImageTransform`` does to one uint8 tensor; on the CPU the pixels are bit-identical.
- A transform that resizes PIL images with PIL (``pil_resize``, the reference's DINOv2 view)
  gets an exact integer model of Pillow's resampler: Pillow's filter coefficients in 22-bit
  fixed point, its two passes with an 8-bit intermediate and its pass order, each pass one
  matrix product over the group that the center crop has already cut to the kept rows and
  columns. The products run in float32 and are exact (every partial sum is an integer below
  2**24: the coefficients are split into base-2**b digits), so the pixels equal Pillow's on any
  device.

A grey image is resized on its one channel and repeated to RGB afterwards, which is what
``convert("RGB")`` followed by a per-channel resize gives.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import PIL
import torch
import torch.nn.functional as F

from alfm.backbones import ImageTransform
from alfm.devices import allow_tf32

# Pillow 13 runs the vertical pass first when the height shrinks by more than twice the width
# (python-pillow/Pillow#9549); earlier versions always start with the horizontal pass.
PILLOW_VERTICAL_FIRST = int(PIL.__version__.split(".")[0]) >= 13
PILLOW_PRECISION = 22  # Pillow's fixed-point coefficient bits for 8-bit images
EXACT_FLOAT32 = 1 << 24  # integers below this are exact in float32
_SUPPORT = {"bilinear": 1.0, "bicubic": 2.0}


def resized_shape(height: int, width: int, shorter: int) -> tuple[int, int]:
    """(height, width) after resizing the shorter side to ``shorter`` (torchvision's rule: the
    longer side becomes ``int(shorter * longer / shorter_side)``)."""
    if width <= height:
        return int(shorter * height / width), shorter
    return shorter, int(shorter * width / height)


def crop_start(size: int, crop: int) -> int:
    """First kept row (or column) of torchvision's center crop of ``crop`` out of ``size``."""
    return int(round((size - crop) / 2.0))


def _pillow_filter(x: np.ndarray, interpolation: str) -> np.ndarray:
    """Pillow's filter, evaluated in float64 with Pillow's own operation order."""
    x = np.abs(x)
    if interpolation == "bilinear":
        return np.where(x < 1.0, 1.0 - x, 0.0)
    a = -0.5
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@functools.lru_cache(maxsize=4096)
def pillow_coefficients(size_in: int, size_out: int, interpolation: str) -> np.ndarray:
    """Pillow's fixed-point resampling matrix (``size_in``, ``size_out``), int64.

    Output position o reads inputs ``xmin .. xmax - 1`` around its center ``(o + 0.5) * scale``
    with the filter stretched by the downscaling factor, normalized to sum 1 and rounded to
    ``PILLOW_PRECISION`` bits (Pillow's ``precompute_coeffs`` and ``normalize_coeffs_8bpc``).
    """
    if interpolation not in _SUPPORT:
        raise ValueError(f"interpolation must be one of {sorted(_SUPPORT)}, got {interpolation!r}")
    scale = size_in / size_out
    filterscale = max(scale, 1.0)
    support = _SUPPORT[interpolation] * filterscale
    centers = (np.arange(size_out) + 0.5) * scale
    xmin = np.maximum((centers - support + 0.5).astype(np.int64), 0)
    xmax = np.minimum((centers + support + 0.5).astype(np.int64), size_in)
    taps = int((xmax - xmin).max())
    positions = xmin[:, None] + np.arange(taps)[None, :]
    valid = positions < xmax[:, None]
    arguments = (positions - centers[:, None] + 0.5) * (1.0 / filterscale)
    weights = _pillow_filter(arguments, interpolation)
    weights = np.where(valid, weights, 0.0)
    total = np.zeros(size_out)
    for tap in range(taps):  # left to right, as Pillow sums
        total = total + weights[:, tap]
    weights = np.divide(weights, total[:, None], out=weights, where=total[:, None] != 0)
    scaled = weights * (1 << PILLOW_PRECISION)
    fixed = np.where(scaled < 0, scaled - 0.5, scaled + 0.5).astype(np.int64)  # C truncation
    matrix = np.zeros((size_in, size_out), dtype=np.int64)
    rows = np.where(valid, positions, 0)
    np.add.at(matrix, (rows, np.broadcast_to(np.arange(size_out)[:, None], rows.shape)), fixed)
    return matrix


@dataclass(frozen=True)
class ExactPass:
    """One resampling pass as exact float32 matrix products.

    ``digits[d]`` (``length`` × out) are the base-2**``base_bits`` digits of the fixed-point
    matrix rows ``start .. start + length - 1``: all digits but the last lie in [0, 2**b), the
    last carries the sign. With inputs 0..255 every partial sum of a digit's product is an
    integer below 2**24, so each product is exact in float32.
    """

    start: int
    length: int
    digits: tuple[torch.Tensor, ...]
    base_bits: int

    @classmethod
    def build(cls, matrix: np.ndarray, device: torch.device) -> ExactPass:
        used = np.flatnonzero(np.any(matrix != 0, axis=1))
        start, stop = int(used[0]), int(used[-1]) + 1
        matrix = matrix[start:stop]
        for base_bits in range(12, 0, -1):
            digits, rest = [], matrix
            while 255 * np.abs(rest).sum(axis=0).max() >= EXACT_FLOAT32:
                low = rest & ((1 << base_bits) - 1)
                if 255 * low.sum(axis=0).max() >= EXACT_FLOAT32:
                    break
                digits.append(low)
                rest = rest >> base_bits
            else:
                digits.append(rest)
                tensors = tuple(torch.from_numpy(d.astype(np.float32)).to(device) for d in digits)
                return cls(start, stop - start, tensors, base_bits)
        raise ValueError(f"a {matrix.shape} resampling matrix cannot be split into exact digits")

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """Resample the last axis of float pixels 0..255, already cut to the ``length`` inputs
        from ``start``: rounded down after adding one half, clipped to 0..255, as float."""
        total = torch.zeros(
            (*pixels.shape[:-1], self.digits[0].shape[1]), dtype=torch.int64, device=pixels.device
        )
        with allow_tf32(False):
            for power, digit in enumerate(self.digits):
                total += (pixels @ digit).to(torch.int64) << (power * self.base_bits)
        total += 1 << (PILLOW_PRECISION - 1)
        return (total >> PILLOW_PRECISION).clamp_(0, 255).to(torch.float32)


@functools.lru_cache(maxsize=4096)
def _pillow_pass(
    size_in: int, size_out: int, crop: int, interpolation: str, device: torch.device
) -> ExactPass | None:
    """The pass resampling ``size_in`` to ``size_out`` and keeping the center ``crop`` of it;
    None when the size does not change (Pillow skips the pass: a plain crop)."""
    if size_in == size_out:
        return None
    start = crop_start(size_out, crop)
    matrix = pillow_coefficients(size_in, size_out, interpolation)[:, start : start + crop]
    return ExactPass.build(matrix, device)


def _pillow_resize_crop(
    pixels: torch.Tensor, shape: tuple[int, int], crop: int, interpolation: str
) -> torch.Tensor:
    """Pillow's resize of float pixels (N, C, H, W) to ``shape``, then the center crop.

    Before the first pass the image is cut to the rows (or columns) the second pass reads, as
    Pillow does; each pass works on the last axis, so the image is transposed around it.
    """
    height, width = pixels.shape[-2:]
    out_h, out_w = shape
    shrink_h, shrink_w = height - out_h, width - out_w
    vertical_first = PILLOW_VERTICAL_FIRST and shrink_h > 0 and shrink_h > 2 * shrink_w
    rows = _pillow_pass(height, out_h, crop, interpolation, pixels.device)
    columns = _pillow_pass(width, out_w, crop, interpolation, pixels.device)
    if vertical_first:  # work on (N, C, W, H): columns are the second pass
        pixels, first, second = pixels.transpose(-1, -2), rows, columns
        sizes = (height, width)
    else:
        first, second = columns, rows
        sizes = (width, height)
    # cut the second pass's axis (now -2) to what it reads, or to the crop if it is skipped
    if second is None:
        pixels = pixels.narrow(-2, crop_start(sizes[1], crop), crop)
    else:
        pixels = pixels.narrow(-2, second.start, second.length)
    if first is None:
        pixels = pixels.narrow(-1, crop_start(sizes[0], crop), crop)
    else:
        pixels = first(pixels.narrow(-1, first.start, first.length))
    pixels = pixels.transpose(-1, -2)
    if second is not None:
        pixels = second(pixels)
    return pixels if vertical_first else pixels.transpose(-1, -2)


def _torch_resize_crop(
    pixels: torch.Tensor, shape: tuple[int, int], crop: int, interpolation: str
) -> torch.Tensor:
    """torchvision's resize of a uint8 tensor (float antialiased interpolation, rounded), then
    the center crop, for float pixels (N, C, H, W)."""
    if tuple(pixels.shape[-2:]) != shape:
        pixels = F.interpolate(
            pixels, size=shape, mode=interpolation, align_corners=False, antialias=True
        )
        if interpolation == "bicubic":
            pixels = pixels.clamp_(0, 255)
        pixels = pixels.round_()
    top, left = crop_start(shape[0], crop), crop_start(shape[1], crop)
    return pixels[..., top : top + crop, left : left + crop]


class BatchTransform:
    """``transform`` applied to a batch of uint8 images on their device (module docstring)."""

    def __init__(self, transform: ImageTransform) -> None:
        self.transform = transform
        self.resize, self.crop, self.pillow = transform.resize, transform.crop, transform.pil_resize
        if self.crop > self.resize:
            raise ValueError(f"center crop {self.crop} is larger than the resize {self.resize}")
        if transform.interpolation not in _SUPPORT:
            raise ValueError(
                f"batched preprocessing supports {sorted(_SUPPORT)} interpolation, not "
                f"{transform.interpolation!r}"
            )

    def __call__(self, images: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """(N, 3, crop, crop) float32 from N uint8 images (C, H, W), C in {1, 3}, one device."""
        if isinstance(images, torch.Tensor):
            groups = {tuple(images.shape[1:]): list(range(len(images)))}
            stacks = {tuple(images.shape[1:]): images}
        else:
            groups = {}
            for index, image in enumerate(images):
                groups.setdefault(tuple(image.shape), []).append(index)
            stacks = {
                shape: torch.stack([images[i] for i in rows]) for shape, rows in groups.items()
            }
        first = next(iter(stacks.values()))
        out = torch.empty(
            (sum(len(rows) for rows in groups.values()), 3, self.crop, self.crop),
            dtype=torch.float32,
            device=first.device,
        )
        mean = torch.tensor(self.transform.mean, device=out.device).view(1, 3, 1, 1)
        std = torch.tensor(self.transform.std, device=out.device).view(1, 3, 1, 1)
        for shape, rows in groups.items():
            channels, height, width = shape
            if channels not in (1, 3):
                raise ValueError(f"images must have 1 or 3 channels, got shape {shape}")
            target = resized_shape(height, width, self.resize)
            resize_crop = _pillow_resize_crop if self.pillow else _torch_resize_crop
            pixels = resize_crop(
                stacks[shape].to(torch.float32), target, self.crop, self.transform.interpolation
            )
            # ImageTransform's order: float / 255, then subtract the mean, then divide by std
            pixels = pixels.expand(-1, 3, -1, -1).div(255).sub_(mean).div_(std)
            out.index_copy_(0, torch.as_tensor(rows, device=out.device), pixels)
        return out
