"""Tiny on-disk datasets for tests: a CSV manifest over the embedded digits images."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from alfm.datasets import create_dataset


def digits_manifest(folder: Path, labels: list[str], name: str = "manifest.csv") -> Path:
    """A manifest ``folder/name`` of the first len(labels) digits images ``digits/<i>.png`` with
    the given labels (the first 4 in train, the rest in test); returns its path."""
    images = folder / "digits"
    images.mkdir(parents=True, exist_ok=True)
    split = create_dataset("digits").split("train")
    lines = ["path,label,split"]
    for i, label in enumerate(labels):
        Image.fromarray(split.images[i]).save(images / f"{i}.png")
        lines.append(f"digits/{i}.png,{label},{'train' if i < 4 else 'test'}")
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path
