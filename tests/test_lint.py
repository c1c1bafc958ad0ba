"""The code base stays ruff clean (lint rules and formatting from pyproject.toml) and the workflow
snakefmt clean."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("args", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff_clean(args: list[str]) -> None:
    ruff = shutil.which("ruff")
    assert ruff, "ruff is part of the test extra: pip install -e '.[test]'"
    result = subprocess.run([ruff, *args, "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_snakefmt_clean() -> None:
    snakefmt = shutil.which("snakefmt")
    assert snakefmt, "snakefmt is part of the test extra: pip install -e '.[test]'"
    result = subprocess.run(
        [snakefmt, "--check", "workflow"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
