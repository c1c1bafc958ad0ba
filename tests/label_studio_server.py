"""A throwaway Label Studio for the tests: installed once into a virtual environment of its own
(its pins would clash with alfm's), started on localhost with a temporary data folder, user and
token, and stopped at the end, also when the test fails.

The environment lives in ``$ALFM_LABEL_STUDIO_VENV`` (default
``~/.cache/alfm/label-studio-VERSION``), so one CI run or developer machine installs it once.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

VERSION = "1.23.2"
INSTALL_SECONDS = 1800
START_SECONDS = 600
USER, PASSWORD, TOKEN = "alfm@example.com", "alfm-test-password", "alfm0test0token0123456789"


def venv_dir() -> Path:
    """Where the Label Studio environment lives."""
    default = Path.home() / ".cache" / "alfm" / f"label-studio-{VERSION}"
    return Path(os.environ.get("ALFM_LABEL_STUDIO_VENV", default))


def install() -> Path | str:
    """The ``label-studio`` executable, installing it first where needed; or why it cannot be
    installed (no venv module, no package index)."""
    venv = venv_dir()
    exe = venv / "bin" / "label-studio"
    done = venv / f".installed-{VERSION}"
    if done.exists() and exe.exists():
        return exe
    log = venv.parent / f"label-studio-{VERSION}-install.log"
    venv.parent.mkdir(parents=True, exist_ok=True)
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"label-studio=={VERSION}"],
    ]
    with log.open("w") as handle:
        for step in steps:
            try:
                subprocess.run(step, stdout=handle, stderr=subprocess.STDOUT, check=True,
                               timeout=INSTALL_SECONDS, stdin=subprocess.DEVNULL)  # fmt: skip
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as err:
                return f"label-studio=={VERSION} cannot be installed ({err}); see {log}"
    done.touch()
    return exe


def free_port() -> int:
    """A localhost port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_server(exe: Path, data_dir: Path, document_root: Path) -> Iterator[tuple[str, str]]:
    """Label Studio on a free localhost port with a fresh data folder, serving local files under
    ``document_root``: yields (URL, legacy API token); the server is stopped on exit."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
        "LABEL_STUDIO_USERNAME": USER,
        "LABEL_STUDIO_PASSWORD": PASSWORD,
        "LABEL_STUDIO_USER_TOKEN": TOKEN,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
    }
    log = data_dir.parent / "label-studio.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    with log.open("w") as handle:
        server = subprocess.Popen(
            [str(exe), "start", "--no-browser", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    try:
        _wait_until_up(url, server, log)
        yield url, TOKEN
    finally:
        _stop(server)


def _wait_until_up(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"Label Studio exited with {server.returncode}: {_tail(log)}")
        try:
            request = urllib.request.Request(
                f"{url}/api/projects/", headers={"Authorization": f"Token {TOKEN}"}
            )
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(2)
    raise RuntimeError(f"Label Studio did not answer within {START_SECONDS} s: {_tail(log)}")


def _stop(server: subprocess.Popen) -> None:
    """Stop the server's whole process group: SIGTERM, then SIGKILL after 30 s."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)


def _tail(log: Path) -> str:
    return " | ".join(log.read_text(errors="replace").splitlines()[-5:])
