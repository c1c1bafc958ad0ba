"""push / pull against a real Label Studio (installed into its own environment, see
label_studio_server.py): batches go up as tasks with pre-annotations, a person's annotations
(made through the API) come back as labels, and the loop continues."""

from __future__ import annotations

import csv
import json
import urllib.request
from pathlib import Path

import pytest
from label_studio_server import install, running_server
from test_labeling import FAST_PROBE, folder_hash, truth

from alfm.cli import main
from alfm.label_studio import LabelStudio, project_title
from alfm.labeling import LabelingProject, init_project, next_batch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory: pytest.TempPathFactory):
    """(URL, token, local-files document root) of a running throwaway Label Studio."""
    exe = install()
    if isinstance(exe, str):
        pytest.skip(exe)
    root = tmp_path_factory.mktemp("label_studio")
    files = root / "files"
    files.mkdir()
    with running_server(exe, root / "data", files) as (url, token):
        yield url, token, files


def annotate(client: LabelStudio, task: dict, label: str) -> None:
    """What a person's click on a choice and Submit send to Label Studio."""
    result = [{"from_name": "label", "to_name": "image", "type": "choices",
               "value": {"choices": [label]}}]  # fmt: skip
    client.request("POST", f"/api/tasks/{task['id']}/annotations/", {"result": result})


def test_push_annotate_pull_and_continue(
    label_studio, animal_pixel_store: Path, monkeypatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url, token, files = label_studio
    monkeypatch.setattr("alfm.label_studio.PAGE_SIZE", 3)  # every list read spans pages
    monkeypatch.setenv("LABEL_STUDIO_URL", url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", token)
    folder = init_project(animal_pixel_store, files / "project", device="cpu",
                          probe=FAST_PROBE, document_root=str(files))  # fmt: skip
    oracle = truth(animal_pixel_store)
    client = LabelStudio(url, token)

    def tasks_of(round_number: int) -> list[dict]:
        project_id = next(
            p["id"] for p in client.pages("/api/projects/") if p["title"] == "project"
        )
        tasks = client.pages(f"/api/tasks/?project={project_id}")
        return [t for t in tasks if t["data"]["alfm_id"] in batch_ids(round_number)]

    def batch_ids(round_number: int) -> set[str]:
        return set(LabelingProject(folder).batches[round_number - 1].ids)

    first = next_batch(LabelingProject(folder), 10).batch.ids
    assert main(["label", "push", str(folder)]) == 0
    assert "10 tasks uploaded, 0 already there" in capsys.readouterr().out
    assert main(["label", "push", str(folder)]) == 0  # nothing twice
    assert "0 tasks uploaded, 10 already there" in capsys.readouterr().out
    tasks = tasks_of(1)
    assert sorted(t["data"]["alfm_id"] for t in tasks) == sorted(first)
    assert project_title(LabelingProject(folder)) == "project"
    # Label Studio serves the batch's images from the project folder (local files)
    image = tasks[0]["data"]["image"]
    request = urllib.request.Request(url + image, headers={"Authorization": f"Token {token}"})
    with urllib.request.urlopen(request) as response:
        served = response.read()
    assert served == (folder / "images" / f"{tasks[0]['data']['alfm_id']}.png").read_bytes()
    for task in tasks:
        annotate(client, task, oracle[task["data"]["alfm_id"]])
    assert main(["label", "pull", str(folder)]) == 0
    assert "10 new labels, 0 changed, 0 already known" in capsys.readouterr().out
    before = folder_hash(folder)
    assert main(["label", "pull", str(folder)]) == 0
    assert "0 new labels, 0 changed, 10 already known" in capsys.readouterr().out
    assert folder_hash(folder) == before
    rows = list(csv.DictReader((folder / "labels.csv").open()))
    assert {r["annotator"] for r in rows} == {"1"} and {r["round"] for r in rows} == {"1"}
    assert {r["source"] for r in rows} == {rows[0]["source"]}
    assert rows[0]["source"].startswith("label-studio:project ")

    second = next_batch(LabelingProject(folder), 10).batch
    assert main(["label", "push", str(folder)]) == 0
    tasks = tasks_of(2)
    assert len(tasks) == 10 and all(t["total_predictions"] == 1 for t in tasks)
    predictions = client.request("GET", f"/api/predictions/?task={tasks[0]['id']}")
    predicted = dict(zip(second.ids, second.predicted, strict=True))
    assert predictions[0]["model_version"] == "alfm pixels2x2 probe, round 1 (10 labels)"
    choice = predictions[0]["result"][0]["value"]["choices"]
    assert choice == [predicted[tasks[0]["data"]["alfm_id"]]]
    for task in tasks[:5]:
        annotate(client, task, oracle[task["data"]["alfm_id"]])
    assert main(["label", "pull", str(folder)]) == 0
    assert "5 new labels" in capsys.readouterr().out
    open_batch = next_batch(LabelingProject(folder), 10)
    assert not open_batch.new and open_batch.unlabeled == 5
    for task in tasks[5:]:
        annotate(client, task, oracle[task["data"]["alfm_id"]])
    assert main(["label", "pull", str(folder)]) == 0
    third = next_batch(LabelingProject(folder), 10)
    assert third.new and third.batch.round == 3
    labels = LabelingProject(folder).current_labels()
    assert labels == {i: oracle[i] for i in [*first, *second.ids]}
    status = json.loads(_status_json(folder, capsys))
    assert status["labeled"] == 20 and status["rounds"] == 3


def _status_json(folder: Path, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(["label", "status", str(folder), "--json"]) == 0
    return capsys.readouterr().out
