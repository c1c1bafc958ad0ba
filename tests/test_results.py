"""Statistics of alfm.results on hand-made run tables, checked against hand-computed values."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from results_helpers import write_run
from scipy import stats

from alfm import results
from alfm.cli import add_aggregate, add_plot

T_975_DF2 = 4.302652729749464  # Student-t 97.5% quantile, 2 degrees of freedom (table value 4.303)


def _runs(tmp_path: Path, spec: dict[tuple[str, int], list[float]], **kwargs) -> pd.DataFrame:
    """load_runs over one file per (strategy, seed) → accuracy curve."""
    paths = [
        write_run(tmp_path / f"{s}_{seed}.parquet", acc, strategy=s, seed=seed, **kwargs)
        for (s, seed), acc in spec.items()
    ]
    return results.load_runs(paths)


def _row(frame: pd.DataFrame, **where) -> pd.Series:
    mask = np.logical_and.reduce([frame[k] == v for k, v in where.items()])
    assert mask.sum() == 1, f"{mask.sum()} rows match {where}"
    return frame[mask].iloc[0]


def test_normalized_auc_hand_values() -> None:
    # trapezoid: (0.2+0.4)/2 + (0.4+0.8)/2 = 0.9 over a span of 2
    assert results.normalized_auc([0.2, 0.4, 0.8]) == pytest.approx(0.45)
    assert results.normalized_auc([0.7]) == 0.7
    assert results.normalized_auc([0.5, 0.5, 0.5, 0.5]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="at least one"):
        results.normalized_auc([])


def test_run_auc_full_first_and_last_windows(tmp_path: Path) -> None:
    runs = _runs(tmp_path, {("random", 1): [0, 1, 0, 1, 0, 1, 1]})
    row = results.run_auc(runs).iloc[0]
    assert row["auc_full"] == pytest.approx(3.5 / 6)  # five segments of 0.5, one of 1
    assert row["auc_first"] == pytest.approx(2 / 4)  # 0,1,0,1,0
    assert row["auc_last"] == pytest.approx(2.5 / 4)  # 0,1,0,1,1
    assert row["final"] == 1
    assert bool(row["run_complete"])


def test_curve_mean_and_t_interval_over_seeds(tmp_path: Path) -> None:
    runs = _runs(
        tmp_path,
        {("random", 1): [0.5, 0.9], ("random", 2): [0.6, 0.9], ("random", 3): [0.7, 0.9]},
    )
    curves = results.curve_stats(runs)
    first = _row(curves, round=1)
    half = T_975_DF2 * 0.1 / math.sqrt(3)  # s = 0.1, n = 3
    assert first["accuracy_mean"] == pytest.approx(0.6)
    assert first["accuracy_std"] == pytest.approx(0.1)
    assert first["accuracy_ci_low"] == pytest.approx(0.6 - half)
    assert first["accuracy_ci_high"] == pytest.approx(0.6 + half)
    assert first["n_seeds"] == 3 and first["num_labeled"] == 10
    second = _row(curves, round=2)  # no spread: a zero-width interval
    assert second["accuracy_ci_low"] == second["accuracy_ci_high"] == pytest.approx(0.9)
    assert curves["complete"].all()


def test_mean_ci_single_value_has_no_interval() -> None:
    mean, low, high = results.mean_ci([0.4])
    assert mean == 0.4 and math.isnan(low) and math.isnan(high)


def test_ranks_average_ties_and_mean_rank(tmp_path: Path) -> None:
    # Constant curves: AUC equals the constant. Pair m1: a 0.8, b 0.7, c 0.7, d 0.6.
    # Pair m2: a 0.5, b 0.9, c 0.7, d 0.7.
    values = {"m1": dict(a=0.8, b=0.7, c=0.7, d=0.6), "m2": dict(a=0.5, b=0.9, c=0.7, d=0.7)}
    paths = [
        write_run(tmp_path / f"{m}_{s}.parquet", [v] * 3, strategy=s, model=m)
        for m, by_strategy in values.items()
        for s, v in by_strategy.items()
    ]
    tables = results.compute_tables(results.load_runs(paths))
    rank = {(r.model, r.arm): r.rank for r in tables["ranks"].itertuples()}
    assert rank == {
        ("m1", "a"): 1.0,
        ("m1", "b"): 2.5,
        ("m1", "c"): 2.5,
        ("m1", "d"): 4.0,
        ("m2", "b"): 1.0,
        ("m2", "c"): 2.5,
        ("m2", "d"): 2.5,
        ("m2", "a"): 4.0,
    }
    mean = tables["mean_ranks"].set_index("arm")["mean_rank"].to_dict()
    assert mean == {"b": 1.75, "a": 2.5, "c": 2.5, "d": 3.25}
    assert list(tables["mean_ranks"]["arm"]) == ["b", "a", "c", "d"]


def _paired_runs(tmp_path: Path, diffs: list[float]) -> pd.DataFrame:
    """random with AUC 0.5 + 0.01·seed, dropquery with that plus diffs[seed-1] (constant curves)."""
    spec = {}
    for seed, d in enumerate(diffs, start=1):
        spec[("random", seed)] = [0.5 + 0.01 * seed] * 4
        spec[("dropquery", seed)] = [0.5 + 0.01 * seed + d] * 4
    return _runs(tmp_path, spec)


def test_paired_t_test_with_few_seeds_equals_scipy(tmp_path: Path) -> None:
    runs = _paired_runs(tmp_path, [0.1, 0.2, 0.3])
    auc_runs = results.run_auc(runs)
    row = results.paired_tests(auc_runs).iloc[0]
    a = auc_runs[auc_runs["arm"] == "dropquery"].sort_values("seed")["auc_full"]
    b = auc_runs[auc_runs["arm"] == "random"].sort_values("seed")["auc_full"]
    expected = stats.ttest_rel(a.to_numpy(), b.to_numpy())
    assert row["test"] == "paired_t" and row["n_pairs"] == 3 and row["baseline"] == "random"
    assert row["p_value"] == pytest.approx(expected.pvalue)
    # by hand: mean 0.2, s 0.1 → t = 0.2 / (0.1/√3) = 2√3, two-sided p with 2 df
    assert row["statistic"] == pytest.approx(2 * math.sqrt(3))
    assert row["p_value"] == pytest.approx(2 * stats.t.sf(2 * math.sqrt(3), 2))
    assert row["mean_diff"] == pytest.approx(0.2)
    assert row["diff_ci_low"] == pytest.approx(0.2 - T_975_DF2 * 0.1 / math.sqrt(3))
    assert row["wins"] == 3


def test_wilcoxon_with_six_seeds_equals_scipy_and_exact_value(tmp_path: Path) -> None:
    diffs = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06]
    runs = _paired_runs(tmp_path, diffs)
    row = results.paired_tests(results.run_auc(runs)).iloc[0]
    base = np.array([0.5 + 0.01 * s for s in range(1, 7)])
    expected = stats.wilcoxon(base + np.array(diffs), base)
    assert row["test"] == "wilcoxon" and row["n_pairs"] == 6
    assert row["p_value"] == pytest.approx(expected.pvalue)
    assert row["p_value"] == pytest.approx(2 / 2**6)  # exact: all six differences positive
    summary = results.summary_markdown(results.compute_tables(runs))
    assert "Above random (p < 0.05): dropquery (+0.035). Below random: none." in summary


def test_q_values_are_benjamini_hochberg_per_pair(tmp_path: Path) -> None:
    spec = {}
    for seed in (1, 2, 3):
        spec[("random", seed)] = [0.5] * 3
        spec[("a", seed)] = [0.5 + 0.01 * seed] * 3  # a, b, c: growing gaps over random
        spec[("b", seed)] = [0.5 + 0.02 * seed**2] * 3
        spec[("c", seed)] = [0.5 + 0.1 + 0.001 * seed] * 3
    tests = results.paired_tests(results.run_auc(_runs(tmp_path, spec)))
    p = tests["p_value"].to_numpy()
    assert np.allclose(tests["q_value"], stats.false_discovery_control(p))
    # by hand: p sorted ascending p(1) ≤ p(2) ≤ p(3), q(3) = p(3), q(i) = min(q(i+1), p(i)·3/i)
    order = np.argsort(p)
    q3 = p[order[2]]
    q2 = min(q3, p[order[1]] * 3 / 2)
    q1 = min(q2, p[order[0]] * 3)
    assert tests["q_value"].to_numpy()[order] == pytest.approx([q1, q2, q3])


def test_paired_test_needs_two_pairs(tmp_path: Path) -> None:
    runs = _paired_runs(tmp_path, [0.1])
    row = results.paired_tests(results.run_auc(runs)).iloc[0]
    assert row["test"] == "none" and math.isnan(row["p_value"])
    summary = results.summary_markdown(results.compute_tables(runs))
    assert "Not tested (fewer than 2 paired seeds): dropquery (+0.100)." in summary


def test_label_savings_including_never_reaches(tmp_path: Path) -> None:
    runs = _runs(
        tmp_path,
        {
            ("random", 1): [0.2, 0.4, 0.6, 0.6],
            ("good", 1): [0.3, 0.6, 0.7, 0.8],
            ("bad", 1): [0.1, 0.2, 0.3, 0.5],
        },
    )
    savings = results.label_savings(runs)
    good, bad, rnd = (_row(savings, arm=a) for a in ("good", "bad", "random"))
    assert good["target"] == pytest.approx(0.6)
    assert rnd["labels_needed"] == 30  # random first reaches its final mean at round 3
    assert good["labels_needed"] == 20 and good["savings"] == 10
    assert good["savings_fraction"] == pytest.approx(1 / 3)
    assert good["status"] == "reaches" and rnd["savings"] == 0
    assert bad["status"] == "never reaches" and not bad["reaches"]
    assert math.isnan(bad["labels_needed"]) and math.isnan(bad["savings"])


def test_missing_seeds_and_truncated_runs_are_flagged_not_averaged(tmp_path: Path) -> None:
    paths = [
        write_run(tmp_path / "r1.parquet", [0.2, 0.4, 0.6, 0.8], seed=1),
        write_run(tmp_path / "r2.parquet", [0.3, 0.5, 0.7, 0.9], seed=2),
        # entropy: seed 1 stopped after 3 of 4 evaluations, seed 2 complete
        write_run(tmp_path / "e1.parquet", [0.9, 0.9, 0.9], strategy="entropy", evaluations=4),
        write_run(tmp_path / "e2.parquet", [0.3, 0.5, 0.7, 0.9], strategy="entropy", seed=2),
        # margins: seed 1's own config asks for 3 evaluations, the others have 4
        write_run(tmp_path / "m1.parquet", [0.2, 0.4, 0.6], strategy="margins", evaluations=3),
        write_run(tmp_path / "m2.parquet", [0.3, 0.5, 0.7, 0.9], strategy="margins", seed=2),
        # coreset: seed 2 missing
        write_run(tmp_path / "c1.parquet", [0.2, 0.4, 0.6, 0.8], strategy="coreset"),
        # badge only on another dataset
        write_run(tmp_path / "b1.parquet", [0.5] * 4, strategy="badge", dataset="other"),
    ]
    tables = results.compute_tables(results.load_runs(paths))
    comp = tables["completeness"]
    entropy = _row(comp, arm="entropy", dataset="d")
    assert entropy["truncated_runs"] == "seed 1: 3/4 rounds" and not entropy["complete"]
    assert entropy["n_seeds"] == 2 and entropy["n_complete"] == 1
    coreset = _row(comp, arm="coreset", dataset="d")
    assert coreset["missing_seeds"] == "2" and not coreset["complete"]
    badge = _row(comp, arm="badge", dataset="d")
    assert badge["n_seeds"] == 0 and badge["missing_seeds"] == "1 2"
    assert _row(comp, arm="random", dataset="d")["complete"]
    assert _row(comp, arm="margins", dataset="d")["truncated_runs"] == "seed 1: 3/4 rounds"
    # the truncated entropy run does not enter the AUC: only seed 2 (AUC 0.6) counts
    auc = _row(tables["auc"], arm="entropy", dataset="d")
    assert auc["auc_full_mean"] == pytest.approx(0.6) and auc["n_complete"] == 1
    assert not auc["complete"]
    # curves: round 4 of entropy has one seed and is flagged
    last = _row(tables["curves"], arm="entropy", dataset="d", round=4)
    assert last["n_seeds"] == 1 and not last["complete"]
    assert not _row(tables["ranks"], arm="coreset", dataset="d")["complete"]
    summary = results.summary_markdown(tables)
    assert "1/2 (incomplete)" in summary and "seed 1: 3/4 rounds" in summary


def test_cost_summary_leaves_out_the_last_round(tmp_path: Path) -> None:
    runs = _runs(tmp_path, {("random", 1): [0.1] * 5, ("random", 2): [0.1] * 5}, query_seconds=0.5)
    row = results.cost_summary(runs).iloc[0]
    assert row["n_queries"] == 8 and row["query_seconds_median"] == 0.5
    assert row["run_query_seconds"] == pytest.approx(2.0)
    assert row["peak_host_mb"] == 104.0 and math.isnan(row["peak_device_mb"])


def test_arms_split_by_init_and_params(tmp_path: Path) -> None:
    paths = [
        write_run(tmp_path / "a.parquet", [0.5, 0.6], strategy="dropquery", init="centroid"),
        write_run(tmp_path / "b.parquet", [0.5, 0.6], strategy="dropquery"),
        write_run(tmp_path / "c.parquet", [0.5, 0.6], strategy="bald", params={"passes": 20}),
        write_run(tmp_path / "d.parquet", [0.5, 0.6], strategy="bald", params={"passes": 5}),
        write_run(tmp_path / "e.parquet", [0.5, 0.6], strategy="random"),
    ]
    arms = sorted(results.load_runs(paths)["arm"].unique())
    assert arms == [
        "bald(passes=20)",
        "bald(passes=5)",
        "dropquery[centroid]",
        "dropquery[random]",
        "random",
    ]


def test_load_runs_errors_name_the_culprit(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no run result"):
        results.load_runs([])
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        results.load_runs([tmp_path / "missing.parquet"])
    bad = tmp_path / "bad.parquet"
    pd.DataFrame({"round": [1]}).to_parquet(bad)
    with pytest.raises(ValueError, match="bad.parquet lacks columns"):
        results.load_runs([bad])
    one = write_run(tmp_path / "one.parquet", [0.1, 0.2])
    other = write_run(tmp_path / "other.parquet", [0.1, 0.3])
    with pytest.raises(
        ValueError, match="run model=m, dataset=d, arm=random, seed=1 appears in several files"
    ):
        results.load_runs([one, other])


def test_earlier_stage_of_a_run_given_too_is_an_error(tmp_path: Path) -> None:
    full = write_run(tmp_path / "upto4.parquet", [0.1, 0.2, 0.3, 0.4])
    early = write_run(tmp_path / "upto2.parquet", [0.1, 0.2], evaluations=4)
    with pytest.raises(ValueError, match="seed=1 appears in several files .*upto2.parquet"):
        results.load_runs([early, full])


def test_expected_rounds_from_metadata(tmp_path: Path) -> None:
    path = write_run(tmp_path / "r.parquet", [0.1, 0.2], evaluations=20)
    runs = results.load_runs([path])
    assert runs["expected_rounds"].iloc[0] == 20 and not runs["run_complete"].any()
    meta = json.loads(results.pq.read_schema(path).metadata[b"alfm"])
    assert meta["config"]["budget"]["evaluations"] == 20


def test_cli_aggregate_and_combined_round_trip(tmp_path: Path) -> None:
    paths = [str(write_run(tmp_path / f"r{s}.parquet", [0.1, 0.5], seed=s)) for s in (1, 2)]
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    add_aggregate(sub)
    add_plot(sub)
    args = parser.parse_args(["aggregate", *paths, "--out", str(tmp_path / "tables")])
    assert args.handler(args) == 0
    names = {p.name for p in (tmp_path / "tables").iterdir()}
    assert names == {"runs.parquet", *results.TABLE_NAMES}
    again = results.load_inputs([tmp_path / "tables"])
    pd.testing.assert_frame_equal(again, results.load_runs(paths))
    with pytest.raises(FileNotFoundError, match="without runs.parquet"):
        results.load_inputs([tmp_path])
    with pytest.raises(ValueError, match="unknown metric 'acc'; known metrics: accuracy"):
        results.compute_tables(again, metric="acc")


def test_cli_aggregate_of_a_results_folder_takes_each_runs_final_file(tmp_path: Path) -> None:
    runs = tmp_path / "results" / "runs" / "m" / "d"
    for seed in (1, 2):
        folder = runs / "random" / f"seed{seed}"
        write_run(folder / "upto2.parquet", [0.1, 0.2], seed=seed, evaluations=3)
        write_run(folder / "upto3.parquet", [0.1, 0.2, 0.3], seed=seed)
    parser = argparse.ArgumentParser()
    add_aggregate(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "tables"
    args = parser.parse_args(["aggregate", str(tmp_path / "results"), "--out", str(out)])
    assert args.handler(args) == 0
    table = pd.read_parquet(out / "runs.parquet")
    assert sorted(set(table["source"])) == [
        str(runs / "random" / f"seed{seed}" / "upto3.parquet") for seed in (1, 2)
    ]
    assert table["run_complete"].all() and len(table) == 6


def test_baseline_paired_by_init_and_ambiguity_warned(tmp_path: Path) -> None:
    paths = [
        write_run(
            tmp_path / f"{s}_{i}_{seed}.parquet",
            [0.5, v + (0.01 * seed if s == "dropquery" else 0)],
            strategy=s,
            init=i,
            seed=seed,
        )
        for s, i, v in [
            ("random", "random", 0.6),
            ("random", "centroid", 0.7),
            ("dropquery", "centroid", 0.8),
            ("entropy", "typiclust", 0.9),
        ]
        for seed in (1, 2)
    ]
    auc_runs = results.run_auc(results.load_runs(paths))
    with pytest.warns(UserWarning, match="no unique one to pair with 'entropy'"):
        tests = results.paired_tests(auc_runs)
    assert list(tests["arm"]) == ["dropquery"]
    assert tests["baseline"].iloc[0] == "random[centroid]"
    # AUC of [0.5, v] is (0.5 + v) / 2: differences (0.81 − 0.7) / 2 and (0.82 − 0.7) / 2
    assert tests["mean_diff"].iloc[0] == pytest.approx(0.0575)
