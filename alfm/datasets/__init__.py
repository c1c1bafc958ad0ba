"""Datasets registry: every dataset has ``train`` and ``test`` splits of (PIL image, label, id).

- Embedded (no files needed): ``animal_mnist`` (default), ``mnist5k``, ``digits``
  (``alfm.datasets.embedded``).
- torchvision datasets from a local ``root`` with ``download=False``, including the reference's
  ``patch_camelyon`` (``alfm.datasets.torchvision_sets``).
- Image folders and CSV manifests: ``imagefolder``, ``manifest`` (``alfm.datasets.files``).
- The reference's other datasets by name: ``imagenet100``, ``domainnet_real``, ``cub200``,
  ``inat2021`` and its biomedical sets (``alfm.datasets.reference``).

A dataset the reference names must have the reference's class count (``REFERENCE_CLASSES``);
``create_dataset`` checks it. Every dataset, its source, layout and split: docs/DATASETS.md.
"""

from alfm.datasets import reference, torchvision_sets  # noqa: F401  (registers them)
from alfm.datasets.base import (
    REFERENCE_CLASSES,
    SPLITS,
    TEST_EVERY,
    ArraySplit,
    BadImageError,
    Dataset,
    DatasetFactory,
    Sample,
    create_dataset,
    list_datasets,
    register_dataset,
    stratified_split,
)
from alfm.datasets.embedded import ANIMAL_MNIST_CLASSES, array_dataset
from alfm.datasets.files import (
    IMAGE_EXTENSIONS,
    FileSplit,
    canonical_label,
    class_order,
    load_image,
    manifest_labels,
)
from alfm.datasets.torchvision_sets import TORCHVISION, TorchvisionSplit

__all__ = [
    "ANIMAL_MNIST_CLASSES",
    "IMAGE_EXTENSIONS",
    "REFERENCE_CLASSES",
    "SPLITS",
    "TEST_EVERY",
    "TORCHVISION",
    "ArraySplit",
    "BadImageError",
    "Dataset",
    "DatasetFactory",
    "FileSplit",
    "Sample",
    "TorchvisionSplit",
    "array_dataset",
    "canonical_label",
    "class_order",
    "create_dataset",
    "list_datasets",
    "load_image",
    "manifest_labels",
    "register_dataset",
    "stratified_split",
]
