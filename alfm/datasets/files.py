"""Images on disk: image folders, class folders, CSV manifests (and their label rule), list files.

- ``imagefolder``: ``root/train/<class>/*`` and ``root/test/<class>/*`` (or ``root/val/<class>/*``).
- ``manifest``: a CSV file with columns ``path,label,split`` (split ``train`` or ``test``);
  ``root`` is the CSV file or a folder holding ``manifest.csv``; relative paths resolve against
  the CSV's folder.

Both have an unlabeled mode, for ``alfm label``: images under ``root/unlabeled/`` (any depth), or
manifest rows of split ``unlabeled`` (label left empty), join the train split with label
``UNKNOWN_LABEL``; the labeled train and test folders (rows) are then optional, the test split
serving as an evaluation split.

Folder class names sort as plain strings (as torchvision's ``ImageFolder`` does); manifest labels
follow ``canonical_label`` and sort numbers first, by value.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset as TorchDataset

from alfm.datasets.base import (
    SPLITS,
    BadImageError,
    Dataset,
    Sample,
    register_dataset,
    require_root,
    stratified_split,
)
from alfm.store import UNKNOWN_LABEL

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
UNLABELED = "unlabeled"  # the folder / manifest split of images whose class is unknown


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

    def subset(self, positions: Sequence[int]) -> FileSplit:
        """The samples at ``positions``, in that order."""
        return FileSplit(
            [self.paths[i] for i in positions],
            [self.labels[i] for i in positions],
            [self.ids[i] for i in positions],
        )


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (any depth), sorted by path."""
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _subfolders(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir())


def folder_splits(
    name: str, root: Path, folders: Mapping[str, Sequence[Path]], layout: str
) -> tuple[list[str], dict[str, FileSplit]]:
    """Class-per-subfolder image folders: each split joins its ``folders`` in order.

    Class names are the sorted subfolders of the first folder (train's, where given); every other
    folder's classes must be among them. Ids are paths relative to ``root``.
    """
    for folder in (f for parts in folders.values() for f in parts):
        if not folder.is_dir():
            raise FileNotFoundError(f"dataset {name!r}: {root} lacks {folder.name}/ ({layout})")
    first = next(iter(folders.values()))[0]
    class_names = [d.name for d in _subfolders(first)]
    index = {c: i for i, c in enumerate(class_names)}
    splits = {}
    for split, parts in folders.items():
        paths, labels = [], []
        for folder in parts:
            for cls_dir in _subfolders(folder):
                if cls_dir.name not in index:
                    raise ValueError(
                        f"dataset {name!r}: class folder {cls_dir} has no counterpart in {first}"
                    )
                files = list_images(cls_dir)
                paths += files
                labels += [index[cls_dir.name]] * len(files)
        if not paths:
            raise FileNotFoundError(
                f"dataset {name!r}: no images under {', '.join(map(str, parts))} ({layout})"
            )
        splits[split] = FileSplit(paths, labels, [p.relative_to(root).as_posix() for p in paths])
    return class_names, splits


IMAGE_FOLDER_LAYOUT = (
    "a folder with train/<class>/ and test/<class>/ (or val/), or unlabeled/ with optional "
    "train/<class>/ and test/<class>/"
)


def image_folder(name: str, root: Path | None) -> Dataset:
    """ImageNet-style folders: ``root/train/<class>/*`` and ``root/test|val/<class>/*``.

    With ``root/unlabeled/``, its images (any depth, ids ``unlabeled/...``) join the train split
    with ``UNKNOWN_LABEL``; ``train/`` and ``test/`` are then optional, and the class names those
    of the class folders present (none without them: name them in ``alfm label init``).
    """
    root = require_root(name, root, IMAGE_FOLDER_LAYOUT)
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), root / "test")
    folders = {"train": [root / "train"], "test": [test_dir]}
    if not (root / UNLABELED).is_dir():
        class_names, splits = folder_splits(name, root, folders, IMAGE_FOLDER_LAYOUT)
        return Dataset(name, class_names, splits)
    present = {split: parts for split, parts in folders.items() if parts[0].is_dir()}
    class_names, splits = (
        folder_splits(name, root, present, IMAGE_FOLDER_LAYOUT) if present else ([], {})
    )
    unlabeled = list_images(root / UNLABELED)
    if not unlabeled:
        raise FileNotFoundError(f"dataset {name!r}: no images under {root / UNLABELED}")
    train = splits.get("train", FileSplit([], [], []))
    splits["train"] = FileSplit(
        train.paths + unlabeled,
        train.labels + [UNKNOWN_LABEL] * len(unlabeled),
        train.ids + [p.relative_to(root).as_posix() for p in unlabeled],
    )
    splits.setdefault("test", FileSplit([], [], []))
    return Dataset(name, class_names, splits)


def class_folders(name: str, root: Path, layout: str) -> Dataset:
    """``root/<class>/*`` without a split: ``stratified_split`` over each class's sorted files."""
    class_names = [d.name for d in _subfolders(root)]
    paths, labels = [], []
    for label, cls in enumerate(class_names):
        files = list_images(root / cls)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise FileNotFoundError(
            f"dataset {name!r}: no images in class folders under {root} ({layout})"
        )
    everything = FileSplit(paths, labels, [p.relative_to(root).as_posix() for p in paths])
    test = stratified_split(labels)
    splits = {
        "train": everything.subset([i for i, t in enumerate(test) if not t]),
        "test": everything.subset([i for i, t in enumerate(test) if t]),
    }
    return Dataset(name, class_names, splits)


# ---------------------------------------------------------------------------------------------
# CSV manifests

_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)")
MISSING_LABELS = ("", "nan")  # compared after stripping, case-insensitively
MAX_LINES_SHOWN = 10


def canonical_label(text: str) -> str:
    """A manifest label's class name: stripped, and a decimal number written canonically.

    Rule: a label that reads as a plain decimal number (sign, digits, optional fraction; no
    exponent) names the class of its value: ``3``, ``03``, ``+3``, ``3.0`` and ``3.`` are class
    ``3``; ``2.50`` is ``2.5``. Spreadsheets and pandas turn integer columns into ``3.0`` and keep
    or drop leading zeros at will, so equal values must be one class. Normalising never has to
    guess: exact decimal arithmetic gives each value a single spelling, so no label is rejected.
    Anything else (``cat``, ``1e3``, ``G2``) is its stripped text, compared exactly.
    """
    text = text.strip()
    if not _DECIMAL.fullmatch(text):
        return text
    value = Decimal(text)
    if value == value.to_integral_value():
        return str(int(value))
    return format(value, "f").rstrip("0")  # exact: a fractional digit is nonzero


def _line_list(lines: Sequence[int]) -> str:
    shown = ", ".join(map(str, lines[:MAX_LINES_SHOWN]))
    more = f", ... ({len(lines)} in all)" if len(lines) > MAX_LINES_SHOWN else ""
    return shown + more


def manifest_labels(
    raw: Sequence[str],
    lines: Sequence[int],
    source: Path,
    unlabeled: Sequence[bool] | None = None,
) -> list[str | None]:
    """The canonical labels of a manifest's rows (``lines``: their CSV line numbers); None for
    the rows flagged ``unlabeled`` (split ``unlabeled``), whose class is unknown.

    A labeled row without a label (empty, blank, or ``nan``: a missing value passed through
    ``str``), and an unlabeled row with one, are errors listing every such line: this is the one
    place that decides which rows must be labeled.
    """
    labels = [canonical_label(text) for text in raw]
    flags = unlabeled if unlabeled is not None else [False] * len(labels)
    empty = [label.lower() in MISSING_LABELS for label in labels]
    missing = [line for line, e, u in zip(lines, empty, flags, strict=True) if e and not u]
    if missing:
        raise ValueError(
            f"manifest {source}: no label on line(s) {_line_list(missing)}; every row needs a "
            f"class label, or split {UNLABELED!r} where its class is unknown"
        )
    labeled = [line for line, e, u in zip(lines, empty, flags, strict=True) if u and not e]
    if labeled:
        raise ValueError(
            f"manifest {source}: split {UNLABELED!r} with a label on line(s) "
            f"{_line_list(labeled)}; leave the label empty or give the row split train"
        )
    return [None if u else label for label, u in zip(labels, flags, strict=True)]


def class_order(labels: Sequence[str]) -> list[str]:
    """Distinct canonical labels: numbers first, by value, then the rest as sorted strings."""

    def key(label: str) -> tuple[int, Decimal, str]:
        numeric = _DECIMAL.fullmatch(label) is not None
        return (0, Decimal(label), "") if numeric else (1, Decimal(0), label)

    return sorted(set(labels), key=key)


@dataclass(frozen=True)
class ManifestFormat:
    """A manifest's column names, its split values (→ our split), its images' folder, and
    whether split ``unlabeled`` (train rows of unknown class) is allowed."""

    path: str = "path"
    label: str = "label"
    split: str = "split"
    splits: Mapping[str, str] = field(default_factory=lambda: {s: s for s in SPLITS})
    images: str = ""  # paths resolve against this folder, relative to the CSV's
    unlabeled: bool = False


def read_manifest(name: str, csv_path: Path, form: ManifestFormat = ManifestFormat()) -> Dataset:
    """A dataset from a CSV manifest; errors name the CSV and the offending lines."""
    if not csv_path.is_file():
        raise FileNotFoundError(f"dataset {name!r}: no CSV file at {csv_path}")
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle, restval="")  # a short row's missing fields are empty
        missing = {form.path, form.label, form.split} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"manifest {csv_path} lacks column(s) {', '.join(sorted(missing))}")
        rows = [(reader.line_num, row) for row in reader]
    lines = [line for line, _ in rows]
    targets = {**form.splits, **({UNLABELED: "train"} if form.unlabeled else {})}
    allowed = " or ".join(targets)
    for line, row in rows:
        if row[form.split].strip() not in targets:
            raise ValueError(
                f"manifest {csv_path} line {line}: split {row[form.split]!r} is not {allowed}"
            )
    no_path = [line for line, row in rows if not row[form.path].strip()]
    if no_path:
        raise ValueError(f"manifest {csv_path}: no path on line(s) {_line_list(no_path)}")
    unknown = [row[form.split].strip() == UNLABELED for _, row in rows]
    labels = manifest_labels([row[form.label] for _, row in rows], lines, csv_path, unknown)
    class_names = class_order([label for label in labels if label is not None])
    index = {c: i for i, c in enumerate(class_names)}
    images = csv_path.parent / form.images
    splits: dict[str, TorchDataset] = {}
    for split in SPLITS:
        chosen = [
            (row[form.path].strip(), UNKNOWN_LABEL if label is None else index[label])
            for (_, row), label in zip(rows, labels, strict=True)
            if targets[row[form.split].strip()] == split
        ]
        if not chosen and not any(unknown):  # with unlabeled rows, the test split is optional
            raise ValueError(f"manifest {csv_path} has no rows with split {split!r}")
        paths = [images / path for path, _ in chosen]
        ids = [path for path, _ in chosen]
        splits[split] = FileSplit(paths, [label for _, label in chosen], ids)
    return Dataset(name, class_names, splits)


def manifest(root: Path | None) -> Dataset:
    """A CSV manifest with columns ``path,label,split``; class names are the canonical labels.
    Rows of split ``unlabeled`` (label empty) join train with ``UNKNOWN_LABEL``."""
    root = require_root("manifest", root, "a CSV file with columns path,label,split")
    csv_path = root / "manifest.csv" if root.is_dir() else root
    return read_manifest("manifest", csv_path, ManifestFormat(unlabeled=True))


# ---------------------------------------------------------------------------------------------
# Whitespace-separated list files (CUB-200's metadata, DomainNet's split files)


def read_pairs(path: Path) -> list[tuple[int, str, str]]:
    """``(line, first, second)`` for each non-blank line of two whitespace-separated fields."""
    if not path.is_file():
        raise FileNotFoundError(f"missing list file {path}")
    pairs = []
    for line, text in enumerate(path.read_text().splitlines(), start=1):
        fields = text.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise ValueError(f"{path} line {line}: expected 2 fields, found {len(fields)}")
        pairs.append((line, fields[0], fields[1]))
    return pairs


def parse_int(text: str, path: Path, line: int) -> int:
    """``text`` as an integer, or an error naming the file and line."""
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{path} line {line}: {text!r} is not an integer") from None


register_dataset("imagefolder", lambda root: image_folder("imagefolder", root))
register_dataset("manifest", manifest)
