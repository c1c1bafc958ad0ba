"""Figures of alfm.plots: every strategy present, panels and lines counted, incomplete arms flagged,
and the Snakemake aggregation rules building the HTML report."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.container import BarContainer, ErrorbarContainer
from results_helpers import write_run

from alfm import plots, results

STRATEGIES = sorted(plots.STRATEGY_COLORS)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """Every known strategy × 2 seeds × 2 datasets, 5 evaluations; coreset lacks seed 2 on d2."""
    root = tmp_path_factory.mktemp("runs")
    rng = np.random.default_rng(0)
    paths = []
    for dataset in ("d1", "d2"):
        for k, strategy in enumerate(STRATEGIES):
            for seed in (1, 2):
                if (dataset, strategy, seed) == ("d2", "coreset", 2):
                    continue
                curve = np.linspace(0.3, 0.8, 5) + 0.005 * k + rng.normal(0, 0.01, 5)
                paths.append(
                    write_run(
                        root / f"{dataset}_{strategy}_{seed}.parquet",
                        curve,
                        strategy=strategy,
                        seed=seed,
                        dataset=dataset,
                        query_seconds=10.0 ** (k % 4 - 3),
                    )
                )
    return results.load_runs(paths)


@pytest.fixture(scope="module")
def figures(grid: pd.DataFrame) -> dict:
    figs = plots.make_figures(grid)
    yield figs
    for fig in figs.values():
        plots.plt.close(fig)


def _visible(fig) -> list:
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]


def test_learning_curves_one_panel_per_pair_one_line_per_strategy(figures: dict) -> None:
    fig = figures["learning_curves"]
    axes = _visible(fig)
    assert [ax.get_title() for ax in axes] == ["m / d1", "m / d2"]
    for ax in axes:
        lines = ax.get_lines()
        assert len(lines) == len(STRATEGIES)
        assert len(ax.collections) == len(STRATEGIES)  # one CI band per line
        for line in lines:
            name = line.get_label().rstrip("*")
            assert mcolors.same_color(line.get_color(), plots.strategy_color(name))
    d1 = {line.get_label(): line.get_linestyle() for line in axes[0].get_lines()}
    d2 = {line.get_label(): line.get_linestyle() for line in axes[1].get_lines()}
    assert set(d1) == set(STRATEGIES) and set(d1.values()) == {"-"}
    assert d2["coreset*"] == "--" and "coreset" not in d2
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert sorted(legend) == sorted([*STRATEGIES, "coreset*"])
    assert any(plots.INCOMPLETE_NOTE in t.get_text() for t in fig.texts)
    assert fig.get_size_inches()[0] == plots.PAGE_WIDTH


def test_auc_heatmap_cells_and_hatched_incomplete(figures: dict) -> None:
    fig = figures["auc_heatmap"]
    ax = fig.axes[0]
    assert ax.images[0].get_array().shape == (len(STRATEGIES), 2)
    hatched = [p for p in ax.patches if p.get_hatch()]
    assert len(hatched) == 1  # coreset on d2
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0] == "random" and labels[-1] == "dropquery" and "coreset*" in labels
    assert len(ax.texts) == len(STRATEGIES) * 2


def test_query_time_log_scale_bars_per_strategy(figures: dict) -> None:
    ax = figures["query_time"].axes[0]
    assert ax.get_yscale() == "log"
    (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(bars) == len(STRATEGIES)
    assert [bar.get_hatch() for bar in bars].count("///") == 1  # coreset
    assert {round(bar.get_height(), 6) for bar in bars} == {0.001, 0.01, 0.1, 1.0}
    (dots,) = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(dots.get_offsets()) == 2 * len(STRATEGIES)  # one per (model, dataset) and arm
    assert "coreset*" in [t.get_text() for t in ax.get_xticklabels()]


def test_dropquery_summary_one_interval_per_other_strategy(figures: dict) -> None:
    axes = _visible(figures["dropquery_summary"])
    assert len(axes) == 2
    for ax in axes:
        intervals = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert len(intervals) == len(STRATEGIES) - 1
        labels = {t.get_text().rstrip("*") for t in ax.get_yticklabels()}
        assert labels == set(STRATEGIES) - {"dropquery"}


def test_dropquery_summary_without_dropquery_runs(tmp_path: Path) -> None:
    paths = [write_run(tmp_path / f"r{s}.parquet", [0.1, 0.2], seed=s) for s in (1, 2)]
    fig = plots.make_figures(results.load_runs(paths))["dropquery_summary"]
    assert fig.axes[0].texts[0].get_text() == "no dropquery runs"


def test_write_figures_png_and_pdf(grid: pd.DataFrame, tmp_path: Path) -> None:
    written = plots.write_figures(grid, tmp_path)
    expected = {f"{n}.{ext}" for n in plots.FIGURE_NAMES for ext in ("png", "pdf")}
    assert {p.name for p in written} == expected
    assert all(p.stat().st_size > 1000 for p in written)
    assert (tmp_path / "learning_curves.pdf").read_bytes().startswith(b"%PDF")


def test_colors_fixed_distinct_and_stable() -> None:
    colors = list(plots.STRATEGY_COLORS.values())
    assert len(set(colors)) == len(colors)
    assert plots.strategy_color("my_custom") == plots.strategy_color("my_custom")
    assert plots.strategy_color("my_custom") in plots.EXTRA_COLORS
    assert not set(plots.EXTRA_COLORS) & set(colors)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("snakemake") is None, reason="snakemake not installed")
def test_snakemake_rules_build_tables_figures_and_report(tmp_path: Path) -> None:
    for strategy in ("random", "dropquery"):
        for seed in (1, 2):
            write_run(
                tmp_path / "runs" / f"{strategy}{seed}.parquet",
                [0.2, 0.5],
                strategy=strategy,
                seed=seed,
            )
    (tmp_path / "Snakefile").write_text(
        "import glob\n"
        'RESULTS = "res"\n'
        "def run_result_paths():\n"
        '    return sorted(glob.glob("runs/*.parquet"))\n'
        f'include: "{REPO}/workflow/rules/aggregate.smk"\n'
        "rule all:\n"
        "    input: aggregate_targets(RESULTS)\n"
    )
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1"]
    done = subprocess.run([*cmd, "figures"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in plots.FIGURE_NAMES:
        assert (tmp_path / "res" / "figures" / f"{name}.png").exists()
    assert (tmp_path / "res" / "tables" / "summary.md").exists()
    report = subprocess.run(
        [*cmd, "--report", "report.html"], cwd=tmp_path, capture_output=True, text=True
    )
    assert report.returncode == 0, report.stderr[-2000:]
    html = (tmp_path / "report.html").read_text()
    assert "Learning curves: mean test accuracy" in html  # a caption
    assert "Active learning on cached foundation-model features" in html  # the description
