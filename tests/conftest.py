"""Shared fixtures; no test may reach a model hub."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402


@pytest.fixture
def image_files(tmp_path):
    """Write a tiny two-class image set: 4 train + 2 test images per class as PNG files.

    Returns ``(root, records)`` where records are ``(relative path, class name, split)`` tuples;
    the files live at ``root/<split>/<class>/<name>.png`` (an ImageNet-style folder layout).
    """
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    records = []
    for split, count in (("train", 4), ("test", 2)):
        for cls in ("cat", "dog"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, size=(20 + i, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{cls}{i}.png")
                records.append((f"{split}/{cls}/{cls}{i}.png", cls, split))
    return root, records


@pytest.fixture(scope="session")
def animal_pixel_store(tmp_path_factory):
    """A feature store of the embedded Animal-MNIST's real images (8,000 train, 2,000 test) whose
    features are their 2×2-pooled pixels (196-d): built in a second, where extracting MobileNetV2
    features took minutes on this 2-core machine; enough for the labeling loop's tests."""
    from alfm.datasets import ANIMAL_MNIST_CLASSES, create_dataset
    from alfm.store import SplitData, write_store

    data = create_dataset("animal_mnist")

    def pooled(name):
        split = data.split(name)
        n = len(split.ids)
        pixels = split.images.reshape(n, 14, 2, 14, 2).mean(axis=(2, 4)).reshape(n, -1) / 255
        return SplitData(pixels.astype(np.float32), split.labels, np.array(split.ids))

    path = tmp_path_factory.mktemp("labeling") / "animal_pixels.zarr"
    attrs = {
        "dataset": "animal_mnist",
        "backbone": "pixels2x2",
        "class_names": ANIMAL_MNIST_CLASSES,
    }
    write_store(path, pooled("train"), pooled("test"), attrs)
    return path
