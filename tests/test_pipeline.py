"""alfm.pipeline without Snakemake: grid expansion, path names, name checks, job rounds and
outputs, the state key, advance-and-publish, final files and aggregation targets."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from results_helpers import write_run
from test_workflow import write_synthetic_store

from alfm import pipeline
from alfm.pipeline import ConfigError, Grid
from alfm.registry import Registry, UnknownNameError
from alfm.run import RunConfig, identity_key, read_indices, run_active_learning, run_identity
from alfm.store import open_store

TIMING = ["train_seconds", "eval_seconds", "query_seconds", "peak_host_mb", "peak_device_mb"]

# A validated config as the workflow sees it (schema defaults filled in).
CONFIG = {
    "data_root": "data",
    "model_dir": None,
    "results": "res/",
    "features": None,
    "models": ["mobilenet_v2", "timm:vit_small_patch14_dinov2.lvd142m"],
    "datasets": ["digits"],
    "strategies": [
        "random",
        {"name": "dropquery", "label": "dq3", "params": {"num_passes": 3}},
        {"name": "dropquery", "init": {"name": "centroid", "params": {}}},
    ],
    "seeds": [1, 10],
    "init": {"name": "random", "params": {}},
    "budget": {
        "init_per_class": 1,
        "step_per_class": 1,
        "init_size": None,
        "step_size": None,
        "schedule": "linear",
        "evaluations": 7,
    },
    "probe": {"max_epochs": 30},
    "rounds_per_job": None,
    "one_job_per_run": False,
    "device": "cpu",
    "tf32": False,
    "extract": {
        "batch_size": None,
        "num_workers": 2,
        "dtype": "float16",
        "device": "auto",
        "image_size": 32,
        "decode": "auto",
        "compile": False,
        "shards": 1,
        "resources": {"gpu": 1, "threads": 8, "mem_mb": 32000, "runtime": 240},
    },
}


def config(**overrides) -> dict:
    return {**copy.deepcopy(CONFIG), **overrides}


def test_path_name_keeps_safe_characters_and_strips_the_rest():
    assert pipeline.path_name("mobilenet_v2") == "mobilenet_v2"
    assert pipeline.path_name("open_clip:ViT-B-16/laion2b+x") == "open_clip_ViT-B-16_laion2b+x"
    assert pipeline.path_name("my.pkg:Strategy") == "my.pkg_Strategy"
    assert pipeline.path_name("/a::b/") == "a_b"


def test_names_sharing_a_path_name_are_an_error():
    with pytest.raises(ConfigError, match="config key 'models': 'a:b' and 'a/b' share the path"):
        Grid.from_config(config(models=["a:b", "a/b"]))


def test_grid_expands_models_datasets_arms_and_seeds():
    grid = Grid.from_config(config())
    assert list(grid.models) == ["mobilenet_v2", "timm_vit_small_patch14_dinov2.lvd142m"]
    probe = {"probe": {"max_epochs": 30}}
    assert grid.arms == {
        "random": pipeline.Arm("random", "random", {}, "random", {}, probe),
        "dq3": pipeline.Arm("dq3", "dropquery", {"num_passes": 3}, "random", {}, probe),
        "dropquery": pipeline.Arm("dropquery", "dropquery", {}, "centroid", {}, probe),
    }
    assert len(list(grid.runs())) == 2 * 1 * 3 * 2
    assert grid.final_run_paths()[0] == "res/runs/mobilenet_v2/digits/random/seed1/upto7.parquet"
    assert grid.store_path("m", "d") == "res/features/m/d@32px.zarr"
    assert grid.store_done("m", "d") == "res/features/m/d@32px.zarr.done"
    fast = Grid.from_config(config(features="/fast/"))
    assert fast.store_path("m", "d") == "/fast/m/d@32px.zarr"


def test_init_probe_and_ssl_lists_are_grid_dimensions_with_distinct_labels():
    inits = [{"name": "random", "params": {}}, {"name": "centroid", "params": {}}]
    ssl = [{"enable": False, "alpha": 0.9}, {"enable": True, "alpha": 0.9}]
    probes = [{"max_epochs": 30, "lr": 0.01}, {"max_epochs": 30, "lr": 0.1}]
    grid = Grid.from_config(config(init=inits, ssl=ssl, probe=probes))
    # dropquery with its own init does not multiply by the grid's inits.
    assert len(grid.arms) == 2 * 2 * 2 * 2 + 1 * 2 * 2
    arm = grid.arms["dq3+init-centroid+probe-lr-0.1+ssl-enable-true"]
    assert (arm.strategy, arm.params, arm.init) == ("dropquery", {"num_passes": 3}, "centroid")
    # Run configs hold overrides only (values at the dataclass default are dropped).
    probe_only = Grid.from_config(config(init=inits, probe=probes))
    run = probe_only.run_config("mobilenet_v2", "digits", "dq3+init-centroid+probe-lr-0.1", 1, 7)
    assert run["probe"] == {"max_epochs": 30, "lr": 0.1} and run["init"] == "centroid"
    assert run["label"] == "dq3+init-centroid+probe-lr-0.1"
    assert probe_only.run_config(
        "mobilenet_v2", "digits", "random+init-random+probe-lr-0.01", 1, 7
    )["probe"] == {"max_epochs": 30}  # lr 0.01 is ProbeConfig's default: the schema filled it in
    assert "dropquery+probe-lr-0.01+ssl-enable-false" in grid.arms
    assert {a.init for a in grid.arms.values() if a.strategy == "random"} == {"random", "centroid"}
    paths = {p.split("/")[4] for p in grid.final_run_paths()}
    assert len(paths) == len(grid.arms)
    # A single value (list of one or a mapping) adds no suffix; two inits of one name show params.
    assert list(Grid.from_config(config(init=inits[:1], ssl=ssl[1])).arms) == [
        "random",
        "dq3",
        "dropquery",
    ]
    same = [{"name": "centroid", "params": {}}, {"name": "centroid", "params": {"k": 2}}]
    assert "random+init-k-2" in Grid.from_config(config(init=same)).arms
    with pytest.raises(ConfigError, match="config key 'probe': values 0 and 1 are equal"):
        Grid.from_config(config(probe=[probes[0], probes[0]]))


def test_strategy_params_are_built_at_parse_time_naming_the_key():
    cases = [
        (
            {"strategies": [{"name": "dropquery", "params": {"init": "centroid"}}]},
            r"'strategies\[0\].params': 'init' is not a hyperparameter .* run-level key 'init'",
        ),
        (
            {"strategies": [{"name": "margins", "params": {"oversample": 5}}]},
            r"'strategies\[0\].params': oversample=5 only applies with cluster_features",
        ),
        (
            {"strategies": [{"name": "entropy", "params": {"typical_feature": True}}]},
            "Did you mean 'typical_features'",
        ),
        (
            {"init": [{"name": "random"}, {"name": "typiclust", "params": {"knn": "x"}}]},
            r"'init\[1\].params': strategy 'typiclust' hyperparameter 'knn' must be int",
        ),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            pipeline.check_names(config(**overrides))


def test_a_label_used_twice_names_the_entry():
    with pytest.raises(ConfigError, match=r"'strategies\[1\]': label 'random' is used twice"):
        Grid.from_config(config(strategies=["random", {"name": "random"}]))


@pytest.mark.parametrize(
    ("rounds_per_job", "rounds"), [(None, [7]), (1, [1, 2, 3, 4, 5, 6, 7]), (3, [3, 6, 7])]
)
def test_job_rounds_and_previous_round(rounds_per_job, rounds):
    grid = Grid.from_config(config(rounds_per_job=rounds_per_job))
    assert grid.job_rounds() == rounds
    assert [grid.previous_round(r) for r in rounds] == [None, *rounds[:-1]]


def test_one_job_advances_every_seed_unless_one_job_per_run():
    grid = Grid.from_config(config())
    pattern = "res/runs/{model}/{dataset}/{strategy}/seed%s/upto{round}.parquet"
    assert grid.job_outputs() == [pattern % 1, pattern % 10]
    assert grid.job_log() == "res/logs/active_learning/{model}/{dataset}/{strategy}/upto{round}.log"
    assert grid.job_seeds(None) == [1, 10]
    single = Grid.from_config(config(one_job_per_run=True))
    assert single.job_outputs() == [pattern % "{seed}"]
    assert single.job_log().endswith("/{strategy}/seed{seed}/upto{round}.log")
    assert single.job_seeds("10") == ["10"]


def test_job_inputs_chain_the_previous_jobs_records():
    grid = Grid.from_config(config(rounds_per_job=3))
    first = grid.job_inputs("m", "d", "dq3", [1, 10], 3)
    assert first == {"features": "res/features/m/d@32px.zarr.done"}
    later = grid.job_inputs("m", "d", "dq3", [1, 10], 7)
    assert later["previous"] == [
        "res/runs/m/d/dq3/seed1/upto6.parquet",
        "res/runs/m/d/dq3/seed10/upto6.parquet",
    ]


def test_run_config_of_a_job_stops_at_its_round_and_is_a_run_config():
    grid = Grid.from_config(config())
    run = grid.run_config("mobilenet_v2", "digits", "dropquery", 10, 3)
    assert run["budget"]["evaluations"] == 3
    assert (run["strategy"], run["init"], run["label"], run["seed"]) == (
        "dropquery",
        "centroid",
        "dropquery",
        10,
    )
    features = RunConfig.from_dict(run).to_dict()["features"]
    assert features == "res/features/mobilenet_v2/digits@32px.zarr"


def test_extract_arguments_from_the_config():
    grid = Grid.from_config(config(model_dir="/w"))
    assert grid.extract_arguments("timm_vit_small_patch14_dinov2.lvd142m", "digits") == (
        "--model timm:vit_small_patch14_dinov2.lvd142m --dataset digits "
        "--out res/features/timm_vit_small_patch14_dinov2.lvd142m/digits@32px.zarr "
        "--root data/digits --model-dir /w --workers 2 --dtype float16 --device auto "
        "--image-size 32 --decode auto"
    )
    no_root = Grid.from_config(config(data_root=None))
    assert "--root" not in no_root.extract_arguments("mobilenet_v2", "digits")
    compiled = Grid.from_config(config(extract={**CONFIG["extract"], "compile": True}))
    assert compiled.extract_arguments("mobilenet_v2", "digits").endswith("--decode auto --compile")


def extract(**settings) -> dict:
    return config(extract={**CONFIG["extract"], **settings})


@pytest.mark.parametrize(
    ("settings", "tag"),
    [
        ({"image_size": None}, ""),
        ({}, "@32px"),
        ({"dtype": "float32"}, "@32px-float32"),
        ({"device": "cpu"}, "@32px-cpu"),
        ({"decode": "gpu"}, "@32px-decode_gpu"),
        ({"compile": True}, "@32px-compiled"),
        ({"image_size": None, "dtype": "float32", "compile": True}, "@float32-compiled"),
        # how the same chunks are computed: the same store
        ({"batch_size": 7, "num_workers": 0, "shards": 3}, "@32px"),
        ({"resources": {"gpu": 0, "threads": 1, "mem_mb": 100, "runtime": 5}}, "@32px"),
    ],
)
def test_store_path_names_exactly_the_settings_that_change_features(settings, tag):
    grid = Grid.from_config(extract(**settings))
    assert grid.store_path("m", "d") == f"res/features/m/d{tag}.zarr"
    assert pipeline.store_tag(grid.config["extract"]) == tag


def test_shards_and_resources_come_from_the_extract_config():
    grid = Grid.from_config(extract(shards=3))
    assert grid.extract_shards == 3
    assert grid.shard_done("m", "d", 2) == "res/features/m/d@32px.zarr.shard2of3.done"
    assert grid.extract_resources == CONFIG["extract"]["resources"]


def test_registry_check_knows_registered_prefixed_and_dotted_names():
    registry = Registry("pipeline-test-kind", prefixes=("hub:",))
    registry.add("known", pipeline.Grid)
    registry.check("known")
    registry.check("hub:anything/at-all")
    registry.check("alfm.pipeline:Grid")  # a dotted path to a registered entry
    assert registry.split_prefix("hub:x/y") == ("hub:", "x/y")
    assert registry.split_prefix("known") == (None, "known")
    with pytest.raises(UnknownNameError, match="names nothing after 'hub:'"):
        registry.check("hub:")
    with pytest.raises(UnknownNameError, match="Did you mean 'known'.*or hub:<name>, a dotted"):
        registry.check("knwon")
    with pytest.raises(UnknownNameError, match="cannot import pipeline-test-kind 'nowhere.x:Y'"):
        registry.check("nowhere.x:Y")


def test_check_names_accepts_the_grid_and_names_the_key_of_an_unknown_name():
    pipeline.check_names(config(strategies=["random", "alfm.strategies.uncertainty:Margins"]))
    cases = [
        ({"models": ["mobilenet_v2", "mobilenet_v3"]}, r"'models\[1\]': unknown backbone"),
        ({"models": ["timm:"]}, r"'models\[0\]': backbone 'timm:' names nothing"),
        ({"datasets": ["cifar1000"]}, r"'datasets\[0\]': unknown dataset 'cifar1000'"),
        ({"init": {"name": "centroids"}}, "'init.name': unknown strategy 'centroids'"),
        ({"init": [{"name": "random"}, {"name": "x"}]}, r"'init\[1\].name': unknown strategy"),
        ({"strategies": ["nowhere.module:S"]}, r"'strategies\[0\].name': cannot import"),
        (
            {"strategies": [{"name": "random", "init": {"name": "nope"}}]},
            r"'strategies\[0\].init.name': unknown strategy 'nope'",
        ),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            pipeline.check_names(config(**overrides))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("store") / "m" / "d.zarr"
    write_synthetic_store(path)
    return path


def small_grid(store: Path, results: Path, **overrides) -> Grid:
    features = str(store.parent.parent)
    strategies = ["random", "margins", "probcover"]
    overrides = {"evaluations": 4, **overrides}
    budget = {**CONFIG["budget"], "evaluations": overrides.pop("evaluations")}
    return Grid.from_config(
        config(
            results=str(results),
            features=features,
            models=["m"],
            datasets=["d"],
            strategies=strategies,
            budget=budget,
            extract={**CONFIG["extract"], "image_size": None},  # the store's path is d.zarr
            **overrides,
        )
    )


def test_state_key_is_the_run_identity_and_changes_with_every_identity_field(store):
    grid = small_grid(store, Path("r"))
    run = grid.run_config("m", "d", "probcover", 1, 4)
    attrs = open_store(store).attrs
    key = pipeline.state_key(run, attrs)
    assert key == identity_key(run_identity(RunConfig.from_dict(run), attrs))
    same = {
        "budget.evaluations": {"budget": {**run["budget"], "evaluations": 9}},
        "label": {"label": "other"},
        "features": {"features": "elsewhere.zarr"},
        "device": {"device": "auto"},
    }
    for name, change in same.items():
        assert pipeline.state_key({**run, **change}, attrs) == key, name
    changed = {
        "strategy": {"strategy": "random"},
        "strategy_params": {"strategy_params": {"delta": 0.5}},
        "init": {"init": "centroid"},
        "init_params": {"init_params": {"x": 1}},
        "seed": {"seed": 2},
        "budget.init_per_class": {"budget": {**run["budget"], "init_per_class": 2}},
        "probe": {"probe": {"max_epochs": 31}},
        "tf32": {"tf32": True},
        "ssl": {"ssl": {"enable": True}},
    }
    resumable = set(same) - {"budget.evaluations"}
    fields = {f.name for f in dataclasses.fields(RunConfig)} - resumable
    assert fields <= {name.split(".")[0] for name in changed}, "a RunConfig field is untested"
    for name, change in changed.items():
        assert pipeline.state_key({**run, **change}, attrs) != key, name
    assert pipeline.state_key(run, {**attrs, "created": "another time"}) != key


@pytest.mark.parametrize("arm", ["margins", "probcover"])
def test_advance_and_publish_in_jobs_equals_one_uninterrupted_run(store, tmp_path, arm):
    grid = small_grid(store, tmp_path / "res", rounds_per_job=3)
    attrs = open_store(store).attrs
    seeds = grid.job_seeds(None)
    states = [grid.state_dir("m", "d", arm, s) for s in seeds]
    for upto in grid.job_rounds():
        runs = [grid.run_config("m", "d", arm, s, upto) for s in seeds]
        outs = [grid.run_path("m", "d", arm, s, upto) for s in seeds]
        pipeline.advance_and_publish(runs, states, outs, progress=False)
    for seed, state in zip(seeds, states, strict=True):
        final = grid.run_path("m", "d", arm, seed, 4)
        reference = tmp_path / "reference" / f"{seed}.parquet"
        run_active_learning(grid.run_config("m", "d", arm, seed, 4), reference)
        pd.testing.assert_frame_equal(
            pd.read_parquet(final).drop(columns=TIMING),
            pd.read_parquet(reference).drop(columns=TIMING),
        )
        for got, want in zip(read_indices(final), read_indices(reference), strict=True):
            np.testing.assert_array_equal(got, want)
        assert len(pd.read_parquet(grid.run_path("m", "d", arm, seed, 3))) == 3
        key = pipeline.state_key(grid.run_config("m", "d", arm, seed, 4), attrs)
        assert [p.name for p in Path(state).iterdir()] == [key]
    assert not list((tmp_path / "res").rglob("*.tmp"))


def test_advance_and_publish_needs_one_state_and_output_per_run(store, tmp_path):
    grid = small_grid(store, tmp_path)
    runs = [grid.run_config("m", "d", "random", 1, 4)]
    with pytest.raises(ValueError, match="1 runs, 2 state folders and 1 outputs"):
        pipeline.advance_and_publish(runs, ["a", "b"], ["o.parquet"])
    assert not list(tmp_path.iterdir())


def test_final_run_files_take_the_most_rounds_of_each_run(tmp_path):
    runs = tmp_path / "runs" / "m" / "d"
    for seed in (1, 2):
        for upto in (2, 10, 4):
            write_run(runs / "random" / f"seed{seed}" / f"upto{upto}.parquet", [0.1] * upto)
    (runs / "random" / "seed1" / "upto10.parquet.indices.npz").write_bytes(b"")
    assert pipeline.final_run_files(tmp_path) == [
        runs / "random" / "seed1" / "upto10.parquet",
        runs / "random" / "seed2" / "upto10.parquet",
    ]
    with pytest.raises(FileNotFoundError, match="holds no run results"):
        pipeline.final_run_files(tmp_path / "runs")


def test_aggregate_targets_are_what_aggregation_writes(tmp_path):
    from alfm.plots import write_figures
    from alfm.results import aggregate, load_runs

    runs = [write_run(tmp_path / f"r{s}.parquet", [0.2, 0.4], seed=s) for s in (1, 2)]
    root = tmp_path / "res"
    aggregate(runs, root / "tables")
    write_figures(load_runs([root / "tables" / "runs.parquet"]), root / "figures")
    written = sorted(str(p) for p in root.rglob("*") if p.is_file())
    assert written == sorted(pipeline.aggregate_targets(root))
