"""The real labeling loop: propose the images of a feature store most worth labeling, read the
labels back, propose the next batch, and tell when to stop.

A project folder (``alfm label init``) holds:

- ``project.json`` — its config (:class:`ProjectConfig`) and the identity of its feature store
  (the store's identity attributes and a digest of its train ids), checked by every command;
- ``labels.csv`` — the labels table, append-only (``id,label,source,annotator,time,round``; the
  last row of an id holds its label), rewritten whole through a temporary file and a rename, so a
  killed import leaves the table as it was;
- ``rounds/NNN/`` — batch ``NNN``: ``batch.json`` (the ids in selection order, the strategy, the
  classifier's predictions; written last, it commits the round), ``batch.csv``
  (``id,path,predicted_label,confidence``) and ``tasks.json`` (Label Studio tasks with the
  predictions as pre-annotations);
- ``images/`` — PNG copies of the batch images of datasets held in memory (the embedded ones),
  so that a person and Label Studio can see them.

The real loop and the benchmark are one code path: batch 1 is
:meth:`RoundSteps.initial_batch <alfm.run.RoundSteps.initial_batch>`, and batch k + 1 is
:meth:`~alfm.run.RoundSteps.query_batch` after round k with the probe of
:meth:`~alfm.run.RoundSteps.round_probe` trained on the labels of batches 1 … k in selection
order, exactly as ``alfm run`` computes them. Labels known to the store (a labeled dataset) are
never used: the project knows only what was imported.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import itertools
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import numpy as np
import torch

import alfm
from alfm.config import DEVICES, Config, setting
from alfm.devices import resolve_device
from alfm.probe import Probe
from alfm.run import RoundSteps, RunConfig, atomic_path, seeded_generator
from alfm.store import UNKNOWN_LABEL, FeatureStore, open_store, store_identity

PROJECT_FILE = "project.json"
LABELS_FILE = "labels.csv"
LABEL_COLUMNS = ("id", "label", "source", "annotator", "time", "round")
ROUNDS_DIR = "rounds"
IMAGES_DIR = "images"
LOCAL_FILES_URL = "/data/local-files/?d="
#: Label Studio's names of the image and the choices in the labeling config alfm writes.
IMAGE_NAME, CHOICES_NAME = "image", "label"
MAX_ROWS_SHOWN = 10
#: Stopping rules (see :func:`stopping_signals`): stabilizing predictions' window and default
#: threshold (Bloodgood & Vijay-Shanker 2009's defaults; the project's ``stop_kappa``), the
#: rounds of falling confidence that mark its peak, and the selected-accuracy threshold.
SP_WINDOW, SP_KAPPA = 3, 0.99
CONFIDENCE_PATIENCE = 3
SELECTED_ACCURACY = 0.9
CV_FOLDS = 5


@dataclass(frozen=True)
class ProjectConfig(Config):
    """The settings of a labeling project (``project.json``'s ``config``)."""

    section = "labeling project"
    key_format = "labeling project {!r}"

    features: str = setting(minLength=1, help="feature store path")
    classes: list[str] = setting(help="class names, in label order")
    seed: int = setting(0, minimum=0, help="seed of every random draw")
    strategy: str = setting("dropquery", minLength=1, help="query strategy after the first batch")
    strategy_params: dict[str, Any] = setting(
        default_factory=dict, help="hyperparameters of the query strategy"
    )
    init: str = setting("centroid", minLength=1, help="strategy of the first batch")
    init_params: dict[str, Any] = setting(
        default_factory=dict, help="hyperparameters of the first batch's strategy"
    )
    probe: dict[str, Any] = setting(default_factory=dict, help="overrides of ProbeConfig fields")
    device: str = setting("auto", enum=DEVICES, help="auto (CUDA when available), cpu or cuda")
    media_root: str | None = setting(
        None, help="folder of the images (default: the dataset's folder, or the project's images/)"
    )
    document_root: str | None = setting(
        None, help="Label Studio's LOCAL_FILES_DOCUMENT_ROOT (default: media_root's parent)"
    )
    url_prefix: str | None = setting(
        None, help="serve images from this URL prefix + their path under media_root instead"
    )
    stop_set_size: int = setting(2000, minimum=1, help="pool images the stopping signals watch")
    stop_kappa: float = setting(
        SP_KAPPA,
        exclusiveMinimum=0,
        maximum=1,
        help="stabilizing predictions fire above this mean kappa (the paper's default 0.99)",
    )
    title: str | None = setting(None, help="Label Studio project title (default: folder name)")

    def __post_init__(self) -> None:
        super().__post_init__()
        classes = self.classes
        if len(classes) < 2 or not all(isinstance(c, str) and c.strip() for c in classes):
            raise ValueError(
                f"a labeling project needs at least 2 non-empty class names: {classes}"
            )
        repeated = sorted(c for c, n in Counter(classes).items() if n > 1)
        if repeated:
            raise ValueError(f"class names repeated: {', '.join(repeated)}")


@dataclass
class Batch:
    """One proposed batch: its round, ids in selection order and how they were chosen."""

    round: int
    ids: list[str]
    strategy: str
    strategy_params: dict[str, Any]
    created: str
    #: The classifier that chose it (None for the first batch): its round and label count.
    classifier: dict[str, Any] | None = None
    predicted: list[str | None] = field(default_factory=list)
    confidence: list[float | None] = field(default_factory=list)
    #: That classifier's predictions (class indices) and mean confidence on the stop set.
    stop_predictions: list[int] | None = None
    stop_confidence: float | None = None


def parse_classes(text: str) -> list[str]:
    """Class names from ``a,b,c`` or from a file with one name per line."""
    path = Path(text)
    if path.is_file():
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    else:
        names = [part.strip() for part in text.split(",")]
    return [name for name in names if name]


def init_project(
    features: str | Path,
    out: str | Path,
    classes: Sequence[str] | None = None,
    **settings: Any,
) -> Path:
    """Create the project folder ``out`` for the store ``features``; returns its path.

    ``classes`` default to the store's class names; the store's evaluation (test) labels must be
    among them. ``settings`` are further :class:`ProjectConfig` fields.
    """
    out = Path(out)
    if (out / PROJECT_FILE).exists():
        raise FileExistsError(f"{out} is already a labeling project; choose another --out")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose another --out")
    store = _open(features)
    if classes is None:
        classes = list(store.attrs.get("class_names") or [])
        if not classes:
            raise ValueError(
                f"feature store {features} names no classes (an unlabeled dataset); give --classes"
            )
    config = ProjectConfig.from_dict(
        {"features": str(Path(features).resolve()), "classes": list(classes), **settings}
    )
    pool = store.load("train")
    _evaluation_labels(store, config.classes)  # a store class outside the list is an error now
    record = {
        "format": 1,
        "config": config.to_dict(),
        "store": _store_record(store.attrs, pool.ids),
        "created": _now(),
        "alfm": alfm.__version__,
    }
    out.mkdir(parents=True, exist_ok=True)
    _write_text(out / PROJECT_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")
    _write_text(out / LABELS_FILE, ",".join(LABEL_COLUMNS) + "\n")
    return out


class LabelingProject:
    """A project folder opened for one command: its config, the store's pool, labels, batches.

    Opening checks that the store is the project's (same identity attributes, same train ids);
    ``features`` points to the store where it moved.
    """

    def __init__(self, folder: str | Path, features: str | Path | None = None) -> None:
        self.folder = Path(folder)
        path = self.folder / PROJECT_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{self.folder} is not a labeling project (no {PROJECT_FILE})")
        record = json.loads(path.read_text(encoding="utf-8"))
        self.config = ProjectConfig.from_dict(record["config"])
        self.features_path = str(features) if features is not None else self.config.features
        self.store = _open(self.features_path)
        pool = self.store.load("train")
        _check_store(self.folder, record["store"], self.store.attrs, pool.ids, self.features_path)
        self.ids = pool.ids
        self.position = {sample_id: i for i, sample_id in enumerate(self.ids)}
        self.device = resolve_device(self.config.device).type
        self.pool = torch.as_tensor(pool.features, dtype=torch.float32, device=self.device)
        self.class_index = {name: i for i, name in enumerate(self.config.classes)}
        self.labels = read_labels(self.folder / LABELS_FILE)
        self.batches = read_batches(self.folder)
        self._steps: RoundSteps | None = None

    # --- state --------------------------------------------------------------------------------

    @property
    def classes(self) -> list[str]:
        """The class names, in label order."""
        return self.config.classes

    def current_labels(self) -> dict[str, str]:
        """The label of every labeled id (the last row of each id in the table)."""
        return {row["id"]: row["label"] for row in self.labels}

    def batch_of(self) -> dict[str, int]:
        """The round whose batch proposed each proposed id (its first)."""
        rounds: dict[str, int] = {}
        for batch in self.batches:
            for sample_id in batch.ids:
                rounds.setdefault(sample_id, batch.round)
        return rounds

    def labeled_through(self, round_number: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool indices and labels of the labeled ids of batches 1 … ``round_number``, in
        selection order (the order of the benchmark's labeled set)."""
        current = self.current_labels()
        ids = [i for b in self.batches[:round_number] for i in b.ids if i in current]
        positions = [self.position[i] for i in ids]
        labeled = torch.tensor(positions, dtype=torch.int64, device=self.device)
        labels = torch.tensor(
            [self.class_index[current[i]] for i in ids], dtype=torch.int64, device=self.device
        )
        return labeled, labels

    @property
    def steps(self) -> RoundSteps:
        """The run steps (:class:`alfm.run.RoundSteps`) over the pool, built on first use."""
        if self._steps is None:
            self._steps = self.round_steps(self.config.strategy, self.config.strategy_params)
        return self._steps

    def round_steps(self, strategy: str, params: Mapping[str, Any]) -> RoundSteps:
        """:class:`alfm.run.RoundSteps` of the project with query strategy ``strategy``."""
        config = RunConfig.from_dict(
            {
                "features": self.features_path,
                "strategy": strategy,
                "strategy_params": dict(params),
                "init": self.config.init,
                "init_params": self.config.init_params,
                "seed": self.config.seed,
                "probe": self.config.probe,
                "device": self.config.device,
            }
        )
        return RoundSteps(config, self.pool, len(self.classes))

    def open_ids(self) -> list[str]:
        """Ids of the last batch that have no label yet."""
        if not self.batches:
            return []
        current = self.current_labels()
        return [i for i in self.batches[-1].ids if i not in current]

    def classifier(self) -> tuple[int, Probe] | None:
        """(round, probe) of the classifier on every label so far: the probe of the last round
        with labels (None before any label)."""
        if not self.labels:
            return None
        round_number = len(self.batches)
        labeled, labels = self.labeled_through(round_number)
        return round_number, self.steps.round_probe(round_number, labeled, labels)

    def stop_set(self) -> torch.Tensor:
        """The pool indices the stopping signals watch: a seeded sample, fixed for the project."""
        n = len(self.ids)
        generator = seeded_generator(self.config.seed, "stop set", device="cpu")
        chosen = torch.randperm(n, generator=generator)[: self.config.stop_set_size]
        return torch.sort(chosen).values

    def predict(self, probe: Probe, rows: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(class index, confidence) of ``probe`` on the pool ``rows``."""
        with torch.no_grad():
            proba = probe.predict_proba(self.pool[rows.to(self.device)])
        confidence, predicted = proba.max(dim=1)
        return predicted.cpu().numpy(), confidence.float().cpu().numpy()


# --- next -------------------------------------------------------------------------------------


@dataclass
class NextResult:
    """What ``next`` did: the batch (new or still open) and how many of it lack labels."""

    batch: Batch
    new: bool
    unlabeled: int
    folder: Path
    images_problem: str | None = None


def next_batch(
    project: LabelingProject,
    budget: int = 100,
    strategy: str | None = None,
    strategy_params: Mapping[str, Any] | None = None,
    skip_unlabeled: bool = False,
) -> NextResult:
    """Propose the next batch of ``budget`` images, or return the last one while it has ids
    without labels (unless ``skip_unlabeled``: they go back to the pool).

    The first batch comes from the project's init strategy; later ones from ``strategy``
    (default the project's, with its parameters) with the probe trained on the labels so far.
    """
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget must be a positive integer, got {budget!r}")
    pending = project.open_ids()
    if pending and not skip_unlabeled:
        batch = project.batches[-1]
        folder, problem = write_batch_files(project, batch)
        return NextResult(batch, False, len(pending), folder, problem)
    name = strategy or project.config.strategy
    if strategy_params is None:
        same = name == project.config.strategy
        strategy_params = project.config.strategy_params if same else {}
    round_number = len(project.batches)
    labeled, labels = project.labeled_through(round_number)
    available = len(project.ids) - len(labeled)
    if budget > available:
        raise ValueError(f"budget {budget} is more than the {available} images without a label")
    steps = project.round_steps(name, strategy_params)
    if round_number == 0:
        chosen = steps.initial_batch(budget)
        batch = Batch(1, _ids(project, chosen), project.config.init, project.config.init_params,
                      _now())  # fmt: skip
    else:
        if len(labeled) == 0:
            raise ValueError(
                f"no labels yet: import the labels of batch {round_number} before asking for "
                "the next one"
            )
        probe = steps.round_probe(round_number, labeled, labels)
        chosen = steps.query_batch(round_number, labeled, labels, probe, budget)
        predicted, confidence = project.predict(probe, chosen)
        stop_predicted, stop_confidence = project.predict(probe, project.stop_set())
        batch = Batch(
            round_number + 1,
            _ids(project, chosen),
            name,
            dict(strategy_params),
            _now(),
            classifier={"round": round_number, "labels": len(labeled)},
            predicted=[project.classes[int(c)] for c in predicted],
            confidence=[round(float(c), 6) for c in confidence],
            stop_predictions=[int(c) for c in stop_predicted],
            stop_confidence=float(np.mean(stop_confidence)),
        )
    folder, problem = write_batch_files(project, batch)
    _write_text(folder / "batch.json", json.dumps(dataclasses.asdict(batch), indent=1) + "\n")
    project.batches.append(batch)
    return NextResult(batch, True, len(batch.ids), folder, problem)


def _ids(project: LabelingProject, chosen: torch.Tensor) -> list[str]:
    return [str(project.ids[int(i)]) for i in chosen]


def model_version(project: LabelingProject, batch: Batch) -> str | None:
    """The name Label Studio shows for the classifier that pre-annotated ``batch``."""
    if batch.classifier is None:
        return None
    backbone = project.store.attrs.get("backbone")
    return (
        f"alfm {backbone} probe, round {batch.classifier['round']} "
        f"({batch.classifier['labels']} labels)"
    )


def write_batch_files(project: LabelingProject, batch: Batch) -> tuple[Path, str | None]:
    """Write ``batch.csv`` and ``tasks.json`` of ``batch``: (the round's folder, why the images
    could not be located, if they could not)."""
    folder = round_folder(project.folder, batch.round)
    folder.mkdir(parents=True, exist_ok=True)
    images = ImageLocator(project)
    paths = [images.path(i) for i in batch.ids]
    predicted = batch.predicted or [None] * len(batch.ids)
    confidence = batch.confidence or [None] * len(batch.ids)
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["id", "path", "predicted_label", "confidence"])
    for row in zip(batch.ids, paths, predicted, confidence, strict=True):
        writer.writerow(["" if v is None else v for v in row])
    _write_text(folder / "batch.csv", table.getvalue())
    version = model_version(project, batch)
    tasks = []
    for sample_id, path, label, score in zip(batch.ids, paths, predicted, confidence, strict=True):
        task: dict[str, Any] = {
            "data": {IMAGE_NAME: images.url(path), "alfm_id": sample_id, "alfm_round": batch.round}
        }
        if label is not None:
            task["predictions"] = [
                {
                    "model_version": version,
                    "score": score,
                    "result": [choice_result(label)],
                }
            ]
        tasks.append(task)
    _write_text(folder / "tasks.json", json.dumps(tasks, indent=1) + "\n")
    return folder, images.problem


def choice_result(label: str) -> dict[str, Any]:
    """One Label Studio ``choices`` result naming ``label``."""
    return {
        "from_name": CHOICES_NAME,
        "to_name": IMAGE_NAME,
        "type": "choices",
        "value": {"choices": [label]},
    }


def labeling_config(classes: Sequence[str]) -> str:
    """The Label Studio labeling config: the image and one single choice among ``classes``."""
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in classes)
    return (
        f'<View>\n  <Image name="{IMAGE_NAME}" value="${IMAGE_NAME}"/>\n'
        f'  <Choices name="{CHOICES_NAME}" toName="{IMAGE_NAME}" choice="single" '
        f'showInline="true">\n{choices}\n  </Choices>\n</View>'
    )


class ImageLocator:
    """Where a pool image lies on disk and the URL Label Studio reads it from.

    Datasets of files give their files; datasets held in memory get a PNG per image written to
    the project's ``images/`` on first use. A store whose dataset cannot be opened here (moved
    images, a synthetic store) has no images: ``problem`` says why, paths and URLs are empty.
    """

    def __init__(self, project: LabelingProject) -> None:
        from alfm.datasets import create_dataset

        attrs = project.store.attrs
        self.project = project
        self.problem: str | None = None
        self.index: dict[str, int] = {}
        self.files = None
        try:
            data = create_dataset(str(attrs.get("dataset")), attrs.get("dataset_root"))
        except (ValueError, FileNotFoundError) as err:
            self.problem = f"cannot open dataset {attrs.get('dataset')!r}: {err}"
        else:
            self.split = data.split("train")
            listed = getattr(self.split, "ids", None)
            if listed is None:
                self.problem = f"dataset {attrs.get('dataset')!r} does not list its image ids"
            else:
                self.index = {str(i): k for k, i in enumerate(listed)}
                self.files = getattr(self.split, "paths", None)
        default = self._default_root(attrs.get("dataset_root"))
        config = project.config
        self.media_root = Path(config.media_root or default).resolve()
        self.document_root = Path(config.document_root or self.media_root.parent).resolve()
        self.url_prefix = config.url_prefix

    def _default_root(self, dataset_root: str | None) -> Path:
        if self.files is None or dataset_root is None:
            return self.project.folder / IMAGES_DIR
        root = Path(dataset_root)
        return root.parent if root.is_file() else root

    def path(self, sample_id: str) -> Path | None:
        """The image file of ``sample_id`` (a PNG written now for an in-memory dataset)."""
        if self.problem is not None:
            return None
        position = self.index[sample_id]
        if self.files is not None:
            return Path(self.files[position]).resolve()
        name = re.sub(r"[^A-Za-z0-9._-]", "_", sample_id)
        target = self.project.folder / IMAGES_DIR / f"{name}.png"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            image = self.split[position][0]
            with atomic_path(target) as tmp:
                image.save(tmp, format="PNG")
        return target.resolve()

    def url(self, path: Path | None) -> str:
        """The task's image URL: ``url_prefix`` + the path under ``media_root``, or Label
        Studio's local-files URL of the path under ``document_root`` (empty without a path)."""
        if path is None:
            return ""
        base = self.media_root if self.url_prefix else self.document_root
        try:
            relative = path.relative_to(base).as_posix()
        except ValueError:
            raise ValueError(
                f"image {path} is not under {base}; set the project's media_root / document_root"
            ) from None
        if self.url_prefix:
            return self.url_prefix + quote(relative)
        return LOCAL_FILES_URL + quote(relative, safe="/")


# --- import -----------------------------------------------------------------------------------


@dataclass
class Entry:
    """One label read from an import file: where it came from (for errors), id, label, ..."""

    where: str
    id: str
    label: str
    annotator: str = ""
    time: str = ""


@dataclass
class ImportResult:
    """What an import added: new labels, changed labels, labels already known."""

    new: int
    changed: int
    unchanged: int


def read_import_file(path: str | Path) -> tuple[list[Entry], str]:
    """The labels of a Label Studio JSON export or a CSV ``id,label[,annotator]``: (entries,
    source name)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no import file at {path}")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        try:
            tasks = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not JSON ({err})") from err
        return label_studio_entries(tasks, str(path)), f"label-studio-json:{path.name}"
    reader = csv.DictReader(io.StringIO(text))
    missing = {"id", "label"} - set(reader.fieldnames or [])
    if missing:
        raise ValueError(f"{path} lacks column(s) {', '.join(sorted(missing))} (id,label)")
    entries = [
        Entry(
            f"line {reader.line_num}",
            (row["id"] or "").strip(),
            (row["label"] or "").strip(),
            (row.get("annotator") or "").strip(),
        )
        for row in reader
    ]
    return entries, f"csv:{path.name}"


def label_studio_entries(tasks: Any, source: str) -> list[Entry]:
    """The labels of Label Studio's JSON export (a list of tasks with annotations): one per
    choice of every annotation that was not cancelled; tasks without annotations give none."""
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise ValueError(f"{source} is not a Label Studio JSON export (a list of tasks)")
    entries = []
    for task in tasks:
        where = f"task {task.get('id')}"
        sample_id = (task.get("data") or {}).get("alfm_id")
        for annotation in task.get("annotations") or []:
            if annotation.get("was_cancelled"):
                continue
            for result in annotation.get("result") or []:
                if result.get("type") != "choices":
                    continue
                for choice in (result.get("value") or {}).get("choices") or []:
                    entries.append(
                        Entry(
                            where,
                            "" if sample_id is None else str(sample_id),
                            str(choice).strip(),
                            _annotator(annotation.get("completed_by")),
                            str(annotation.get("updated_at") or annotation.get("created_at") or ""),
                        )
                    )
    return entries


def _annotator(completed_by: Any) -> str:
    if isinstance(completed_by, dict):
        return str(completed_by.get("email") or completed_by.get("id") or "")
    return "" if completed_by is None else str(completed_by)


def import_labels(project: LabelingProject, entries: Sequence[Entry], source: str) -> ImportResult:
    """Add ``entries`` to the labels table, all or nothing.

    Ids missing from the store's pool, labels outside the class list, ids never proposed and
    ids given two different labels are a one-line error naming the offending rows, and nothing
    changes. Labels equal to an id's current one are skipped (importing twice changes nothing);
    a different label for a labeled id is a correction that replaces it.
    """
    proposed = project.batch_of()
    problems = []
    class_list = ", ".join(project.classes)
    checks = (
        ("ids not in the store's pool", lambda e: e.id not in project.position),
        (
            f"labels not in the class list ({class_list})",
            lambda e: e.label not in project.class_index,
        ),
        ("ids never proposed", lambda e: e.id in project.position and e.id not in proposed),
    )
    for what, bad in checks:
        rows = [e for e in entries if bad(e)]
        if rows:
            problems.append(f"{len(rows)} {what}: {_rows(rows)}")
    labels_of: dict[str, set[str]] = {}
    for e in entries:
        labels_of.setdefault(e.id, set()).add(e.label)
    conflicting = [e for e in entries if len(labels_of[e.id]) > 1]
    if conflicting:
        ids = sorted({e.id for e in conflicting})
        problems.append(f"{len(ids)} ids with conflicting labels: {_rows(conflicting)}")
    if problems:
        raise ValueError(f"import {source}: " + "; ".join(problems) + "; nothing was imported")
    current = project.current_labels()
    now = _now()
    rows, new, changed, unchanged = [], 0, 0, 0
    seen: set[str] = set()
    for e in entries:
        if e.id in seen:
            continue
        seen.add(e.id)
        if current.get(e.id) == e.label:
            unchanged += 1
            continue
        new, changed = (new + 1, changed) if e.id not in current else (new, changed + 1)
        rows.append(
            {
                "id": e.id,
                "label": e.label,
                "source": source,
                "annotator": e.annotator,
                "time": e.time or now,
                "round": str(proposed[e.id]),
            }
        )
    if rows:
        append_labels(project.folder / LABELS_FILE, rows)
        project.labels.extend(rows)
    return ImportResult(new, changed, unchanged)


def _rows(entries: Sequence[Entry]) -> str:
    shown = ", ".join(f"{e.where} ({e.id!r}: {e.label!r})" for e in entries[:MAX_ROWS_SHOWN])
    return shown + (f", ... ({len(entries)} in all)" if len(entries) > MAX_ROWS_SHOWN else "")


def read_labels(path: Path) -> list[dict[str, str]]:
    """The rows of the labels table, oldest first."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != LABEL_COLUMNS:
            raise ValueError(f"{path} is not a labels table ({','.join(LABEL_COLUMNS)})")
        return list(reader)


def append_labels(path: Path, rows: Sequence[Mapping[str, str]]) -> None:
    """Append ``rows`` to the labels table atomically: the whole table is written to a temporary
    file that replaces it, so a killed writer leaves the old table."""
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=LABEL_COLUMNS, lineterminator="\n")
    writer.writerows(rows)
    _write_text(path, path.read_text(encoding="utf-8") + table.getvalue())


# --- status, stopping, export -----------------------------------------------------------------


def stopping_signals(
    batches: Sequence[Batch],
    current: Mapping[str, str],
    classes: Sequence[str],
    kappa_threshold: float = SP_KAPPA,
) -> dict[str, dict[str, Any]]:
    """The stopping signals that need no ground truth, per classifier round, and the first round
    each fires at (None: not yet).

    Classifier j is the probe trained on the labels of batches 1 … j (it chose batch j + 1).

    - ``stabilizing_predictions`` (Bloodgood & Vijay-Shanker 2009): Cohen's kappa between the
      predictions of classifiers j − 1 and j on the stop set; fires at the first j where the mean
      of the last ``SP_WINDOW`` kappas exceeds ``kappa_threshold``.
    - ``confidence_peak`` (after Vlachos 2008): the stop set's mean confidence of classifier j;
      fires at the first j after ``CONFIDENCE_PATIENCE`` consecutive falls.
    - ``selected_accuracy`` (Zhu, Wang & Hovy 2008): the agreement of classifier j − 1's
      pre-annotations of batch j with its imported labels; fires at the first j where it reaches
      ``SELECTED_ACCURACY``.
    """
    stops = {b.classifier["round"]: b for b in batches if b.classifier is not None}
    rounds = sorted(stops)
    kappas: dict[int, float] = {}
    for j in rounds:
        if j - 1 in stops:
            kappas[j] = cohen_kappa(
                stops[j - 1].stop_predictions or [], stops[j].stop_predictions or [], len(classes)
            )
    sp_fire = None
    for j in sorted(kappas):
        window = [kappas.get(j - k) for k in range(SP_WINDOW)]
        if all(v is not None for v in window) and float(np.mean(window)) > kappa_threshold:
            sp_fire = j
            break
    confidence = {j: float(stops[j].stop_confidence) for j in rounds}
    conf_fire = None
    for j in rounds:
        steps = [confidence.get(j - k) for k in range(CONFIDENCE_PATIENCE + 1)]
        if all(v is not None for v in steps) and all(
            steps[k] < steps[k + 1] for k in range(CONFIDENCE_PATIENCE)
        ):
            conf_fire = j
            break
    selected: dict[int, float] = {}
    for batch in batches:
        if batch.classifier is None:
            continue
        pairs = [(p, current[i]) for i, p in zip(batch.ids, batch.predicted, strict=True)
                 if i in current]  # fmt: skip
        if pairs and len(pairs) == len(batch.ids):
            selected[batch.round] = sum(p == y for p, y in pairs) / len(pairs)
    sel_fire = next((j for j in sorted(selected) if selected[j] >= SELECTED_ACCURACY), None)
    return {
        "stabilizing_predictions": {
            "values": kappas,
            "fires_at": sp_fire,
            "threshold": kappa_threshold,
        },
        "confidence_peak": {"values": confidence, "fires_at": conf_fire},
        "selected_accuracy": {"values": selected, "fires_at": sel_fire},
    }


def cohen_kappa(a: Sequence[int], b: Sequence[int], num_classes: int) -> float:
    """Cohen's kappa of two label sequences (1.0 when both are one and the same class)."""
    x, y = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"kappa needs two equal non-empty sequences, got {len(x)} and {len(y)}")
    observed = float(np.mean(x == y))
    expected = float(
        np.dot(np.bincount(x, minlength=num_classes), np.bincount(y, minlength=num_classes))
        / len(x) ** 2
    )
    return 1.0 if expected == 1.0 else (observed - expected) / (1.0 - expected)


def project_status(project: LabelingProject) -> dict[str, Any]:
    """Labels per class, classes never seen, rounds, the classifier's accuracy (on the
    evaluation split, else cross-validated on the labels) and the stopping signals."""
    current = project.current_labels()
    counts = Counter(current.values())
    batches = list(project.batches)
    status: dict[str, Any] = {
        "labeled": len(current),
        "per_class": {c: counts.get(c, 0) for c in project.classes},
        "never_seen": [c for c in project.classes if not counts.get(c)],
        "rounds": len(batches),
        "open": len(project.open_ids()),
        "accuracy": None,
        "accuracy_on": None,
    }
    fitted = project.classifier()
    if fitted is not None:
        round_number, probe = fitted
        evaluation = _evaluation_labels(project.store, project.classes)
        if evaluation is not None:
            features, labels = evaluation
            with torch.no_grad():
                x = torch.as_tensor(features, dtype=torch.float32, device=project.device)
                predicted = probe.predict_proba(x).argmax(dim=1).cpu().numpy()
            status["accuracy"] = float(np.mean(predicted == labels))
            status["accuracy_on"] = f"evaluation split ({len(labels)} images)"
        else:
            status["accuracy"], folds = cross_validated_accuracy(project)
            status["accuracy_on"] = (
                f"{folds}-fold cross-validation on the labels" if folds else None
            )
        if not project.open_ids():  # the classifier on every batch: one more stopping round
            stop_predicted, stop_confidence = project.predict(probe, project.stop_set())
            batches.append(
                Batch(
                    round_number + 1, [], "", {}, _now(),
                    classifier={"round": round_number, "labels": len(current)},
                    stop_predictions=[int(c) for c in stop_predicted],
                    stop_confidence=float(np.mean(stop_confidence)),
                )
            )  # fmt: skip
    status["stopping"] = stopping_signals(
        batches, current, project.classes, project.config.stop_kappa
    )
    return status


SIGNAL_NAMES = {
    "stabilizing_predictions": (
        f"stabilizing predictions (Bloodgood & Vijay-Shanker 2009: mean kappa of the last "
        f"{SP_WINDOW} successive classifiers on the stop set > {{threshold}})"
    ),
    "confidence_peak": (
        f"confidence peak (Vlachos 2008: the stop set's mean confidence fell "
        f"{CONFIDENCE_PATIENCE} rounds in a row)"
    ),
    "selected_accuracy": (
        f"selected accuracy (Zhu, Wang & Hovy 2008: pre-annotations of a batch right "
        f">= {SELECTED_ACCURACY:.0%})"
    ),
}


def format_status(status: Mapping[str, Any]) -> str:
    """:func:`project_status` as lines for a person."""
    open_note = f", the last one open: {status['open']} to label" if status["open"] else ""
    lines = [
        f"labeled: {status['labeled']} images in {status['rounds']} rounds{open_note}",
        "per class: " + ", ".join(f"{c} {n}" for c, n in status["per_class"].items()),
        "never seen: " + (", ".join(status["never_seen"]) or "none"),
    ]
    if status["accuracy"] is None:
        lines.append("accuracy: not yet (too few labels)")
    else:
        lines.append(f"accuracy: {status['accuracy']:.4f} ({status['accuracy_on']})")
    lines.append("stopping signals (no ground truth needed):")
    for key, signal in status["stopping"].items():
        values = signal["values"]
        last = f"last {values[max(values)]:.4f}" if values else "no value yet"
        fired = signal["fires_at"]
        verdict = f"fired at round {fired}" if fired is not None else "not fired"
        name = SIGNAL_NAMES[key].format(threshold=signal.get("threshold"))
        lines.append(f"  {name}: {last}, {verdict}")
    return "\n".join(lines)


def cross_validated_accuracy(project: LabelingProject) -> tuple[float | None, int]:
    """Accuracy of the probe in ``CV_FOLDS``-fold cross-validation on the labels so far
    (folds from the (seed, "cv") generator): (accuracy, folds), (None, 0) below 2 labels.

    The labels are chosen by active learning, not at random, so this estimate is biased (hard
    examples are over-represented): prefer an evaluation split.
    """
    labeled, labels = project.labeled_through(len(project.batches))
    n = len(labeled)
    folds = min(CV_FOLDS, n)
    if folds < 2:
        return None, 0
    order = torch.randperm(n, generator=seeded_generator(project.config.seed, "cv", device="cpu"))
    correct = 0
    for k, test in enumerate(torch.tensor_split(order, folds)):
        train = order[~torch.isin(order, test)]
        generator = seeded_generator(project.config.seed, "cv", k, device=project.device)
        probe = project.steps.train_classifier(
            labeled[train.to(labeled.device)], labels[train.to(labels.device)], generator
        )
        predicted, _ = project.predict(probe, labeled[test.to(labeled.device)])
        correct += int(np.sum(predicted == labels[test.to(labels.device)].cpu().numpy()))
    return correct / n, folds


def export_project(project: LabelingProject, out: str | Path) -> Path:
    """Write ``out`` (CSV): every pool id with its label (``status`` labeled) or the current
    classifier's prediction and confidence (``status`` predicted)."""
    current = project.current_labels()
    last = {row["id"]: row for row in project.labels}
    predicted = confidence = None
    fitted = project.classifier()
    if fitted is not None:
        all_rows = torch.arange(len(project.ids))
        predicted, confidence = project.predict(fitted[1], all_rows)
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["id", "label", "status", "confidence", "annotator", "round"])
    for k, sample_id in enumerate(project.ids):
        if sample_id in current:
            row = last[sample_id]
            writer.writerow(
                [sample_id, row["label"], "labeled", "", row["annotator"], row["round"]]
            )
        elif predicted is not None:
            label = project.classes[int(predicted[k])]
            writer.writerow([sample_id, label, "predicted", f"{confidence[k]:.6f}", "", ""])
        else:
            writer.writerow([sample_id, "", "unlabeled", "", "", ""])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_text(out, table.getvalue())
    return out


# --- files ------------------------------------------------------------------------------------


def round_folder(folder: Path, round_number: int) -> Path:
    """The folder of batch ``round_number``."""
    return folder / ROUNDS_DIR / f"{round_number:03d}"


def read_batches(folder: Path) -> list[Batch]:
    """The committed batches (those whose ``batch.json`` exists), in round order."""
    batches = []
    for round_number in itertools.count(1):
        path = round_folder(folder, round_number) / "batch.json"
        if not path.is_file():
            break
        batches.append(Batch(**json.loads(path.read_text(encoding="utf-8"))))
    return batches


def _store_record(attrs: Mapping[str, Any], ids: np.ndarray) -> dict[str, Any]:
    identity = json.loads(json.dumps(store_identity(attrs), default=str))
    digest = hashlib.sha256("\n".join(map(str, ids)).encode()).hexdigest()
    return {"identity": identity, "train_ids_sha256": digest, "pool_size": len(ids)}


def _check_store(folder: Path, saved: Mapping[str, Any], attrs: Mapping[str, Any],
                 ids: np.ndarray, path: str) -> None:  # fmt: skip
    here = _store_record(attrs, ids)
    differing = [
        f"{key}: {saved['identity'].get(key)!r} there, {value!r} here"
        for key, value in here["identity"].items()
        if saved["identity"].get(key) != value
    ]
    if differing:
        raise ValueError(
            f"feature store {path} is not the store of project {folder} ({'; '.join(differing)})"
        )
    if here["train_ids_sha256"] != saved["train_ids_sha256"]:
        raise ValueError(
            f"feature store {path}: its train ids changed since project {folder} was created "
            f"({saved['pool_size']} ids then, {here['pool_size']} now, other ids or order); "
            "its labels and batches no longer match the store"
        )


def _evaluation_labels(
    store: FeatureStore, classes: Sequence[str]
) -> tuple[np.ndarray, np.ndarray] | None:
    """(features, class indices in ``classes``) of the store's labeled test rows, or None."""
    test = store.load("test")
    known = test.labels != UNKNOWN_LABEL
    if not known.any():
        return None
    names = list(store.attrs.get("class_names") or [])
    index = {c: i for i, c in enumerate(classes)}
    outside = sorted({names[k] for k in test.labels[known] if names[k] not in index})
    if outside:
        raise ValueError(
            f"the evaluation split of store {store.path} holds class(es) {', '.join(outside)} "
            f"not in the project's classes ({', '.join(classes)})"
        )
    mapping = np.array([index.get(c, -1) for c in names], dtype=np.int64)
    return test.features[known], mapping[test.labels[known]]


def _open(path: str | Path) -> FeatureStore:
    from alfm.store import IncompleteStoreError

    try:
        return open_store(path)
    except IncompleteStoreError as err:
        raise ValueError(str(err)) from err


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
