"""The paper's figures as PNG files: plain numbers in, a path out.

matplotlib is imported inside each function (the CLI should not pay for it) and figures are
drawn on an Agg canvas of their own, so pyplot's global state and any interactive backend are
never touched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from idistill.schedule import adaptive_alpha, validate_adaptive

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 120
SENSITIVITY_LABEL = "sensitivity |θ·∂L/∂θ|"
_ALPHA_CURVE_POINTS = 400  # enough for a smooth x^gamma curve at any N


def sensitivity_violins(
    samples: Mapping[str, np.ndarray],
    path: Path,
    *,
    title: str = "Parameter sensitivity",
    std: Mapping[str, float] | None = None,
) -> Path:
    """Violins of each run's sensitivity sample side by side (paper Figures 3, 5).

    The caller has already removed the top 1% and taken a 10% sample (Appendix B). Each tick
    label carries the std, the paper's degree of contribution balance: `std[name]` (that of
    all counted elements) where given, else the plotted sample's.
    """
    _check_runs("samples", samples)
    values = []
    for name, sample in samples.items():
        arr = np.asarray(sample, dtype=float).ravel()
        if arr.size == 0:
            raise ValueError(f"samples[{name!r}] is empty; give at least one sensitivity value")
        values.append(arr)
    std = std or {}
    labels = [
        f"{name}\nstd {std.get(name, arr.std()):.1e}"
        for name, arr in zip(samples, values, strict=True)
    ]

    fig, ax = _figure(width=max(4.0, 1.6 * len(values) + 1.5))
    positions = np.arange(1, len(values) + 1)
    ax.violinplot(values, positions=positions, showmeans=True, showextrema=True)
    ax.set_xticks(positions, labels)
    ax.set_ylabel(SENSITIVITY_LABEL)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    ax.set_title(title)
    return _save(fig, path)


def sensitivity_during_training(
    steps: Sequence[int],
    top20: Sequence[float],
    bottom80: Sequence[float],
    path: Path,
    *,
    std: Sequence[float] | None = None,
    label: str = "",
) -> Path:
    """Paper Figure 2: mean sensitivity of the top-20% and bottom-80% parameters per update.

    Log y axis; the std of all sensitivities goes on a twin axis when given.
    """
    if len(steps) == 0:
        raise ValueError("steps is empty; give at least one update with its sensitivities")
    for name, series in (("top20", top20), ("bottom80", bottom80), ("std", std)):
        if series is not None and len(series) != len(steps):
            raise ValueError(
                f"{name} must have one value per step ({len(steps)} steps, got {len(series)})"
            )

    fig, ax = _figure(width=6.4)
    lines = ax.plot(steps, top20, marker="o", markersize=3, label="top 20% (mean)")
    lines += ax.plot(steps, bottom80, marker="o", markersize=3, label="bottom 80% (mean)")
    ax.set_yscale("log")
    ax.set_xlabel("updates")
    ax.set_ylabel(f"mean {SENSITIVITY_LABEL}")
    if std is not None:
        twin = ax.twinx()
        lines += twin.plot(steps, std, color="tab:gray", linestyle="--", label="std (all)")
        twin.set_ylabel(f"std of {SENSITIVITY_LABEL}")
        twin.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    ax.legend(lines, [line.get_label() for line in lines], loc="best")
    ax.set_title("Sensitivity during training" + (f": {label}" if label else ""))
    return _save(fig, path)


def pruning_curves(
    curves: Mapping[str, Sequence[tuple[float, float]]], path: Path, *, metric: str = "BLEU"
) -> Path:
    """Paper Figures 6, 10: the metric against the pruned ratio, and its change from ratio 0.

    curves: {run label: [(ratio in [0, 1), metric), ...]}; each run needs a point at ratio 0.
    """
    _check_runs("curves", curves)
    fig, (left, right) = _figure(width=10.0, ncols=2)
    for name, points in curves.items():
        ratios, values = _columns("curves", name, points)
        if np.any((ratios < 0) | (ratios >= 1)):
            raise ValueError(f"curves[{name!r}] ratios must be in [0, 1) (got {ratios.tolist()})")
        order = np.argsort(ratios)
        ratios, values = ratios[order], values[order]
        if ratios[0] != 0:
            raise ValueError(
                f"curves[{name!r}] needs a point at ratio 0 to measure the change from "
                f"(lowest ratio {ratios[0]:g})"
            )
        left.plot(100 * ratios, values, marker="o", markersize=3, label=name)
        right.plot(100 * ratios, values - values[0], marker="o", markersize=3, label=name)
    for ax in (left, right):
        ax.set_xlabel("pruned parameters (%)")
        ax.set_xlim(0, 50)
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
    left.set_ylabel(metric)
    left.set_title(f"{metric} after pruning")
    right.set_ylabel(f"Δ {metric} vs. unpruned")
    right.axhline(0.0, color="black", linewidth=0.8)
    right.set_title(f"{metric} change from ratio 0")
    return _save(fig, path)


def _label(ax, xlabel: str, ylabel: str, title: str) -> None:
    """Axis labels, a light grid, the legend and the title of a one-panel line plot."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    ax.set_title(title)


def loss_curves(
    curves: Mapping[str, Sequence[tuple[int, float]]],
    path: Path,
    *,
    ylabel: str = "validation loss",
) -> Path:
    """Paper Figure 7: validation loss against updates, one line per run; the seeds of one
    method ("baseline, seed 2") share its colour."""
    _check_runs("curves", curves)
    fig, ax = _figure(width=6.4)
    for name, points in curves.items():
        steps, values = _columns("curves", name, points)
        ax.plot(steps, values, label=name, **line_style(name, curves))
    _label(ax, "updates", ylabel, f"{ylabel[:1].upper()}{ylabel[1:]} during training")
    return _save(fig, path)


SEED = ", seed "  # "<row>, seed <s>": one run of a row with several seeds
LINE_STYLES = ("-", "--", ":", "-.")


def line_style(name: str, names: Sequence[str]) -> dict[str, str]:
    """Colour and line style of the line `name` among `names`: a colour per method (the name
    before ", seed"), a line style per seed within it."""
    methods = list(dict.fromkeys(n.split(SEED)[0] for n in names))
    method = name.split(SEED)[0]
    siblings = [n for n in names if n.split(SEED)[0] == method]
    return {
        "color": f"C{methods.index(method) % 10}",
        "linestyle": LINE_STYLES[siblings.index(name) % len(LINE_STYLES)],
    }


def run_curves(series: Mapping[str, Sequence[tuple[int, float]]], path: Path) -> Path:
    """One run's training at a glance: the training and validation loss, and alpha, against
    updates (the metrics it logged; a metric with no points is left out)."""
    losses = {k: v for k, v in series.items() if k.endswith("loss") and v}
    others = {k: v for k, v in series.items() if not k.endswith("loss") and v}
    fig, axes = _figure(width=9.6, ncols=2)
    for ax, group, ylabel in ((axes[0], losses, "loss"), (axes[1], others, "value")):
        for name, points in group.items():
            steps, values = _columns("series", name, points)
            ax.plot(steps, values, label=name)
        if group:
            ax.legend(frameon=False)
        _label(ax, "updates", ylabel, ", ".join(group) or "(not logged)")
    return _save(fig, path)


def metric_vs_k(
    points: Mapping[str, Sequence[tuple[int, float, float]]], path: Path, *, metric: str = "BLEU"
) -> Path:
    """Paper Figure 8: the task metric against the number of passes K, one line per series.

    Each point is (k, mean, std); points with std > 0 get an error bar of +-std.
    """
    _check_runs("points", points)
    fig, ax = _figure(width=6.4)
    all_k: set[int] = set()
    for name, series in points.items():
        k, mean, std = _columns("points", name, series, width=3)
        order = np.argsort(k)
        k, mean, std = k[order], mean[order], std[order]
        (line,) = ax.plot(k, mean, marker="o", label=name)
        spread = std > 0
        if spread.any():
            ax.errorbar(
                k[spread],
                mean[spread],
                yerr=std[spread],
                fmt="none",
                ecolor=line.get_color(),
                capsize=3,
            )
        all_k.update(int(v) for v in k)
    ax.set_xticks(sorted(all_k))
    _label(ax, "K (forward passes per example)", metric, f"{metric} against K")
    return _save(fig, path)


def alpha_schedule(alpha: float, p: float, q: float, total_updates: int, path: Path) -> Path:
    """Paper Figure 4: alpha' of the adaptive schedule (eq. 11-12) against updates.

    Marks N/q (alpha' = 1) and N/p (alpha' = alpha), with constant alpha for comparison.
    """
    steps, values = _alpha_points(alpha, p, q, total_updates)
    fig, ax = _figure(width=6.4)
    ax.plot(steps, values, label=f"adaptive (p={p:g}, q={q:g})")
    ax.axhline(alpha, color="tab:gray", linestyle="--", label=f"constant α={alpha:g}")
    for x, y, name in ((total_updates / q, 1.0, "N/q"), (total_updates / p, alpha, "N/p")):
        if x <= total_updates:
            ax.plot([x], [y], marker="o", color="tab:red", linestyle="none")
            ax.annotate(
                f"{name} = {x:g}\nα′ = {y:g}",
                (x, y),
                textcoords="offset points",
                xytext=(8, -22),
                fontsize=8,
            )
    ax.set_xlabel("updates")
    ax.set_ylabel("α′ (weight of the intra-distillation loss)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(f"Adaptive α schedule (N={total_updates})")
    return _save(fig, path)


def _alpha_points(
    alpha: float, p: float, q: float, total_updates: int
) -> tuple[np.ndarray, np.ndarray]:
    """(steps, alpha') over [0, N] from schedule.adaptive_alpha, N/q and N/p included."""
    validate_adaptive(p, q)
    if total_updates < 1:
        raise ValueError(f"total_updates must be >= 1 (got {total_updates})")
    if alpha <= 1:
        raise ValueError(
            f"alpha must be > 1 for the adaptive schedule to differ from constant (got {alpha:g})"
        )
    grid = np.linspace(0, total_updates, _ALPHA_CURVE_POINTS + 1).round()
    marks = [round(total_updates / q), round(total_updates / p)]
    steps = np.unique(np.concatenate([grid, marks]).astype(int))
    steps = steps[steps <= total_updates]
    values = np.array([adaptive_alpha(alpha, int(s), total_updates, p, q) for s in steps])
    return steps, values


def _check_runs(name: str, runs: Mapping) -> None:
    if len(runs) == 0:
        raise ValueError(f"{name} is empty; give at least one run to plot")


def _columns(
    name: str, run: str, points: Sequence[tuple], width: int = 2
) -> tuple[np.ndarray, ...]:
    """Split [(x, y, ...), ...] into float columns, refusing empty or ragged series."""
    if len(points) == 0:
        raise ValueError(f"{name}[{run!r}] is empty; give at least one point")
    try:
        arr = np.asarray(points, dtype=float)
    except ValueError:  # ragged tuples
        arr = np.empty((0,))
    if arr.ndim != 2 or arr.shape[1] != width:
        raise ValueError(
            f"{name}[{run!r}] must hold {width}-tuples (got shape {arr.shape}, "
            f"first point {points[0]!r})"
        )
    return tuple(arr.T)


def _figure(width: float, ncols: int = 1) -> tuple[Figure, object]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, 4.2), dpi=DPI)
    axes = fig.subplots(1, ncols)
    return fig, axes


def _save(fig: Figure, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)  # attaches itself to fig; no pyplot, no interactive backend
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, format="png")
    fig.clear()  # free artists now: the figure was never registered with pyplot
    return path
