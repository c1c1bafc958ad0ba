"""Tidy tables and learning-curve statistics from the per-run Parquet files.

Every run file (written by :mod:`alfm.run`) holds one row per evaluation round. :func:`load_runs`
concatenates them into one tidy table with an ``arm`` column (what is compared: the strategy, its
label, or strategy + init when one strategy runs with several inits) and completeness columns.

Conventions used by every statistic here:

- A run is *complete* when it has every expected evaluation of its (model, dataset): the largest
  ``budget.evaluations`` of their run configs or number of rounds of their runs, so a run stopped
  early (or written by a job that ran fewer rounds) is flagged. An arm is complete when every seed
  of its (model, dataset) is present (any arm has it) and complete.
- Per-round curves average every seed that reached the round and report how many did (``n_seeds``).
- Whole-run statistics (AUC, ranks, paired tests, label savings) use complete runs only; how many
  were used and whether the arm is complete is in every table, so partial data is never averaged
  as if it were complete.
- Confidence intervals are two-sided 95% Student-t intervals over seeds: mean ± t(0.975, n−1)·s/√n
  (NaN for a single seed).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import stats
from tqdm.auto import tqdm

from alfm.pipeline import SECTION_CLASSES, section_defaults
from alfm.records import METRIC_COLUMNS, RECORD_COLUMNS

ID_COLUMNS = ("model", "dataset", "arm", "strategy", "init", "params")
RUN_KEYS = ("model", "dataset", "arm", "seed")
BASELINE = "random"
WILCOXON_MIN_SEEDS = 6
AUC_WINDOW = 5
TABLE_NAMES = (
    "curves.csv",
    "auc_runs.csv",
    "auc.csv",
    "ranks.csv",
    "mean_ranks.csv",
    "tests.csv",
    "savings.csv",
    "costs.csv",
    "completeness.csv",
    "study.csv",
    "summary.md",
    "study.md",
)


def _run_metadata(table: pa.Table) -> dict:
    """The run config stored as JSON under the ``alfm`` key of the Parquet schema metadata."""
    raw = (table.schema.metadata or {}).get(b"alfm")
    return json.loads(raw) if raw else {}


def _expected_evaluations(config: dict) -> float:
    """``budget.evaluations`` of a run config, else NaN."""
    evaluations = (config.get("budget") or {}).get("evaluations")
    return float("nan") if evaluations is None else float(evaluations)


def _strategy_params(config: dict) -> str:
    """The run's ``strategy_params`` as a compact ``(k=v,...)`` string, empty when none."""
    params = config.get("strategy_params") or {}
    if not params:
        return ""
    return "(" + ",".join(f"{k}={params[k]}" for k in sorted(params)) + ")"


def _read_run(path: Path) -> pd.DataFrame:
    """One run file (or a combined table) with its config's expected evaluations, label, params
    and the file name as columns."""
    if not path.exists():
        raise FileNotFoundError(f"run result {path} does not exist")
    table = pq.read_table(path)
    missing = [c for c in RECORD_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"run result {path} lacks columns {missing}")
    if "expected_rounds" not in table.column_names:  # not an already combined table
        config = _run_metadata(table).get("config", {})
        label = config.get("label") if isinstance(config.get("label"), str) else None
        n = table.num_rows
        columns = {
            "expected_rounds": pa.array([_expected_evaluations(config)] * n, pa.float64()),
            "label": pa.array([label] * n, pa.string()),
            "params": pa.array([_strategy_params(config)] * n, pa.string()),
            "setting": pa.array([arm_setting(config)] * n, pa.string()),
            "source": pa.array([str(path)] * n, pa.string()),
        }
        for name, column in columns.items():
            table = table.append_column(name, column)
    return table.to_pandas()


def _section_defaults(section: str, strategy: str) -> dict[str, object]:
    """Defaults of a run-config section: a strategy's hyperparameters (its ``__init__``; none
    for a dotted strategy that does not import here, so each of its params counts as a setting),
    or those of the probe or ssl dataclass (:func:`alfm.pipeline.section_defaults`)."""
    if section != "strategy_params":
        return section_defaults(section)
    import inspect

    from alfm.strategies import get_strategy_class

    try:
        params = inspect.signature(get_strategy_class(strategy).__init__).parameters
    except (ValueError, TypeError, ImportError):  # a custom strategy not importable here
        return {}
    return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}


def arm_setting(config: dict) -> str:
    """What a run changes from alfm's defaults, besides its strategy: ``init=centroid``,
    ``cluster_features=true``, ``probe.classifier=residual_adapter``, ``ssl.enable=true``, joined
    by ``, `` ("" for a run at every default). Studies compare each arm with the default arm of
    its strategy (:func:`study_comparisons`)."""
    parts = []
    if config.get("init", "random") != "random" or config.get("init_params"):
        init_params = _strategy_params({"strategy_params": config.get("init_params")})
        parts.append(f"init={config.get('init')}{init_params}")
    sections = [("strategy_params", ""), *((s, f"{s}.") for s in SECTION_CLASSES)]
    for section, prefix in sections:
        values = config.get(section) or {}
        if not values:
            continue
        defaults = _section_defaults(section, str(config.get("strategy")))
        parts += [
            f"{prefix}{k}={json.dumps(v) if not isinstance(v, str) else v}"
            for k, v in sorted(values.items())
            if k not in defaults or defaults[k] != v
        ]
    return ", ".join(parts)


def load_runs(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Concatenate run Parquets (or an already combined ``runs.parquet``) into one tidy table.

    Adds ``arm`` (the compared unit), ``n_rounds``, ``expected_rounds``, ``expected_seeds`` and
    ``run_complete``. Raises ``ValueError`` for no paths, missing columns or duplicated rounds.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no run result files given")
    frames = [_read_run(p) for p in tqdm(paths, desc="loading runs", unit="run", leave=False)]
    runs = pd.concat(frames, ignore_index=True)
    if "setting" not in runs.columns:  # a combined table written before settings were recorded
        runs["setting"] = ""
    if "arm" not in runs.columns or runs["arm"].isna().any():
        runs["arm"] = _arms(runs)
    key = ["model", "dataset", "arm", "seed", "round"]
    dup = runs.duplicated(key, keep=False)
    if dup.any():
        row = runs.loc[dup].iloc[0]
        clash = runs[dup & (runs[list(RUN_KEYS)] == row[list(RUN_KEYS)]).all(axis=1)]
        run = ", ".join(f"{k}={row[k]}" for k in RUN_KEYS)
        files = ", ".join(sorted(set(clash["source"].astype(str))))
        raise ValueError(f"run {run} appears in several files (give each run once): {files}")
    return _add_completeness(runs.sort_values(key, ignore_index=True))


def _arms(runs: pd.DataFrame) -> pd.Series:
    """The compared unit: the run's label if its config has one, else the strategy name, plus its
    params where one strategy runs with several parameter sets and ``[init]`` where with several
    inits."""
    labelled = runs["label"].notna()
    arm = runs["label"].where(labelled, runs["strategy"]).astype(str)
    by_strategy = runs.groupby("strategy")
    several_params = by_strategy["params"].transform("nunique") > 1
    several_inits = by_strategy["init"].transform("nunique") > 1
    arm = arm.where(labelled | ~several_params, arm + runs["params"])
    return arm.where(labelled | ~several_inits, arm + "[" + runs["init"].astype(str) + "]")


def _add_completeness(runs: pd.DataFrame) -> pd.DataFrame:
    """Round counts and completeness flags per run (see the module docstring)."""
    runs = runs.drop(columns=["n_rounds", "expected_seeds", "run_complete"], errors="ignore")
    runs["n_rounds"] = runs.groupby(list(RUN_KEYS))["round"].transform("size")
    longest = runs[["expected_rounds", "n_rounds"]].max(axis=1)
    runs["expected_rounds"] = longest.groupby([runs["model"], runs["dataset"]]).transform("max")
    runs["expected_rounds"] = runs["expected_rounds"].astype(int)
    runs["expected_seeds"] = runs.groupby(["model", "dataset"])["seed"].transform("nunique")
    runs["run_complete"] = runs["n_rounds"] >= runs["expected_rounds"]
    return runs


def combine_runs(paths: Sequence[str | Path], out_path: str | Path) -> pd.DataFrame:
    """Load run files with :func:`load_runs` and write the tidy table as one Parquet file."""
    runs = load_runs(paths)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    runs.to_parquet(out_path, index=False)
    return runs


def mean_ci(
    values: Sequence[float] | np.ndarray, confidence: float = 0.95
) -> tuple[float, float, float]:
    """Mean and two-sided Student-t interval; (mean, NaN, NaN) for fewer than 2 values."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(x.mean())
    if x.size < 2:
        return mean, float("nan"), float("nan")
    sem = stats.sem(x)
    if sem == 0:
        return mean, mean, mean
    low, high = stats.t.interval(confidence, df=x.size - 1, loc=mean, scale=sem)
    return mean, float(low), float(high)


def _ci_frame(groups: pd.core.groupby.DataFrameGroupBy, column: str, prefix: str) -> pd.DataFrame:
    """Per-group mean, std and 95% t-interval of ``column`` (NaNs dropped; same interval as
    :func:`mean_ci`), columns named ``{prefix}_*``."""
    agg = groups[column].agg(["mean", "std", "count"])
    half = stats.t.ppf(0.975, agg["count"] - 1) * agg["std"] / np.sqrt(agg["count"])
    half = half.where(agg["count"] > 1)
    return pd.DataFrame(
        {
            f"{prefix}_mean": agg["mean"],
            f"{prefix}_std": agg["std"],
            f"{prefix}_ci_low": agg["mean"] - half,
            f"{prefix}_ci_high": agg["mean"] + half,
        }
    )


def curve_stats(runs: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """Per (model, dataset, arm, round): mean and 95% CI of ``metric`` over seeds reaching it.

    ``n_seeds`` counts those seeds, ``complete`` is False where fewer than the (model, dataset)'s
    seeds reached the round or any of them is a truncated run.
    """
    keys = [*ID_COLUMNS, "round"]
    groups = runs.groupby(keys, sort=True)
    out = _ci_frame(groups, metric, metric)
    out["num_labeled"] = groups["num_labeled"].mean()
    out["n_seeds"] = groups["seed"].nunique()
    out["expected_seeds"] = groups["expected_seeds"].first()
    arm_complete = runs.groupby(list(ID_COLUMNS))["run_complete"].all()
    out = out.reset_index()
    out["complete"] = (out["n_seeds"] >= out["expected_seeds"]) & out.set_index(
        list(ID_COLUMNS)
    ).index.map(arm_complete).to_numpy(dtype=bool)
    return out


def normalized_auc(values: Sequence[float] | np.ndarray) -> float:
    """Area under a learning curve over the evaluation index, divided by the index span.

    AUC = trapezoid(values, x=0..K−1) / (K − 1): the mean of the curve with the two endpoints
    weighted by one half, in the metric's units (in [0, 1] for accuracy). One point: its value.
    """
    y = np.asarray(values, dtype=float)
    if y.size == 0:
        raise ValueError("normalized_auc needs at least one evaluation")
    if y.size == 1:
        return float(y[0])
    return float(np.trapezoid(y) / (y.size - 1))


def run_auc(runs: pd.DataFrame, metric: str = "accuracy", window: int = AUC_WINDOW) -> pd.DataFrame:
    """Per run: normalized AUC of ``metric`` over all, the first ``window`` and last ``window``
    evaluations (``auc_full``, ``auc_first``, ``auc_last``), final value, ``run_complete``."""
    keys = [*ID_COLUMNS, "seed"]
    ordered = runs.sort_values([*keys, "round"])
    y_all = ordered[metric].to_numpy(dtype=float)
    first = ordered.groupby(keys, sort=True).head(1).set_index(keys)
    index, rows = [], []
    for key, positions in ordered.groupby(keys, sort=True).indices.items():
        y = y_all[positions]
        index.append(key)
        rows.append(
            {
                "auc_full": normalized_auc(y),
                "auc_first": normalized_auc(y[:window]),
                "auc_last": normalized_auc(y[-window:]),
                "final": float(y[-1]),
            }
        )
    auc = pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(index, names=keys))
    return first[["n_rounds", "expected_rounds", "run_complete"]].join(auc).reset_index()


def auc_summary(auc_runs: pd.DataFrame, complete_table: pd.DataFrame) -> pd.DataFrame:
    """Per arm: mean and 95% CI over complete runs of each AUC and the final value.

    ``n_complete`` counts the runs used, ``n_seeds`` the runs present, ``complete`` whether every
    expected seed is present and complete (from ``complete_table``, :func:`completeness`).
    """
    done = auc_runs[auc_runs["run_complete"]]
    groups = done.groupby(list(ID_COLUMNS), sort=True)
    parts = [_ci_frame(groups, col, col) for col in ("auc_full", "auc_first", "auc_last", "final")]
    out = pd.concat(parts, axis=1) if len(done) else pd.DataFrame()
    present = complete_table.set_index(list(ID_COLUMNS))
    out = present[["n_seeds", "n_complete", "expected_seeds", "complete"]].join(out, how="left")
    return out.reset_index()


def ranks(auc: pd.DataFrame, column: str = "auc_full_mean") -> pd.DataFrame:
    """Per (model, dataset): rank of each arm by ``column`` (1 = best; ties get the average rank).

    Arms without a value (no complete run) are not ranked (NaN).
    """
    out = auc[[*ID_COLUMNS, column, "complete"]].copy()
    out["rank"] = out.groupby(["model", "dataset"])[column].rank(ascending=False, method="average")
    out["n_ranked"] = out.groupby(["model", "dataset"])[column].transform("count")
    return out.sort_values(["model", "dataset", "rank"], ignore_index=True)


def mean_ranks(rank_table: pd.DataFrame) -> pd.DataFrame:
    """Per arm: mean rank over the (model, dataset) pairs where it was ranked, and how many."""
    groups = rank_table.groupby(list(ID_COLUMNS[2:]))
    out = pd.DataFrame(
        {
            "mean_rank": groups["rank"].mean(),
            "n_ranked": groups["rank"].count(),
            "n_pairs": groups.size(),
            "complete": groups["complete"].all(),
        }
    )
    return out.reset_index().sort_values(["mean_rank", "arm"], ignore_index=True)


def _baseline_arm(arms: list[dict], arm: dict, baseline: str) -> str | None:
    """The baseline arm to pair with ``arm`` among the ``arms`` (records) of its (model, dataset):
    the only arm of the baseline strategy, else the one with the same init and params; None (with
    a warning when ambiguous) if there is none."""
    every = [a for a in arms if a["strategy"] == baseline]
    candidates = every
    for column in ("init", "params"):
        if len(candidates) > 1:
            candidates = [a for a in candidates if a[column] == arm[column]]
    if len(candidates) == 1:
        return str(candidates[0]["arm"])
    if len(every) > 1:
        warnings.warn(
            f"{arm['model']}/{arm['dataset']}: several {baseline!r} arms and no unique one to "
            f"pair with {arm['arm']!r}; it is left out of the comparison",
            stacklevel=3,
        )
    return None


def paired_tests(
    auc_runs: pd.DataFrame, column: str = "auc_full", baseline: str = BASELINE
) -> pd.DataFrame:
    """Each arm against the baseline strategy in its (model, dataset), paired by seed.

    Uses complete runs whose seed both arms have. Test: Wilcoxon signed-rank (two-sided, scipy's
    default method) with at least ``WILCOXON_MIN_SEEDS`` pairs, else a two-sided paired t-test;
    ``test`` names it ("none" below 2 pairs). ``mean_diff`` (arm − baseline) has a 95% t-interval.
    ``q_value``: p-values adjusted for the arms tested in the same (model, dataset)
    (Benjamini-Hochberg false discovery rate).
    """
    done = auc_runs[auc_runs["run_complete"]]
    arms = auc_runs[list(ID_COLUMNS)].drop_duplicates()
    rows = []
    values = {
        key: run.set_index("seed")[column]
        for key, run in done.groupby(["model", "dataset", "arm"], sort=False)
    }
    empty = pd.Series(dtype=float)
    for _, pair_arms in arms.groupby(["model", "dataset"], sort=True):
        records = pair_arms.sort_values("arm").to_dict("records")
        for arm_row in records:
            model, dataset = arm_row["model"], arm_row["dataset"]
            base = _baseline_arm(records, arm_row, baseline)
            if base is None or base == arm_row["arm"]:
                continue
            a = values.get((model, dataset, arm_row["arm"]), empty)
            b = values.get((model, dataset, base), empty)
            seeds = a.index.intersection(b.index).sort_values()
            diff = (a[seeds] - b[seeds]).to_numpy()
            test, stat, p = _paired_test(a[seeds].to_numpy(), b[seeds].to_numpy())
            mean, low, high = mean_ci(diff)
            rows.append(
                {
                    **arm_row,
                    "baseline": base,
                    "metric": column,
                    "n_pairs": len(seeds),
                    "mean_diff": mean,
                    "diff_ci_low": low,
                    "diff_ci_high": high,
                    "wins": int((diff > 0).sum()),
                    "test": test,
                    "statistic": stat,
                    "p_value": p,
                }
            )
    out = pd.DataFrame(rows, columns=_TEST_COLUMNS)
    out["q_value"] = out.groupby(["model", "dataset"])["p_value"].transform(_bh)
    return out


def _bh(p: pd.Series) -> pd.Series:
    """Benjamini-Hochberg adjusted p-values (scipy), NaN where no test was run."""
    q = p.copy()
    tested = p.notna()
    if tested.any():
        q[tested] = stats.false_discovery_control(p[tested].to_numpy(dtype=float))
    return q


#: What a paired comparison of two arms reports (see :func:`_paired_test`).
_PAIRED_COLUMNS = [
    "mean_diff",
    "diff_ci_low",
    "diff_ci_high",
    "wins",
    "test",
    "statistic",
    "p_value",
]

_TEST_COLUMNS = [*ID_COLUMNS, "baseline", "metric", "n_pairs", *_PAIRED_COLUMNS]


def _paired_test(a: np.ndarray, b: np.ndarray) -> tuple[str, float, float]:
    """(test name, statistic, two-sided p) for paired samples; see :func:`paired_tests`."""
    if a.size < 2:
        return "none", float("nan"), float("nan")
    if np.all(a == b):
        return ("wilcoxon" if a.size >= WILCOXON_MIN_SEEDS else "paired_t"), 0.0, 1.0
    if a.size >= WILCOXON_MIN_SEEDS:
        result = stats.wilcoxon(a, b)
        return "wilcoxon", float(result.statistic), float(result.pvalue)
    result = stats.ttest_rel(a, b)
    return "paired_t", float(result.statistic), float(result.pvalue)


_STUDY_COLUMNS = [
    "model",
    "dataset",
    "strategy",
    "reference",
    "arm",
    "setting",
    "metric",
    "n_pairs",
    "reference_mean",
    "reference_ci_low",
    "reference_ci_high",
    "arm_mean",
    "arm_ci_low",
    "arm_ci_high",
    *_PAIRED_COLUMNS,
    "complete",
]


def study_comparisons(
    runs: pd.DataFrame, auc_runs: pd.DataFrame, column: str = "auc_full"
) -> pd.DataFrame:
    """A study's comparison: per (model, dataset, strategy), each arm that changes something
    (its ``setting``, :func:`arm_setting`: another init, a strategy option, probe or ssl value)
    against the strategy's arm at every default (the ``reference``), paired by seed over the
    complete runs both have; same tests as :func:`paired_tests`, ``q_value`` adjusted over the
    comparisons of the (model, dataset). A strategy without exactly one default arm is left out.
    """
    keys = ["model", "dataset", "arm"]
    arms = runs.groupby(keys, sort=True).agg(
        strategy=("strategy", "first"), setting=("setting", "first")
    )
    arms = arms.reset_index()
    complete = runs.groupby(keys)["run_complete"].all()
    done = auc_runs[auc_runs["run_complete"]]
    values = {key: run.set_index("seed")[column] for key, run in done.groupby(keys, sort=False)}
    empty = pd.Series(dtype=float)
    rows = []
    for (model, dataset, strategy), group in arms.groupby(["model", "dataset", "strategy"]):
        reference = group[group["setting"] == ""]
        if len(reference) != 1:
            if len(group) > 1:
                warnings.warn(
                    f"{model}/{dataset}/{strategy}: {len(reference)} arms at every default "
                    f"({', '.join(reference['arm']) or 'none'}); it is left out of the study",
                    stacklevel=2,
                )
            continue
        ref = str(reference["arm"].iloc[0])
        b = values.get((model, dataset, ref), empty)
        for row in group[group["setting"] != ""].itertuples():
            a = values.get((model, dataset, row.arm), empty)
            seeds = a.index.intersection(b.index).sort_values()
            test, stat, p = _paired_test(a[seeds].to_numpy(), b[seeds].to_numpy())
            ref_stats, arm_stats = mean_ci(b[seeds]), mean_ci(a[seeds])
            diff = mean_ci((a[seeds] - b[seeds]).to_numpy())
            rows.append(
                [model, dataset, strategy, ref, row.arm, row.setting, column, len(seeds)]
                + [*ref_stats, *arm_stats, *diff]
                + [int((a[seeds] > b[seeds]).sum()), test, stat, p]
                + [bool(complete[(model, dataset, ref)] and complete[(model, dataset, row.arm)])]
            )
    out = pd.DataFrame(rows, columns=_STUDY_COLUMNS)
    out["q_value"] = out.groupby(["model", "dataset"])["p_value"].transform(_bh)
    return out


def study_markdown(study: pd.DataFrame, metric: str = "accuracy") -> str:
    """The study table as markdown: per (model, dataset), each strategy's AUC without and with
    each setting (95% CI), the paired difference and its p-value, and a one-line verdict."""
    parts = [
        "# Study: each strategy with vs without the studied option",
        "",
        f"Metric: {metric}, AUC of the learning curve (normalized, see summary.md). reference: "
        "the strategy's arm at every default; setting: what the arm changes. diff: arm − "
        f"reference, paired by seed (Wilcoxon signed-rank with ≥ {WILCOXON_MIN_SEEDS} pairs, else "
        "paired t-test); q: Benjamini-Hochberg over the (model, dataset)'s comparisons.",
    ]
    if study.empty:
        parts += ["", "No comparison: no strategy runs both at its defaults and with a setting."]
        return "\n".join(parts) + "\n"

    def interval(m: float, lo: float, hi: float) -> str:
        return f"{m:.3f}" if np.isnan(lo) else f"{m:.3f} [{lo:.3f}, {hi:.3f}]"

    for (model, dataset), part in study.groupby(["model", "dataset"], sort=True):
        table = pd.DataFrame(
            {
                "strategy": part["strategy"],
                "setting": part["setting"],
                "seeds": part["n_pairs"],
                "without": [
                    interval(*r)
                    for r in part[
                        ["reference_mean", "reference_ci_low", "reference_ci_high"]
                    ].to_numpy()
                ],
                "with": [
                    interval(*r) for r in part[["arm_mean", "arm_ci_low", "arm_ci_high"]].to_numpy()
                ],
                "diff": [
                    interval(*r)
                    for r in part[["mean_diff", "diff_ci_low", "diff_ci_high"]].to_numpy()
                ],
                "wins": part["wins"],
                "p": part["p_value"],
                "q": part["q_value"],
            }
        )
        parts += ["", f"## {model} / {dataset}", "", _markdown(table)]
        tested = part[part["p_value"].notna()]
        better = tested[(tested["p_value"] < 0.05) & (tested["mean_diff"] > 0)]
        worse = tested[(tested["p_value"] < 0.05) & (tested["mean_diff"] < 0)]
        helped = (part["mean_diff"] > 0).sum()
        parts += [
            "",
            f"The setting raises the AUC in {helped} of {len(part)} comparisons (mean diff "
            f"{part['mean_diff'].mean():+.4f}); significantly better (p < 0.05): "
            + (", ".join(f"{r.strategy} {r.setting}" for r in better.itertuples()) or "none")
            + "; significantly worse: "
            + (", ".join(f"{r.strategy} {r.setting}" for r in worse.itertuples()) or "none")
            + ".",
        ]
    return "\n".join(parts) + "\n"


def label_savings(
    runs: pd.DataFrame, metric: str = "accuracy", baseline: str = BASELINE
) -> pd.DataFrame:
    """Labels each arm needs to reach the baseline's final mean ``metric``, per (model, dataset).

    Curves are means over complete runs. ``target`` = the baseline's mean at its last round;
    ``labels_needed`` = the smallest ``num_labeled`` where the arm's mean curve is ≥ target
    (``reaches`` False and NaN labels when it never does: "never reaches"); the baseline is
    measured the same way. ``savings`` = baseline labels − arm labels, ``savings_fraction`` =
    savings / baseline labels.
    """
    done = runs[runs["run_complete"]]
    curves = done.groupby([*ID_COLUMNS, "round"], sort=True).agg(
        value=(metric, "mean"), num_labeled=("num_labeled", "mean")
    )
    curves = curves.reset_index()
    arms = runs[list(ID_COLUMNS)].drop_duplicates()
    rows = []
    by_arm = dict(iter(curves.groupby(["model", "dataset", "arm"], sort=False)))
    empty = curves.iloc[:0]
    for _, pair_arms in arms.groupby(["model", "dataset"], sort=True):
        records = pair_arms.sort_values("arm").to_dict("records")
        for arm_row in records:
            model, dataset = arm_row["model"], arm_row["dataset"]
            base = _baseline_arm(records, arm_row, baseline)
            base_curve = by_arm.get((model, dataset, base), empty)
            curve = by_arm.get((model, dataset, arm_row["arm"]), empty)
            row = {**arm_row, "baseline": base, "target": float("nan")}
            row.update(labels_needed=float("nan"), baseline_labels=float("nan"), reaches=False)
            if not base_curve.empty and not curve.empty:
                target = float(base_curve["value"].iloc[-1])
                row["target"] = target
                row["baseline_labels"] = _first_reach(base_curve, target)
                row["labels_needed"] = _first_reach(curve, target)
                row["reaches"] = not np.isnan(row["labels_needed"])
            row["status"] = (
                "no complete runs"
                if np.isnan(row["target"])
                else ("reaches" if row["reaches"] else "never reaches")
            )
            row["savings"] = row["baseline_labels"] - row["labels_needed"]
            row["savings_fraction"] = row["savings"] / row["baseline_labels"]
            rows.append(row)
    return pd.DataFrame(rows)


def _first_reach(curve: pd.DataFrame, target: float) -> float:
    """Smallest num_labeled at which the mean curve is at least ``target`` (NaN if never)."""
    hit = curve["value"].to_numpy() >= target
    return float(curve["num_labeled"].to_numpy()[hit].min()) if hit.any() else float("nan")


def cost_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Per arm over all its rounds and runs: seconds per query (mean, median, max; the last
    evaluation, which has no query, and NaN entries are left out), mean per-run totals of query,
    train and eval seconds, and peak host/device memory in MB (max over rounds; NaN if unmeasured).
    """
    first_round = runs.groupby(list(RUN_KEYS))["round"].transform("min")
    last = runs["round"] == first_round + runs["expected_rounds"] - 1
    queried = runs[runs["query_seconds"].notna() & ~last]
    q = queried.groupby(list(ID_COLUMNS))["query_seconds"]
    per_run = runs.groupby([*ID_COLUMNS, "seed"])[
        ["query_seconds", "train_seconds", "eval_seconds"]
    ].sum(min_count=1)
    totals = per_run.groupby(list(ID_COLUMNS)).mean()
    totals.columns = [f"run_{c}" for c in totals.columns]
    groups = runs.groupby(list(ID_COLUMNS))
    out = pd.DataFrame(
        {
            "query_seconds_mean": q.mean(),
            "query_seconds_median": q.median(),
            "query_seconds_max": q.max(),
            "n_queries": q.count(),
            "peak_host_mb": groups["peak_host_mb"].max(),
            "peak_device_mb": groups["peak_device_mb"].max(),
        }
    ).join(totals)
    return out.reset_index()


def completeness(runs: pd.DataFrame) -> pd.DataFrame:
    """Per arm: seeds present and complete versus expected, missing and truncated seeds.

    Arms absent from a (model, dataset) where they run elsewhere appear with 0 seeds.
    """
    per_run = runs.groupby([*ID_COLUMNS, "seed"], sort=True).agg(
        n_rounds=("n_rounds", "first"),
        expected_rounds=("expected_rounds", "first"),
        run_complete=("run_complete", "first"),
    )
    per_run = per_run.reset_index()
    per_run["truncated"] = [
        f"seed {r.seed}: {r.n_rounds}/{r.expected_rounds} rounds" if not r.run_complete else ""
        for r in per_run.itertuples()
    ]
    present = per_run.groupby(list(ID_COLUMNS)).agg(
        n_seeds=("seed", "size"),
        n_complete=("run_complete", "sum"),
        seeds=("seed", set),
        truncated_runs=("truncated", lambda t: "; ".join(x for x in t if x)),
    )
    seeds_of = runs.groupby(["model", "dataset"])["seed"].unique().map(sorted)
    pairs = runs[["model", "dataset"]].drop_duplicates()
    grid = pairs.merge(runs[list(ID_COLUMNS[2:])].drop_duplicates(), how="cross")
    out = grid.join(present, on=list(ID_COLUMNS)).sort_values(list(ID_COLUMNS), ignore_index=True)
    out["n_seeds"] = out["n_seeds"].fillna(0).astype(int)
    out["n_complete"] = out["n_complete"].fillna(0).astype(int)
    out["truncated_runs"] = out["truncated_runs"].fillna("")
    expected = [seeds_of[pair] for pair in zip(out["model"], out["dataset"], strict=True)]
    out["expected_seeds"] = [len(e) for e in expected]
    out["missing_seeds"] = [
        " ".join(str(s) for s in e if not (isinstance(have, set) and s in have))
        for e, have in zip(expected, out["seeds"], strict=True)
    ]
    out["complete"] = (out["missing_seeds"] == "") & (out["truncated_runs"] == "")
    columns = ["n_seeds", "n_complete", "expected_seeds", "missing_seeds", "truncated_runs"]
    return out[[*ID_COLUMNS, *columns, "complete"]]


def compute_tables(runs: pd.DataFrame, metric: str = "accuracy") -> dict[str, pd.DataFrame]:
    """Every statistics table for a tidy run table, keyed by its file stem (see TABLE_NAMES)."""
    if metric not in METRIC_COLUMNS:
        raise ValueError(f"unknown metric {metric!r}; known metrics: {', '.join(METRIC_COLUMNS)}")
    auc_runs = run_auc(runs, metric)
    complete_table = completeness(runs)
    auc = auc_summary(auc_runs, complete_table)
    rank_table = ranks(auc)
    return {
        "curves": curve_stats(runs, metric),
        "auc_runs": auc_runs,
        "auc": auc,
        "ranks": rank_table,
        "mean_ranks": mean_ranks(rank_table),
        "tests": paired_tests(auc_runs),
        "savings": label_savings(runs, metric),
        "costs": cost_summary(runs),
        "completeness": complete_table,
        "study": study_comparisons(runs, auc_runs),
    }


def _markdown(frame: pd.DataFrame) -> str:
    """A GitHub markdown table; floats with 3 decimals, NaN as an empty cell."""

    def cell(value: object) -> str:
        if isinstance(value, float | np.floating):
            if np.isnan(value):
                return ""
            if float(value).is_integer():
                return f"{value:.0f}"
            return f"{value:.1e}" if 0 < abs(value) < 1e-3 else f"{value:.3f}"
        return str(value)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |"]
    lines.append("|" + "---|" * len(frame.columns))
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join(lines)


def summary_markdown(tables: dict[str, pd.DataFrame], metric: str = "accuracy") -> str:
    """A readable digest: completeness, AUC with CI, rank, test against random, label savings."""
    keys = [*ID_COLUMNS]
    auc = tables["auc"].merge(tables["ranks"][[*keys, "rank"]], on=keys, how="left")
    tests = tables["tests"][[*keys, "mean_diff", "test", "p_value", "q_value", "n_pairs"]]
    savings = tables["savings"][[*keys, "labels_needed", "savings", "status"]]
    table = auc.merge(tests, on=keys, how="left").merge(savings, on=keys, how="left")
    table["auc (95% CI)"] = [
        f"{m:.3f} [{lo:.3f}, {hi:.3f}]" if not np.isnan(lo) else f"{m:.3f}"
        for m, lo, hi in table[["auc_full_mean", "auc_full_ci_low", "auc_full_ci_high"]].to_numpy()
    ]
    table["seeds"] = [
        f"{c}/{e}" + ("" if ok else " (incomplete)")
        for c, e, ok in table[["n_complete", "expected_seeds", "complete"]].to_numpy()
    ]
    cols = ["arm", "seeds", "auc (95% CI)", "rank", "mean_diff", "test", "p_value", "q_value"]
    cols += ["labels_needed", "savings", "status"]
    parts = [
        "# Active-learning results",
        "",
        f"Metric: {metric}. AUC: trapezoid over the evaluation index divided by its span "
        "(mean over complete runs, 95% Student-t interval over seeds). rank: 1 = best AUC in its "
        "(model, dataset), ties averaged. mean_diff / p_value: AUC minus random's, paired by seed "
        f"(Wilcoxon signed-rank with ≥ {WILCOXON_MIN_SEEDS} seeds, else paired t-test); q_value: "
        "Benjamini-Hochberg adjusted over the arms of the (model, dataset). "
        "labels_needed: labels for the mean curve to reach random's final mean "
        f"{metric}.",
    ]
    for (model, dataset), part in table.groupby(["model", "dataset"], sort=True):
        parts += ["", f"## {model} / {dataset}", "", _markdown(part.sort_values("rank")[cols])]
        parts += ["", _verdict(part)]
    parts += ["", "## Mean rank over (model, dataset)", "", _markdown(tables["mean_ranks"])]
    incomplete = tables["completeness"][~tables["completeness"]["complete"]]
    parts += ["", "## Completeness", ""]
    if incomplete.empty:
        parts.append("Every arm has every seed with every evaluation.")
    else:
        parts.append("Incomplete arms (excluded runs are not averaged into AUC, tests, savings):")
        parts += ["", _markdown(incomplete)]
    return "\n".join(parts) + "\n"


def _verdict(part: pd.DataFrame, alpha: float = 0.05) -> str:
    """One sentence per direction: arms whose AUC differs from random's at level ``alpha``."""
    tested = part[part["p_value"].notna()].sort_values("mean_diff", ascending=False)

    def names(rows: pd.DataFrame) -> str:
        return ", ".join(f"{r.arm} ({r.mean_diff:+.3f})" for r in rows.itertuples()) or "none"

    significant = tested["p_value"] < alpha
    untested = part[part["test"] == "none"].sort_values("mean_diff", ascending=False)
    return (
        f"Above random (p < {alpha}): {names(tested[significant & (tested['mean_diff'] > 0)])}. "
        f"Below random: {names(tested[significant & (tested['mean_diff'] < 0)])}. "
        f"No significant difference: {names(tested[~significant])}."
        + (f" Not tested (fewer than 2 paired seeds): {names(untested)}." if len(untested) else "")
    )


def write_tables(runs: pd.DataFrame, out_dir: str | Path, metric: str = "accuracy") -> list[Path]:
    """Write every table of :func:`compute_tables` as CSV plus ``summary.md`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = compute_tables(runs, metric)
    written = []
    for name, frame in tables.items():
        path = out_dir / f"{name}.csv"
        frame.to_csv(path, index=False)
        written.append(path)
    summary = out_dir / "summary.md"
    summary.write_text(summary_markdown(tables, metric))
    study = out_dir / "study.md"
    study.write_text(study_markdown(tables["study"], metric))
    return [*written, summary, study]


def aggregate(
    paths: Sequence[str | Path], out_dir: str | Path, metric: str = "accuracy"
) -> list[Path]:
    """Runs → ``out_dir/runs.parquet`` and every table of :func:`write_tables`."""
    runs = combine_runs(paths, Path(out_dir) / "runs.parquet")
    return [Path(out_dir) / "runs.parquet", *write_tables(runs, out_dir, metric)]


def load_inputs(inputs: Sequence[str | Path]) -> pd.DataFrame:
    """:func:`load_runs` on run files, or on ``runs.parquet`` for a table directory given alone."""
    if len(inputs) == 1 and Path(inputs[0]).is_dir():
        combined = Path(inputs[0]) / "runs.parquet"
        if not combined.exists():
            raise FileNotFoundError(f"{inputs[0]} is a directory without runs.parquet")
        inputs = [combined]
    return load_runs(inputs)
