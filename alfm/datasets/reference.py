"""The reference's datasets that torchvision does not load, each from a documented layout.

Natural: ``imagenet100``, ``domainnet_real``, ``cub200``, ``inat2021``. Biomedical (the
reference loads them with the private ``bcv`` package, so its files, class order and splits are
not public; alfm reads a layout the user prepares): ``amyloid_beta_bal``, ``amyloid_beta_unbal``,
``blood_smear``, ``cell_cycle``, ``colon_polyps``, ``colorectal_histology``,
``diabetic_retinopathy``, ``ham10000``, ``heart_failure``, ``iicbu_hela``, ``iicbu_lymphoma``,
``malaria``, ``pap_smear_2018``, ``pap_smear_2019``, ``pollen`` (``patch_camelyon`` is
torchvision's PCAM). Sources, layouts and splits: docs/DATASETS.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alfm.datasets.base import SPLITS, Dataset, DatasetFactory, register_dataset, require_root
from alfm.datasets.files import (
    IMAGE_FOLDER_LAYOUT,
    FileSplit,
    ManifestFormat,
    class_folders,
    folder_splits,
    image_folder,
    parse_int,
    read_manifest,
    read_pairs,
)


def _inside(root: Path, folder: str) -> Path:
    """``root/folder`` where it exists (the reference's data root holds one folder per set)."""
    return root / folder if (root / folder).is_dir() else root


# ---------------------------------------------------------------------------------------------
# Natural datasets


DOMAINNET_LAYOUT = "real_train.txt, real_test.txt and real/<class>/* (or image folders)"
CUB_LAYOUT = (
    "the CUB_200_2011 archive: images.txt, image_class_labels.txt, train_test_split.txt, "
    "classes.txt and images/"
)


def imagenet100(root: Path | None) -> Dataset:
    """ImageNet-100 as image folders (the reference's ``imagenet100/{train,val}``)."""
    root = require_root("imagenet100", root, IMAGE_FOLDER_LAYOUT)
    return image_folder("imagenet100", _inside(root, "imagenet100"))


def domainnet_real(root: Path | None) -> Dataset:
    """DomainNet's real domain: its official ``real_train.txt``/``real_test.txt``, or folders.

    The split files list ``real/<class>/<file> <label>``; a class is named by its folder, and a
    label must name one folder throughout.
    """
    name = "domainnet_real"
    root = _inside(require_root(name, root, DOMAINNET_LAYOUT), name)
    if not (root / "real_train.txt").is_file():
        return image_folder(name, root)
    folder_of: dict[int, str] = {}
    splits = {}
    for split in SPLITS:
        path = root / f"real_{split}.txt"
        paths, labels, ids = [], [], []
        for line, relative, label_text in read_pairs(path):
            label, folder = parse_int(label_text, path, line), Path(relative).parent.name
            if folder_of.setdefault(label, folder) != folder:
                raise ValueError(
                    f"{path} line {line}: label {label} is class {folder_of[label]!r} elsewhere, "
                    f"here {folder!r}"
                )
            paths.append(root / relative)
            labels.append(label)
            ids.append(relative)
        if not ids:
            raise ValueError(f"dataset {name!r}: {path} lists no images")
        splits[split] = FileSplit(paths, labels, ids)
    count = len(folder_of)
    if sorted(folder_of) != list(range(count)) or len(set(folder_of.values())) != count:
        raise ValueError(f"dataset {name!r}: labels in {root} are not one per class 0..{count - 1}")
    return Dataset(name, [folder_of[i] for i in range(count)], splits)


def cub200(root: Path | None) -> Dataset:
    """CUB-200-2011 from its archive's lists, in ``images.txt`` order, as the reference reads it.

    Train: ``is_training_img`` 1 (5,994 images), test: 0 (5,794); label: class id − 1; class
    names from ``classes.txt``; ids: the paths in ``images.txt``.
    """
    base = _inside(require_root("cub200", root, CUB_LAYOUT), "CUB_200_2011")

    def table(file: str) -> dict[str, tuple[int, str]]:
        return {key: (line, value) for line, key, value in read_pairs(base / file)}

    classes, labels, flags = (
        table(f) for f in ("classes.txt", "image_class_labels.txt", "train_test_split.txt")
    )
    name_of = {parse_int(key, base / "classes.txt", line): n for key, (line, n) in classes.items()}
    if sorted(name_of) != list(range(1, len(name_of) + 1)):
        raise ValueError(f"dataset 'cub200': {base / 'classes.txt'} ids are not 1..{len(name_of)}")
    class_names = [name_of[i] for i in range(1, len(name_of) + 1)]
    chosen: dict[str, tuple[list[str], list[int]]] = {split: ([], []) for split in SPLITS}
    for image_id, (line, relative) in table("images.txt").items():
        for file, rows in (("image_class_labels.txt", labels), ("train_test_split.txt", flags)):
            if image_id not in rows:
                raise ValueError(
                    f"{base / file} lacks image id {image_id} (images.txt line {line})"
                )
        label_line, class_text = labels[image_id]
        label = parse_int(class_text, base / "image_class_labels.txt", label_line) - 1
        if not 0 <= label < len(class_names):
            raise ValueError(
                f"{base / 'image_class_labels.txt'} line {label_line}: class {class_text} is not "
                f"in classes.txt"
            )
        flag_line, flag = flags[image_id]
        if flag not in ("0", "1"):
            raise ValueError(f"{base / 'train_test_split.txt'} line {flag_line}: flag {flag!r}")
        ids, split_labels = chosen["train" if flag == "1" else "test"]
        ids.append(relative)
        split_labels.append(label)
    splits = {
        split: FileSplit([base / "images" / i for i in ids], split_labels, ids)
        for split, (ids, split_labels) in chosen.items()
    }
    return Dataset("cub200", class_names, splits)


INAT_LAYOUT = "2021_train/<category>/* and 2021_valid/<category>/* (torchvision's INaturalist)"


def inat2021(root: Path | None) -> Dataset:
    """iNaturalist 2021, species level (10,000 classes): ``2021_train`` and ``2021_valid``.

    The reference reads ``2021_train`` and a ``2021_test`` it points at the competition's
    public test archive, which carries no labels; alfm tests on ``2021_valid`` (100,000 labelled
    images, 10 per species), the labelled held-out split. Labels index the sorted category
    folders, i.e. iNaturalist's category ids (``00000_Animalia_...``), as torchvision's "full"
    target; files are read in sorted order (torchvision's order depends on the file system).
    """
    root = require_root("inat2021", root, INAT_LAYOUT)
    folders = {"train": [root / "2021_train"], "test": [root / "2021_valid"]}
    class_names, splits = folder_splits("inat2021", root, folders, INAT_LAYOUT)
    return Dataset("inat2021", class_names, splits)


register_dataset("imagenet100", imagenet100, 100)
register_dataset("domainnet_real", domainnet_real, 345)
register_dataset("cub200", cub200, 200)
register_dataset("inat2021", inat2021, 10_000)


# ---------------------------------------------------------------------------------------------
# Biomedical datasets

# The reference's class counts (ALFM/conf/dataset/<name>.yaml).
BIOMEDICAL = {
    "amyloid_beta_bal": 4,
    "amyloid_beta_unbal": 4,
    "blood_smear": 8,
    "cell_cycle": 7,
    "colon_polyps": 2,
    "colorectal_histology": 8,
    "diabetic_retinopathy": 5,
    "ham10000": 7,
    "heart_failure": 2,
    "iicbu_hela": 10,
    "iicbu_lymphoma": 3,
    "malaria": 2,
    "pap_smear_2018": 5,
    "pap_smear_2019": 4,
    "pollen": 4,
}
SPLIT_LAYOUT = (
    "manifest.csv (path,label,split with split train, val or test), or train/<class>/, "
    "optional val/<class>/ and test/<class>/ folders, or <class>/ folders alone"
)
# The reference trains on bcv's "train+val" and tests on its "test".
TRAIN_VAL_TEST = ManifestFormat(splits={"train": "train", "val": "train", "test": "test"})
# MHIST's own annotations.csv, its images in images/ (the official train/test partition).
MHIST = ManifestFormat(
    path="Image Name", label="Majority Vote Label", split="Partition", images="images"
)
BALANCE_SEED = 0


def split_layout(name: str, root: Path | None) -> Dataset:
    """A biomedical dataset from the first layout present under ``root``.

    1. ``root/manifest.csv`` (or ``root`` is the CSV): columns ``path,label,split``, split
       ``train``, ``val`` or ``test``, val joining train as the reference's ``train+val``;
    2. ``root/train/<class>/*``, optional ``root/val/<class>/*`` (joins train) and
       ``root/test/<class>/*``;
    3. ``root/<class>/*`` alone (a source without a split): within each class, in sorted path
       order, every fifth image is test (``stratified_split``, as for the embedded datasets).
    """
    root = require_root(name, root, SPLIT_LAYOUT)
    if root.is_file() or (root / "manifest.csv").is_file():
        return read_manifest(
            name, root if root.is_file() else root / "manifest.csv", TRAIN_VAL_TEST
        )
    if not any((root / folder).is_dir() for folder in ("train", "val", "test")):
        return class_folders(name, root, SPLIT_LAYOUT)
    train = [root / "train"] + ([root / "val"] if (root / "val").is_dir() else [])
    folders = {"train": train, "test": [root / "test"]}
    return Dataset(name, *folder_splits(name, root, folders, SPLIT_LAYOUT))


def colon_polyps(root: Path | None) -> Dataset:
    """MHIST: its own ``annotations.csv`` + ``images/`` where present, else ``split_layout``."""
    if root is not None and (root / "annotations.csv").is_file():
        return read_manifest("colon_polyps", root / "annotations.csv", MHIST)
    return split_layout("colon_polyps", root)


def undersampled(data: Dataset, seed: int = BALANCE_SEED) -> Dataset:
    """Each split cut to its rarest class's count: per class, the first of a seeded permutation.

    The reference balances with bcv's ``balance_classes="rand_under"`` (random undersampling,
    seed not public); alfm draws one ``numpy.random.default_rng(seed)`` through train then test,
    class by class, and keeps the chosen images in their split's order.
    """
    rng = np.random.default_rng(seed)
    splits = {}
    for name in SPLITS:
        split = data.splits[name]
        labels = np.asarray(split.labels)
        present = [c for c in range(data.num_classes) if (labels == c).any()]
        keep = min(int((labels == c).sum()) for c in present)
        chosen = [rng.permutation(np.flatnonzero(labels == c))[:keep] for c in present]
        splits[name] = split.subset(sorted(int(i) for i in np.concatenate(chosen)))
    return Dataset(data.name, data.class_names, splits)


def _biomedical(name: str) -> DatasetFactory:
    if name == "colon_polyps":
        return colon_polyps
    if name == "amyloid_beta_bal":
        return lambda root: undersampled(split_layout(name, root))
    return lambda root: split_layout(name, root)


for _name, _count in BIOMEDICAL.items():
    register_dataset(_name, _biomedical(_name), _count)
