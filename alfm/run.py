"""One active-learning run: initial pool, then rounds of train probe → evaluate → query.

A run is a pure function of its :class:`RunConfig` and the feature store: every random draw comes
from a generator seeded by (seed, round, purpose), and per-run state (a strategy's graph, built
by :meth:`Strategy.prepare <alfm.strategies.Strategy.prepare>`) from one seeded by (seed,
"prepare"), so a run resumed from its checkpoint, advanced one round per process, or extended to
more evaluations, is bit-identical (on CPU) to one computed in a single go.
:class:`ActiveLearningRun` holds one run in this process and does it step by step, taking its
batches from the steps of :class:`RoundSteps`, which the labeling loop (:mod:`alfm.labeling`)
shares; :func:`run_active_learning` is the entry point.

Files of a run written to ``OUT`` (all atomically: temporary file, then ``os.replace``):

- ``OUT`` — Parquet, one row per evaluation round (:data:`RECORD_COLUMNS`), the run config and
  provenance as JSON in the schema metadata under the key ``"alfm"``;
- ``OUT.indices.npz`` — the indices into the train split added before each round (``round_1`` is
  the initial pool), so the labeled set of round r is the concatenation of ``round_1 … round_r``;
- ``OUT.ckpt`` — the state after the last finished round, rewritten after every round.

Output safety: ``OUT`` (a file path in a writable folder) is checked before anything is computed;
an existing ``OUT`` that is not a result of this very run (its Parquet metadata's identity) is
never overwritten, nor one holding more rounds than would be written; while a process advances a
run it holds an exclusive lock (``fcntl.flock`` on ``.OUT.lock``, which names its PID), so a
second process on the same ``OUT`` stops with an error naming the first; temporary files that
a killed writer left beside ``OUT`` are removed by the next run of it.

Rounds are numbered from 1 (the evaluation of the initial pool) to ``budget.evaluations``.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import math
import os
import platform
import re
import resource
import socket
import time
import uuid
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
from tqdm.auto import tqdm

import alfm
from alfm.budget import BudgetConfig, checked_schedule
from alfm.config import DEVICES, Config, check_known_keys, setting
from alfm.devices import allow_tf32, resolve_device
from alfm.pipeline import path_name
from alfm.probe import Probe, ProbeConfig, build_probe, train_probe
from alfm.propagation import PropagationGraph, SslConfig, build_graph, propagated_targets
from alfm.records import RECORD_COLUMNS
from alfm.store import UNKNOWN_LABEL, SplitData, open_store, store_identity
from alfm.strategies import QueryContext, Strategy, create_strategy, query

CHECKPOINT_FORMAT = 2
MAX_SEED = 2**63 - 1  # records keep the seed in an int64 column
#: RunConfig fields that may change between invocations of one run: where the store lives, the
#: device and the display label (``budget.evaluations`` may change too: a longer run extends).
RESUMABLE_FIELDS = ("features", "device", "label")


@dataclass(frozen=True)
class RunConfig(Config):
    """Everything that defines one AL run (the keys of ``experiments.yaml``'s run entries).

    ``init`` defaults to ``"random"``: the same seed and init give the same initial pool for
    every query strategy. ``probe`` holds overrides of :class:`~alfm.probe.ProbeConfig` fields
    (the classifier among them), ``ssl`` of :class:`~alfm.propagation.SslConfig` fields (label
    propagation); ``label`` tells apart, in results tables, one strategy run with two parameter
    sets.
    """

    section = "run config"
    key_format = "run config {!r}"

    features: str = setting(minLength=1, help="feature store path")
    strategy: str = setting(minLength=1, help="query strategy name or module:Class")
    seed: int = setting(
        minimum=0, maximum=MAX_SEED, help="seed of every random draw of the run (0 .. 2^63-1)"
    )
    strategy_params: dict[str, Any] = setting(
        default_factory=dict, help="hyperparameters of the query strategy"
    )
    init: str = setting("random", minLength=1, help="initial-pool strategy")
    init_params: dict[str, Any] = setting(
        default_factory=dict, help="hyperparameters of the initial-pool strategy"
    )
    budget: BudgetConfig = setting(default_factory=BudgetConfig, help="labeling budget")
    probe: dict[str, Any] = setting(default_factory=dict, help="overrides of ProbeConfig fields")
    ssl: dict[str, Any] = setting(
        default_factory=dict, help="overrides of SslConfig fields (label propagation)"
    )
    device: str = setting("auto", enum=DEVICES, help="auto (CUDA when available), cpu or cuda")
    tf32: bool = setting(
        False,
        help="CUDA float32 matmuls in TF32 (~2x faster BALD and Typiclust queries at 1M points; "
        "part of the run's identity)",
    )
    label: str | None = setting(None, help="display name of the strategy entry")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("strategy_params", "init_params", "probe", "ssl"):
            try:
                json.dumps(getattr(self, name))
            except TypeError as err:
                raise ValueError(f"run config {name!r} must be JSON-serializable: {err}") from err
        ProbeConfig.from_dict(self.probe)
        SslConfig.from_dict(self.ssl)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """Build from a mapping (``budget`` nested); unknown or missing keys are errors."""
        check_known_keys(data, cls, cls.section)
        missing = [k for k in ("features", "strategy", "seed") if data.get(k) is None]
        if missing:
            raise ValueError(f"run config is missing {', '.join(missing)}")
        values = dict(data)
        values["features"] = str(values["features"])
        budget = values.get("budget")
        if not isinstance(budget, BudgetConfig):
            values["budget"] = BudgetConfig.from_dict(budget or {})
        for name in ("strategy_params", "init_params", "probe", "ssl"):
            if values.get(name) is None:
                values[name] = {}
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict that :meth:`from_dict` turns back into an equal config."""
        return {**super().to_dict(), "budget": self.budget.to_dict()}


def seeded_generator(seed: int, *key: object, device: str) -> torch.Generator:
    """A generator seeded from (seed, *key) alone, so resuming needs no RNG state."""
    text = "/".join(["alfm", str(seed), *map(str, key)])
    digest = hashlib.blake2b(text.encode(), digest_size=8)
    generator = torch.Generator(device=device)
    generator.manual_seed(int.from_bytes(digest.digest(), "little") & (2**63 - 1))
    return generator


def round_generator(seed: int, round_number: int, purpose: str, device: str) -> torch.Generator:
    """The generator of one purpose (``init``, ``probe``, ``query``) in one round."""
    return seeded_generator(seed, round_number, purpose, device=device)


def evaluate(proba: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, macro F1, balanced accuracy and weighted one-vs-rest AUROC, as scikit-learn's
    ``accuracy_score``, ``f1_score(average="macro", zero_division=0)``,
    ``balanced_accuracy_score`` and ``roc_auc_score(average="weighted")`` compute them, in numpy:
    importing ``sklearn.metrics`` cost every AL job ~1.5 s (tests/test_run.py compares both).

    ``proba`` is (N, C) over all C classes of the dataset, so classes the probe never saw keep
    their column. Macro F1 and balanced accuracy average over the classes present in ``labels``;
    AUROC is one-vs-rest per present class on its probability column, weighted by support (NaN
    when fewer than two classes are present).
    """
    pred = proba.argmax(axis=1)
    present = np.unique(labels)
    truth = labels[:, None] == present[None, :]
    support = truth.sum(axis=0)
    hits = (truth & (pred == labels)[:, None]).sum(axis=0)
    predicted = (pred[:, None] == present[None, :]).sum(axis=0)
    # F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (support + predicted); support >= 1 for each class
    f1 = 2 * hits / (support + predicted)
    if len(present) < 2:
        auroc = math.nan
    else:
        aucs = [_binary_auroc(proba[:, c], truth[:, i]) for i, c in enumerate(present)]
        auroc = float(np.average(aucs, weights=support))
    return {
        "accuracy": float(np.mean(pred == labels)),
        "macro_f1": float(np.mean(f1)),
        "balanced_accuracy": float(np.mean(hits / support)),
        "auroc": float(auroc),
    }


def _binary_auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """The area under the ROC curve: the Mann-Whitney statistic over average ranks (a tie
    counts one half)."""
    order = np.argsort(scores, kind="stable")
    ranked = scores[order]
    first = np.r_[True, ranked[1:] != ranked[:-1]]
    starts = np.flatnonzero(first)
    counts = np.diff(np.r_[starts, len(scores)])
    ranks = np.empty(len(scores))
    ranks[order] = (starts + (counts + 1) / 2)[np.cumsum(first) - 1]
    n_pos = int(positive.sum())
    n_neg = len(scores) - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def run_active_learning(
    config: RunConfig | Mapping[str, Any],
    out: str | Path,
    *,
    stop_round: int | None = None,
    progress: bool = True,
    shorten: bool = False,
) -> pd.DataFrame:
    """Run (or resume, or extend) one AL run and write its results to ``out``.

    Continues from ``OUT.ckpt`` when it exists and belongs to the same run (a checkpoint of another
    store, strategy, init, seed, budget or probe is an error). ``stop_round=b`` advances the run
    only to round b and writes ``out`` with rounds 1 … b; nothing is computed when the checkpoint
    already holds b rounds (an explicit ``stop_round`` may write fewer rounds than ``out`` held).
    Without it, an ``out`` that holds more rounds than ``budget.evaluations`` is an error unless
    ``shorten`` (the workflow's state file, whose checkpoint keeps them). Output checks and the
    run's lock: the module docstring. Returns the records written to ``out``.
    """
    if not isinstance(config, RunConfig):
        config = RunConfig.from_dict(config)
    evaluations = config.budget.evaluations
    target = evaluations if stop_round is None else stop_round
    if isinstance(target, bool) or not isinstance(target, int) or not 1 <= target <= evaluations:
        raise ValueError(f"stop_round must be an integer in 1..{evaluations}, got {stop_round!r}")
    run = ActiveLearningRun(config, out)
    with run.locked():
        if stop_round is None and not shorten:
            run.check_rounds(target)
        run.advance_to(target, progress=progress)
        return run.write(target)


class RoundSteps:
    """The steps of AL rounds over one pool that need no labels but the labeled set's: the
    initial batch, the probe of a round and the batch queried after it, each drawing from its
    round's (seed, round, purpose) generator, plus per-run strategy state.

    The one definition of which generator each step of a round uses: the benchmark
    (:class:`ActiveLearningRun`) and the real labeling loop (:mod:`alfm.labeling`) both take
    their batches from these methods, so the same labels give the same selections in both.

    - :meth:`train_classifier` and :meth:`select` take any generator;
    - per-run state, which may depend only on the pool and the seed, is built once per process
      on first use: :meth:`prepare_strategy` with the (seed, "prepare") generator, and
      :meth:`propagation_graph` (deterministic: exact kNN of the pool).
    """

    def __init__(self, config: RunConfig, pool: torch.Tensor, num_classes: int) -> None:
        self.config = config
        self.device = pool.device.type
        self.pool = pool
        self.num_classes = num_classes
        self.init_strategy, self.strategy = _create_strategies(config)
        self.probe_config = ProbeConfig.from_dict(config.probe)
        self.ssl_config = SslConfig.from_dict(config.ssl)
        self._prepared: list[Strategy] = []
        self._graph: PropagationGraph | None = None

    def prepare_strategy(self, strategy: Strategy) -> None:
        """``strategy.prepare`` on the pool (no labeled points, no probe) with the (seed,
        "prepare") generator, once per strategy object in this process."""
        if any(strategy is done for done in self._prepared):
            return
        none = torch.empty(0, dtype=torch.int64, device=self.device)
        ctx = QueryContext(self.pool, none, none, self.num_classes)
        strategy.prepare(ctx, seeded_generator(self.config.seed, "prepare", device=self.device))
        self._prepared.append(strategy)

    def propagation_graph(self) -> PropagationGraph:
        """The label-propagation graph of the pool (``ssl``), built on first use."""
        if self._graph is None:
            ssl = self.ssl_config
            self._graph = build_graph(self.pool, ssl.knn, ssl.gamma)
        return self._graph

    def train_classifier(
        self, labeled: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> Probe:
        """The probe trained on the pool rows ``labeled`` with ``labels``, in eval mode; with
        ``ssl.enable``, on every pool row with the targets propagated from them (see
        :mod:`alfm.propagation`)."""
        config = self.probe_config
        ssl = self.ssl_config
        if not ssl.enable:
            features = self.pool[labeled]
            return train_probe(features, labels, self.num_classes, config, generator).eval()
        f = self.propagation_graph().propagate(
            labeled, labels, self.num_classes, ssl.alpha, ssl.n_iter
        )
        targets, weights = propagated_targets(f)
        del f
        return train_probe(self.pool, targets, self.num_classes, config, generator, weights)

    def select(
        self,
        strategy: Strategy,
        labeled: torch.Tensor,
        labels: torch.Tensor,
        probe: Probe | None,
        budget: int,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """``budget`` new pool indices (int64, CPU) from ``strategy`` given the labeled set, its
        labels and the probe trained on them (None for an initial pool); prepares it first."""
        self.prepare_strategy(strategy)
        ctx = QueryContext(self.pool, labeled, labels, self.num_classes, probe)
        return query(strategy, ctx, budget, generator).to("cpu", torch.int64)

    def initial_batch(self, budget: int) -> torch.Tensor:
        """The initial pool of ``budget`` points: the init strategy's pick from the raw features
        with the (seed, 0, "init") generator."""
        none = torch.empty(0, dtype=torch.int64, device=self.device)
        generator = round_generator(self.config.seed, 0, "init", self.device)
        return self.select(self.init_strategy, none, none, None, budget, generator)

    def round_probe(self, round_number: int, labeled: torch.Tensor, labels: torch.Tensor) -> Probe:
        """The probe of round ``round_number`` on its labeled set, with the (seed, round,
        "probe") generator."""
        generator = round_generator(self.config.seed, round_number, "probe", self.device)
        return self.train_classifier(labeled, labels, generator)

    def query_batch(
        self,
        round_number: int,
        labeled: torch.Tensor,
        labels: torch.Tensor,
        probe: Probe,
        budget: int,
    ) -> torch.Tensor:
        """The ``budget`` points queried after round ``round_number`` with its probe, with the
        (seed, round, "query") generator."""
        generator = round_generator(self.config.seed, round_number, "query", self.device)
        return self.select(self.strategy, labeled, labels, probe, budget, generator)


class ActiveLearningRun(RoundSteps):
    """One benchmark run in this process: its config, the store's data on the run's device, its
    strategies and the checkpoint state, with one method per step.

    - The reusable steps of :class:`RoundSteps`.
    - The benchmark's rounds: :meth:`initial_pool`, :meth:`train_and_evaluate` and
      :meth:`query_after` make up :meth:`compute_round`, which checkpoints;
      :meth:`advance_to` computes the rounds up to a target; :meth:`write` writes the outputs.

    Loading validates the store, the budget against the pool and the strategies, and refuses a
    checkpoint of another run, all before anything is written.
    """

    def __init__(self, config: RunConfig, out: str | Path) -> None:
        self.out = Path(out)
        check_output_path(self.out)
        device = resolve_device(config.device).type
        store = open_store(config.features)
        self.store_attrs = store.attrs
        train, test = store.load("train"), store.load("test")
        num_classes = _check_data(config.features, self.store_attrs, train, test)
        self.sizes = checked_schedule(config.budget, num_classes, len(train.labels))
        pool = torch.as_tensor(train.features, dtype=torch.float32, device=device)
        super().__init__(config, pool, num_classes)
        self.identity = run_identity(config, self.store_attrs)
        self.checkpoint = _sidecar(self.out, ".ckpt")
        self.state = _load_checkpoint(self.checkpoint, self.identity)
        self.existing_rounds = _existing_rounds(self.out, self.identity)
        self.pool_labels = torch.as_tensor(train.labels, device=device)
        self.test_features = torch.as_tensor(test.features, dtype=torch.float32, device=device)
        self.test_labels = test.labels

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the run's lock (:func:`run_lock`) around advancing and writing it: under the
        lock, ``OUT`` and the checkpoint are checked and read again (another process may have
        advanced the run meanwhile) and a killed writer's temporary files are removed."""
        with run_lock(self.out):
            remove_orphans(self.out)
            self.state = _load_checkpoint(self.checkpoint, self.identity)
            self.existing_rounds = _existing_rounds(self.out, self.identity)
            yield

    def check_rounds(self, target: int) -> None:
        """An error when ``OUT`` holds more rounds than ``target``: writing would replace
        results with fewer."""
        if self.existing_rounds > target:
            raise ValueError(
                f"{self.out} holds {self.existing_rounds} rounds of this run; writing {target} "
                f"would drop rounds {target + 1}..{self.existing_rounds}: ask for "
                f"{self.existing_rounds} or more evaluations, or choose another --out"
            )

    # --- the benchmark's rounds -------------------------------------------------------------

    def labeled_before(self, round_number: int) -> torch.Tensor:
        """Labeled indices of round ``round_number`` (empty before the initial pool)."""
        return _labeled(self.state.added, round_number, self.device)

    def initial_pool(self) -> torch.Tensor:
        """The initial pool of the schedule's size (round 0)."""
        return self.initial_batch(self.sizes[0])

    def train_and_evaluate(self, round_number: int) -> tuple[dict[str, Any], Probe]:
        """Train the probe on the labeled set of ``round_number`` and evaluate it on the test
        split: (the round's record, the probe)."""
        labeled = self.labeled_before(round_number)
        labels = self.pool_labels[labeled]
        train_seconds, probe = _timed(self.device, self.round_probe, round_number, labeled, labels)

        def predict() -> np.ndarray:
            with torch.no_grad():
                return probe.predict_proba(self.test_features).float().cpu().numpy()

        eval_seconds, proba = _timed(self.device, predict)
        record: dict[str, Any] = {
            "round": round_number,
            "num_labeled": len(labeled),
            **evaluate(proba, self.test_labels),
            "classes_seen": int(torch.unique(labels).numel()),
            "train_seconds": train_seconds,
            "eval_seconds": eval_seconds,
            "query_seconds": math.nan,
        }
        return record, probe

    def query_after(self, round_number: int, probe: Probe) -> float:
        """Query the points added before round ``round_number + 1`` with the probe of round
        ``round_number`` and add them; returns the query's seconds."""
        labeled = self.labeled_before(round_number)
        step = self.sizes[round_number] - self.sizes[round_number - 1]
        seconds, chosen = _timed(
            self.device,
            self.query_batch,
            round_number,
            labeled,
            self.pool_labels[labeled],
            probe,
            step,
        )
        self.state.added.append(chosen)
        return seconds

    def compute_round(self, round_number: int) -> dict[str, Any]:
        """Compute round ``round_number`` (the one after the checkpoint's last): the initial pool
        or a pending query, training and evaluation, the query after it (but after the last
        round); append its record and checkpoint. Returns the record."""
        state = self.state
        with _peak_memory(self.device) as peak:
            if round_number == 1 and not state.added:
                state.added.append(self.initial_pool())
            elif len(state.added) < round_number:
                # Extension of a run that ended with no query: query with its last probe.
                probe = _restore_probe(state.probe_state, self.probe_config, self.device)
                state.records[-1]["query_seconds"] = self.query_after(round_number - 1, probe)
            record, probe = self.train_and_evaluate(round_number)
            if round_number < self.config.budget.evaluations:
                record["query_seconds"] = self.query_after(round_number, probe)
        record.update(peak_host_mb=peak.host_mb, peak_device_mb=peak.device_mb)
        record.update(
            model=str(self.store_attrs.get("backbone")),
            dataset=str(self.store_attrs.get("dataset")),
            strategy=self.config.strategy,
            init=self.config.init,
            seed=self.config.seed,
        )
        state.records.append(record)
        state.probe_state = {k: v.detach().cpu().clone() for k, v in probe.state_dict().items()}
        state.computed.append(round_number)
        _save_checkpoint(self.checkpoint, self.identity, state)
        return record

    def advance_to(self, target: int, progress: bool = True) -> None:
        """Compute the rounds after the checkpoint's last up to ``target`` (none if it has them)."""
        done = len(self.state.records)
        bar = tqdm(
            total=target,
            initial=min(done, target),
            desc=f"{self.config.strategy} seed {self.config.seed}",
            unit="round",
            disable=not progress,
        )
        with bar, allow_tf32(self.config.tf32):
            for round_number in range(done + 1, target + 1):
                record = self.compute_round(round_number)
                bar.set_postfix(
                    acc=f"{record['accuracy']:.3f}", labeled=record["num_labeled"], refresh=False
                )
                bar.update(1)

    def write(self, target: int) -> pd.DataFrame:
        """Write ``out`` and its indices with rounds 1 … ``target``; returns the records."""
        config = self.config
        frame = _records_frame(self.state.records[:target])
        metadata = {
            "config": config.to_dict(),
            "rounds": target,
            "complete": target == config.budget.evaluations,
            "labeled_sizes": self.sizes[:target],
            "device": self.device,
            "identity": self.identity,
            "store": {"path": str(config.features), "attrs": self.store_attrs},
            "versions": _versions(),
        }
        _write_indices(_sidecar(self.out, ".indices.npz"), self.state.added[:target])
        _write_parquet(self.out, frame, metadata)
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
        name = path_name(config.label or config.strategy)
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
    for split, data in (("train", train), ("test", test)):
        unknown = int(np.sum(data.labels == UNKNOWN_LABEL))
        if unknown:
            raise ValueError(
                f"feature store {path}: {unknown} {split} rows have unknown labels (an unlabeled "
                "dataset, for alfm label); an AL benchmark run needs every label"
            )
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


def _create_strategies(config: RunConfig) -> tuple[Strategy, Strategy]:
    """(initial-pool strategy, query strategy), with errors naming the config key; one object
    serves both when they have the same name and parameters (its per-run state is built once)."""

    def create(key: str, name: str, params: dict[str, Any]) -> Strategy:
        try:
            return create_strategy(name, **params)
        except TypeError as err:
            raise ValueError(f"bad {key} parameters for {name!r}: {err}") from err

    init = create("init", config.init, config.init_params)
    same = (config.strategy, config.strategy_params) == (config.init, config.init_params)
    strategy = init if same else create("strategy", config.strategy, config.strategy_params)
    if init.requires_probe:
        raise ValueError(
            f"init strategy {config.init!r} needs a trained probe; an initial pool must come from "
            "a strategy that works without one (e.g. random, centroid, typiclust, probcover)"
        )
    return init, strategy


def run_identity(config: RunConfig, store_attrs: Mapping[str, Any]) -> dict[str, Any]:
    """What defines a run's rounds: its config except :data:`RESUMABLE_FIELDS` and
    ``budget.evaluations``, with the probe's and ``ssl``'s settings in full (so leaving a
    setting out and giving its default are one run), and the identity of its feature store
    (``created`` included, so a re-extracted store starts afresh). The one definition used by
    the checkpoint check, the workflow's state key and the run's Parquet metadata.
    """
    run = {k: v for k, v in config.to_dict().items() if k not in RESUMABLE_FIELDS}
    run["budget"] = {k: v for k, v in run["budget"].items() if k != "evaluations"}
    run["probe"] = ProbeConfig.from_dict(config.probe).to_dict()
    run["ssl"] = SslConfig.from_dict(config.ssl).to_dict()
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


SIDECARS = ("", ".ckpt", ".indices.npz")  # OUT and the files written beside it


class RunLockedError(ValueError):
    """Another process holds the lock of a run."""


def check_output_path(out: Path) -> None:
    """A one-line error unless ``out`` and its sidecar paths can be written as files: none is a
    directory, and the nearest existing folder above them is a writable directory."""
    for path in (_sidecar(out, suffix) for suffix in SIDECARS):
        if path.is_dir():
            raise ValueError(f"output {path} is a directory; --out must name a file")
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"output {out}: {folder} is not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"output {out}: cannot write in {folder} (read-only or no permission)")


def _existing_rounds(out: Path, identity: Mapping[str, Any]) -> int:
    """Rounds held by an existing ``out`` (0: none there); an error when ``out`` is not a
    result of the run of ``identity``, which is therefore never overwritten."""
    if not out.exists():
        return 0
    try:
        metadata = read_run_metadata(out)
        theirs = metadata["identity"]
        rounds = int(metadata["rounds"])
    except Exception as err:  # not Parquet, no alfm metadata, an older format: not ours
        raise ValueError(
            f"{out} exists and is not an alfm run result ({type(err).__name__}: {err}); "
            "refusing to overwrite it: choose another --out or delete it"
        ) from None
    differences = _differences(theirs, identity)
    if differences:
        raise ValueError(
            f"{out} holds another run ({'; '.join(differences)}); refusing to overwrite it: "
            "choose another --out or delete it"
        )
    return rounds


@contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """An exclusive lock on the run writing ``out``: ``fcntl.flock`` on ``.OUT.lock`` beside it,
    which holds the holder's PID and host while it runs and is removed afterwards. Held by
    another process: a :class:`RunLockedError` naming it (nothing waits)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.with_name(f".{out.name}.lock")
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "PID unknown"
            os.close(fd)
            raise RunLockedError(
                f"run {out} is being written by another process ({holder}; lock {path}); wait "
                "for it to finish or choose another --out"
            ) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:  # else its holder removed the file between our open and flock: try again
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode())
        yield
    finally:
        path.unlink(missing_ok=True)  # still locked: a newcomer retries on a fresh file
        os.close(fd)


def remove_orphans(out: Path) -> list[Path]:
    """Remove the temporary files that a killed :func:`atomic_path` write of ``out`` or its
    sidecars left; call it holding the run's lock. Returns the removed paths."""
    names = [re.escape(out.name + suffix) for suffix in SIDECARS]
    pattern = re.compile(rf"\.(?:{'|'.join(names)})\.[0-9a-f]{{32}}\.tmp")
    removed = []
    if out.parent.is_dir():
        for path in out.parent.iterdir():
            if pattern.fullmatch(path.name):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


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
    buffer = io.BytesIO()  # torch.save to a path turns a full disk into a RuntimeError
    torch.save(payload, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def _restore_probe(
    state: dict[str, torch.Tensor] | None, config: ProbeConfig, device: str
) -> Probe:
    """The probe of the checkpoint's last round (its classifier's adapter included), rebuilt
    from its state dict."""
    if state is None:
        raise ValueError("the checkpoint holds no probe to extend the run from; delete it")
    num_classes, dim = state["linear.weight"].shape
    probe = build_probe(dim, num_classes, config)
    probe.load_state_dict(state)
    return probe.to(device).eval()


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
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
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
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
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_run_metadata(path: str | Path) -> dict[str, Any]:
    """The ``"alfm"`` metadata (config, provenance) of a run's Parquet file."""
    metadata = pq.read_schema(path).metadata or {}
    if b"alfm" not in metadata:
        raise ValueError(f"{path} has no 'alfm' metadata; is it an alfm run result?")
    return json.loads(metadata[b"alfm"])


def _versions() -> dict[str, str]:
    return {
        "alfm": alfm.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
