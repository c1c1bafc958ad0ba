"""The registry's core: ``Dataset``, its splits, and the check of the reference's class counts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset as TorchDataset

from alfm.registry import Registry, returns
from alfm.store import content_digest

SPLITS = ("train", "test")
TEST_EVERY = 5  # a source without a split: every 5th sample of each class is test

Sample = tuple[Image.Image, int, str]


class BadImageError(ValueError):
    """An image file that cannot be read or decoded; ``sample_id`` and ``path`` name it."""

    def __init__(self, path: Path | str, sample_id: str, reason: BaseException | str) -> None:
        super().__init__(f"cannot read image {path}: {reason}")
        self.path = str(path)
        self.sample_id = sample_id
        self.reason = str(reason)


@dataclass(frozen=True)
class Dataset:
    """A named dataset: ``split(name)`` gives a map-style dataset of (PIL image, label, id)."""

    name: str
    class_names: list[str]
    splits: dict[str, TorchDataset]

    def split(self, name: str) -> TorchDataset:
        """The ``train`` or ``test`` split."""
        if name not in self.splits:
            raise ValueError(f"dataset {self.name!r} has no split {name!r}; splits: {SPLITS}")
        return self.splits[name]

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    def content_digest(self) -> str:
        """:func:`alfm.store.content_digest` of the splits' ids and labels (a split lists them
        as ``ids`` and ``labels`` attributes; positions and no labels where it has none)."""
        rows = {}
        for name, split in self.splits.items():
            ids = getattr(split, "ids", None)
            rows[name] = (
                list(ids) if ids is not None else [str(i) for i in range(len(split))],
                getattr(split, "labels", None),
            )
        return content_digest(self.class_names, rows)


DatasetFactory = Callable[[Path | None], Dataset]
_DATASETS: Registry[DatasetFactory] = Registry(
    "dataset",
    accepts=returns(Dataset),
    expected="a dataset factory (registered with alfm.datasets.register_dataset, or a function "
    "annotated to return alfm.datasets.Dataset)",
)
# The reference's class count of each dataset it names (its ALFM/conf/dataset/<name>.yaml, or
# its loader where it has no such file); ``create_dataset`` checks every build against it.
REFERENCE_CLASSES: dict[str, int] = {}


def register_dataset(name: str, factory: DatasetFactory, num_classes: int | None = None) -> None:
    """Register ``factory`` as ``name``; ``num_classes``: the reference's count, to check."""
    _DATASETS.add(name, factory)
    if num_classes is not None:
        REFERENCE_CLASSES[name] = num_classes


def create_dataset(name: str, root: str | Path | None = None) -> Dataset:
    """Build the dataset registered as ``name`` (``root``: its local files, where needed).

    A dataset of the reference's must have its class count: a mismatch is a one-line error.
    """
    path = Path(root).expanduser() if root is not None else None
    data = _DATASETS.get(name)(path)
    expected = REFERENCE_CLASSES.get(name)
    if expected is not None and data.num_classes != expected:
        raise ValueError(
            f"dataset {name!r} at {path}: expected {expected} classes (the reference's count), "
            f"found {data.num_classes}"
        )
    return data


def list_datasets() -> list[str]:
    """Registered dataset names."""
    return _DATASETS.names()


def require_root(name: str, root: Path | None, expected: str) -> Path:
    """``root``, or a one-line error: ``name`` needs a root laid out as ``expected``."""
    if root is None:
        raise ValueError(f"dataset {name!r} needs --root: {expected}")
    if not root.exists():
        raise FileNotFoundError(f"dataset {name!r}: root {root} does not exist ({expected})")
    return root


class ArraySplit(TorchDataset):
    """Images held as a uint8 array (N, H, W) or (N, H, W, 3)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, ids: Sequence[str]) -> None:
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.ids = [str(i) for i in ids]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Sample:
        return Image.fromarray(self.images[index]), int(self.labels[index]), self.ids[index]


def stratified_split(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """Boolean test mask: within each class, in the given order, every ``TEST_EVERY``-th sample."""
    labels = np.asarray(labels)
    test = np.zeros(len(labels), dtype=bool)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        test[members[TEST_EVERY - 1 :: TEST_EVERY]] = True
    return test
