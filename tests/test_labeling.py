"""The labeling loop: a simulated oracle gives exactly ``alfm run``'s selections; next/import/
status/export behaviour; bad input is a one-line error that changes nothing on disk."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_run import FAST_PROBE, one_thread  # noqa: F401  (one_thread: an autouse fixture)

from alfm.cli import main
from alfm.datasets import ANIMAL_MNIST_CLASSES
from alfm.labeling import (
    LabelingProject,
    cohen_kappa,
    import_labels,
    init_project,
    label_studio_entries,
    next_batch,
    project_status,
    read_import_file,
    stopping_signals,
)
from alfm.run import read_indices, read_run_metadata
from alfm.store import SplitData, open_store, write_store


def folder_hash(folder: Path) -> str:
    """A digest of every file's path and bytes under ``folder`` (temporary files left by a
    killed writer, ``.NAME.HEX.tmp``, are not part of the project)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            continue
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def truth(store: Path) -> dict[str, str]:
    """The oracle: every train id's class name from the store's labels."""
    train = open_store(store).load("train")
    return {i: ANIMAL_MNIST_CLASSES[y] for i, y in zip(train.ids, train.labels, strict=True)}


def write_labels(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "label"])
        writer.writerows(rows)
    return path


def label(project: Path, oracle: dict[str, str], tmp_path: Path, round_number: int) -> None:
    """Label the batch of ``round_number`` from its batch.csv with the oracle, through the CLI."""
    batch = project / "rounds" / f"{round_number:03d}" / "batch.csv"
    with batch.open() as handle:
        ids = [row["id"] for row in csv.DictReader(handle)]
    answers = write_labels(tmp_path / f"labels{round_number}.csv", [(i, oracle[i]) for i in ids])
    assert main(["label", "import", str(project), str(answers)]) == 0


@pytest.fixture
def project(animal_pixel_store: Path, tmp_path: Path) -> Path:
    return init_project(
        animal_pixel_store, tmp_path / "project", device="cpu", probe=FAST_PROBE, seed=5
    )


def propose(project: Path, budget: int = 10) -> list[str]:
    return next_batch(LabelingProject(project), budget).batch.ids


# --- one code path with the benchmark ----------------------------------------------------------


def test_simulated_oracle_gives_the_selections_of_alfm_run(
    animal_pixel_store: Path, tmp_path: Path
) -> None:
    """Ten rounds of next/import driven by the store's own labels pick, batch for batch, the
    indices `alfm run` picks with the same strategy, init, seed and budget schedule (20, then
    10 per round), and the project's classifier scores the run's accuracy on the test split."""
    project = tmp_path / "project"
    common = ["--seed", "7", "--strategy", "dropquery", "--init", "centroid", "--device", "cpu"]
    probe = ["--probe", json.dumps(FAST_PROBE)]
    assert main(["label", "init", "--features", str(animal_pixel_store), "--out", str(project),
                 *common, *probe]) == 0  # fmt: skip
    oracle = truth(animal_pixel_store)
    for round_number in range(1, 11):
        budget = "20" if round_number == 1 else "10"
        assert main(["label", "next", str(project), "--budget", budget]) == 0
        label(project, oracle, tmp_path, round_number)
    out = tmp_path / "run.parquet"
    assert main(["run", "--features", str(animal_pixel_store), *common, *probe, "--init-size",
                 "20", "--step-size", "10", "--rounds", "10", "--out", str(out),
                 "--quiet"]) == 0  # fmt: skip
    opened = LabelingProject(project)
    positions = [[opened.position[i] for i in b.ids] for b in opened.batches]
    expected = read_indices(out)
    assert [len(b) for b in positions] == [20] + [10] * 9
    for got, want in zip(positions, expected, strict=True):
        assert got == want.tolist()
    records = pd.read_parquet(out)
    status = project_status(opened)
    assert status["accuracy"] == pytest.approx(records["accuracy"].iloc[-1], abs=1e-12)
    assert status["labeled"] == 110 and status["rounds"] == 10
    assert read_run_metadata(out)["labeled_sizes"][-1] == 110


# --- next ---------------------------------------------------------------------------------------


def test_next_twice_before_importing_returns_the_same_batch(project: Path, tmp_path: Path) -> None:
    first = propose(project)
    before = folder_hash(project)
    assert propose(project) == first
    assert folder_hash(project) == before
    oracle = truth(LabelingProject(project).features_path)
    label(project, oracle, tmp_path, 1)
    second = propose(project)
    assert not set(second) & set(first)
    third = propose(project, budget=5)  # batch 2 still open: the same batch, whatever the budget
    assert third == second


def test_batch_files(project: Path, tmp_path: Path) -> None:
    propose(project)
    label(project, truth(LabelingProject(project).features_path), tmp_path, 1)
    ids = propose(project, budget=4)
    folder = project / "rounds" / "002"
    with (folder / "batch.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["id"] for r in rows] == ids
    assert all(r["predicted_label"] in ANIMAL_MNIST_CLASSES for r in rows)
    assert all(0 < float(r["confidence"]) <= 1 for r in rows)
    for row in rows:  # an embedded dataset: its images are written as PNGs into the project
        assert Path(row["path"]) == project / "images" / f"{row['id']}.png"
        assert Path(row["path"]).read_bytes()[:4] == b"\x89PNG"
    tasks = json.loads((folder / "tasks.json").read_text())
    assert [t["data"]["alfm_id"] for t in tasks] == ids
    first = tasks[0]
    assert first["data"]["image"] == f"/data/local-files/?d=images/{ids[0]}.png"
    prediction = first["predictions"][0]
    assert prediction["result"][0]["value"]["choices"] == [rows[0]["predicted_label"]]
    assert prediction["score"] == pytest.approx(float(rows[0]["confidence"]))
    assert prediction["model_version"] == "alfm pixels2x2 probe, round 1 (10 labels)"
    batch_one = json.loads((project / "rounds" / "001" / "tasks.json").read_text())
    assert all("predictions" not in t for t in batch_one)  # the initial pool: no classifier yet


def test_url_prefix(animal_pixel_store: Path, tmp_path: Path) -> None:
    project = init_project(
        animal_pixel_store, tmp_path / "p", device="cpu", url_prefix="https://img.example/x/"
    )
    ids = propose(project, budget=3)
    tasks = json.loads((project / "rounds" / "001" / "tasks.json").read_text())
    assert tasks[0]["data"]["image"] == f"https://img.example/x/{ids[0]}.png"


def test_skip_unlabeled_releases_the_rest_of_a_batch(project: Path, tmp_path: Path) -> None:
    oracle = truth(LabelingProject(project).features_path)
    ids = propose(project)
    write_labels(tmp_path / "some.csv", [(i, oracle[i]) for i in ids[:6]])
    assert main(["label", "import", str(project), str(tmp_path / "some.csv")]) == 0
    assert propose(project) == ids
    opened = LabelingProject(project)
    result = next_batch(opened, 10, skip_unlabeled=True)
    assert result.new and result.batch.round == 2
    assert result.batch.classifier == {"round": 1, "labels": 6}


# --- import -------------------------------------------------------------------------------------


def test_import_is_idempotent_and_records_corrections(project: Path, tmp_path: Path) -> None:
    ids = propose(project)
    oracle = truth(LabelingProject(project).features_path)
    answers = write_labels(tmp_path / "a.csv", [(i, oracle[i]) for i in ids])
    assert main(["label", "import", str(project), str(answers)]) == 0
    table = (project / "labels.csv").read_text()
    assert main(["label", "import", str(project), str(answers)]) == 0
    assert (project / "labels.csv").read_text() == table
    other = next(c for c in ANIMAL_MNIST_CLASSES if c != oracle[ids[0]])
    fix = write_labels(tmp_path / "fix.csv", [(ids[0], other)])
    entries, source = read_import_file(fix)
    result = import_labels(LabelingProject(project), entries, source)
    assert (result.new, result.changed, result.unchanged) == (0, 1, 0)
    opened = LabelingProject(project)
    assert opened.current_labels()[ids[0]] == other
    rows = list(csv.DictReader((project / "labels.csv").open()))
    assert len(rows) == 11 and rows[-1]["round"] == "1" and rows[-1]["source"] == "csv:fix.csv"


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([("nope", "cat")], r"1 ids not in the store's pool: line 3 \('nope': 'cat'\)"),
        ([("{0}", "unicorn")], r"1 labels not in the class list \(bear, .*\): line 3"),
        ([("{other}", "cat")], r"1 ids never proposed: line 3"),
        ([("{0}", "cat"), ("{0}", "dog")], r"1 ids with conflicting labels: line 3 .*, line 4"),
    ],
)
def test_import_errors_change_nothing(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], rows: list, message: str
) -> None:
    """Each bad row is reported (its CSV line) next to a good row on line 2."""
    ids = propose(project)
    proposed = set(ids)
    other = next(i for i in LabelingProject(project).ids if i not in proposed)
    filled = [(i.format(*ids, other=other), y) for i, y in rows]
    path = write_labels(tmp_path / "bad.csv", [(ids[1], "cat"), *filled])
    before = folder_hash(project)
    assert main(["label", "import", str(project), str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("alfm label import: error: import csv:bad.csv")
    assert "nothing was imported" in err
    assert re.search(message, err), err
    assert folder_hash(project) == before


def test_label_studio_export_is_read_and_checked(project: Path, tmp_path: Path) -> None:
    ids = propose(project)
    oracle = truth(LabelingProject(project).features_path)

    def task(task_id: int, sample_id: str, *choices: str, cancelled: bool = False) -> dict:
        annotations = [
            {"completed_by": {"id": 3, "email": "ann@lab"}, "was_cancelled": cancelled,
             "updated_at": "2026-01-02T03:04:05Z",
             "result": [{"type": "choices", "value": {"choices": [c]}}]}
            for c in choices
        ]  # fmt: skip
        return {"id": task_id, "data": {"alfm_id": sample_id}, "annotations": annotations}

    tasks = [task(k, i, oracle[i]) for k, i in enumerate(ids[:8])]
    tasks.append(task(8, ids[8], "cat", cancelled=True))  # a skipped task gives no label
    tasks.append({"id": 9, "data": {"alfm_id": ids[9]}, "annotations": []})
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    assert main(["label", "import", str(project), str(export)]) == 0
    opened = LabelingProject(project)
    assert opened.current_labels() == {i: oracle[i] for i in ids[:8]}
    assert {r["annotator"] for r in opened.labels} == {"ann@lab"}
    assert {r["time"] for r in opened.labels} == {"2026-01-02T03:04:05Z"}
    disagree = [task(20, ids[9], "cat", "dog")]
    export.write_text(json.dumps(disagree))
    before = folder_hash(project)
    with pytest.raises(ValueError, match=r"conflicting labels: task 20 .*task 20"):
        import_labels(opened, *read_import_file(export))
    assert folder_hash(project) == before
    with pytest.raises(ValueError, match="not a Label Studio JSON export"):
        label_studio_entries({"tasks": []}, "x.json")


def test_killed_import_leaves_the_labels_table(project: Path, tmp_path: Path) -> None:
    """SIGKILL at the moment the new table would replace the old one: the old one stays, and a
    later import gives the same table as an uninterrupted one."""
    ids = propose(project)
    oracle = truth(LabelingProject(project).features_path)
    answers = write_labels(tmp_path / "a.csv", [(i, oracle[i]) for i in ids])
    before = folder_hash(project)
    script = (
        "import os, signal, sys\n"
        "os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
        "from alfm.cli import main\n"
        f"main(['label', 'import', {str(project)!r}, {str(answers)!r}])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True)
    assert done.returncode == -signal.SIGKILL
    assert folder_hash(project) == before
    assert main(["label", "import", str(project), str(answers)]) == 0
    assert LabelingProject(project).current_labels() == {i: oracle[i] for i in ids}


# --- the project's store ------------------------------------------------------------------------


def test_another_store_or_changed_ids_are_refused(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], animal_pixel_store: Path
) -> None:
    propose(project)
    source = open_store(animal_pixel_store)
    train, test = source.load("train"), source.load("test")
    attrs = {k: source.attrs[k] for k in ("dataset", "backbone", "class_names")}
    other = write_store(tmp_path / "other.zarr", train, test, {**attrs, "dataset": "digits"})
    shuffled = SplitData(train.features, train.labels, train.ids[::-1].copy())
    renamed = write_store(tmp_path / "renamed.zarr", shuffled, test, attrs)
    before = folder_hash(project)
    for store, message in (
        (other.path, r"is not the store of project .*dataset: 'animal_mnist' there, 'digits' here"),
        (renamed.path, r"is not the store of project .*content_digest: '\w+' there"),
    ):
        assert main(["label", "next", str(project), "--features", str(store)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert re.search(message, err), err
    assert folder_hash(project) == before
    assert main(["label", "init", "--features", str(other.path), "--out", str(project)]) == 2
    assert "already a labeling project" in capsys.readouterr().err
    assert folder_hash(project) == before


def test_unreachable_server(project: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    propose(project)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("LABEL_STUDIO_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "token123")
    before = folder_hash(project)
    for command in ("push", "pull"):
        assert main(["label", command, str(project)]) == 2
        err = capsys.readouterr().err
        assert (
            err.count("\n") == 1 and f"cannot reach Label Studio at http://127.0.0.1:{port}" in err
        )
    monkeypatch.delenv("LABEL_STUDIO_URL")
    assert main(["label", "push", str(project)]) == 2
    assert "set LABEL_STUDIO_URL" in capsys.readouterr().err
    assert folder_hash(project) == before


def test_unlabeled_store_runs_the_loop_but_not_a_benchmark(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Unknown labels (-1) are the labeling loop's pool; a benchmark run refuses them."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(60, 8)).astype(np.float32)
    ids = np.array([f"img{i:02d}" for i in range(60)])
    train = SplitData(features[:50], np.full(50, -1), ids[:50])
    test = SplitData(features[50:], np.array([0, 1] * 5), ids[50:])
    store = write_store(
        tmp_path / "u.zarr", train, test, {"num_classes": 2, "class_names": ["a", "b"]}
    )
    out = tmp_path / "run.parquet"
    assert main(["run", "--features", str(store.path), "--strategy", "random", "--seed", "0",
                 "--out", str(out), "--quiet"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "50 train rows have unknown labels" in err and err.count("\n") == 1
    assert not out.exists()
    with pytest.raises(ValueError, match="not in the project's classes"):
        init_project(store.path, tmp_path / "p0", ["b", "c"])
    project = init_project(store.path, tmp_path / "p", ["a", "b"], device="cpu", probe=FAST_PROBE)
    assert len(propose(project, budget=6)) == 6


# --- status, stopping, export -------------------------------------------------------------------


def test_cohen_kappa_hand_cases() -> None:
    assert cohen_kappa([0, 1, 0, 1], [0, 1, 0, 1], 2) == 1.0
    # observed 0.5, expected (2·2 + 2·2) / 16 = 0.5: kappa 0
    assert cohen_kappa([0, 1, 0, 1], [0, 0, 1, 1], 2) == 0.0
    # observed 3/4; marginals a (3, 1), b (2, 2): expected (3·2 + 1·2) / 16 = 1/2 → 0.5
    assert cohen_kappa([0, 0, 0, 1], [0, 0, 1, 1], 2) == pytest.approx(0.5)
    assert cohen_kappa([2, 2], [2, 2], 3) == 1.0


def test_stopping_signals_on_a_hand_history() -> None:
    from alfm.labeling import Batch

    def batch(r: int, stop: list[int], confidence: float, predicted: list[str]) -> Batch:
        ids = [f"r{r}i{k}" for k in range(len(predicted))]
        return Batch(r, ids, "s", {}, "t", classifier={"round": r - 1, "labels": 1},
                     predicted=predicted, confidence=[0.5] * len(ids),
                     stop_predictions=stop, stop_confidence=confidence)  # fmt: skip

    a, b = [0, 1, 0, 1], [0, 1, 1, 1]
    history = [
        Batch(1, ["x"], "centroid", {}, "t"),
        batch(2, a, 0.6, ["a", "b"]),
        batch(3, b, 0.7, ["a", "a"]),
        batch(4, b, 0.65, ["a", "b"]),
        batch(5, b, 0.64, ["b", "b"]),
        batch(6, b, 0.63, ["a", "b"]),
        batch(7, b, 0.7, ["a", "b"]),
    ]
    labels = {f"r{r}i{k}": ("a", "b")[k] for r in range(2, 8) for k in range(2)}
    signals = stopping_signals(history, labels, ["a", "b"])
    kappas = signals["stabilizing_predictions"]["values"]
    assert kappas[2] == pytest.approx(0.5) and kappas[3] == kappas[4] == 1.0
    # windows of 3 kappas: (0.5, 1, 1) at classifier 4, (1, 1, 1) at 5
    assert signals["stabilizing_predictions"]["fires_at"] == 5
    relaxed = stopping_signals(history, labels, ["a", "b"], kappa_threshold=0.8)
    assert relaxed["stabilizing_predictions"]["fires_at"] == 4  # mean (0.5 + 1 + 1) / 3 > 0.8
    assert signals["confidence_peak"]["fires_at"] == 5  # 0.7 > 0.65 > 0.64 > 0.63
    assert signals["selected_accuracy"]["values"] == {
        2: 1.0,
        3: 0.5,
        4: 1.0,
        5: 0.5,
        6: 1.0,
        7: 1.0,
    }
    assert signals["selected_accuracy"]["fires_at"] == 2


def test_status_without_an_evaluation_split_cross_validates(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    labels = np.arange(120) % 3
    centers = rng.normal(size=(3, 64)) * 2
    features = (centers[labels] + rng.normal(size=(120, 64))).astype(np.float32)
    ids = np.array([f"s{i}" for i in range(120)])
    train = SplitData(features[:100], np.full(100, -1), ids[:100])
    test = SplitData(features[100:], np.full(20, -1), ids[100:])
    store = write_store(tmp_path / "s.zarr", train, test, {"num_classes": 3, "class_names": []})
    project = init_project(
        store.path, tmp_path / "p", ["x", "y", "z"], device="cpu", probe=FAST_PROBE
    )
    ids_one = propose(project, budget=15)
    names = {f"s{i}": "xyz"[labels[i]] for i in range(100)}
    write_labels(tmp_path / "l.csv", [(i, names[i]) for i in ids_one])
    assert main(["label", "import", str(project), str(tmp_path / "l.csv")]) == 0
    status = project_status(LabelingProject(project))
    assert status["accuracy_on"] == "5-fold cross-validation on the labels"
    assert status["accuracy"] >= 0.8
    assert sum(status["per_class"].values()) == 15
    assert status["stopping"]["stabilizing_predictions"]["values"] == {}


def test_status_and_export(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    oracle = truth(LabelingProject(project).features_path)
    for round_number in (1, 2, 3):
        propose(project)
        label(project, oracle, tmp_path, round_number)
    capsys.readouterr()
    assert main(["label", "status", str(project)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("labeled: 30 images in 3 rounds\n")
    assert "accuracy: 0." in text and "(evaluation split (2000 images))" in text
    assert "stabilizing predictions (Bloodgood & Vijay-Shanker 2009" in text
    assert main(["label", "status", str(project), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    counts = {c: sum(1 for y in LabelingProject(project).current_labels().values() if y == c)
              for c in ANIMAL_MNIST_CLASSES}  # fmt: skip
    assert status["per_class"] == counts
    assert status["never_seen"] == [c for c, n in counts.items() if n == 0]
    # classifiers 1 and 2 chose batches 2 and 3; classifier 3 (all labels) is status's own
    assert sorted(status["stopping"]["stabilizing_predictions"]["values"]) == ["2", "3"]
    out = tmp_path / "export.csv"
    assert main(["label", "export", str(project), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 8000
    labeled = [r for r in rows if r["status"] == "labeled"]
    assert {r["id"]: r["label"] for r in labeled} == LabelingProject(project).current_labels()
    predicted = [r for r in rows if r["status"] == "predicted"]
    assert len(predicted) == 7970
    assert all(r["label"] in ANIMAL_MNIST_CLASSES and 0 < float(r["confidence"]) <= 1
               for r in predicted)  # fmt: skip


def test_init_errors(animal_pixel_store: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 2 non-empty class names"):
        init_project(animal_pixel_store, tmp_path / "a", ["only"])
    with pytest.raises(ValueError, match="class names repeated: cat"):
        init_project(animal_pixel_store, tmp_path / "b", ["cat", "cat", "dog"])
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        init_project(animal_pixel_store, tmp_path / "c")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(FileNotFoundError, match="not a labeling project"):
        LabelingProject(tmp_path / "c")


def test_a_folder_of_unlabeled_images_end_to_end(image_files, tmp_path: Path) -> None:
    """unlabeled/ + a labeled test/ → extraction (unknown labels keep their features) → a
    project whose batches name the image files and their Label Studio local-files URLs."""
    from alfm.extract import extract_features

    root, _ = image_files
    (root / "train").rename(root / "unlabeled")
    out = extract_features(
        "mobilenet_v2", "imagefolder", tmp_path / "u.zarr", root=root,
        image_size=32, num_workers=0, progress=False,
    )  # fmt: skip
    store = open_store(out)
    train = store.load("train")
    assert train.labels.tolist() == [-1] * 8 and np.abs(train.features).sum(axis=1).min() > 0
    assert store.attrs["skipped_images"] == {"train": [], "test": []}
    project = init_project(out, tmp_path / "p", device="cpu", probe=FAST_PROBE)
    ids = propose(project, budget=3)
    rows = list(csv.DictReader((project / "rounds" / "001" / "batch.csv").open()))
    assert [Path(r["path"]) for r in rows] == [root / i for i in ids]
    tasks = json.loads((project / "rounds" / "001" / "tasks.json").read_text())
    assert tasks[0]["data"]["image"] == f"/data/local-files/?d=images/{ids[0]}"
    write_labels(tmp_path / "l.csv", [(i, "cat") for i in ids])
    assert main(["label", "import", str(project), str(tmp_path / "l.csv")]) == 0
    status = project_status(LabelingProject(project))
    assert status["accuracy_on"] == "evaluation split (4 images)"
    assert status["never_seen"] == ["dog"]
