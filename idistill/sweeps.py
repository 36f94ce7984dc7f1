"""What the jobs of a sweep scored, as one table: printed when `idistill -m` ends (and by
`make demo`, a sweep of the baseline and intra-distillation)."""

from __future__ import annotations

import math
from collections.abc import Sequence

MAX_METRICS = 4  # test metrics shown per job; result.json and MLflow hold them all


def _number(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def summary_table(jobs: Sequence[tuple[str, dict | None]], selection: str = "best valid") -> str:
    """A text table of (job label, its result.json or None for a job that did not finish):
    the test metrics, the best validation score and its update, the updates trained, whether
    early stopping ended the job, and its wall time."""
    metrics = sorted({k for _, r in jobs if r for k in r["metrics"]})[:MAX_METRICS]
    header = ["job", *metrics, selection, "at update", "updates", "stopped early", "time"]
    rows = []
    for label, r in jobs:
        if r is None:
            rows.append([label, *["-"] * (len(header) - 2), "did not finish"])
            continue
        rows.append([
            label,
            *(_number(r["metrics"].get(m)) for m in metrics),
            _number(r["best"], 3),
            str(r["best_update"]),
            str(r["updates"]),
            "yes" if r["stopped_early"] else "no",
            _duration(r.get("seconds")),
        ])  # fmt: skip
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                         enumerate(zip(cells, widths, strict=True))).rstrip()  # fmt: skip

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def best_job(results: Sequence[dict | None]) -> tuple[int, dict] | None:
    """(index, result) of the job with the highest objective (the test BLEU, or an NLU task's
    test metric: what the sweep returns to Hydra), or None when no job has one."""
    scored = [
        (r["objective"], i) for i, r in enumerate(results) if r and r.get("objective") is not None
    ]
    if not scored:
        return None
    index = max(scored)[1]
    return index, results[index]
