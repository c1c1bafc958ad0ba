"""kill -9 runs and extractions mid-write, resume them, and check that nothing was lost.

Each trial starts a process (``alfm run`` over a small synthetic store, or an extraction of the
embedded digits in small chunks), kills it with SIGKILL after a random delay (once it has begun
writing), runs the same command again to completion, and compares the result with one computed
without interruption: run records (measured seconds and memory aside) and chosen indices equal,
store arrays equal and ``verify_store`` clean, and no temporary file left beside the outputs.
A trial survives when all of these hold; the counts go in bench/README.md.

    nice python bench/kills.py --runs 10 --extractions 5 --out /tmp/kills
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
MEASURED = ["train_seconds", "eval_seconds", "query_seconds", "peak_host_mb", "peak_device_mb"]
RUN_ARGS = ["--strategy", "typiclust", "--seed", "3", "--init-size", "10", "--step-size", "10",
            "--evaluations", "16", "--device", "cpu", "--quiet"]  # fmt: skip
EXTRACT = """
import sys
from alfm.extract import extract_features
extract_features("mobilenet_v2", "digits", sys.argv[1], image_size=32, chunk_rows=64,
                 batch_size=32, num_workers=0, progress=False)
"""


def make_store(path: Path) -> Path:
    from alfm.store import SplitData, write_store

    rng = np.random.default_rng(0)

    def split(n: int) -> SplitData:
        labels = np.arange(n) % 6
        features = rng.normal(size=(6, 32))[labels] * 2 + rng.normal(size=(n, 32))
        ids = np.array([f"s{i}" for i in range(n)])
        return SplitData(features.astype(np.float32), labels, ids)

    write_store(path, split(600), split(200), overwrite=True)
    return path


def writing_window(command: list[str], started: Path) -> float:
    """Seconds from ``started`` appearing to the exit of an uninterrupted ``command``."""
    proc = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL)
    while not started.exists() and proc.poll() is None:
        time.sleep(0.01)
    start = time.perf_counter()
    if proc.wait():
        raise SystemExit(f"{command} failed")
    return time.perf_counter() - start


def killed_then_resumed(command: list[str], started: Path, rng: random.Random, max_delay: float):
    """Start ``command``, kill it ``U(0, max_delay)`` s after ``started`` appears (or when it
    exits), then run it again to completion; returns (killed mid-way, second exit code)."""
    proc = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while not started.exists() and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(rng.uniform(0, max_delay))
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = subprocess.run(command, env=ENV, capture_output=True, text=True)
    if again.returncode:
        print(again.stderr, file=sys.stderr)
    return killed, again.returncode


def leftovers(folder: Path) -> list[str]:
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.name.endswith((".tmp", ".partial", ".lock")) or ".creating-" in p.name
    )


def summary(details: list[dict], seconds: float) -> dict:
    """Counts over trials: killed mid-write, and survived (resumed equal, nothing left over)."""
    return {
        "trials": len(details),
        "killed_mid_write": sum(bool(d["killed"]) for d in details),
        "survived": sum(bool(d["same"] and not d["leftovers"]) for d in details),
        "window_s": seconds,
        "details": details,
    }


def run_trials(n: int, work: Path, rng: random.Random) -> dict:
    from alfm.run import read_indices

    store = make_store(work / "store.zarr")
    base = [sys.executable, "-m", "alfm", "run", "--features", str(store), *RUN_ARGS]
    reference = work / "reference.parquet"
    seconds = writing_window([*base, "--out", str(reference)], work / "reference.parquet.ckpt")
    details = []
    for trial in range(n):
        folder = work / f"run{trial}"
        out = folder / "r.parquet"
        folder.mkdir()
        killed, code = killed_then_resumed(
            [*base, "--out", str(out)], folder / "r.parquet.ckpt", rng, seconds
        )
        same = code == 0 and pd.read_parquet(out).drop(columns=MEASURED).equals(
            pd.read_parquet(reference).drop(columns=MEASURED)
        )
        same = same and all(
            np.array_equal(a, b)
            for a, b in zip(read_indices(out), read_indices(reference), strict=True)
        )
        left = leftovers(folder)
        details.append({"trial": trial, "killed": killed, "same": same, "leftovers": left})
    return summary(details, seconds)


def extraction_trials(n: int, work: Path, rng: random.Random) -> dict:
    from alfm.store import open_store, verify_store

    command = [sys.executable, "-c", EXTRACT]
    reference = work / "reference.zarr"
    seconds = writing_window([*command, str(reference)], reference)
    want = {s: open_store(reference).load(s, include_skipped=True) for s in ("train", "test")}
    details = []
    for trial in range(n):
        folder = work / f"extract{trial}"
        folder.mkdir()
        out = folder / "s.zarr"
        killed, code = killed_then_resumed([*command, str(out)], out, rng, seconds)
        same = code == 0
        if same:
            verify_store(out)
            store = open_store(out)
            for split, data in want.items():
                got = store.load(split, include_skipped=True)
                same = same and all(
                    np.array_equal(getattr(got, key), getattr(data, key))
                    for key in ("features", "labels", "ids")
                )
        left = leftovers(folder)
        details.append({"trial": trial, "killed": killed, "same": same, "leftovers": left})
    return summary(details, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="kill trials of alfm run")
    parser.add_argument("--extractions", type=int, default=5, help="kill trials of extraction")
    parser.add_argument("--out", default="/tmp/alfm-kills", help="work folder (emptied)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill delays")
    args = parser.parse_args()
    work = Path(args.out)
    shutil.rmtree(work, ignore_errors=True)
    (work / "runs").mkdir(parents=True)
    (work / "extractions").mkdir()
    rng = random.Random(args.seed)
    report = {
        "runs": run_trials(args.runs, work / "runs", rng),
        "extractions": extraction_trials(args.extractions, work / "extractions", rng),
    }
    print(json.dumps(report, indent=1))
    total = sum(r["trials"] for r in report.values())
    print(f"kills survived: {sum(r['survived'] for r in report.values())}/{total}")


if __name__ == "__main__":
    main()
