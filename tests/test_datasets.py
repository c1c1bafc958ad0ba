"""Datasets registry: embedded sets and their split, image folders, manifests, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from alfm.datasets import (
    ANIMAL_MNIST_CLASSES,
    BadImageError,
    create_dataset,
    list_datasets,
    stratified_split,
)
from alfm.registry import UnknownNameError


def test_registry_names_and_unknown():
    names = list_datasets()
    for name in ("animal_mnist", "mnist5k", "digits", "cifar10", "imagefolder", "manifest"):
        assert name in names
    with pytest.raises(UnknownNameError, match="unknown dataset 'animal_mnst'.*animal_mnist"):
        create_dataset("animal_mnst")


def test_stratified_split_hand_computed():
    labels = np.array([0, 1, 0, 0, 1, 0, 0, 1, 1, 1, 0, 0, 0, 0])
    # class 0 sits at 0,2,3,5,6,10,11,12,13: its 5th and 10th members are 6 and 13 (no 10th)
    # class 1 sits at 1,4,7,8,9: its 5th member is 9
    assert list(np.flatnonzero(stratified_split(labels))) == [6, 9]


def test_animal_mnist():
    data = create_dataset("animal_mnist")
    train, test = data.split("train"), data.split("test")
    assert (len(train), len(test)) == (8000, 2000)
    assert data.class_names == ANIMAL_MNIST_CLASSES and data.num_classes == 10
    assert np.bincount(test.labels).tolist() == [200] * 10
    ids = set(train.ids) | set(test.ids)
    assert len(ids) == 10000
    image, label, sample_id = test[0]
    assert image.size == (28, 28) and image.mode == "L"
    assert (label, sample_id) == (0, "00004")  # the fifth image of class 0 (the first is 00000)
    with pytest.raises(ValueError, match="no split 'val'"):
        data.split("val")


@pytest.mark.parametrize(("name", "sizes"), [("digits", (1442, 355)), ("mnist5k", (4000, 1000))])
def test_other_embedded(name, sizes):
    data = create_dataset(name)
    assert (len(data.split("train")), len(data.split("test"))) == sizes
    image, _, _ = data.split("train")[0]
    assert image.mode == "L" and np.asarray(image).max() > 200


@pytest.mark.parametrize("test_folder", ["test", "val"])
def test_image_folder(image_files, test_folder):
    root, _ = image_files
    if test_folder == "val":
        (root / "test").rename(root / "val")
    data = create_dataset("imagenet100", root)
    assert data.class_names == ["cat", "dog"]
    train, test = data.split("train"), data.split("test")
    assert (len(train), len(test)) == (8, 4)
    image, label, sample_id = test[3]
    assert (label, sample_id) == (1, f"{test_folder}/dog/dog1.png")
    assert image.size == (24, 21)


def test_image_folder_errors(tmp_path, image_files):
    with pytest.raises(ValueError, match="needs --root"):
        create_dataset("imagefolder")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_dataset("imagefolder", tmp_path / "missing")
    root, _ = image_files
    (root / "test" / "bird").mkdir()
    with pytest.raises(ValueError, match="bird has no counterpart"):
        create_dataset("imagefolder", root)


def _write_manifest(root, records, extra=""):
    lines = ["path,label,split"] + [f"{p},{c},{s}" for p, c, s in records]
    csv_path = root / "manifest.csv"
    csv_path.write_text("\n".join(lines) + "\n" + extra)
    return csv_path


def test_manifest(image_files):
    root, records = image_files
    csv_path = _write_manifest(root, records)
    for where in (csv_path, root):  # the CSV itself or the folder holding manifest.csv
        data = create_dataset("manifest", where)
        assert data.class_names == ["cat", "dog"]
        assert (len(data.split("train")), len(data.split("test"))) == (8, 4)
    image, label, sample_id = data.split("train")[5]
    assert (label, sample_id) == (1, "train/dog/dog1.png") and image.mode == "RGB"


def test_manifest_integer_labels_sort_numerically(image_files):
    root, records = image_files
    relabeled = [(p, "10" if c == "cat" else "9", s) for p, c, s in records]
    data = create_dataset("manifest", _write_manifest(root, relabeled))
    assert data.class_names == ["9", "10"]
    assert data.split("train")[0][1] == 1  # a cat, label "10"


def test_manifest_errors(image_files):
    root, records = image_files
    bad_split = _write_manifest(root, records, extra="train/cat/cat0.png,cat,holdout\n")
    with pytest.raises(ValueError, match="line 14: split 'holdout'"):
        create_dataset("manifest", bad_split)
    (root / "m.csv").write_text("file,label,split\n")
    with pytest.raises(ValueError, match="lacks column.*path"):
        create_dataset("manifest", root / "m.csv")


def test_corrupt_image_names_the_file(image_files):
    root, records = image_files
    (root / "train" / "cat" / "cat2.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    data = create_dataset("manifest", _write_manifest(root, records))
    with pytest.raises(BadImageError, match="cannot read image .*cat2.png") as info:
        data.split("train")[2]
    assert info.value.sample_id == "train/cat/cat2.png"


def test_torchvision_needs_local_files(tmp_path):
    with pytest.raises(ValueError, match="'cifar10' needs --root"):
        create_dataset("cifar10")
    with pytest.raises(FileNotFoundError, match="root .*nowhere does not exist"):
        create_dataset("food101", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="CIFAR10 found no data.*never downloads"):
        create_dataset("cifar10", tmp_path)
