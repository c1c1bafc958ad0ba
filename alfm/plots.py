"""Paper figures from the tidy run table: learning curves, AUC heatmap, query time, DropQuery,
and the study figure (each strategy with vs without the studied option).

Colors are fixed per strategy name (Okabe-Ito, extended with tab10 tones) in :data:`STRATEGY_COLORS`
so a strategy looks the same in every figure; unknown names get a stable color from the extension
list. Incomplete arms (fewer seeds or truncated runs) are drawn dashed or hatched and marked with
``*`` plus a note.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from alfm.results import compute_tables, paired_tests  # noqa: E402

FIGURE_NAMES = ("learning_curves", "auc_heatmap", "query_time", "dropquery_summary", "study")
COLUMN_WIDTH = 3.5  # inches: one column of a two-column paper
PAGE_WIDTH = 7.0
LEGEND_ROW = 0.13  # inches per legend row at the legend font size
STRATEGY_COLORS = {
    "random": "#000000",
    "dropquery": "#D55E00",
    "uncertainty": "#E69F00",
    "entropy": "#56B4E9",
    "margins": "#009E73",
    "bald": "#0072B2",
    "powerbald": "#CC79A7",
    "coreset": "#8C564B",
    "badge": "#7F7F7F",
    "alfamix": "#BCBD22",
    "typiclust": "#17BECF",
    "probcover": "#9467BD",
}
STRATEGY_MARKERS = {
    "random": "o",
    "dropquery": "D",
    "uncertainty": "v",
    "entropy": "^",
    "margins": "<",
    "bald": ">",
    "powerbald": "s",
    "coreset": "p",
    "badge": "h",
    "alfamix": "X",
    "typiclust": "P",
    "probcover": "*",
}
#: Colors of a study's settings (Okabe-Ito without black, which marks the reference).
SETTING_COLORS = ("#D55E00", "#0072B2", "#009E73", "#E69F00", "#CC79A7", "#56B4E9", "#F0E442")
EXTRA_COLORS = ("#F0E442", "#1F77B4", "#2CA02C", "#D62728", "#FF7F0E", "#E377C2", "#AEC7E8")
INCOMPLETE_NOTE = "* incomplete: fewer seeds or truncated runs (see completeness.csv)"
STYLE = {
    "font.size": 7,
    "axes.titlesize": 7,
    "axes.labelsize": 7,
    "legend.fontsize": 6,
    "xtick.labelsize": 6,
    "ytick.labelsize": 6,
    "lines.linewidth": 1.0,
    "savefig.dpi": 300,
    "pdf.fonttype": 42,
}


def strategy_color(strategy: str) -> str:
    """The fixed color of a strategy name; unknown names hash to a stable extension color."""
    if strategy in STRATEGY_COLORS:
        return STRATEGY_COLORS[strategy]
    return EXTRA_COLORS[zlib.crc32(strategy.encode()) % len(EXTRA_COLORS)]


def strategy_marker(strategy: str) -> str:
    """The fixed line marker of a strategy name (a point for unknown names)."""
    return STRATEGY_MARKERS.get(strategy, ".")


def _arm_order(frame: pd.DataFrame) -> list[str]:
    """Arms with random first, DropQuery last, the rest alphabetical."""
    arms = sorted(frame["arm"].unique())
    rank = {"random": 0, "dropquery": 2}
    strategy_of = dict(zip(frame["arm"], frame["strategy"], strict=False))
    return sorted(arms, key=lambda a: (rank.get(strategy_of[a], 1), a))


def _panels(n: int) -> tuple[int, int, float]:
    """(rows, cols, figure width) for n panels: one column-wide panel, else up to 3 per row."""
    cols = 1 if n == 1 else min(3, n)
    rows = int(np.ceil(n / cols))
    return rows, cols, COLUMN_WIDTH if n == 1 else PAGE_WIDTH


def _pairs(frame: pd.DataFrame) -> list[tuple[str, str]]:
    return sorted(frame[["model", "dataset"]].drop_duplicates().itertuples(index=False, name=None))


def plot_learning_curves(curves: pd.DataFrame, metric: str = "accuracy") -> Figure:
    """One panel per (model, dataset): mean ``metric`` vs labels with 95% CI bands, one line per
    arm; arms with incomplete data dashed and starred."""
    pairs = _pairs(curves)
    rows, cols, width = _panels(len(pairs))
    order = _arm_order(curves)
    legend_rows = int(np.ceil(len(order) / _legend_columns(width)))
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(
            rows, cols, figsize=(width, 2.3 * rows + 0.5 + LEGEND_ROW * legend_rows), squeeze=False
        )
        incomplete_any = False
        by_arm = dict(iter(curves.sort_values("round").groupby(["model", "dataset", "arm"])))
        for ax, (model, dataset) in zip(axes.flat, pairs, strict=False):
            for arm in order:
                curve = by_arm.get((model, dataset, arm))
                if curve is None:
                    continue
                complete = bool(curve["complete"].all())
                incomplete_any |= not complete
                strategy = str(curve["strategy"].iloc[0])
                color = strategy_color(strategy)
                x = curve["num_labeled"].to_numpy()
                ax.plot(
                    x,
                    curve[f"{metric}_mean"],
                    color=color,
                    linestyle="-" if complete else "--",
                    marker=strategy_marker(strategy),
                    markersize=2.5,
                    markevery=max(1, len(x) // 5),
                    label=arm if complete else f"{arm}*",
                )
                ax.fill_between(
                    x,
                    curve[f"{metric}_ci_low"],
                    curve[f"{metric}_ci_high"],
                    color=color,
                    alpha=0.15,
                    linewidth=0,
                )
            ax.set_title(f"{model} / {dataset}")
            ax.set_xlabel("labeled samples")
            ax.set_ylabel(metric.replace("_", " "))
            ax.grid(alpha=0.3)
        for ax in axes.flat[len(pairs) :]:
            ax.set_visible(False)
        top = _shared_legend(fig, axes.flat[: len(pairs)])
        _finish(fig, incomplete_any, "lines: mean over seeds; bands: 95% t-interval", top)
    return fig


def plot_auc_heatmap(auc: pd.DataFrame, rank_table: pd.DataFrame) -> Figure:
    """Arms × (model, dataset) heatmap of mean normalized AUC, each cell annotated with its rank;
    incomplete cells hatched, cells without a complete run grey."""
    pairs = _pairs(auc)
    order = _arm_order(auc)
    table = auc.merge(
        rank_table[["model", "dataset", "arm", "rank"]], on=["model", "dataset", "arm"]
    )
    values = np.full((len(order), len(pairs)), np.nan)
    ranks = np.full_like(values, np.nan)
    complete = np.ones_like(values, dtype=bool)
    for row in table.itertuples(index=False):
        i, j = order.index(row.arm), pairs.index((row.model, row.dataset))
        values[i, j], ranks[i, j], complete[i, j] = row.auc_full_mean, row.rank, row.complete
    with plt.rc_context(STYLE):
        width = min(PAGE_WIDTH, max(COLUMN_WIDTH, 1.6 + 0.9 * len(pairs)))
        fig, ax = plt.subplots(figsize=(width, 0.9 + 0.22 * len(order)))
        cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#DDDDDD")
        image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, aspect="auto")
        for i in range(len(order)):
            for j in range(len(pairs)):
                if not complete[i, j]:
                    ax.add_patch(
                        plt.Rectangle(
                            (j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//", edgecolor="#BBBBBB"
                        )
                    )
                text = "n/a" if np.isnan(values[i, j]) else f"{values[i, j]:.3f} ({ranks[i, j]:g})"
                dark = np.isnan(values[i, j]) or image.norm(values[i, j]) < 0.5
                color = "white" if not np.isnan(values[i, j]) and dark else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=5, color=color)
        ax.set_xticks(range(len(pairs)), [f"{m}\n{d}" for m, d in pairs])
        ax.set_yticks(
            range(len(order)), [a if complete[i].all() else f"{a}*" for i, a in enumerate(order)]
        )
        fig.colorbar(image, ax=ax, label="normalized AUC", fraction=0.05, pad=0.02)
        ax.set_title("AUC of the learning curve (rank in parentheses)")
        _finish(fig, not complete.all(), "hatched: incomplete; grey: no complete run")
    return fig


def plot_query_time(costs: pd.DataFrame) -> Figure:
    """Seconds per query for each arm on a log scale: bar = median over (model, dataset) of the
    median query, dots = each (model, dataset)'s median, whisker = the slowest query; arms
    incomplete anywhere hatched."""
    order = _arm_order(costs)
    by_arm = costs.groupby("arm")
    median = by_arm["query_seconds_median"].median().reindex(order).to_numpy(dtype=float)
    slowest = by_arm["query_seconds_max"].max().reindex(order).to_numpy(dtype=float)
    complete = by_arm["complete"].all().reindex(order)
    strategy = by_arm["strategy"].first().reindex(order)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(COLUMN_WIDTH if len(order) <= 12 else PAGE_WIDTH, 2.6))
        x = np.arange(len(order))
        bars = ax.bar(
            x,
            median,
            0.7,
            yerr=[np.zeros_like(median), slowest - median],
            color=[strategy_color(str(s)) for s in strategy],
            edgecolor="white",
            error_kw={"elinewidth": 0.6, "capsize": 1.5},
        )
        for bar, done in zip(bars, complete, strict=True):
            if not done:
                bar.set_hatch("///")
        position = {arm: i for i, arm in enumerate(order)}
        ax.scatter(
            costs["arm"].map(position),
            costs["query_seconds_median"],
            s=4,
            color="#333333",
            zorder=3,
        )
        ax.set_yscale("log")
        ax.set_xticks(x, [a if c else f"{a}*" for a, c in zip(order, complete, strict=True)])
        ax.tick_params(axis="x", rotation=60)
        ax.set_ylabel("seconds per query")
        ax.grid(axis="y", alpha=0.3)
        note = "bars: median over (model, dataset); dots: each one's median; whiskers: slowest"
        _finish(fig, not complete.all(), note)
    return fig


def plot_dropquery_summary(tests_vs_dropquery: pd.DataFrame) -> Figure:
    """Forest plot per (model, dataset): DropQuery's AUC minus each other arm's, paired by seed,
    with 95% t-intervals; filled markers where the paired test gives p < 0.05."""
    frame = tests_vs_dropquery
    pairs = _pairs(frame) if len(frame) else []
    rows, cols, width = _panels(max(1, len(pairs)))
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(
            rows,
            cols,
            figsize=(width, 0.8 + 0.18 * max(3, frame["arm"].nunique()) * rows),
            squeeze=False,
        )
        if not pairs:
            axes[0, 0].text(0.5, 0.5, "no dropquery runs", ha="center", va="center")
            axes[0, 0].set_axis_off()
        order = _arm_order(frame) if len(frame) else []
        for ax, (model, dataset) in zip(axes.flat, pairs, strict=False):
            here = frame[(frame["model"] == model) & (frame["dataset"] == dataset)]
            here = here.set_index("arm").reindex([a for a in order if a in set(here["arm"])])
            y = np.arange(len(here))
            diff = -here["mean_diff"].to_numpy(dtype=float)
            low = -here["diff_ci_high"].to_numpy(dtype=float)
            high = -here["diff_ci_low"].to_numpy(dtype=float)
            for k, row in enumerate(here.itertuples()):
                color = strategy_color(str(row.strategy))
                significant = bool(row.p_value < 0.05)
                ax.errorbar(
                    diff[k],
                    y[k],
                    xerr=[[diff[k] - low[k]], [high[k] - diff[k]]]
                    if not np.isnan(low[k])
                    else None,
                    fmt="o",
                    color=color,
                    markerfacecolor=color if significant else "white",
                    markersize=3.5,
                    elinewidth=0.8,
                    capsize=1.5,
                )
            ax.axvline(0, color="#888888", linewidth=0.6)
            ax.set_yticks(
                y, [a if c else f"{a}*" for a, c in zip(here.index, here["complete"], strict=True)]
            )
            ax.invert_yaxis()
            ax.set_xlabel("DropQuery AUC − arm AUC")
            ax.set_title(f"{model} / {dataset}")
            ax.grid(axis="x", alpha=0.3)
        for ax in axes.flat[max(1, len(pairs)) :]:
            ax.set_visible(False)
        incomplete = bool(len(frame)) and not frame["complete"].all()
        _finish(fig, incomplete, "filled: p < 0.05 (paired test across seeds); bars: 95% CI")
    return fig


def plot_study(study: pd.DataFrame) -> Figure:
    """The study figure (:func:`alfm.results.study_comparisons`): one panel per (model, dataset),
    one row per strategy; the reference arm's mean AUC (black ring) and each setting's (colored
    dot, filled where the paired test gives p < 0.05), with 95% t-intervals over seeds, and the
    paired difference with its p-value written beside each setting."""
    pairs = _pairs(study) if len(study) else []
    settings = sorted(study["setting"].unique()) if len(study) else []
    color = {s: SETTING_COLORS[i % len(SETTING_COLORS)] for i, s in enumerate(settings)}
    strategies = _arm_order(study.assign(arm=study["strategy"])) if len(study) else []
    lines = max(1, len(strategies) * (1 + len(settings)))
    cols = 1 if len(pairs) <= 1 else 2
    rows = max(1, int(np.ceil(len(pairs) / cols)))
    width = COLUMN_WIDTH if cols == 1 else PAGE_WIDTH
    legend_rows = int(np.ceil((1 + len(settings)) / _legend_columns(width)))
    height = rows * (0.55 + 0.085 * lines) + 0.35 + LEGEND_ROW * legend_rows
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False)
        if not pairs:
            axes[0, 0].text(
                0.5,
                0.5,
                "no study: no strategy runs both at its defaults and with a setting",
                ha="center",
                va="center",
            )
            axes[0, 0].set_axis_off()
        step = 1.0 / (1 + len(settings))
        for ax, (model, dataset) in zip(axes.flat, pairs, strict=False):
            here = study[(study["model"] == model) & (study["dataset"] == dataset)]
            for i, strategy in enumerate(strategies):
                mine = here[here["strategy"] == strategy]
                if mine.empty:
                    continue
                ref = mine.iloc[0]
                _interval(
                    ax,
                    i,
                    ref.reference_mean,
                    ref.reference_ci_low,
                    ref.reference_ci_high,
                    "black",
                    False,
                    "reference (defaults)",
                )
                for row in mine.itertuples():
                    y = i + step * (1 + settings.index(row.setting))
                    significant = bool(row.p_value < 0.05)
                    _interval(
                        ax,
                        y,
                        row.arm_mean,
                        row.arm_ci_low,
                        row.arm_ci_high,
                        color[row.setting],
                        significant,
                        row.setting,
                    )
                    p = "" if np.isnan(row.p_value) else f" p={row.p_value:.2g}"
                    ax.annotate(
                        f"{row.mean_diff:+.3f}{p}",
                        (1.0, y),
                        xycoords=("axes fraction", "data"),
                        xytext=(2, 0),
                        textcoords="offset points",
                        va="center",
                        fontsize=4.5,
                        color=color[row.setting],
                        annotation_clip=False,
                    )
            ax.set_yticks(np.arange(len(strategies)) + 0.5 * step * len(settings), strategies)
            ax.set_ylim(len(strategies) - 1 + step * len(settings) + 0.5, -0.5)
            for i in range(1, len(strategies)):
                ax.axhline(i - 0.5 * step, color="#DDDDDD", linewidth=0.5)
            ax.set_xlabel("normalized AUC (mean, 95% CI over seeds)")
            ax.set_title(f"{model} / {dataset}")
            ax.grid(axis="x", alpha=0.3)
        for ax in axes.flat[max(1, len(pairs)) :]:
            ax.set_visible(False)
        top = 1.0
        if pairs:  # proxies: the panels mix filled and open markers of one setting
            entries = {"reference (defaults)": ("black", "white")}
            entries.update({setting: (color[setting], color[setting]) for setting in settings})
            handles = [
                Line2D([], [], marker="o", linestyle="none", color=c, markerfacecolor=face)
                for c, face in entries.values()
            ]
            ncol = min(_legend_columns(width), len(handles))
            fig.legend(handles, list(entries), loc="upper center", ncol=ncol, frameon=False)
            top = 1 - (LEGEND_ROW * int(np.ceil(len(handles) / ncol)) + 0.05) / height
        incomplete = bool(len(study)) and not study["complete"].all()
        note = (
            "filled: p < 0.05 vs the strategy's defaults (paired by seed); right: AUC "
            "difference and p-value"
        )
        _finish(fig, incomplete, note, top)
        if pairs:  # room on the right of each panel for the differences
            fig.subplots_adjust(right=min(fig.subplotpars.right, 1 - 0.55 / width), wspace=0.6)
    return fig


def _interval(
    ax, y: float, mean: float, low: float, high: float, color: str, filled: bool, label: str
) -> None:
    """One mean with its interval as a horizontal error bar (no bar for a NaN interval)."""
    err = None if np.isnan(low) else [[mean - low], [high - mean]]
    ax.errorbar(
        mean,
        y,
        xerr=err,
        fmt="o",
        color=color,
        markersize=3,
        markerfacecolor=color if filled else "white",
        elinewidth=0.8,
        capsize=1.2,
        label=label,
    )


def _shared_legend(fig: Figure, axes: Sequence) -> float:
    """One legend above all panels (labels deduplicated); returns the top of the panel area."""
    entries: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    ncol = min(_legend_columns(fig.get_size_inches()[0]), len(entries))
    fig.legend(list(entries.values()), list(entries), loc="upper center", ncol=ncol, frameon=False)
    rows = int(np.ceil(len(entries) / ncol))
    return 1 - (LEGEND_ROW * rows + 0.05) / fig.get_size_inches()[1]


def _legend_columns(width: float) -> int:
    """Legend columns that fit a figure ``width`` inches wide (about 1.15 in per entry)."""
    return max(1, int(width / 1.15))


def _finish(fig: Figure, incomplete: bool, note: str, top: float = 1.0) -> None:
    """Tight layout with a footnote: the figure's reading note and the incomplete marker."""
    text = note + ("\n" + INCOMPLETE_NOTE if incomplete else "")
    fig.text(0.01, 0.005, text, fontsize=5, va="bottom", ha="left", color="#444444")
    bottom = (0.22 if incomplete else 0.13) / fig.get_size_inches()[1]
    fig.tight_layout(rect=(0, bottom, 1, top))


def make_figures(runs: pd.DataFrame, metric: str = "accuracy") -> dict[str, Figure]:
    """Every paper figure for a tidy run table (:func:`alfm.results.load_runs`), keyed by name."""
    tables = compute_tables(runs, metric)
    completeness = tables["completeness"].set_index(["model", "dataset", "arm"])["complete"]
    costs = tables["costs"].join(completeness, on=["model", "dataset", "arm"])
    vs_dropquery = paired_tests(tables["auc_runs"], baseline="dropquery")
    vs_dropquery = vs_dropquery.join(completeness, on=["model", "dataset", "arm"])
    return {
        "learning_curves": plot_learning_curves(tables["curves"], metric),
        "auc_heatmap": plot_auc_heatmap(tables["auc"], tables["ranks"]),
        "query_time": plot_query_time(costs),
        "dropquery_summary": plot_dropquery_summary(vs_dropquery),
        "study": plot_study(tables["study"]),
    }


def write_figures(
    runs: pd.DataFrame,
    out_dir: str | Path,
    formats: Sequence[str] = ("png", "pdf"),
    metric: str = "accuracy",
) -> list[Path]:
    """Render :func:`make_figures` into ``out_dir/<name>.<format>`` and return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in make_figures(runs, metric).items():
        for fmt in formats:
            path = out_dir / f"{name}.{fmt}"
            fig.savefig(path)
            written.append(path)
        plt.close(fig)
    return written
