"""Datasets registry: embedded sets and their split, image folders, manifests and their label rule,
the reference's datasets on tiny fake copies of their layouts, class-count checks, docs in sync."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alfm.cli import main
from alfm.datasets import (
    ANIMAL_MNIST_CLASSES,
    REFERENCE_CLASSES,
    BadImageError,
    canonical_label,
    create_dataset,
    list_datasets,
    stratified_split,
)
from alfm.datasets.reference import BIOMEDICAL
from alfm.registry import UnknownNameError
from alfm.store import UNKNOWN_LABEL

ROOT = Path(__file__).resolve().parents[1]

# The reference's dataset names (ALFM/src/datasets/registry.py) under alfm's names, with the
# class counts of its ALFM/conf/dataset/*.yaml (cub200, inat2021: its loaders).
REFERENCE_COUNTS = {
    "cifar10": 10,
    "cifar100": 100,
    "food101": 101,
    "stanford_cars": 196,
    "fgvc_aircraft": 100,
    "dtd": 47,
    "oxford_pets": 37,
    "flowers102": 102,
    "svhn": 10,
    "places365": 365,
    "cub200": 200,
    "inat2021": 10_000,
    "imagenet100": 100,
    "domainnet_real": 345,
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
    "patch_camelyon": 2,
    "pollen": 4,
}


def _png(path: Path, value: int = 0, size: tuple[int, int] = (3, 2)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(path)
    return path


def _class_tree(folder: Path, classes: list[str], per_class: int) -> None:
    """``folder/<class>/<class>_<i>.png``: ``per_class`` tiny images each."""
    for value, cls in enumerate(classes):
        for i in range(per_class):
            _png(folder / cls / f"{cls}_{i}.png", value)


def test_registry_names_and_unknown():
    names = list_datasets()
    for name in ("animal_mnist", "mnist5k", "digits", "imagefolder", "manifest", *REFERENCE_COUNTS):
        assert name in names
    with pytest.raises(UnknownNameError, match="unknown dataset 'animal_mnst'.*animal_mnist"):
        create_dataset("animal_mnst")


def test_reference_class_counts():
    assert REFERENCE_CLASSES == REFERENCE_COUNTS


def _documented_names(text: str) -> list[str]:
    return re.findall(r"`([a-z0-9_]+)`", text)


def test_every_dataset_documented_with_its_count(capsys):
    """``alfm list datasets`` = the registry = the README's list = docs/DATASETS.md's tables."""
    assert main(["list", "datasets"]) == 0
    listed = capsys.readouterr().out.split()
    assert listed == list_datasets()
    readme = (ROOT / "README.md").read_text()
    paragraph = readme[readme.index("- Datasets (`alfm list datasets`") :].split("\n\n")[0]
    assert "docs/DATASETS.md" in paragraph
    assert set(listed) <= set(_documented_names(paragraph))
    rows = re.findall(
        r"^\| `([a-z0-9_]+)` \| ([0-9,]+|any) \|", (ROOT / "docs/DATASETS.md").read_text(), re.M
    )
    assert sorted(name for name, _ in rows) == listed
    documented = {name: count.replace(",", "") for name, count in rows}
    assert {name: int(documented[name]) for name in REFERENCE_CLASSES} == REFERENCE_CLASSES


# ---------------------------------------------------------------------------------------------
# Embedded


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


# ---------------------------------------------------------------------------------------------
# Image folders and manifests


@pytest.mark.parametrize("test_folder", ["test", "val"])
def test_image_folder(image_files, test_folder):
    root, _ = image_files
    if test_folder == "val":
        (root / "test").rename(root / "val")
    data = create_dataset("imagefolder", root)
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
    (root / "test" / "bird").rmdir()
    (root / "test").rename(root / "other")
    with pytest.raises(FileNotFoundError, match="lacks test/"):
        create_dataset("imagefolder", root)


def _write_manifest(root, records, extra="", name="manifest.csv", header="path,label,split"):
    lines = [header] + [",".join(map(str, record)) for record in records]
    csv_path = root / name
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


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("3", "3"),
        ("03", "3"),
        ("3.0", "3"),
        ("+3", "3"),
        (" 3 ", "3"),
        ("3.", "3"),
        ("-0", "0"),
        ("2.50", "2.5"),
        (".5", "0.5"),
        ("-02.50", "-2.5"),
        ("0.1000000000000000000000000000001", "0.1000000000000000000000000000001"),
        ("1e3", "1e3"),
        (" cat ", "cat"),
        ("G2", "G2"),
    ],
)
def test_canonical_label(text, canonical):
    assert canonical_label(text) == canonical


def test_manifest_numeric_labels_are_one_class_per_value(image_files):
    """Issue 12 defect 6: ``3``, ``3.0`` and ``03`` were three classes."""
    root, records = image_files
    spellings = iter(["3", "3.0", "03", " 3", "+3", "3."] * 2)
    relabeled = [(p, next(spellings) if c == "cat" else "10.00", s) for p, c, s in records]
    data = create_dataset("manifest", _write_manifest(root, relabeled))
    assert data.class_names == ["3", "10"]
    assert [label for _, label, _ in data.split("test")] == [0, 0, 1, 1]


def test_manifest_empty_labels_are_an_error_naming_the_lines(image_files):
    """Issue 12 defect 6: an empty label became a class of its own."""
    root, records = image_files
    # lines 1 (header), 2..13 the records; blank out records 2 and 6 (lines 3 and 7), and "nan"
    records[1] = (records[1][0], "", records[1][2])
    records[5] = (records[5][0], "  ", records[5][2])
    records[8] = (records[8][0], "NaN", records[8][2])
    with pytest.raises(ValueError, match=r"no label on line\(s\) 3, 7, 10; every row") as info:
        create_dataset("manifest", _write_manifest(root, records))
    assert "\n" not in str(info.value)
    records = [(p, "", s) for p, _, s in records]
    with pytest.raises(ValueError, match=r"line\(s\) 2, 3, 4, .*, 11, \.\.\. \(12 in all\)"):
        create_dataset("manifest", _write_manifest(root, records))


def test_manifest_errors(image_files):
    root, records = image_files
    bad_split = _write_manifest(root, records, extra="train/cat/cat0.png,cat,holdout\n")
    with pytest.raises(ValueError, match="line 14: split 'holdout' is not train or test"):
        create_dataset("manifest", bad_split)
    val = _write_manifest(root, records, extra="train/cat/cat0.png,cat,val\n")
    with pytest.raises(ValueError, match="split 'val' is not train or test"):
        create_dataset("manifest", val)
    no_path = _write_manifest(root, records, extra=",cat,train\n")
    with pytest.raises(ValueError, match=r"no path on line\(s\) 14"):
        create_dataset("manifest", no_path)
    short_row = _write_manifest(root, records, extra="train/cat/cat0.png,,train\nx.png,cat\n")
    with pytest.raises(ValueError, match="line 15: split '' is not train or test"):
        create_dataset("manifest", short_row)
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


# ---------------------------------------------------------------------------------------------
# torchvision datasets, PCAM


def test_torchvision_needs_local_files(tmp_path):
    with pytest.raises(ValueError, match="'cifar10' needs --root"):
        create_dataset("cifar10")
    with pytest.raises(FileNotFoundError, match="root .*nowhere does not exist"):
        create_dataset("food101", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="CIFAR10 found no data.*never downloads"):
        create_dataset("cifar10", tmp_path)
    with pytest.raises(FileNotFoundError, match="PCAM found no data"):
        create_dataset("patch_camelyon", tmp_path)


def test_patch_camelyon_reads_pcam_h5(tmp_path):
    h5py = pytest.importorskip("h5py")
    labels = {"train": [1, 0, 1], "test": [0, 1]}
    for split, ys in labels.items():
        stem = tmp_path / "pcam" / f"camelyonpatch_level_2_split_{split}"
        stem.parent.mkdir(exist_ok=True)
        images = np.stack([np.full((4, 4, 3), 10 * i, dtype=np.uint8) for i in range(len(ys))])
        with h5py.File(f"{stem}_x.h5", "w") as f:
            f["x"] = images
        with h5py.File(f"{stem}_y.h5", "w") as f:
            f["y"] = np.array(ys, dtype=np.uint8).reshape(-1, 1, 1, 1)
    data = create_dataset("patch_camelyon", tmp_path)
    assert data.class_names == ["no_metastasis", "metastasis"]
    train, test = data.split("train"), data.split("test")
    assert (len(train), len(test)) == (3, 2)
    image, label, sample_id = train[2]
    assert (label, sample_id, image.size, image.mode) == (1, "train/0000002", (4, 4), "RGB")
    assert np.asarray(image)[0, 0, 0] == 20
    assert [test[i][1] for i in range(2)] == [0, 1]


# ---------------------------------------------------------------------------------------------
# The reference's natural datasets


def _mismatch(name: str, root: Path, expected: int, found: int) -> str:
    return re.escape(
        f"dataset {name!r} at {root}: expected {expected} classes (the reference's count), "
        f"found {found}"
    )


def test_imagenet100_in_the_references_folder(tmp_path):
    classes = [f"n{i:08d}" for i in range(100)]
    _class_tree(tmp_path / "imagenet100" / "train", classes, 1)
    _class_tree(tmp_path / "imagenet100" / "val", classes[:3], 1)
    data = create_dataset("imagenet100", tmp_path)
    assert data.class_names == classes
    assert (len(data.split("train")), len(data.split("test"))) == (100, 3)
    assert data.split("test")[2][1:] == (2, "val/n00000002/n00000002_0.png")


def test_class_count_mismatch_is_one_line(image_files):
    root, _ = image_files
    with pytest.raises(ValueError, match=_mismatch("imagenet100", root, 100, 2)) as info:
        create_dataset("imagenet100", root)
    assert "\n" not in str(info.value)


def _write_cub(root: Path, num_classes: int = 200) -> Path:
    """A CUB_200_2011 archive layout: image i of class c is training when i is even."""
    base = root / "CUB_200_2011"
    base.mkdir(parents=True)
    classes = [f"{c:03d}.Bird_{c}" for c in range(1, num_classes + 1)]
    images, labels, flags = [], [], []
    for c, cls in enumerate(classes, start=1):
        for i in range(2):
            image_id = len(images) + 1
            images.append(f"{image_id} {cls}/Bird_{c}_{i}.jpg")
            labels.append(f"{image_id} {c}")
            flags.append(f"{image_id} {1 - i}")
    for file, lines in (
        ("classes.txt", [f"{c} {n}" for c, n in enumerate(classes, start=1)]),
        ("images.txt", images),
        ("image_class_labels.txt", labels),
        ("train_test_split.txt", flags),
    ):
        (base / file).write_text("\n".join(lines) + "\n")
    return base


def test_cub200(tmp_path):
    base = _write_cub(tmp_path)
    _png(base / "images" / "003.Bird_3" / "Bird_3_1.jpg", 7)
    for root in (tmp_path, base):  # the folder holding CUB_200_2011/ or the archive folder
        data = create_dataset("cub200", root)
    assert data.num_classes == 200 and data.class_names[:2] == ["001.Bird_1", "002.Bird_2"]
    train, test = data.split("train"), data.split("test")
    assert (len(train), len(test)) == (200, 200)
    assert train.ids[:2] == ["001.Bird_1/Bird_1_0.jpg", "002.Bird_2/Bird_2_0.jpg"]
    image, label, sample_id = test[2]
    assert (label, sample_id, image.size) == (2, "003.Bird_3/Bird_3_1.jpg", (3, 2))
    assert test.labels == list(range(200))


def test_cub200_errors(tmp_path):
    base = _write_cub(tmp_path / "few", num_classes=3)
    with pytest.raises(ValueError, match=_mismatch("cub200", tmp_path / "few", 200, 3)):
        create_dataset("cub200", tmp_path / "few")
    (base / "image_class_labels.txt").write_text("1 1\n2 x\n")
    with pytest.raises(ValueError, match="image_class_labels.txt line 2: 'x' is not an integer"):
        create_dataset("cub200", base)
    (base / "image_class_labels.txt").write_text("1 1\n")
    with pytest.raises(ValueError, match="image_class_labels.txt lacks image id 2"):
        create_dataset("cub200", base)
    (base / "images.txt").unlink()
    with pytest.raises(FileNotFoundError, match="missing list file .*images.txt"):
        create_dataset("cub200", base)


def test_inat2021(tmp_path, monkeypatch):
    categories = [f"{i:05d}_Animalia_Chordata_Aves_Order_Family_Genus_species{i}" for i in range(3)]
    _class_tree(tmp_path / "2021_train", categories, 2)
    _class_tree(tmp_path / "2021_valid", categories, 1)
    with pytest.raises(ValueError, match=_mismatch("inat2021", tmp_path, 10_000, 3)):
        create_dataset("inat2021", tmp_path)
    monkeypatch.setitem(REFERENCE_CLASSES, "inat2021", 3)
    data = create_dataset("inat2021", tmp_path)
    assert data.class_names == categories
    train, test = data.split("train"), data.split("test")
    assert (len(train), len(test)) == (6, 3)
    assert train.labels == [0, 0, 1, 1, 2, 2]
    assert test[1][1:] == (1, f"2021_valid/{categories[1]}/{categories[1]}_0.png")
    (tmp_path / "2021_valid").rename(tmp_path / "2021_test")
    with pytest.raises(FileNotFoundError, match="lacks 2021_valid/"):
        create_dataset("inat2021", tmp_path)


def test_domainnet_real_official_lists(tmp_path):
    base = tmp_path / "domainnet_real"
    classes = [f"class{c:03d}" for c in range(345)]
    for split, per_class in (("train", 2), ("test", 1)):
        lines = [
            f"real/{n}/real_{c}_{i}.jpg {c}"
            for c, n in enumerate(classes)
            for i in range(per_class)
        ]
        (base / f"real_{split}.txt").parent.mkdir(exist_ok=True)
        (base / f"real_{split}.txt").write_text("\n".join(lines) + "\n")
    _png(base / "real" / "class001" / "real_1_0.jpg", 5)
    data = create_dataset("domainnet_real", tmp_path)
    assert data.class_names == classes
    train, test = data.split("train"), data.split("test")
    assert (len(train), len(test)) == (690, 345)
    assert test[1][1:] == (1, "real/class001/real_1_0.jpg")
    (base / "real_test.txt").write_text("real/class001/x.jpg 0\n")
    with pytest.raises(ValueError, match="line 1: label 0 is class 'class000' elsewhere"):
        create_dataset("domainnet_real", base)
    (base / "real_test.txt").write_text("real/class000/x.jpg 0\n")
    (base / "real_train.txt").write_text("real/class000/y.jpg 0\nreal/class002/y.jpg 2\n")
    with pytest.raises(ValueError, match="are not one per class 0..1"):
        create_dataset("domainnet_real", base)


# ---------------------------------------------------------------------------------------------
# The reference's biomedical datasets


def _classes(name: str) -> list[str]:
    return [f"{name}_class{c}" for c in range(REFERENCE_COUNTS[name])]


@pytest.mark.parametrize("name", sorted(BIOMEDICAL))
def test_biomedical_split_folders(tmp_path, name):
    """train/ + val/ (joining train) + test/ with the reference's class count; one more fails."""
    classes = _classes(name)
    _class_tree(tmp_path / "train", classes, 2)
    _class_tree(tmp_path / "val", classes, 1)
    _class_tree(tmp_path / "test", classes, 1)
    data = create_dataset(name, tmp_path)
    assert data.class_names == classes
    train, test = data.split("train"), data.split("test")
    k = len(classes)
    assert (len(train), len(test)) == (3 * k, k)
    assert train.labels == [c for c in range(k) for _ in range(2)] + list(range(k))
    assert train.ids[2 * k] == f"val/{classes[0]}/{classes[0]}_0.png"
    image, label, sample_id = test[k - 1]
    assert (label, sample_id) == (k - 1, f"test/{classes[-1]}/{classes[-1]}_0.png")
    assert np.asarray(image)[0, 0, 0] == k - 1
    _class_tree(tmp_path / "train", ["zzz_extra"], 1)
    with pytest.raises(ValueError, match=_mismatch(name, tmp_path, k, k + 1)):
        create_dataset(name, tmp_path)


def test_biomedical_class_folders_use_the_every_fifth_rule(tmp_path):
    """``malaria/<class>/*`` without a split: within each class every fifth sorted file is test."""
    _class_tree(tmp_path, ["Parasitized"], 7)
    _class_tree(tmp_path, ["Uninfected"], 11)
    data = create_dataset("malaria", tmp_path)
    assert data.class_names == ["Parasitized", "Uninfected"]
    train, test = data.split("train"), data.split("test")
    assert (len(train), len(test)) == (15, 3)
    assert test.ids == [  # sorted as strings: Uninfected_0, _1, _10, _2, _3 (5th), ..., _8 (10th)
        "Parasitized/Parasitized_4.png",
        "Uninfected/Uninfected_3.png",
        "Uninfected/Uninfected_8.png",
    ]
    assert test.labels == [0, 1, 1] and set(train.ids).isdisjoint(test.ids)


def test_biomedical_manifest_val_joins_train_and_labels_normalise(tmp_path):
    """diabetic_retinopathy grades written as 0.0..4.0 and 0..4 are 5 classes; val joins train."""
    rows = []
    for grade in range(5):
        for split, spelling in (("train", f"{grade}.0"), ("val", f"0{grade}"), ("test", grade)):
            rows.append(
                (_png(tmp_path / "img" / f"{split}_{grade}.png", grade).name, spelling, split)
            )
    rows = [(f"img/{path}", label, split) for path, label, split in rows]
    csv_path = _write_manifest(tmp_path, rows)
    for root in (tmp_path, csv_path):
        data = create_dataset("diabetic_retinopathy", root)
        assert data.class_names == ["0", "1", "2", "3", "4"]
        train, test = data.split("train"), data.split("test")
        assert (len(train), len(test)) == (10, 5)
        assert train.labels == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
        assert test[3][1:] == (3, "img/test_3.png")
    rows[4] = (rows[4][0], "", rows[4][2])
    with pytest.raises(ValueError, match=r"manifest .*manifest.csv: no label on line\(s\) 6;"):
        create_dataset("diabetic_retinopathy", _write_manifest(tmp_path, rows))
    rows[4] = (rows[4][0], "1", "dev")
    with pytest.raises(ValueError, match="line 6: split 'dev' is not train or val or test"):
        create_dataset("diabetic_retinopathy", _write_manifest(tmp_path, rows))


def test_colon_polyps_reads_mhist_annotations(tmp_path):
    header = (
        "Image Name,Majority Vote Label,Number of Annotators who Selected SSA (Out of 7),Partition"
    )
    records = [
        ("MHIST_aaa.png", "SSA", 6, "train"),
        ("MHIST_aab.png", "HP", 1, "train"),
        ("MHIST_aac.png", "HP", 0, "test"),
        ("MHIST_aad.png", "SSA", 5, "test"),
        ("MHIST_aae.png", "HP", 2, "train"),
    ]
    for path, *_ in records:
        _png(tmp_path / "images" / path)
    _write_manifest(tmp_path, records, name="annotations.csv", header=header)
    data = create_dataset("colon_polyps", tmp_path)
    assert data.class_names == ["HP", "SSA"]
    train, test = data.split("train"), data.split("test")
    assert train.ids == ["MHIST_aaa.png", "MHIST_aab.png", "MHIST_aae.png"]
    assert (train.labels, test.labels) == ([1, 0, 0], [0, 1])
    assert test[1][0].size == (3, 2)
    records.append(("MHIST_aaf.png", "TA", 3, "test"))
    _write_manifest(tmp_path, records, name="annotations.csv", header=header)
    with pytest.raises(ValueError, match=_mismatch("colon_polyps", tmp_path, 2, 3)):
        create_dataset("colon_polyps", tmp_path)


def test_amyloid_beta_balanced_undersamples_each_split(tmp_path):
    """bal: every class cut to the split's rarest; unbal: all; both read the same files."""
    counts = {"train": [6, 3, 4, 5], "test": [2, 4, 2, 3]}
    classes = ["cored", "diffuse", "caa", "negative"]
    for split, per_class in counts.items():
        for cls, n in zip(classes, per_class, strict=True):
            _class_tree(tmp_path / split, [cls], n)
    unbal = create_dataset("amyloid_beta_unbal", tmp_path)
    bal = create_dataset("amyloid_beta_bal", tmp_path)
    assert bal.class_names == unbal.class_names == sorted(classes)
    for split, rarest in (("train", 3), ("test", 2)):
        full, cut = unbal.split(split), bal.split(split)
        assert len(full) == sum(counts[split])
        assert np.bincount(cut.labels).tolist() == [rarest] * 4
        assert set(cut.ids) < set(full.ids) and cut.ids == sorted(cut.ids)  # folder order
    again = create_dataset("amyloid_beta_bal", tmp_path)
    assert again.split("train").ids == bal.split("train").ids  # seeded: the same every time


def test_biomedical_layout_errors(tmp_path):
    with pytest.raises(ValueError, match="'pollen' needs --root: manifest.csv"):
        create_dataset("pollen")
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match="'pollen': .* lacks test/"):
        create_dataset("pollen", tmp_path)
    (tmp_path / "train").rmdir()
    with pytest.raises(FileNotFoundError, match="no images in class folders"):
        create_dataset("pollen", tmp_path)


# ---------------------------------------------------------------------------------------------
# The unlabeled mode (alfm label): manifest split "unlabeled", image folder unlabeled/


def test_manifest_unlabeled_rows_join_train_with_unknown_labels(image_files):
    root, records = image_files
    rows = [(p, c, s) for p, c, s in records if s == "test"]  # an evaluation split only
    rows += [(p, "", "unlabeled") for p, _, s in records if s == "train"]
    data = create_dataset("manifest", _write_manifest(root, rows))
    assert data.class_names == ["cat", "dog"]
    train, test = data.split("train"), data.split("test")
    assert [label for _, label, _ in train] == [UNKNOWN_LABEL] * 8
    assert [label for _, label, _ in test] == [0, 0, 1, 1]
    assert train[0][2] == "train/cat/cat0.png"


def test_manifest_unlabeled_without_any_label_or_test_rows(image_files):
    root, records = image_files
    rows = [(p, "", "unlabeled") for p, _, _ in records]
    data = create_dataset("manifest", _write_manifest(root, rows))
    assert data.class_names == [] and len(data.split("test")) == 0
    assert len(data.split("train")) == 12


def test_manifest_unlabeled_rule_errors(image_files):
    root, records = image_files
    rows = [(p, c, s) for p, c, s in records] + [("train/cat/cat0.png", "cat", "unlabeled")]
    with pytest.raises(ValueError, match=r"split 'unlabeled' with a label on line\(s\) 14; leave"):
        create_dataset("manifest", _write_manifest(root, rows))
    rows = [(p, "" if i == 0 else c, s) for i, (p, c, s) in enumerate(records)]
    with pytest.raises(ValueError, match=r"line\(s\) 2; every row needs .* or split 'unlabeled'"):
        create_dataset("manifest", _write_manifest(root, rows))
    bad = _write_manifest(root, records, extra="x.png,,holdout\n")
    with pytest.raises(ValueError, match="split 'holdout' is not train or test or unlabeled"):
        create_dataset("manifest", bad)


def test_image_folder_unlabeled(image_files):
    root, _ = image_files
    (root / "train").rename(root / "unlabeled")
    data = create_dataset("imagefolder", root)
    assert data.class_names == ["cat", "dog"]  # from test/
    train = data.split("train")
    assert len(train) == 8 and {label for _, label, _ in train} == {UNKNOWN_LABEL}
    assert train[0][2] == "unlabeled/cat/cat0.png"
    assert [label for _, label, _ in data.split("test")] == [0, 0, 1, 1]
    shutil.rmtree(root / "test")
    alone = create_dataset("imagefolder", root)
    assert alone.class_names == [] and len(alone.split("test")) == 0
    for folder in (root / "unlabeled").rglob("*"):
        if folder.is_file():
            folder.unlink()
    with pytest.raises(FileNotFoundError, match="no images under"):
        create_dataset("imagefolder", root)
