"""One active-learning run: initial pool, then rounds of train probe → evaluate → query.

A run is a pure function of its :class:`RunConfig` and the feature store: every random draw comes
from a generator seeded by (seed, round, purpose), so a run resumed from its checkpoint, or
extended to more evaluations, is bit-identical (on CPU) to one computed in a single go.

Files of a run written to ``OUT`` (all atomically: temporary file, then ``os.replace``):

- ``OUT`` — Parquet, one row per evaluation round (:data:`RECORD_COLUMNS`), the run config and
  provenance as JSON in the schema metadata under the key ``"alfm"``;
- ``OUT.indices.npz`` — the indices into the train split added before each round (``round_1`` is
  the initial pool), so the labeled set of round r is the concatenation of ``round_1 … round_r``;
- ``OUT.ckpt`` — the state after the last finished round, rewritten after every round.

Rounds are numbered from 1 (the evaluation of the initial pool) to ``budget.evaluations``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import resource
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    roc_auc_score,
)
from tqdm.auto import tqdm

import alfm
from alfm.budget import BudgetConfig, check_known_keys, checked_schedule
from alfm.devices import allow_tf32, resolve_device
from alfm.records import RECORD_COLUMNS
from alfm.store import SplitData, open_store, store_identity

DEVICES = ("auto", "cpu", "cuda")
CHECKPOINT_FORMAT = 2
#: RunConfig fields that may change between invocations of one run: where the store lives, the
#: device and the display label (``budget.evaluations`` may change too: a longer run extends).
RESUMABLE_FIELDS = ("features", "device", "label")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one AL run (the keys of ``experiments.yaml``'s run entries).

    ``features``: feature store path; ``strategy``/``strategy_params``: query strategy name (or
    ``module:Class``) and its hyperparameters; ``init``/``init_params``: initial-pool strategy
    (default ``"random"``: the same seed and init give the same initial pool for every query
    strategy); ``seed``; ``budget`` (:class:`~alfm.budget.BudgetConfig`); ``probe``: overrides of
    :class:`~alfm.probe.ProbeConfig` fields; ``device``: ``auto`` (CUDA when available), ``cpu``
    or ``cuda``; ``tf32``: CUDA float32 matmuls in TF32 (~2× faster BALD and Typiclust queries
    at 1M points; part of the run's identity); ``label``: optional display name of the strategy
    entry (results tables use it to tell apart one strategy run with two parameter sets).
    """

    features: str
    strategy: str
    seed: int
    strategy_params: dict[str, Any] = field(default_factory=dict)
    init: str = "random"
    init_params: dict[str, Any] = field(default_factory=dict)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    probe: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    tf32: bool = False
    label: str | None = None

    def __post_init__(self) -> None:
        for name in ("features", "strategy", "init"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"run config {name!r} must be a non-empty string, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"run config 'seed' must be a non-negative integer, got {self.seed!r}")
        for name in ("strategy_params", "init_params", "probe"):
            value = getattr(self, name)
            if not isinstance(value, dict):
                raise ValueError(f"run config {name!r} must be a mapping, got {value!r}")
            try:
                json.dumps(value)
            except TypeError as err:
                raise ValueError(f"run config {name!r} must be JSON-serializable: {err}") from err
        if not isinstance(self.budget, BudgetConfig):
            raise ValueError(f"run config 'budget' must be a BudgetConfig, got {self.budget!r}")
        if self.label is not None and not isinstance(self.label, str):
            raise ValueError(f"run config 'label' must be a string, got {self.label!r}")
        if not isinstance(self.tf32, bool):
            raise ValueError(f"run config 'tf32' must be true or false, got {self.tf32!r}")
        if self.device not in DEVICES:
            raise ValueError(
                f"run config 'device' must be one of {', '.join(DEVICES)}, got {self.device!r}"
            )
        probe_config(self.probe)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """Build from a mapping (``budget`` nested); unknown or missing keys are errors."""
        check_known_keys(data, cls, "run config")
        missing = [k for k in ("features", "strategy", "seed") if data.get(k) is None]
        if missing:
            raise ValueError(f"run config is missing {', '.join(missing)}")
        values = dict(data)
        values["features"] = str(values["features"])
        budget = values.get("budget", {})
        if not isinstance(budget, BudgetConfig):
            values["budget"] = BudgetConfig.from_dict(dict(budget or {}))
        for name in ("strategy_params", "init_params", "probe"):
            if values.get(name) is None:
                values[name] = {}
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict that :meth:`from_dict` turns back into an equal config."""
        data = dataclasses.asdict(self)
        data["budget"] = self.budget.to_dict()
        return data


def probe_config(overrides: Mapping[str, Any]) -> Any:
    """The :class:`~alfm.probe.ProbeConfig` with ``overrides``; unknown keys name the culprit."""
    from alfm.probe import ProbeConfig

    known = {f.name for f in dataclasses.fields(ProbeConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(
            f"unknown probe key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}"
        )
    return ProbeConfig(**overrides)


def round_generator(seed: int, round_number: int, purpose: str, device: str) -> torch.Generator:
    """A generator seeded from (seed, round, purpose) alone, so resuming needs no RNG state."""
    digest = hashlib.blake2b(f"alfm/{seed}/{round_number}/{purpose}".encode(), digest_size=8)
    generator = torch.Generator(device=device)
    generator.manual_seed(int.from_bytes(digest.digest(), "little") & (2**63 - 1))
    return generator


def evaluate(proba: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, macro F1, balanced accuracy and weighted one-vs-rest AUROC (scikit-learn).

    ``proba`` is (N, C) over all C classes of the dataset, so classes the probe never saw keep
    their column. Macro F1 and balanced accuracy average over the classes present in ``labels``;
    AUROC is one-vs-rest per present class on its probability column, weighted by support (NaN
    when fewer than two classes are present).
    """
    pred = proba.argmax(axis=1)
    present = np.unique(labels)
    with warnings.catch_warnings():
        # Predictions of classes absent from the test labels are ignored by balanced accuracy.
        warnings.simplefilter("ignore", UserWarning)
        balanced = balanced_accuracy_score(labels, pred)
    if len(present) < 2:
        auroc = math.nan
    else:
        onehot = labels[:, None] == present[None, :]
        auroc = roc_auc_score(onehot, proba[:, present], average="weighted")
    return {
        "accuracy": float(accuracy_score(labels, pred)),
        "macro_f1": float(f1_score(labels, pred, labels=present, average="macro", zero_division=0)),
        "balanced_accuracy": float(balanced),
        "auroc": float(auroc),
    }


def run_active_learning(
    config: RunConfig | Mapping[str, Any],
    out: str | Path,
    *,
    stop_round: int | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Run (or resume, or extend) one AL run and write its results to ``out``.

    Continues from ``OUT.ckpt`` when it exists and belongs to the same run (a checkpoint of another
    store, strategy, init, seed, budget or probe is an error). ``stop_round=b`` advances the run
    only to round b and writes ``out`` with rounds 1 … b; nothing is computed when the checkpoint
    already holds b rounds. Returns the records written to ``out``.
    """
    if not isinstance(config, RunConfig):
        config = RunConfig.from_dict(config)
    out = Path(out)
    evaluations = config.budget.evaluations
    target = evaluations if stop_round is None else stop_round
    if isinstance(target, bool) or not isinstance(target, int) or not 1 <= target <= evaluations:
        raise ValueError(f"stop_round must be an integer in 1..{evaluations}, got {stop_round!r}")
    device = resolve_device(config.device).type

    store = open_store(config.features)
    attrs = store.attrs
    train, test = store.load("train"), store.load("test")
    num_classes = _check_data(config.features, attrs, train, test)
    sizes = checked_schedule(config.budget, num_classes, len(train.labels))
    init_strategy, strategy = _create_strategies(config)
    probe_cfg = probe_config(config.probe)

    identity = run_identity(config, attrs)
    ckpt_path = _sidecar(out, ".ckpt")
    state = _load_checkpoint(ckpt_path, identity)

    from alfm.strategies import QueryContext, query

    pool = torch.as_tensor(train.features, dtype=torch.float32, device=device)
    pool_labels = torch.as_tensor(train.labels, device=device)
    test_features = torch.as_tensor(test.features, dtype=torch.float32, device=device)
    identity_columns = {
        "model": str(attrs.get("backbone")),
        "dataset": str(attrs.get("dataset")),
        "strategy": config.strategy,
        "init": config.init,
        "seed": config.seed,
    }

    def run_query(chosen: Any, round_number: int, probe: Any, budget: int) -> torch.Tensor:
        labeled = _labeled(state.added, round_number, device)
        ctx = QueryContext(
            features=pool,
            labeled=labeled,
            labels=pool_labels[labeled],
            num_classes=num_classes,
            probe=probe,
        )
        purpose = "init" if probe is None else "query"
        generator = round_generator(config.seed, round_number, purpose, device)
        return query(chosen, ctx, budget, generator).to("cpu", torch.int64)

    done = len(state.records)
    bar = tqdm(
        total=target,
        initial=min(done, target),
        desc=f"{config.strategy} seed {config.seed}",
        unit="round",
        disable=not progress,
    )
    with bar, allow_tf32(config.tf32):
        for round_number in range(done + 1, target + 1):
            with _peak_memory(device) as peak:
                if round_number == 1 and not state.added:
                    state.added.append(run_query(init_strategy, 0, None, sizes[0]))
                elif len(state.added) < round_number:
                    # Extension of a run that ended with no query: query with its last probe.
                    last = round_number - 1
                    probe = _restore_probe(state.probe_state, probe_cfg.dropout, device)
                    step = sizes[last] - sizes[last - 1]
                    seconds, chosen = _timed(device, run_query, strategy, last, probe, step)
                    state.records[-1]["query_seconds"] = seconds
                    state.added.append(chosen)
                record, probe = _evaluation_round(
                    config,
                    probe_cfg,
                    device,
                    round_number,
                    state,
                    pool,
                    pool_labels,
                    test_features,
                    test.labels,
                    num_classes,
                )
                if round_number < evaluations:
                    step = sizes[round_number] - sizes[round_number - 1]
                    seconds, chosen = _timed(device, run_query, strategy, round_number, probe, step)
                    record["query_seconds"] = seconds
                    state.added.append(chosen)
            record.update(peak_host_mb=peak.host_mb, peak_device_mb=peak.device_mb)
            record.update(identity_columns)
            state.records.append(record)
            state.probe_state = {k: v.detach().cpu().clone() for k, v in probe.state_dict().items()}
            state.computed.append(round_number)
            _save_checkpoint(ckpt_path, identity, state)
            bar.set_postfix(
                acc=f"{record['accuracy']:.3f}", labeled=record["num_labeled"], refresh=False
            )
            bar.update(1)

    frame = _records_frame(state.records[:target])
    metadata = {
        "config": config.to_dict(),
        "rounds": target,
        "complete": target == evaluations,
        "labeled_sizes": sizes[:target],
        "device": device,
        "identity": identity,
        "store": {"path": str(config.features), "attrs": attrs},
        "versions": _versions(),
    }
    _write_indices(_sidecar(out, ".indices.npz"), state.added[:target])
    _write_parquet(out, frame, metadata)
    return frame


def run_grid(
    configs: Iterable[RunConfig | Mapping[str, Any]],
    out_dir: str | Path,
    *,
    progress: bool = True,
) -> pd.DataFrame:
    """Run several configs one after the other in this process (resuming finished ones).

    Run ``i`` writes ``out_dir/<store name>/<label or strategy>_<init>_seed<seed>.parquet``.
    Returns the concatenated records, with a ``label`` column.
    """
    frames = []
    configs = [c if isinstance(c, RunConfig) else RunConfig.from_dict(c) for c in configs]
    for config in tqdm(configs, desc="runs", unit="run", disable=not progress):
        name = (config.label or config.strategy).replace(":", "_").replace("/", "_")
        file = f"{name}_{config.init}_seed{config.seed}.parquet"
        out = Path(out_dir) / Path(config.features).stem / file
        frame = run_active_learning(config, out, progress=False)
        frames.append(frame.assign(label=config.label or config.strategy))
    return pd.concat(frames, ignore_index=True)


@dataclass
class _State:
    """What the checkpoint holds: records so far, indices added per round, the last probe."""

    records: list[dict[str, Any]] = field(default_factory=list)
    # added[r-1]: indices added before round r; one more than records when the last round queried.
    added: list[torch.Tensor] = field(default_factory=list)
    probe_state: dict[str, torch.Tensor] | None = None
    # Rounds computed by every invocation, in order: each round appears once in a healthy run.
    computed: list[int] = field(default_factory=list)


def _evaluation_round(
    config: RunConfig,
    probe_cfg: Any,
    device: str,
    round_number: int,
    state: _State,
    pool: torch.Tensor,
    pool_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: np.ndarray,
    num_classes: int,
) -> tuple[dict[str, Any], Any]:
    """Train the probe on the labeled set of ``round_number`` and evaluate it on the test split."""
    from alfm.probe import train_probe

    labeled = _labeled(state.added, round_number, device)
    generator = round_generator(config.seed, round_number, "probe", device)
    features, labels = pool[labeled], pool_labels[labeled]
    train_seconds, probe = _timed(
        device, train_probe, features, labels, num_classes, probe_cfg, generator
    )
    probe.eval()

    def predict() -> np.ndarray:
        with torch.no_grad():
            return probe.predict_proba(test_features).float().cpu().numpy()

    eval_seconds, proba = _timed(device, predict)
    record: dict[str, Any] = {
        "round": round_number,
        "num_labeled": len(labeled),
        **evaluate(proba, test_labels),
        "classes_seen": int(torch.unique(pool_labels[labeled]).numel()),
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "query_seconds": math.nan,
    }
    return record, probe


def _labeled(added: list[torch.Tensor], round_number: int, device: str) -> torch.Tensor:
    """Labeled indices before round ``round_number`` (empty before the initial pool)."""
    parts = added[:round_number]
    if not parts:
        return torch.empty(0, dtype=torch.int64, device=device)
    return torch.cat(parts).to(device)


def _timed(device: str, fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    """(seconds, result) of ``fn(*args)``, synchronizing CUDA so GPU work is counted."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn(*args)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


@dataclass
class _Peak:
    host_mb: float = math.nan
    device_mb: float = math.nan


@contextmanager
def _peak_memory(device: str) -> Iterator[_Peak]:
    """Peak resident host memory (and CUDA allocator peak) within the block, in MiB.

    On Linux the kernel's high-water mark is reset at the start (``/proc/self/clear_refs``) so the
    peak is this block's; elsewhere it is the process peak so far.
    """
    peak = _Peak()
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    yield peak
    peak.host_mb = _host_peak_mb()
    if device == "cuda":
        peak.device_mb = torch.cuda.max_memory_allocated() / 2**20


def _host_peak_mb() -> float:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1 if platform.system() == "Darwin" else 1024  # ru_maxrss: bytes on macOS, else KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _check_data(path: str, attrs: Mapping[str, Any], train: SplitData, test: SplitData) -> int:
    """Validate the store's data for a run; returns the number of classes."""
    num_classes = attrs.get("num_classes")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(
            f"feature store {path} has no valid num_classes attribute: {num_classes!r}"
        )
    for split, data in (("train", train), ("test", test)):
        if len(data.labels) == 0:
            raise ValueError(f"feature store {path} has an empty {split} split")
        finite = np.isfinite(data.features).all(axis=1)
        if not finite.all():
            rows = np.flatnonzero(~finite)
            raise ValueError(
                f"feature store {path}: {len(rows)} {split} rows have NaN or infinite features "
                f"(first rows {rows[:5].tolist()})"
            )
        if data.labels.min() < 0 or data.labels.max() >= num_classes:
            raise ValueError(
                f"feature store {path}: {split} labels must lie in 0..{num_classes - 1}, found "
                f"{data.labels.min()}..{data.labels.max()}"
            )
    unseen = np.setdiff1d(test.labels, train.labels)
    if len(unseen):
        raise ValueError(
            f"feature store {path}: test labels {unseen.tolist()} never occur in the train split, "
            "so no probe can learn them"
        )
    return num_classes


def _create_strategies(config: RunConfig) -> tuple[Any, Any]:
    """(initial-pool strategy, query strategy), with errors naming the config key."""
    from alfm.strategies import create_strategy

    made = []
    for key, name, params in (
        ("init", config.init, config.init_params),
        ("strategy", config.strategy, config.strategy_params),
    ):
        try:
            made.append(create_strategy(name, **params))
        except TypeError as err:
            raise ValueError(f"bad {key} parameters for {name!r}: {err}") from err
    if made[0].requires_probe:
        raise ValueError(
            f"init strategy {config.init!r} needs a trained probe; an initial pool must come from "
            "a strategy that works without one (e.g. random, centroid, typiclust, probcover)"
        )
    return made[0], made[1]


def run_identity(config: RunConfig, store_attrs: Mapping[str, Any]) -> dict[str, Any]:
    """What defines a run's rounds: its config except :data:`RESUMABLE_FIELDS` and
    ``budget.evaluations``, and the identity of its feature store (``created`` included, so a
    re-extracted store starts afresh). The one definition used by the checkpoint check, the
    workflow's state key and the run's Parquet metadata.
    """
    run = {k: v for k, v in config.to_dict().items() if k not in RESUMABLE_FIELDS}
    run["budget"] = {k: v for k, v in run["budget"].items() if k != "evaluations"}
    store = {**store_identity(store_attrs), "created": store_attrs.get("created")}
    return json.loads(json.dumps({"run": run, "store": store}, sort_keys=True, default=str))


def identity_key(identity: Mapping[str, Any]) -> str:
    """A short stable hash of a :func:`run_identity` (16 hex digits)."""
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in _differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    if old != new:
        return [f"{prefix.rstrip('.')}: {old!r} there, {new!r} here"]
    return []


def _sidecar(out: Path, suffix: str) -> Path:
    return out.with_name(out.name + suffix)


def _load_checkpoint(path: Path, identity: dict[str, Any]) -> _State:
    if not path.exists():
        return _State()
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or foreign files
        raise ValueError(f"checkpoint {path} cannot be read ({err}); delete it to restart") from err
    if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an alfm run checkpoint (format {CHECKPOINT_FORMAT})")
    differences = _differences(json.loads(saved["identity"]), identity)
    if differences:
        raise ValueError(
            f"checkpoint {path} belongs to a different run ({'; '.join(differences)}); "
            "choose another output path or delete the checkpoint"
        )
    return _State(
        records=list(saved["records"]),
        added=list(saved["added"]),
        probe_state=saved["probe_state"],
        computed=list(saved["computed"]),
    )


def read_checkpoint(out: str | Path) -> dict[str, Any]:
    """The checkpoint of the run writing ``out``: ``records``, ``added``, ``computed``, ..."""
    return torch.load(_sidecar(Path(out), ".ckpt"), map_location="cpu", weights_only=True)


def _save_checkpoint(path: Path, identity: dict[str, Any], state: _State) -> None:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "identity": json.dumps(identity, sort_keys=True),
        "records": state.records,
        "added": state.added,
        "probe_state": state.probe_state,
        "computed": state.computed,
    }
    with _atomic(path) as tmp:
        torch.save(payload, tmp)


def _restore_probe(state: dict[str, torch.Tensor] | None, dropout: float, device: str) -> Any:
    """The probe of the checkpoint's last round, rebuilt from its state dict."""
    from alfm.probe import Probe

    if state is None:
        raise ValueError("the checkpoint holds no probe to extend the run from; delete it")
    num_classes, dim = state["linear.weight"].shape
    probe = Probe(dim, num_classes, dropout)
    probe.load_state_dict(state)
    return probe.to(device).eval()


@contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it into place only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh name created by the writer itself, so the file gets the usual umask permissions.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _records_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(records, columns=list(RECORD_COLUMNS))
    ints = ("round", "num_labeled", "classes_seen", "seed")
    return frame.astype({c: "int64" for c in ints})


def _write_indices(path: Path, added: list[torch.Tensor]) -> None:
    arrays = {f"round_{r}": idx.numpy() for r, idx in enumerate(added, start=1)}
    with _atomic(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def read_indices(out: str | Path) -> list[np.ndarray]:
    """Indices added before each round of the run written to ``out`` (index 0: initial pool)."""
    with np.load(_sidecar(Path(out), ".indices.npz")) as data:
        return [data[f"round_{r}"] for r in range(1, len(data.files) + 1)]


def _write_parquet(path: Path, frame: pd.DataFrame, metadata: dict[str, Any]) -> None:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    existing = table.schema.metadata or {}
    table = table.replace_schema_metadata(
        {**existing, b"alfm": json.dumps(metadata, sort_keys=True, default=str).encode()}
    )
    with _atomic(path) as tmp:
        pq.write_table(table, tmp)


def read_run_metadata(path: str | Path) -> dict[str, Any]:
    """The ``"alfm"`` metadata (config, provenance) of a run's Parquet file."""
    metadata = pq.read_schema(path).metadata or {}
    if b"alfm" not in metadata:
        raise ValueError(f"{path} has no 'alfm' metadata; is it an alfm run result?")
    return json.loads(metadata[b"alfm"])


def _versions() -> dict[str, str]:
    import sklearn

    return {
        "alfm": alfm.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
    }
