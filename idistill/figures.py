"""The paper's figures from logged runs: metric histories and analysis artifacts read back from
MLflow and drawn with idistill.analysis.plots; each drawer also returns the numbers behind it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from idistill.analysis import plots
from idistill.analysis.analyse import FOLDER, SAMPLE_FILE
from idistill.tables import Table, Value, value_of

SENSITIVITY_COLUMNS = [
    ("std", "sensitivity/std"),
    ("top-20% mean", "sensitivity/top20_mean"),
    ("bottom-80% mean", "sensitivity/bottom80_mean"),
]


def history(client, run, metric: str) -> list[tuple[int, float]]:
    """(step, value) of `metric` by step; a step logged twice (a resumed run repeats the
    updates after its last checkpoint) keeps the later value."""
    logged = sorted(client.get_metric_history(run.info.run_id, metric), key=lambda m: m.timestamp)
    return sorted({m.step: m.value for m in logged}.items())


def pruning_points(client, run) -> list[tuple[float, float]]:
    """(ratio, metric) of the run's pruning analysis (prune/<metric>, step = percent)."""
    name = next((k for k in run.data.metrics if k.startswith("prune/")), None)
    return [(step / 100, v) for step, v in history(client, run, name)] if name else []


def sensitivity_sample(run) -> np.ndarray | None:
    """The violin sample the run's sensitivity analysis stored, or None."""
    return artifact(run, f"{FOLDER}/{SAMPLE_FILE}", np.load)


def artifact_lines(run, name: str) -> list[str] | None:
    """The lines of a run's text artifact (test.hyp.txt, test.ref.txt), or None."""
    return artifact(run, name, lambda path: path.read_text(encoding="utf-8").split("\n")[:-1])


def artifact(run, name: str, read: Callable[[Path], Any]):
    """read(local copy) of a run's artifact, or None where the run has no such artifact."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="idistill-report-") as tmp:
        try:
            uri = f"{run.info.artifact_uri}/{name}"
            path = Path(download_artifacts(artifact_uri=uri, dst_path=tmp))
        except (MlflowException, OSError):  # not stored: an older run, or no analysis
            return None
        return read(path)


def _sensitivity(runs: dict[str, Any], stem: Path, client) -> tuple[list[Path], Table]:
    """Figures 3, 5: the violins, and the std / top-20% / bottom-80% means."""
    samples = {n: s for n, r in runs.items() if (s := sensitivity_sample(r)) is not None}
    missing = [n for n in runs if n not in samples]
    if missing:
        raise ValueError(
            f"no sensitivity in run(s) {', '.join(missing)}: train with analysis=sensitivity"
        )
    std = {n: r.data.metrics["sensitivity/std"] for n, r in runs.items()}
    png = plots.sensitivity_violins(samples, stem.with_suffix(".png"), std=std)
    rows = [(n, [value_of([r], m) for _, m in SENSITIVITY_COLUMNS]) for n, r in runs.items()]
    return [png], Table("plot=sensitivity", [h for h, _ in SENSITIVITY_COLUMNS], rows, fmt=".3e")


def _pruning(runs: dict[str, Any], stem: Path, client) -> tuple[list[Path], Table]:
    """Figures 6, 10: the metric at every pruned ratio."""
    curves = {n: pruning_points(client, r) for n, r in runs.items()}
    missing = [n for n, c in curves.items() if not c]
    if missing:
        raise ValueError(f"no pruning curve in run(s) {', '.join(missing)}: use analysis=pruning")
    png = plots.pruning_curves(curves, stem.with_suffix(".png"))
    ratios = sorted({x for c in curves.values() for x, _ in c})
    rows = [(n, [Value([v for x2, v in c if x2 == x]) for x in ratios]) for n, c in curves.items()]
    return [png], Table("plot=pruning", [f"{x:.0%}" for x in ratios], rows)


def _loss(runs: dict[str, Any], stem: Path, client) -> tuple[list[Path], Table]:
    """Figure 7: validation loss against updates, and each run's lowest."""
    curves = {n: history(client, r, "valid/loss") for n, r in runs.items()}
    png = plots.loss_curves(curves, stem.with_suffix(".png"))
    rows = [(n, [Value([min(v for _, v in c)] if c else [])]) for n, c in curves.items()]
    return [png], Table("plot=loss", ["best valid loss"], rows, fmt=".3f")


def _training(runs: dict[str, Any], stem: Path, client) -> tuple[list[Path], Table]:
    """Figure 2: the tracked sensitivity against updates, one plot per run."""
    keys = ("top20_mean", "bottom80_mean", "std")  # analysis.track_every: train/sensitivity_*
    tracked = {
        n: [history(client, r, f"train/sensitivity_{k}") for k in keys] for n, r in runs.items()
    }
    missing = [n for n, t in tracked.items() if not t[0]]
    if missing:
        raise ValueError(
            f"no sensitivity tracked in run(s) {', '.join(missing)}: use analysis.track_every=N"
        )
    pngs, rows = [], []
    for i, (n, (top, bottom, std)) in enumerate(tracked.items()):
        steps = [s for s, _ in top]
        pngs.append(plots.sensitivity_during_training(
            steps, [v for _, v in top], [v for _, v in bottom],
            stem.parent / f"{stem.name}-{i}.png", std=[v for _, v in std], label=n,
        ))  # fmt: skip
        last = [Value([series[-1][1]]) for series in (std, top, bottom)]
        rows.append((n, [Value([std[0][1]]), *last]))
    headers = ["first std", "last std", "last top-20% mean", "last bottom-80% mean"]
    return pngs, Table("plot=training", headers, rows, fmt=".3e")


# plot=<kind>: (labelled runs, <stem> of the PNGs, client) -> (PNGs, the numbers behind them)
DRAW = {"sensitivity": _sensitivity, "pruning": _pruning, "loss": _loss, "training": _training}
DRAWN_BY = {"violins": "sensitivity", "pruning": "pruning", "curves": "loss"}  # target figures
