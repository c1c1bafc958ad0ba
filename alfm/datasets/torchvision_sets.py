"""torchvision datasets read from a local ``root`` with ``download=False``.

``cifar10``, ``cifar100``, ``food101``, ``dtd``, ``flowers102``, ``oxford_pets``,
``stanford_cars``, ``fgvc_aircraft``, ``svhn``, ``places365`` and the reference's
``patch_camelyon`` (``torchvision.datasets.PCAM``, which needs ``h5py``). Each split is the
reference's: its wrappers (ALFM/src/datasets/dataset_wrappers.py) take DTD's and Flowers102's
``train`` split alone (not train+val), FGVC-Aircraft's and Oxford Pets' ``trainval``, Places365's
small ``train-standard``/``val`` and PCAM's ``train`` (its ``val`` is unused).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset as TorchDataset

from alfm.datasets.base import Dataset, Sample, register_dataset, require_root


class TorchvisionSplit(TorchDataset):
    """A torchvision dataset yielding (image, label, id); ids are ``<split>/<position>``."""

    def __init__(self, tag: str, dataset: TorchDataset) -> None:
        self.tag = tag
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(index)
        image, label = self.dataset[index]
        return image, int(label), f"{self.tag}/{index:07d}"

    @property
    def labels(self) -> list[int] | None:
        """The source's labels where it lists them (``targets``, ``labels`` or ``_labels``),
        else None (:meth:`alfm.datasets.Dataset.content_digest`)."""
        for attr in ("targets", "labels", "_labels"):
            values = getattr(self.dataset, attr, None)
            if values is not None:
                return [int(v) for v in values]
        return None


def _numbered(count: int) -> Callable[[Any], list[str]]:
    return lambda ds: [str(i) for i in range(count)]


@dataclass(frozen=True)
class TorchvisionSpec:
    """One torchvision dataset: class, split arguments, class names, the reference's count."""

    cls: str
    train: dict[str, Any]
    test: dict[str, Any]
    num_classes: int
    class_names: Callable[[Any], list[str]] = lambda ds: list(ds.classes)


_TRAIN, _TEST = {"split": "train"}, {"split": "test"}
TORCHVISION = {
    "cifar10": TorchvisionSpec("CIFAR10", {"train": True}, {"train": False}, 10),
    "cifar100": TorchvisionSpec("CIFAR100", {"train": True}, {"train": False}, 100),
    "food101": TorchvisionSpec("Food101", _TRAIN, _TEST, 101),
    "dtd": TorchvisionSpec("DTD", _TRAIN, _TEST, 47),
    "flowers102": TorchvisionSpec("Flowers102", _TRAIN, _TEST, 102, _numbered(102)),
    "oxford_pets": TorchvisionSpec("OxfordIIITPet", {"split": "trainval"}, _TEST, 37),
    "stanford_cars": TorchvisionSpec("StanfordCars", _TRAIN, _TEST, 196),
    "fgvc_aircraft": TorchvisionSpec("FGVCAircraft", {"split": "trainval"}, _TEST, 100),
    "svhn": TorchvisionSpec("SVHN", _TRAIN, _TEST, 10, _numbered(10)),
    "places365": TorchvisionSpec(
        "Places365",
        {"split": "train-standard", "small": True},
        {"split": "val", "small": True},
        365,
    ),
    "patch_camelyon": TorchvisionSpec(
        "PCAM", _TRAIN, _TEST, 2, lambda ds: ["no_metastasis", "metastasis"]
    ),
}


def torchvision_dataset(name: str, root: Path | None) -> Dataset:
    """A torchvision dataset from files already under ``root`` (``download=False``)."""
    import torchvision.datasets

    spec = TORCHVISION[name]
    root = require_root(name, root, f"the folder torchvision.datasets.{spec.cls} reads")
    build = getattr(torchvision.datasets, spec.cls)
    splits = {}
    for split, kwargs in (("train", spec.train), ("test", spec.test)):
        try:
            ds = build(str(root), download=False, **kwargs)
        except RuntimeError as err:  # torchvision's "Dataset not found or corrupted"
            raise FileNotFoundError(
                f"dataset {name!r}: torchvision.datasets.{spec.cls} found no data under "
                f"{root} ({err}); place the files there (alfm never downloads)"
            ) from err
        splits[split] = TorchvisionSplit(kwargs.get("split", split), ds)
    class_names = spec.class_names(splits["train"].dataset)
    return Dataset(name, class_names, splits)


for _name, _spec in TORCHVISION.items():
    register_dataset(
        _name, lambda root, _name=_name: torchvision_dataset(_name, root), _spec.num_classes
    )
