"""An evaluation report as people read it: a markdown table and a plot.

Input: the report dict simple_evaluation.py builds (fields in evaluation.py).
The table has one row per (problem, method) and one total row per method;
the plot one panel per problem with one line per method: the median over
seeds of the best MSE at each generation (log scale).
"""

from __future__ import annotations

import math

import numpy as np

import file_io
from evaluation import ALL_PROBLEMS

# MSE 0 (an exact fit) cannot be drawn on a log scale: curves are clipped here.
PLOT_MSE_FLOOR = 1e-18
MARKED_POINTS = 40  # curves this short (gplearn's ~20 generations) get a marker per point

COLUMNS = [
    ("problem", lambda row: row["problem"]),
    ("method", lambda row: row["method"]),
    ("solved", lambda row: f"{row['solved']}/{row['runs']}"),
    ("median gens to solve", lambda row: _number(row["median_generations_to_solve"], "{:g}")),
    ("median evals to solve", lambda row: _number(row["median_evaluations_to_solve"], "{:,.0f}")),
    ("mean MSE", lambda row: _number(row["mean_mse"], "{:.2e}")),
    ("median MSE", lambda row: _number(row["median_mse"], "{:.2e}")),
    ("s/run", lambda row: _number(row["mean_seconds"], "{:.3g}")),
    ("ms/gen", lambda row: _number(row["seconds_per_generation"] * 1000, "{:.3g}")),
    ("median size", lambda row: _number(row["median_size"], "{:g}")),
    ("well-formed", lambda row: _number(row["well_formed_rate"], "{:.1%}")),
]


def _number(value, template: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return "inf"
    return template.format(value)


def results_table(aggregates: list[dict], totals: list[dict]) -> str:
    """Markdown table: per problem the methods side by side, then each method's total."""
    order = list(dict.fromkeys(row["problem"] for row in aggregates))
    rows = sorted(aggregates, key=lambda row: order.index(row["problem"])) + totals
    cells = [[format_cell(row) for _, format_cell in COLUMNS] for row in rows]
    for line in cells[len(aggregates):]:
        line[0] = f"**{ALL_PROBLEMS}**"
    header = [name for name, _ in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(line) + " |" for line in cells]
    return "\n".join(lines)


def markdown_report(report: dict) -> str:
    """The whole markdown file: settings, the table, timing notes."""
    settings = report["settings"]
    budget = settings["budget"]
    lines = [
        f"# Evaluation: {', '.join(settings['methods'])}",
        "",
        f"- command: `{report['metadata']['command']}`",
        f"- code version: {report['metadata']['code_version']}, {report['metadata']['timestamp']}",
        f"- budget: population {budget['population_size']} x {budget['num_generations']} generations "
        f"({budget['evaluations']:,} evaluations per run), max_size {budget['max_size']}, max_depth {budget['max_depth']}",
        f"- seeds: {', '.join(map(str, settings['seeds']))}; data: {settings['data']}",
        f"- solved: {settings['solved']}",
    ]
    if "gplearn" in settings:
        gplearn = settings["gplearn"]
        lines.append(f"- gplearn: population {gplearn['population_size']} x {gplearn['generations']} generations "
                     f"({gplearn['evaluations']:,} evaluations), {gplearn['note']}")
    if "operon" in settings:
        lines.append(f"- operon: {settings['operon']['note']}")
    if "neural" in settings:
        neural = settings["neural"]
        lines.append(f"- neural: checkpoint `{neural['checkpoint']}`, temperature {neural['temperature']}, "
                     f"top_k {neural['top_k']}, top_p {neural['top_p']}, batch_size {neural['batch_size']}, "
                     f"device {neural['device'] or 'auto'}"
                     + (", grammar-constrained decoding" if neural.get("constrained") else ", free sampling")
                     + (f", time limit {neural['time_limit']:g} s" if neural.get("time_limit") else ""))
    lines += ["", results_table(report["aggregates"], report["totals"]), ""]
    lines.append("Timing: " + "; ".join(
        f"{method} {info['seconds']:.1f} s ({info['timing']})" for method, info in report["methods"].items()
    ) + ".")
    lines.append("Generations and evaluations to solve: over solved runs, the first generation whose best "
                 "MSE reached the final accuracy (evaluations = population x (generation + 1)).")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# Plot


def median_curve(histories: list[list[float]], population: int, reference_population: int, horizon: int):
    """(x, median best MSE) over runs, drawn up to generation `horizon`.

    A run that stopped early (solved) keeps its last value. x is the
    generation in the reference population's units (evaluations /
    reference_population - 1), so a method with another population size
    (gplearn) is drawn at the budget it had spent.
    """
    length = max(len(history) for history in histories)
    padded = np.array([list(history) + [history[-1]] * (length - len(history)) for history in histories], dtype=float)
    padded[np.isnan(padded)] = np.inf  # null in a loaded report: a non-finite MSE
    x = population * (np.arange(length) + 1) / reference_population - 1
    median = np.median(padded, axis=0)
    if x[-1] < horizon:  # every run stopped early: the final values hold to the end of the budget
        x, median = np.append(x, horizon), np.append(median, median[-1])
    return x, median


def plot_best_mse(runs: list[dict], reference_population: int, horizon: int, path) -> bool:
    """Write the PNG (matplotlib, Agg); False when no run has a history to draw."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: only this report needs matplotlib
    from matplotlib.figure import Figure

    drawable = [run for run in runs if run["best_mse_history"]]
    if not drawable:
        return False
    names = list(dict.fromkeys(run["problem"] for run in runs))
    methods = list(dict.fromkeys(run["method"] for run in runs))
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure = Figure(figsize=(4.6 * columns, 3.4 * rows))
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis, name in zip(axes, names):
        for index, method in enumerate(methods):
            chosen = [run for run in drawable if run["problem"] == name and run["method"] == method]
            if chosen:
                x, median = median_curve([run["best_mse_history"] for run in chosen],
                                         chosen[0]["population_size"], reference_population, horizon)
                axis.plot(x, np.maximum(median, PLOT_MSE_FLOOR), label=f"{method} ({len(chosen)} runs)",
                          color=f"C{index}", drawstyle="steps-post",
                          marker="o" if len(x) <= MARKED_POINTS else None, markersize=3)
        axis.set_yscale("log")
        axis.set_title(name, fontsize=10)
        axis.set_xlabel(f"generation (budget of population {reference_population})")
        axis.set_ylabel("median best MSE")
        axis.grid(True, which="major", alpha=0.3)
        axis.legend(fontsize=8)
    for axis in axes[len(names):]:
        axis.set_visible(False)
    figure.tight_layout()
    with file_io.atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=100)
    return True
