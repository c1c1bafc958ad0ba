"""Hand-made run Parquets in the format alfm.run writes, for the results and plots tests."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def write_run(
    path: Path,
    accuracy: Sequence[float],
    *,
    strategy: str = "random",
    seed: int = 1,
    model: str = "m",
    dataset: str = "d",
    init: str = "random",
    evaluations: int | None = None,
    step: int = 10,
    query_seconds: float = 0.01,
    params: dict | None = None,
    label: str | None = None,
    probe: dict | None = None,
) -> Path:
    """One run file like alfm.run writes: rounds 1..n, ``num_labeled = step·round``, query seconds
    on every round but the last, the run config (``budget.evaluations`` = ``evaluations`` or n) in
    the ``alfm`` schema metadata (with ``label`` and ``probe`` overrides)."""
    n = len(accuracy)
    frame = pd.DataFrame(
        {
            "round": range(1, n + 1),
            "num_labeled": [step * r for r in range(1, n + 1)],
            "accuracy": list(accuracy),
            "macro_f1": list(accuracy),
            "balanced_accuracy": list(accuracy),
            "auroc": list(accuracy),
            "classes_seen": [min(r + 1, 10) for r in range(n)],
            "train_seconds": [0.1] * n,
            "eval_seconds": [0.05] * n,
            "query_seconds": [query_seconds] * (n - 1) + [float("nan")],
            "peak_host_mb": [100.0 + r for r in range(n)],
            "peak_device_mb": [float("nan")] * n,
            "model": model,
            "dataset": dataset,
            "strategy": strategy,
            "init": init,
            "seed": seed,
        }
    )
    table = pa.Table.from_pandas(frame, preserve_index=False)
    config = {
        "strategy": strategy,
        "strategy_params": dict(params or {}),
        "init": init,
        "seed": seed,
        "budget": {"evaluations": evaluations or n},
        "label": label,
        "probe": dict(probe or {}),
    }
    metadata = {"config": config, "rounds": n, "complete": n == (evaluations or n)}
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), b"alfm": json.dumps(metadata).encode()}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path
