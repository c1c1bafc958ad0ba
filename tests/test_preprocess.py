"""Batched preprocessing and device decoding against the per-image PIL transform (on the CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from alfm.backbones import IMAGENET_MEAN, IMAGENET_STD, ImageTransform, reference_transform
from alfm.datasets import FileSplit, load_image
from alfm.decoding import (
    BAD,
    JPEG,
    PIXELS,
    DecodeCounts,
    EncodedBatch,
    EncodedSamples,
    decode_batch,
    device_decodable_jpeg,
)
from alfm.preprocess import BatchTransform, pillow_coefficients, resized_shape

TRANSFORMS = {
    "mobilenet (torch bilinear)": ImageTransform(112, 112, IMAGENET_MEAN, IMAGENET_STD, "bilinear"),
    "timm (torch bicubic, crop < resize)": ImageTransform(
        72, 64, IMAGENET_MEAN, IMAGENET_STD, "bicubic"
    ),
    "dinov2 (PIL bicubic 256/224)": reference_transform(224),
    "PIL bilinear": ImageTransform(
        40, 36, IMAGENET_MEAN, IMAGENET_STD, "bilinear", pil_resize=True
    ),
}


def _noise(rng, height: int, width: int, channels: int = 3) -> np.ndarray:
    """Smooth gradients plus sharp noise: both near-ties and bicubic overshoot."""
    ramp = np.linspace(0, 255, width)[None, :, None] + np.linspace(0, 80, height)[:, None, None]
    pixels = ramp + rng.normal(0, 40, (height, width, channels))
    pixels[: height // 3] = rng.integers(0, 256, (height // 3, width, channels))
    return pixels.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def varied_files(tmp_path_factory):
    """Image files of varied kinds: (path, what the device should get) pairs."""
    rng = np.random.default_rng(3)
    root = tmp_path_factory.mktemp("varied")
    files = []

    def save(name: str, image: Image.Image, device_jpeg: bool, **options) -> None:
        path = root / name
        image.save(path, **options)
        files.append((path, device_jpeg))

    save("landscape.jpg", Image.fromarray(_noise(rng, 75, 100)), True, quality=90)
    save("portrait_444.jpg", Image.fromarray(_noise(rng, 301, 203)), True, subsampling=0)
    save("tiny.jpg", Image.fromarray(_noise(rng, 9, 13)), True)
    save("progressive.jpg", Image.fromarray(_noise(rng, 120, 64)), True, progressive=True)
    save("grey.jpg", Image.fromarray(_noise(rng, 50, 47, 1)[..., 0]), True)
    save("cmyk.jpg", Image.fromarray(_noise(rng, 40, 60)).convert("CMYK"), False)
    save("rgba.png", Image.fromarray(_noise(rng, 33, 90, 4), mode="RGBA"), False)
    save("palette.png", Image.fromarray(_noise(rng, 64, 64)).convert("P"), False)
    save("grey.png", Image.fromarray(_noise(rng, 28, 28, 1)[..., 0]), False)
    save("tall.png", Image.fromarray(_noise(rng, 500, 40)), False)  # Pillow: vertical pass first
    return files


def _reference(transform: ImageTransform, paths) -> torch.Tensor:
    return torch.stack([transform(load_image(path, path.name)) for path in paths])


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_device_path_matches_pil_transform(name, varied_files):
    """Records → decode (torchvision's decoder for JPEG, PIL otherwise) → batched transform
    equals the per-image transform of the PIL image: here bit for bit, the bound is a level."""
    transform = TRANSFORMS[name]
    paths = [path for path, _ in varied_files]
    split = FileSplit(paths, [0] * len(paths), [p.name for p in paths])
    records = [EncodedSamples(split, device_jpeg=True)[i] for i in range(len(paths))]
    assert [r.kind == JPEG for r in records] == [jpeg for _, jpeg in varied_files]
    counts = DecodeCounts()
    images, errors = decode_batch(EncodedBatch.pack(records), torch.device("cpu"), counts)
    assert not errors and (counts.device, counts.cpu) == (5, 5)
    batched = BatchTransform(transform)(images)
    expected = _reference(transform, paths)
    assert batched.shape == expected.shape == (len(paths), 3, transform.crop, transform.crop)
    torch.testing.assert_close(batched, expected, rtol=0, atol=0)  # the bound is one level


def test_uniform_batch_and_grey_arrays_are_bit_identical():
    """The default store's path: a (N, 1, 28, 28) array batch in one call."""
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    for transform in (TRANSFORMS["mobilenet (torch bilinear)"], reference_transform(56)):
        batched = BatchTransform(transform)(torch.from_numpy(grey)[:, None])
        expected = torch.stack([transform(Image.fromarray(image)) for image in grey])
        torch.testing.assert_close(batched, expected, rtol=0, atol=0)


def test_pillow_model_is_exact_on_random_geometries():
    """The integer model of Pillow's resampler against Pillow itself: sizes up and down, both
    pass orders, crops of every size."""
    rng = np.random.default_rng(1)
    for trial in range(40):
        height, width = (int(v) for v in rng.integers(5, 260, 2))
        resize = int(rng.integers(6, 200))
        crop = int(rng.integers(1, resize + 1))
        interpolation = ("bilinear", "bicubic")[trial % 2]
        transform = ImageTransform(resize, crop, (0, 0, 0), (1, 1, 1), interpolation, True)
        pixels = _noise(rng, height, width)
        expected = transform(Image.fromarray(pixels))
        batched = BatchTransform(transform)([torch.from_numpy(pixels).permute(2, 0, 1)])
        torch.testing.assert_close(batched[0], expected, rtol=0, atol=0)


def test_pillow_coefficients_rows_sum_to_one():
    for size_in, size_out in ((28, 256), (500, 341), (7, 3)):
        matrix = pillow_coefficients(size_in, size_out, "bicubic")
        assert matrix.shape == (size_in, size_out)
        assert np.all(np.abs(matrix.sum(axis=0) - (1 << 22)) <= size_in)


def test_resized_shape_is_torchvisions():
    assert resized_shape(375, 500, 256) == (256, 341)
    assert resized_shape(500, 375, 256) == (341, 256)
    assert resized_shape(28, 28, 112) == (112, 112)


def test_bad_files_are_named(tmp_path, varied_files):
    """A truncated JPEG passes the header check, fails on the device and in PIL: named; a
    missing file is named by the worker."""
    good = varied_files[0][0]
    broken = tmp_path / "broken.jpg"
    data = good.read_bytes()
    broken.write_bytes(data[: len(data) // 3])  # whole headers, a truncated scan
    paths = [good, broken, tmp_path / "missing.jpg"]
    split = FileSplit(paths, [1, 2, 3], ["good", "broken", "missing"])
    records = [EncodedSamples(split, device_jpeg=True)[i] for i in range(3)]
    assert [r.kind for r in records] == [JPEG, JPEG, BAD]
    images, errors = decode_batch(EncodedBatch.pack(records), torch.device("cpu"), DecodeCounts())
    assert images[0] is not None and images[1] is None and images[2] is None
    assert sorted(errors) == [1, 2]
    assert "broken.jpg" in str(errors[1]) and errors[1].sample_id == "broken"
    assert "missing.jpg" in str(errors[2])


def test_jpeg_header_check():
    def jpeg(mode: str, **options) -> np.ndarray:
        import io

        buffer = io.BytesIO()
        Image.new(mode, (8, 8)).save(buffer, "JPEG", **options)
        return np.frombuffer(buffer.getvalue(), dtype=np.uint8)

    assert device_decodable_jpeg(jpeg("RGB"))
    assert device_decodable_jpeg(jpeg("L"))
    assert device_decodable_jpeg(jpeg("RGB", progressive=True))
    assert not device_decodable_jpeg(jpeg("CMYK"))
    assert not device_decodable_jpeg(np.frombuffer(b"\x89PNG\r\n\x1a\n", dtype=np.uint8))
    assert not device_decodable_jpeg(np.zeros(3, dtype=np.uint8))


def test_records_of_non_file_splits_are_pixels():
    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            return Image.new("RGB" if index else "L", (5, 4), 7), index, f"s{index}"

    records = [EncodedSamples(Images(), device_jpeg=True)[i] for i in range(2)]
    assert [r.kind for r in records] == [PIXELS, PIXELS]
    assert [r.data.shape for r in records] == [(1, 4, 5), (3, 4, 5)]
