"""``alfm label push`` / ``pull``: a labeling project's batches to and from a running Label Studio
through its REST API (standard library HTTP, no SDK).

The server's URL and token come from the environment (``LABEL_STUDIO_URL``,
``LABEL_STUDIO_API_KEY``, as Label Studio's own SDK reads them) and are never written into the
project. A legacy token is sent as ``Token …``; a personal access token (a JWT) is exchanged for
an access token at ``/api/token/refresh`` first, as Label Studio's docs describe.
"""

from __future__ import annotations

import itertools
import json
import os
import urllib.error
import urllib.request
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from typing import Any

from alfm.labeling import (
    CHOICES_NAME,
    ImageLocator,
    ImportResult,
    LabelingProject,
    import_labels,
    label_studio_entries,
    labeling_config,
    round_folder,
)

URL_ENV, TOKEN_ENV = "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY"
TIMEOUT_SECONDS = 60
PAGE_SIZE = 1000


class LabelStudioError(ValueError):
    """A Label Studio server that cannot be reached or refuses a request (one line)."""


class LabelStudio:
    """A minimal client of Label Studio's REST API: the calls push and pull need."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self._authorization: str | None = None

    @classmethod
    def from_environment(cls) -> LabelStudio:
        """The client of ``$LABEL_STUDIO_URL`` with ``$LABEL_STUDIO_API_KEY``."""
        url, token = os.environ.get(URL_ENV), os.environ.get(TOKEN_ENV)
        if not url or not token:
            raise LabelStudioError(
                f"set {URL_ENV} (e.g. http://localhost:8080) and {TOKEN_ENV} (Account & Settings "
                "> Access Token) to reach Label Studio"
            )
        return cls(url, token)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """JSON of ``method path`` (``path`` starts with ``/api/``)."""
        return self._send(method, path, body, {"Authorization": self._auth()})

    def _auth(self) -> str:
        if self._authorization is None:
            if self._token.count(".") == 2:  # a personal access token: a JWT refresh token
                reply = self._send("POST", "/api/token/refresh", {"refresh": self._token}, {})
                self._authorization = f"Bearer {reply['access']}"
            else:
                self._authorization = f"Token {self._token}"
        return self._authorization

    def _send(self, method: str, path: str, body: Any, headers: dict[str, str]) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **headers}
        request = urllib.request.Request(self.url + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
                payload = response.read()
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:300].replace("\n", " ")
            raise LabelStudioError(
                f"Label Studio at {self.url} refused {method} {path}: HTTP {err.code} {detail}"
            ) from err
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise LabelStudioError(
                f"cannot reach Label Studio at {self.url} ({reason}); is it running, and is "
                f"{URL_ENV} right?"
            ) from err
        return json.loads(payload) if payload else None

    def pages(self, path: str) -> list[dict[str, Any]]:
        """Every item of a paginated list endpoint (``results`` with ``next``, or the task
        list's ``tasks`` with ``total``)."""
        items: list[dict[str, Any]] = []
        separator = "&" if "?" in path else "?"
        for page in itertools.count(1):
            reply = self.request("GET", f"{path}{separator}page={page}&page_size={PAGE_SIZE}")
            if isinstance(reply, list):  # an endpoint without pagination
                return reply
            found = reply.get("results", reply.get("tasks", []))
            items += found
            more = reply.get("next") if "results" in reply else len(items) < reply.get("total", 0)
            if not found or not more:
                break
        return items


@dataclass
class PushResult:
    """What a push did: the Label Studio project and how many tasks it uploaded or found."""

    project_id: int
    uploaded: int
    present: int


def project_title(project: LabelingProject) -> str:
    """The Label Studio project's title: the config's ``title`` or the folder's name."""
    return project.config.title or project.folder.resolve().name


def find_or_create_project(
    client: LabelStudio, project: LabelingProject, create: bool = True
) -> int:
    """The id of the Label Studio project titled like ``project`` (created with the class list
    as its labeling config when there is none and ``create``); one whose classes differ is an
    error."""
    title = project_title(project)
    matches = [p for p in client.pages("/api/projects/") if p.get("title") == title]
    if len(matches) > 1:
        raise LabelStudioError(
            f"Label Studio at {client.url} has {len(matches)} projects titled {title!r}; "
            "rename all but one or set the project's title"
        )
    if not matches and not create:
        raise LabelStudioError(
            f"Label Studio at {client.url} has no project titled {title!r}; push a batch first"
        )
    if not matches:
        config = labeling_config(project.classes)
        created = client.request("POST", "/api/projects/", {"title": title, "label_config": config})
        return int(created["id"])
    found = matches[0]
    classes = choice_values(found.get("label_config") or "")
    if classes != list(project.classes):
        raise LabelStudioError(
            f"Label Studio project {title!r} (id {found['id']}) labels {classes}, not the "
            f"project's classes {list(project.classes)}; give the project another title"
        )
    return int(found["id"])


def choice_values(config: str) -> list[str]:
    """The values of the ``Choice`` tags of the ``label`` choices in a labeling config."""
    try:
        root = ElementTree.fromstring(config)
    except ElementTree.ParseError:
        return []
    for choices in root.iter("Choices"):
        if choices.get("name") == CHOICES_NAME:
            return [c.get("value", "") for c in choices.iter("Choice")]
    return []


def push_batch(project: LabelingProject, client: LabelStudio | None = None) -> PushResult:
    """Upload the last batch's tasks (with their pre-annotations) to the Label Studio project;
    tasks already there (by ``alfm_id``) are not uploaded again. With local-files images, the
    project gets a local-files storage over the media root so the server may serve them."""
    if not project.batches:
        raise ValueError(f"project {project.folder} has no batch yet; run alfm label next first")
    client = client or LabelStudio.from_environment()
    batch = project.batches[-1]
    tasks_file = round_folder(project.folder, batch.round) / "tasks.json"
    tasks = json.loads(tasks_file.read_text(encoding="utf-8"))
    project_id = find_or_create_project(client, project)
    if not project.config.url_prefix:
        ensure_local_storage(client, project_id, str(ImageLocator(project).media_root))
    present = {
        (t.get("data") or {}).get("alfm_id")
        for t in client.pages(f"/api/tasks/?project={project_id}")
    }
    missing = [t for t in tasks if t["data"]["alfm_id"] not in present]
    if missing:
        client.request("POST", f"/api/projects/{project_id}/import", missing)
    return PushResult(project_id, len(missing), len(tasks) - len(missing))


def ensure_local_storage(client: LabelStudio, project_id: int, media_root: str) -> None:
    """A local-files import storage over ``media_root`` in the project (Label Studio serves a
    local file only to projects with such a storage above it)."""
    storages = client.request("GET", f"/api/storages/localfiles/?project={project_id}") or []
    if any(s.get("path") == media_root for s in storages):
        return
    body = {"project": project_id, "path": media_root, "title": "alfm", "use_blob_urls": True}
    client.request("POST", "/api/storages/localfiles/", body)


def pull_labels(
    project: LabelingProject, client: LabelStudio | None = None
) -> tuple[int, ImportResult]:
    """Import the finished annotations of the Label Studio project: (its id, the import's
    result), with the checks and all-or-nothing rule of :func:`~alfm.labeling.import_labels`."""
    client = client or LabelStudio.from_environment()
    project_id = find_or_create_project(client, project, create=False)
    tasks = client.request("GET", f"/api/projects/{project_id}/export?exportType=JSON")
    source = f"label-studio:project {project_id}"
    entries = label_studio_entries(tasks, source)
    return project_id, import_labels(project, entries, source)
