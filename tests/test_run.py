"""The AL run engine: determinism, resume after kill -9, shared initial pools, extension,
stop_round, metrics on hand cases and clear errors for bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from alfm.cli import main
from alfm.probe import ProbeConfig
from alfm.run import (
    RECORD_COLUMNS,
    RunConfig,
    evaluate,
    read_checkpoint,
    read_indices,
    read_run_metadata,
    round_generator,
    run_active_learning,
    run_grid,
    run_identity,
    seeded_generator,
)
from alfm.store import IncompleteStoreError, SplitData, StoreWriter, open_store, write_store
from alfm.strategies import QueryContext, Strategy, create_strategy, list_strategies
from alfm.strategies.probcover import ProbCover

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Columns that measure the machine rather than the run.
MEASURED = ["train_seconds", "eval_seconds", "query_seconds", "peak_host_mb", "peak_device_mb"]
FAST_PROBE = {"max_epochs": 60, "patience": 10}


def _split(rng: np.random.Generator, n: int, classes: int, dim: int) -> SplitData:
    labels = np.arange(n) % classes
    centers = rng.normal(size=(classes, dim)) * 1.5
    features = centers[labels] + rng.normal(size=(n, dim))
    return SplitData(
        features.astype(np.float32), labels.astype(np.int64), np.array([f"s{i}" for i in range(n)])
    )


def make_store(
    path: Path,
    *,
    n: int = 300,
    test: int = 100,
    classes: int = 5,
    dim: int = 16,
    seed: int = 0,
    dataset: str = "synthetic",
) -> Path:
    """A small synthetic store with ``classes`` Gaussian blobs."""
    rng = np.random.default_rng(seed)
    write_store(
        path, _split(rng, n, classes, dim), _split(rng, test, classes, dim), {"dataset": dataset}
    )
    return path


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> object:
    """Tiny tensors: one intra-op thread avoids OpenMP spin-waits on a loaded 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("store") / "s.zarr")


def config(store: Path, strategy: str = "entropy", seed: int = 1, **budget: object) -> dict:
    return {
        "features": str(store),
        "strategy": strategy,
        "seed": seed,
        "budget": {"evaluations": 4, **budget},
        "probe": FAST_PROBE,
        "device": "cpu",
    }


def run(cfg: dict, out: Path, **kwargs: object) -> pd.DataFrame:
    return run_active_learning(cfg, out, progress=False, **kwargs)


def assert_same_run(a: Path, b: Path) -> None:
    """Identical records (bar timings/memory) and identical indices."""
    left, right = pd.read_parquet(a), pd.read_parquet(b)
    pd.testing.assert_frame_equal(left.drop(columns=MEASURED), right.drop(columns=MEASURED))
    for x, y in zip(read_indices(a), read_indices(b), strict=True):
        np.testing.assert_array_equal(x, y)


def no_outputs(out: Path) -> bool:
    return not any(out.parent.glob(out.name + "*"))


# --- config ------------------------------------------------------------------------------------


def test_config_round_trip_and_defaults(store: Path) -> None:
    cfg = RunConfig.from_dict({"features": store, "strategy": "margins", "seed": 3})
    assert (cfg.init, cfg.budget.evaluations, cfg.budget.init_per_class, cfg.device) == (
        "random",
        20,
        1,
        "auto",
    )
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    assert json.loads(json.dumps(cfg.to_dict())) == cfg.to_dict()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"strategy_parms": {}}, "unknown run config key.*strategy_parms"),
        ({"seed": None}, "missing seed"),
        ({"seed": -1}, "'seed' must be an integer >= 0 and <= 9223372036854775807, got -1"),
        ({"seed": 1.0}, "'seed' must be an integer >= 0 and <= 9223372036854775807, got 1.0"),
        ({"strategy": ""}, "'strategy' must be a non-empty string"),
        ({"label": 3}, "'label' must be a string or null, got 3"),
        ({"device": "tpu"}, "'device' must be one of auto, cpu, cuda"),
        ({"tf32": "yes"}, "'tf32' must be true or false"),
        ({"probe": {"epochs": 3}}, "unknown probe key.*epochs"),
        ({"budget": {"schedule": "cubic"}}, "linear, doubling"),
        ({"budget": {"evaluations": 0}}, "budget.evaluations must be an integer >= 1, got 0"),
        ({"budget": [4]}, "budget must be a mapping, got list"),
        ({"probe": {"lr": 0}}, "probe.lr must be a number > 0, got 0"),
        ({"probe": {"classifer": "linear"}}, "unknown probe key.*classifer"),
        ({"ssl": {"enabled": True}}, "unknown ssl key.*enabled"),
        ({"ssl": {"enable": True, "knn": 0}}, "ssl.knn must be an integer >= 1, got 0"),
        ({"ssl": {"knn": 50}}, "ssl.knn has no effect while ssl.enable is false"),
        ({"ssl": []}, "'ssl' must be a mapping"),
        ({"strategy_params": "x=1"}, "'strategy_params' must be a mapping"),
    ],
)
def test_config_errors(store: Path, change: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RunConfig.from_dict({**config(store), **change})


def test_identity_holds_the_probe_settings_in_full(store: Path) -> None:
    attrs = open_store(store).attrs
    left_out = RunConfig.from_dict({**config(store), "probe": {}})
    given = RunConfig.from_dict({**config(store), "probe": {"max_epochs": 400, "lr": 0.01}})
    assert run_identity(left_out, attrs) == run_identity(given, attrs)
    assert run_identity(left_out, attrs)["run"]["probe"] == ProbeConfig().to_dict()
    assert run_identity(RunConfig.from_dict(config(store)), attrs) != run_identity(given, attrs)


def test_identity_holds_the_classifier_and_ssl_settings_in_full(store: Path) -> None:
    attrs = open_store(store).attrs
    adapter = {**config(store), "probe": {"classifier": "residual_adapter"}}
    left_out = RunConfig.from_dict({**adapter, "ssl": {"enable": True}})
    given = RunConfig.from_dict(
        {**adapter, "probe": {"classifier": "residual_adapter", "scale": 4}, "ssl": {
            "enable": True, "alpha": 0.9, "knn": 500, "gamma": 1, "n_iter": 100
        }}
    )  # fmt: skip
    identity = run_identity(left_out, attrs)
    assert identity == run_identity(given, attrs)
    assert identity["run"]["probe"]["init_alpha"] == -2.0 and identity["run"]["ssl"]["knn"] == 500
    plain = run_identity(RunConfig.from_dict(adapter), attrs)
    assert plain["run"]["ssl"] == {"enable": False, "alpha": 0.9, "knn": 500, "gamma": 1.0,
                                   "n_iter": 100}  # fmt: skip
    assert plain != identity


def test_round_generators_depend_on_seed_round_and_purpose() -> None:
    def draw(*key: object) -> torch.Tensor:
        return torch.rand(4, generator=round_generator(*key, device="cpu"))

    assert torch.equal(draw(1, 2, "query"), draw(1, 2, "query"))
    for other in ((1, 2, "probe"), (1, 3, "query"), (10, 2, "query")):
        assert not torch.equal(draw(1, 2, "query"), draw(*other))
    prepare = torch.rand(4, generator=seeded_generator(1, "prepare", device="cpu"))
    assert not any(torch.equal(prepare, draw(1, r, "prepare")) for r in range(3))


# --- metrics ------------------------------------------------------------------------------------


def test_evaluate_hand_case_with_unseen_and_absent_classes() -> None:
    # Four classes; class 3 never occurs in the test labels and class 2 is never predicted.
    labels = np.array([0, 0, 1, 1, 2, 2])
    proba = np.array(
        [
            [0.7, 0.1, 0.1, 0.1],  # pred 0, right
            [0.2, 0.6, 0.1, 0.1],  # pred 1, wrong
            [0.1, 0.8, 0.05, 0.05],  # pred 1, right
            [0.1, 0.1, 0.1, 0.7],  # pred 3 (absent from the test labels), wrong
            [0.5, 0.2, 0.2, 0.1],  # pred 0, wrong
            [0.1, 0.5, 0.3, 0.1],  # pred 1, wrong
        ]
    )
    metrics = evaluate(proba, labels)
    assert metrics["accuracy"] == pytest.approx(2 / 6)
    # recalls: class 0 1/2, class 1 1/2, class 2 0 → balanced 1/3
    assert metrics["balanced_accuracy"] == pytest.approx(1 / 3)
    # F1: class 0 p=1/2 r=1/2 → 1/2; class 1 p=1/3 r=1/2 → 2/5; class 2 → 0; macro over 3 classes
    assert metrics["macro_f1"] == pytest.approx((1 / 2 + 2 / 5 + 0) / 3)
    # One-vs-rest AUROC per present class from its own column, equal supports → plain mean.
    # class 0 scores: positives {.7,.2} vs negatives {.1,.1,.5,.1}: pairs won 4 + 3 = 7 of 8
    # class 1 scores: positives {.8,.1} vs negatives {.1,.6,.2,.5}: .8 wins 4; .1 ties .1 → 4.5/8
    # class 2 scores: positives {.2,.3} vs negatives {.1,.1,.05,.1}: 8 of 8
    assert metrics["auroc"] == pytest.approx((7 / 8 + 4.5 / 8 + 1) / 3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evaluate_equals_scikit_learn(seed) -> None:
    """The numpy metrics are scikit-learn's, with ties, unseen and absent classes."""
    from sklearn import metrics

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, size=300)  # classes 6 and 7: absent
    proba = rng.dirichlet(np.ones(8), size=300).round(2)  # rounded: many ties
    pred = proba.argmax(axis=1)
    present = np.unique(labels)
    expected = {
        "accuracy": metrics.accuracy_score(labels, pred),
        "macro_f1": metrics.f1_score(
            labels, pred, labels=present, average="macro", zero_division=0
        ),
        "balanced_accuracy": metrics.balanced_accuracy_score(labels, pred),
        "auroc": metrics.roc_auc_score(
            labels[:, None] == present[None, :], proba[:, present], average="weighted"
        ),
    }
    assert evaluate(proba, labels) == pytest.approx(expected, rel=1e-12)


def test_evaluate_single_class_auroc_is_nan() -> None:
    metrics = evaluate(np.array([[0.9, 0.1], [0.4, 0.6]]), np.array([0, 0]))
    assert metrics["accuracy"] == 0.5
    assert np.isnan(metrics["auroc"])


# --- runs ---------------------------------------------------------------------------------------


def test_records_indices_and_metadata(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.parquet"
    frame = run(config(store, init_per_class=2), out)
    assert list(frame.columns) == list(RECORD_COLUMNS)
    assert frame["round"].tolist() == [1, 2, 3, 4]
    assert frame.num_labeled.tolist() == [10, 15, 20, 25]
    assert frame.classes_seen.between(1, 5).all()
    assert frame.accuracy.between(0, 1).all() and frame.auroc.between(0, 1).all()
    assert frame.query_seconds.iloc[:-1].gt(0).all() and np.isnan(frame.query_seconds.iloc[-1])
    assert frame.train_seconds.gt(0).all() and frame.peak_host_mb.gt(0).all()
    assert frame.peak_device_mb.isna().all()  # CPU run
    assert (frame.model.unique().tolist(), frame.seed.unique().tolist()) == (["synthetic"], [1])
    pd.testing.assert_frame_equal(pd.read_parquet(out), frame)

    added = read_indices(out)
    assert [len(a) for a in added] == [10, 5, 5, 5]
    labeled = np.concatenate(added)
    assert len(np.unique(labeled)) == 25 and labeled.min() >= 0 and labeled.max() < 300
    labels = np.arange(300) % 5  # the store's train labels
    assert frame.classes_seen.tolist() == [
        len(np.unique(labels[np.concatenate(added[:r])])) for r in range(1, 5)
    ]

    meta = read_run_metadata(out)
    assert meta["config"] == RunConfig.from_dict(config(store, init_per_class=2)).to_dict()
    assert meta["complete"] is True and meta["rounds"] == 4
    assert meta["labeled_sizes"] == [10, 15, 20, 25]
    assert meta["store"]["attrs"]["dataset"] == "synthetic"
    assert meta["versions"]["alfm"] and meta["device"] == "cpu"


def test_determinism(store: Path, tmp_path: Path) -> None:
    run(config(store, "margins"), tmp_path / "a.parquet")
    run(config(store, "margins"), tmp_path / "b.parquet")
    assert_same_run(tmp_path / "a.parquet", tmp_path / "b.parquet")


def test_tf32_is_on_during_queries_only_when_asked(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import alfm.run

    seen = []
    real_query = alfm.run.query

    def spy(*args: object, **kwargs: object) -> torch.Tensor:
        seen.append(torch.backends.cuda.matmul.allow_tf32)
        return real_query(*args, **kwargs)

    monkeypatch.setattr(alfm.run, "query", spy)
    before = torch.backends.cuda.matmul.allow_tf32
    run({**config(store, evaluations=3), "tf32": True}, tmp_path / "on.parquet")
    assert seen == [True] * 3 and torch.backends.cuda.matmul.allow_tf32 == before
    seen.clear()
    run(config(store, evaluations=3), tmp_path / "off.parquet")
    assert seen == [False] * 3


def test_same_seed_and_init_share_initial_pool(store: Path, tmp_path: Path) -> None:
    pools = {}
    for strategy in ("random", "entropy", "coreset"):
        out = tmp_path / f"{strategy}.parquet"
        run(config(store, strategy, evaluations=2), out)
        pools[strategy] = read_indices(out)[0]
    np.testing.assert_array_equal(pools["random"], pools["entropy"])
    np.testing.assert_array_equal(pools["random"], pools["coreset"])
    other = tmp_path / "seed2.parquet"
    run(config(store, "random", seed=2, evaluations=2), other)
    assert not np.array_equal(read_indices(other)[0], pools["random"])


def test_stop_round_then_continue_equals_single_run(store: Path, tmp_path: Path) -> None:
    out, whole = tmp_path / "part.parquet", tmp_path / "whole.parquet"
    assert len(run(config(store), out, stop_round=2)) == 2
    assert pd.read_parquet(out)["round"].tolist() == [1, 2]
    assert read_run_metadata(out)["complete"] is False
    assert len(read_indices(out)) == 2
    # Asking again for round 2 computes nothing; an earlier stop rewrites the shorter prefix.
    run(config(store), out, stop_round=2)
    assert read_checkpoint(out)["computed"] == [1, 2]
    assert len(run(config(store), out, stop_round=1)) == 1
    assert read_checkpoint(out)["computed"] == [1, 2]
    run(config(store), out, stop_round=3)
    run(config(store), out)
    assert read_checkpoint(out)["computed"] == [1, 2, 3, 4]
    run(config(store), whole)
    assert_same_run(out, whole)


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("tiny") / "t.zarr", n=120, test=40, classes=4, dim=8)


RESUMED = [("random", name) for name in list_strategies()] + [
    ("centroid", "dropquery"),
    ("typiclust", "entropy"),
    ("probcover", "probcover"),  # one object serves init and queries
]


@pytest.mark.parametrize(("init", "strategy"), RESUMED, ids=[f"{i}-{s}" for i, s in RESUMED])
def test_resumed_and_one_round_per_call_equal_uninterrupted(
    tiny_store: Path, tmp_path: Path, init: str, strategy: str
) -> None:
    """Every strategy, stateful ones included: a run stopped after round 2 and continued by a
    new call (new strategy objects, as in a new process), and a run advanced one round per call
    (``rounds_per_job: 1``), equal the uninterrupted run. With seed 2 on this store, a ProbCover
    graph seeded by whichever round first needs it (the old lazy cache) takes another δ when
    resumed after round 2 and when rebuilt every round, so both comparisons catch it."""
    cfg = {
        **config(tiny_store, strategy, seed=2, evaluations=5),
        "init": init,
        "probe": {"max_epochs": 15, "patience": 5},
    }
    whole, resumed, stepped = (tmp_path / f"{name}.parquet" for name in ("w", "r", "s"))
    run(cfg, whole)
    run(cfg, resumed, stop_round=2)
    run(cfg, resumed)
    for round_number in range(1, 6):
        run(cfg, stepped, stop_round=round_number)
    assert read_checkpoint(resumed)["computed"] == read_checkpoint(stepped)["computed"] == [
        1, 2, 3, 4, 5
    ]  # fmt: skip
    assert_same_run(resumed, whole)
    assert_same_run(stepped, whole)


CLASSIFIER_RUNS = {
    "residual_adapter": {"probe": {"classifier": "residual_adapter", "max_epochs": 15}},
    "ssl": {"ssl": {"enable": True, "knn": 20, "n_iter": 30}},
    "residual_adapter-ssl": {
        "probe": {"classifier": "residual_adapter", "max_epochs": 15},
        "ssl": {"enable": True, "knn": 20},
    },
}


@pytest.mark.parametrize("strategy", ["badge", "dropquery"])
@pytest.mark.parametrize("variant", list(CLASSIFIER_RUNS))
def test_resumed_and_extended_with_adapter_and_ssl_equal_uninterrupted(
    tiny_store: Path, tmp_path: Path, variant: str, strategy: str
) -> None:
    """The residual adapter's weights travel in the checkpoint (an extension queries with the
    restored probe) and the propagation graph is rebuilt identically in a new call."""
    cfg = {**config(tiny_store, strategy, seed=2, evaluations=4), **CLASSIFIER_RUNS[variant]}
    cfg["probe"] = {"patience": 5, **cfg.get("probe", {"max_epochs": 15})}
    whole, resumed, extended = (tmp_path / f"{name}.parquet" for name in ("w", "r", "e"))
    run(cfg, whole)
    run(cfg, resumed, stop_round=2)
    run(cfg, resumed)
    run({**cfg, "budget": {"evaluations": 3}}, extended)
    run(cfg, extended)
    assert read_checkpoint(extended)["computed"] == [1, 2, 3, 4]
    assert_same_run(resumed, whole)
    assert_same_run(extended, whole)
    state = read_checkpoint(whole)["probe_state"]
    assert ("adapter.alpha" in state) == variant.startswith("residual_adapter")


def test_ssl_trains_on_the_whole_pool(tiny_store: Path, tmp_path: Path) -> None:
    """With ssl the probe differs from the one trained on the labeled rows alone."""
    plain, ssl = tmp_path / "plain.parquet", tmp_path / "ssl.parquet"
    cfg = config(tiny_store, "random", evaluations=2)
    run(cfg, plain)
    run({**cfg, "ssl": {"enable": True, "knn": 20}}, ssl)
    np.testing.assert_array_equal(read_indices(plain)[0], read_indices(ssl)[0])
    a, b = read_checkpoint(plain)["probe_state"], read_checkpoint(ssl)["probe_state"]
    assert not torch.equal(a["norm.running_mean"], b["norm.running_mean"])


def test_strategies_are_prepared_once_per_process_with_the_prepare_generator(
    tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real_prepare = ProbCover.prepare

    def spy(self: ProbCover, ctx: QueryContext, generator: torch.Generator) -> None:
        calls.append((id(self), ctx.labeled.numel(), ctx.probe, generator.initial_seed()))
        real_prepare(self, ctx, generator)

    monkeypatch.setattr(ProbCover, "prepare", spy)
    cfg = {**config(tiny_store, "probcover", evaluations=3), "init": "probcover"}
    run(cfg, tmp_path / "a.parquet")
    seed = seeded_generator(1, "prepare", device="cpu").initial_seed()
    assert [call[1:] for call in calls] == [(0, None, seed)]  # one object for init and queries
    calls.clear()
    run({**cfg, "init_params": {"purity": 0.9}}, tmp_path / "b.parquet", stop_round=1)
    assert len({call[0] for call in calls}) == 2 and {call[3] for call in calls} == {seed}
    calls.clear()
    run(cfg, tmp_path / "a.parquet")  # nothing left to compute: nothing prepared
    assert calls == []


def test_extension_equals_longer_run(store: Path, tmp_path: Path) -> None:
    short, longer = tmp_path / "short.parquet", tmp_path / "long.parquet"
    run(config(store, evaluations=3), short)
    assert read_run_metadata(short)["complete"] is True
    run(config(store, evaluations=5), short)
    run(config(store, evaluations=5), longer)
    assert read_checkpoint(short)["computed"] == [1, 2, 3, 4, 5]
    assert_same_run(short, longer)
    assert not pd.read_parquet(short).query_seconds.iloc[:-1].isna().any()


def test_doubling_and_absolute_budgets(store: Path, tmp_path: Path) -> None:
    cfg = config(store, "random", init_size=3, schedule="doubling", evaluations=4)
    frame = run(cfg, tmp_path / "d.parquet")
    assert frame.num_labeled.tolist() == [3, 6, 12, 24]
    cfg = config(store, "random", init_size=7, step_size=4, evaluations=3)
    assert run(cfg, tmp_path / "a.parquet").num_labeled.tolist() == [7, 11, 15]


def cli_run_argv(store: Path, strategy: str, evaluations: int, out: Path) -> list[str]:
    """``alfm run`` arguments for a quiet, fast CPU run of seed 1 (``--out`` last)."""
    return [
        "run",
        "--features",
        str(store),
        "--strategy",
        strategy,
        "--seed",
        "1",
        "--evaluations",
        str(evaluations),
        "--probe",
        json.dumps(FAST_PROBE),
        "--device",
        "cpu",
        "--quiet",
        "--out",
        str(out),
    ]


def test_cli_run(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.parquet"
    argv = cli_run_argv(store, "entropy", 4, out)
    assert main(argv) == 0
    assert "4 rounds" in capsys.readouterr().out
    run(config(store), tmp_path / "api.parquet")
    assert_same_run(out, tmp_path / "api.parquet")
    assert main([*argv[:-1], str(tmp_path / "x.parquet"), "--strategy", "entrpy"]) == 2
    assert "unknown strategy 'entrpy'" in capsys.readouterr().err
    assert main([*argv[:-1], str(tmp_path / "x.parquet"), "--ssl", '{"knn": 5}']) == 2
    assert "ssl.knn has no effect while ssl.enable is false" in capsys.readouterr().err
    ssl = tmp_path / "ssl.parquet"
    assert main([*argv[:-1], str(ssl), "--ssl", '{"enable": true, "knn": 5}']) == 0
    assert read_run_metadata(ssl)["config"]["ssl"] == {"enable": True, "knn": 5}


class SlowRandom(Strategy):
    """A random query strategy that takes a while, so a test can kill a run mid-way."""

    requires_probe = True

    def __init__(self, delay: float = 0.3) -> None:
        self.delay = delay

    def select(self, ctx: QueryContext, budget: int, generator: torch.Generator) -> torch.Tensor:
        time.sleep(self.delay)
        return create_strategy("random").select(ctx, budget, generator)


class SlowProbCover(ProbCover):
    """ProbCover (a stateful strategy: its graph is built in prepare) that takes a while."""

    def __init__(self, delay: float = 0.3) -> None:
        super().__init__()
        self.delay = delay

    def select(self, ctx: QueryContext, budget: int, generator: torch.Generator) -> torch.Tensor:
        time.sleep(self.delay)
        return super().select(ctx, budget, generator)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("strategy", "classes"),
    # 10 classes: there the old lazily built ProbCover graph took another δ after every resume
    [("test_run:SlowRandom", 5), ("test_run:SlowProbCover", 10)],
)
def test_kill_then_resume_equals_uninterrupted(tmp_path: Path, strategy: str, classes: int) -> None:
    store = make_store(tmp_path / "s.zarr", classes=classes)
    cfg = config(store, strategy, evaluations=8)
    killed, whole = tmp_path / "killed.parquet", tmp_path / "whole.parquet"
    argv = [sys.executable, "-m", "alfm.cli", *cli_run_argv(store, cfg["strategy"], 8, killed)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, env=env)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            ckpt = killed.with_name(killed.name + ".ckpt")
            if ckpt.exists() and len(read_checkpoint(killed)["computed"]) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished or failed before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not killed.exists()  # no result file that looks finished
    finished_before = read_checkpoint(killed)["computed"]
    assert 3 <= len(finished_before) < 8
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        run(cfg, killed)
        run(cfg, whole)
    finally:
        sys.path.remove(str(Path(__file__).parent))
    assert read_checkpoint(killed)["computed"] == list(range(1, 9))
    assert_same_run(killed, whole)


# --- bad input ------------------------------------------------------------------------------------


def _nan_store(path: Path) -> Path:
    rng = np.random.default_rng(0)
    train = _split(rng, 60, 3, 4)
    train.features[7, 2] = np.nan
    write_store(path, train, _split(rng, 30, 3, 4))
    return path


def _unseen_test_store(path: Path) -> Path:
    rng = np.random.default_rng(0)
    train = _split(rng, 60, 3, 4)
    write_store(path, train, _split(rng, 40, 4, 4), {"num_classes": 4})
    return path


def _incomplete_store(path: Path) -> Path:
    writer = StoreWriter.open(
        path,
        {"backbone": "b", "dataset": "d", "num_classes": 2},
        {"train": 10, "test": 4},
        3,
        chunk_rows=4,
    )
    rows = writer.chunk_slice("train", 0)
    n = rows.stop - rows.start
    writer.write_chunk("train", 0, np.zeros((n, 3)), np.zeros(n), np.array(["a"] * n))
    return path


@pytest.mark.parametrize(
    ("make", "change", "match"),
    [
        (None, {"strategy": "entrpy"}, "unknown strategy 'entrpy'"),
        (None, {"init": "entropy"}, "init strategy 'entropy' needs a trained probe"),
        (
            None,
            {"strategy": "bald", "strategy_params": {"num_passes": 2.5}},
            "strategy 'bald' hyperparameter 'num_passes' must be int, got 2.5",
        ),
        (None, {"budget": {"init_per_class": 61}}, "initial pool of 305 samples is larger than"),
        (None, {"budget": {"step_size": 100, "evaluations": 5}}, "runs dry at round 4 of 5"),
        (_nan_store, {}, r"1 train rows have NaN or infinite features \(first rows \[7\]\)"),
        (_unseen_test_store, {}, r"test labels \[3\] never occur in the train split"),
    ],
)
def test_bad_input_leaves_nothing(
    store: Path, tmp_path: Path, make: object, change: dict, match: str
) -> None:
    features = make(tmp_path / "bad.zarr") if make else store
    out = tmp_path / "out" / "r.parquet"
    with pytest.raises(ValueError, match=match):
        run({**config(features), **change}, out)
    assert no_outputs(out)


def test_incomplete_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    features = _incomplete_store(tmp_path / "bad.zarr")
    out = tmp_path / "r.parquet"
    with pytest.raises(IncompleteStoreError, match="is incomplete"):
        run(config(features), out)
    argv = ["run", "--features", str(features), "--strategy", "random", "--seed", "1"]
    assert main([*argv, "--out", str(out)]) == 2
    assert "is incomplete" in capsys.readouterr().err
    assert no_outputs(out)


def test_missing_store(tmp_path: Path) -> None:
    out = tmp_path / "r.parquet"
    with pytest.raises(FileNotFoundError, match="no feature store"):
        run(config(tmp_path / "none.zarr"), out)
    assert no_outputs(out)


def test_stop_round_out_of_range(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.parquet"
    for bad in (0, 5):
        with pytest.raises(ValueError, match=r"stop_round must be an integer in 1..4"):
            run(config(store), out, stop_round=bad)
    assert no_outputs(out)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"strategy": "margins"}, "strategy: 'entropy' there, 'margins' here"),
        ({"seed": 2}, "seed: 1 there, 2 here"),
        ({"budget": {"evaluations": 4, "step_per_class": 2}}, "step_per_class: 1 there, 2 here"),
        ({"probe": {"max_epochs": 10}}, "max_epochs"),
    ],
)
def test_checkpoint_of_another_run_is_refused(
    store: Path, tmp_path: Path, change: dict, match: str
) -> None:
    out = tmp_path / "r.parquet"
    run(config(store), out, stop_round=1)
    before = out.read_bytes()
    with pytest.raises(ValueError, match=f"belongs to a different run.*{match}"):
        run({**config(store), **change}, out)
    assert out.read_bytes() == before and read_checkpoint(out)["computed"] == [1]


def test_checkpoint_of_another_store_is_refused(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.parquet"
    run(config(store), out, stop_round=1)
    other = make_store(tmp_path / "other.zarr", dataset="other")
    with pytest.raises(ValueError, match="dataset: 'synthetic' there, 'other' here"):
        run(config(other), out)


def test_run_grid_writes_one_file_per_run(store: Path, tmp_path: Path) -> None:
    cfgs = [
        config(store, "random", evaluations=2),
        {**config(store, "margins", evaluations=2), "label": "margins-b"},
    ]
    frame = run_grid(cfgs, tmp_path, progress=False)
    assert sorted(p.name for p in (tmp_path / "s").glob("*.parquet")) == [
        "margins-b_random_seed1.parquet",
        "random_random_seed1.parquet",
    ]
    assert frame.label.tolist() == ["random", "random", "margins-b", "margins-b"]
    assert (
        read_run_metadata(tmp_path / "s" / "margins-b_random_seed1.parquet")["config"]["label"]
        == "margins-b"
    )
