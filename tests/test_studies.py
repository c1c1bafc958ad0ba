"""Studies: what an arm changes from the defaults, each strategy with vs without it paired by
seed (hand-computed), the study table and figure, and the shipped study configs."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import yaml
from results_helpers import write_run
from scipy import stats

from alfm import plots, results
from alfm.pipeline import Grid, check_names
from alfm.probe import ProbeConfig

REPO = Path(__file__).resolve().parents[1]
STUDIES = ("init", "diversity", "representativeness", "label_propagation", "classifier")


def test_arm_setting_names_what_differs_from_the_defaults():
    base = {"strategy": "uncertainty", "init": "random"}
    assert results.arm_setting(base) == ""
    assert results.arm_setting({**base, "strategy_params": {"oversample": None}}) == ""
    assert results.arm_setting({**base, "init": "centroid"}) == "init=centroid"
    assert (
        results.arm_setting({**base, "strategy_params": {"cluster_features": True}})
        == "cluster_features=true"
    )
    probe = {"dropout": 0.75, "lr": 0.1}  # dropout at its default: not a setting
    assert results.arm_setting({**base, "probe": probe}) == "probe.lr=0.1"
    both = {**base, "init": "typiclust", "init_params": {"knn": 5}, "probe": probe}
    assert results.arm_setting(both) == "init=typiclust(knn=5), probe.lr=0.1"


def test_study_pairs_each_setting_with_the_strategy_default_by_seed(tmp_path):
    plain = {1: [0.2, 0.4, 0.6], 2: [0.3, 0.5, 0.5], 3: [0.1, 0.3, 0.7]}
    clustered = {1: [0.3, 0.5, 0.7], 2: [0.3, 0.6, 0.6], 3: [0.2, 0.3, 0.8]}
    paths = []
    for seed in plain:
        paths.append(
            write_run(
                tmp_path / f"u{seed}.parquet",
                plain[seed],
                strategy="uncertainty",
                seed=seed,
                label="uncertainty",
            )
        )
        paths.append(
            write_run(
                tmp_path / f"c{seed}.parquet",
                clustered[seed],
                strategy="uncertainty",
                seed=seed,
                label="u+c",
                params={"cluster_features": True},
            )
        )
        paths.append(write_run(tmp_path / f"r{seed}.parquet", plain[seed], seed=seed))
    tables = results.compute_tables(results.load_runs(paths))
    study = tables["study"]
    assert len(study) == 1  # random has no setting; uncertainty one
    row = study.iloc[0]
    assert (row.reference, row.arm, row.setting) == ("uncertainty", "u+c", "cluster_features=true")

    def auc(y):  # trapezoid over 0..2 divided by 2
        return (y[0] / 2 + y[1] + y[2] / 2) / 2

    a = np.array([auc(clustered[s]) for s in (1, 2, 3)])
    b = np.array([auc(plain[s]) for s in (1, 2, 3)])
    assert row.reference_mean == pytest.approx(b.mean()) and row.arm_mean == pytest.approx(a.mean())
    assert row.mean_diff == pytest.approx((a - b).mean()) and row.wins == 3
    assert row.test == "paired_t" and row.p_value == pytest.approx(stats.ttest_rel(a, b).pvalue)
    half = stats.t.ppf(0.975, 2) * (a - b).std(ddof=1) / np.sqrt(3)
    assert row.diff_ci_high - row.diff_ci_low == pytest.approx(2 * half)
    markdown = results.study_markdown(study)
    assert "| uncertainty | cluster_features=true | 3 |" in markdown
    assert "raises the AUC in 1 of 1 comparisons" in markdown
    fig = plots.plot_study(study)
    assert len(fig.axes) == 1 and fig.axes[0].get_title() == "m / d"
    empty = plots.plot_study(study.iloc[:0])
    assert "no study" in empty.axes[0].texts[0].get_text()


def test_two_default_arms_of_one_strategy_leave_it_out_with_a_warning(tmp_path):
    paths = [
        write_run(
            tmp_path / f"{label}{seed}.parquet",
            [0.2, 0.4],
            strategy="margins",
            seed=seed,
            label=label,
        )
        for label in ("a", "b")
        for seed in (1, 2)
    ]
    runs = results.load_runs(paths)
    with pytest.warns(UserWarning, match="m/d/margins: 2 arms at every default"):
        assert results.study_comparisons(runs, results.run_auc(runs)).empty


def load_study(name: str, embedded: bool) -> dict:
    """A study config merged over config/experiments.yaml as Snakemake merges --configfile, with
    the schema defaults the workflow fills in."""
    from snakemake.utils import validate

    files = ["config/config.yaml", "config/experiments.yaml"]
    files += [f"config/studies/embedded/{name}.yaml"] if embedded else ["config/paper.yaml"]
    files += [] if embedded else [f"config/studies/{name}.yaml"]
    config: dict = {}
    for file in files:
        config.update(yaml.safe_load((REPO / file).read_text()))
    if name == "classifier" and "classifier" not in {f.name for f in fields(ProbeConfig)}:
        pytest.skip("probe.classifier lands with the classifiers branch (issue 11 item 1)")
    validate(config, str(REPO / "workflow/schemas/experiments.schema.yaml"))
    return config


@pytest.mark.parametrize("embedded", [True, False])
@pytest.mark.parametrize("name", STUDIES)
def test_study_configs_expand_to_paired_arms(name, embedded):
    config = load_study(name, embedded)
    grid = Grid.from_config(config)
    by_strategy: dict[str, list[str]] = {}
    for label, arm in grid.arms.items():
        by_strategy.setdefault(arm.strategy, []).append(label)
    assert all(len(labels) >= 2 for labels in by_strategy.values()), by_strategy
    if name not in ("label_propagation", "classifier"):  # their keys land with the classifiers
        check_names(config)
        runs = [grid.run_config(*run[:3], run[3], grid.evaluations) for run in grid.runs()]
        settings = {results.arm_setting(r) for r in runs}
        assert "" in settings and len(settings) >= 2
