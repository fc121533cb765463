"""Accuracy vs acceleration factor (the paper's Figure 5 Pareto plot) from table rows.

The sweep (eval/sweep.py, eval/pareto_plot.py) and the demo draw the same plot: one series per (task, strategy),
the teacher as its own series, accuracy stderr and tokens-per-pass std as error bars, and the Pareto frontier
dashed. `setting_label` names a setting as `DecodeSpec.label` does (static_k3, confadapt_t0.9_kmax16, ...).
"""

import math
from pathlib import Path

from mtp_ds.decoding.spec import DEFAULT_MASK_LAYOUT, DecodeSpec

STRATEGY_STYLE = {
    "static": ("Static k", "o", "tab:blue"),
    "confadapt": ("ConfAdapt", "s", "tab:orange"),
    "selfspec": ("selfspec (lossless)", "D", "tab:red"),
}
TEACHER_STYLE = ("teacher", "*", "tab:green")


def setting_label(setting: dict) -> str:
    """static_k3, confadapt_t0.9_kmax16, selfspec_kmax4 (selfspec_kmax4_per_proposal for the other layout)."""
    return DecodeSpec.from_settings(setting).label


def pareto_frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points (x, y) not dominated by any other (higher x and higher y are better), sorted by x."""
    frontier = []
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):
        if not frontier or y > frontier[-1][1]:
            frontier.append((x, y))
    return sorted(frontier)


def _finite(value) -> float:
    return value if isinstance(value, (int, float)) and math.isfinite(value) else 0.0


def _point_label(row: dict) -> str:
    if row.get("model") == "teacher":
        return ""  # named by the legend
    if row["strategy"] == "selfspec":  # the sweep's rows carry k_max; the demo's carry it as k
        k_max = row.get("k_max") if row.get("k_max") is not None else row.get("k")
        layout = row.get("mask_layout") or DEFAULT_MASK_LAYOUT
        return f"k_max={k_max}" + ("" if layout == DEFAULT_MASK_LAYOUT else f" ({layout})")
    return f"k={row['k']}" if row["strategy"] == "static" else f"τ={row['threshold']:g}"


def plot_pareto(rows: list[dict], path, *, title: str = "", metric_label: str = "accuracy") -> Path:
    """Draw the rows of a sweep table (dicts with task, strategy, k, threshold, accuracy, ...) into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({row["task"] for row in rows})
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.4 * len(tasks), 4.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        task_rows = [row for row in rows if row["task"] == task and row.get("accuracy") is not None]
        styles = [
            (lambda row, s=strategy: row.get("model") != "teacher" and row["strategy"] == s, style)
            for strategy, style in STRATEGY_STYLE.items()
        ]
        styles.append((lambda row: row.get("model") == "teacher", TEACHER_STYLE))
        for belongs, (name, marker, color) in styles:
            series = sorted((row for row in task_rows if belongs(row)), key=lambda row: row["acceleration_factor"])
            if not series:
                continue
            xs = [row["acceleration_factor"] for row in series]
            ys = [row["accuracy"] for row in series]
            ax.errorbar(
                xs,
                ys,
                xerr=[_finite(row.get("acceleration_factor_std")) for row in series],
                yerr=[_finite(row.get("accuracy_stderr")) for row in series],
                marker=marker,
                color=color,
                label=name,
                capsize=2,
                elinewidth=0.6,
                linewidth=1.2,
            )
            for row, x, y in zip(series, xs, ys):
                ax.annotate(_point_label(row), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        frontier = pareto_frontier([(row["acceleration_factor"], row["accuracy"]) for row in task_rows])
        if len(frontier) > 1:
            ax.plot(*zip(*frontier), linestyle="--", color="gray", linewidth=0.8, label="Pareto frontier")
        ax.set_xlabel("acceleration factor (tokens per forward pass)")
        ax.set_ylabel(metric_label)
        ax.set_title(f"{title} {task}".strip())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path
