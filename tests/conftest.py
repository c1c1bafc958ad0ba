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
