"""Tables of run metrics: mean +- std over seeds, printed as text, Markdown and CSV; sacreBLEU's
paired bootstrap between rows; the paper's numbers under a row (set by idistill/paper.py)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

MISSING = "–"


@dataclass
class Value:
    """One table cell: mean +- std over seeds, and the runs it came from."""

    values: list[float]
    run_ids: list[str] = field(default_factory=list)
    p_value: float | None = None  # paired bootstrap against the baseline row: the largest
    p_values: dict[str, float] = field(default_factory=dict)  # seed -> p of that seed pair
    p_pooled: float | None = None  # p of all seed pairs' test sets concatenated (2+ seeds)
    paper: float | None = None  # the paper's number for this cell (idistill/paper.yaml)

    @property
    def mean(self) -> float | None:
        """The mean over seeds, None when missing."""
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """The sample std over seeds, None with fewer than two."""
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    def text(self, fmt: str = ".2f") -> str:
        """'36.12', '36.12 ± 0.20 (3)' over 3 seeds, '*' when p < 0.05; '–' when missing."""
        if not self.values:
            return MISSING
        out = format(self.mean, fmt)
        if self.std is not None:
            out += f" ± {format(self.std, fmt)} ({len(self.values)})"
        return out + ("*" if self.p_value is not None and self.p_value < 0.05 else "")

    @property
    def vs_paper(self) -> float | None:
        """Ours (the mean) minus the paper's number; None where either is missing."""
        return None if self.mean is None or self.paper is None else self.mean - self.paper


def value_of(runs: Sequence[Any], metric: str, scale: float = 1.0) -> Value:
    """`metric` (its last value) of every run that logged a finite one (a collapsed run's NaN
    correlation counts as missing)."""
    pairs = [
        (r.data.metrics[metric] * scale, r.info.run_id)
        for r in runs
        if math.isfinite(r.data.metrics.get(metric, math.nan))
    ]
    return Value([v for v, _ in pairs], [i for _, i in pairs])


@dataclass
class Table:
    """Rows of Values under headers, printable three ways."""

    title: str
    headers: list[str]
    rows: list[tuple[str, list[Value]]]
    notes: list[str] = field(default_factory=list)
    fmt: str = ".2f"

    def _cells(self) -> list[list[str]]:
        """A line per row; under a row the paper has numbers for, the paper's and ours - paper."""
        out = []
        for name, values in self.rows:
            out.append([name] + [v.text(self.fmt) for v in values])
            if any(v.paper is not None for v in values):
                out.append(["  paper", *(_number(v.paper, self.fmt) for v in values)])
            if any(v.vs_paper is not None for v in values):
                out.append(
                    ["  ours - paper", *(_number(v.vs_paper, "+" + self.fmt) for v in values)]
                )
        return out

    def terminal(self) -> str:
        """Fixed-width text."""
        rows = [["", *self.headers], *self._cells()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]

        def line(r: list[str]) -> str:
            return "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )

        out = [self.title, line(rows[0]), "  ".join("-" * w for w in widths)]
        return "\n".join(out + [line(r) for r in rows[1:]] + [f"  {n}" for n in self.notes])

    def markdown(self) -> str:
        """A Markdown table with its title and notes."""
        out = [f"### {self.title}", "", "| | " + " | ".join(self.headers) + " |"]
        out.append("|---|" + "---:|" * len(self.headers))
        out += ["| " + " | ".join(r) + " |" for r in self._cells()]
        return "\n".join(out + [""] + [f"- {n}" for n in self.notes])

    def records(self) -> list[dict[str, Any]]:
        """One record per cell, the numbers rather than the text (the CSV)."""
        return [
            {
                "table": self.title,
                "row": name,
                "column": header,
                "mean": v.mean,
                "std": v.std,
                "n": len(v.values),
                "p_value": v.p_value,
                "p_by_seed": " ".join(f"{s}:{p:.4f}" for s, p in v.p_values.items()),
                "p_pooled": v.p_pooled,
                "paper": v.paper,
                "ours_minus_paper": v.vs_paper,
                "run_ids": " ".join(v.run_ids),
            }
            for name, values in self.rows
            for header, v in zip(self.headers, values, strict=True)
        ]


def _number(x: float | None, fmt: str) -> str:
    return MISSING if x is None else format(x, fmt)


# A translation run's test hypotheses and references, as files of its run folder and MLflow
# artifacts (.txt: the MLflow UI previews them); runs made before kept them as test.hyp/.ref.
HYPOTHESES, REFERENCES = "test.hyp.txt", "test.ref.txt"
LEGACY = {HYPOTHESES: "test.hyp", REFERENCES: "test.ref"}


def test_lines(run, name: str, lines_of) -> list[str] | None:
    """The lines of a run's HYPOTHESES or REFERENCES artifact, under its current or legacy
    name; None where the run stored neither."""
    lines = lines_of(run, name)
    return lines if lines is not None else lines_of(run, LEGACY[name])


def seed_order(runs: Sequence[Any]) -> list[Any]:
    """Runs in the order of their seed param."""
    return sorted(runs, key=lambda r: int(r.data.params.get("seed", 0)))


# The columns a paired bootstrap tests: the metric logged -> sacreBLEU's name for it.
TESTED = {"test/bleu": "BLEU", "test/chrf": "chrF2"}


def add_significance(table: Table, rows, metrics, n_samples: int, lines_of) -> None:
    """sacreBLEU's paired bootstrap of every row against the baseline row, in its BLEU and chrF2
    columns, once for each seed both rows have (a seed's hypotheses against the baseline's of
    the same seed), from the runs' test hypotheses and references. Sets each tested Value's
    p_values (seed -> p) and p_value, the largest of them: the star says that every seed pair
    is significant. With two seed pairs or more, also p_pooled: the test sets of every pair
    concatenated (each seed's hypotheses against its baseline's), a test of the seeds' mean
    gain. lines_of(run, name) -> the artifact's lines, or None where not stored."""
    base = rows.get("baseline") or rows.get("round 0")
    if base is None:
        table.notes.append("no significance test: no baseline row")
        return
    per_seed = []
    for name, values in table.rows:
        if rows.get(name) is base:
            continue
        for col in dict.fromkeys(c for c, _ in metrics):
            tested = [
                (i, TESTED[m]) for i, (c, m) in enumerate(metrics) if c == col and m in TESTED
            ]
            mine, theirs = rows.get(name, {}).get(col), base.get(col)
            if not tested or mine is None or theirs is None:
                continue
            base_runs = {r.data.params.get("seed"): r for r in theirs.runs}
            paired = []  # (hypotheses, references, baseline hypotheses) of each seed pair
            for run in seed_order(mine.runs):
                seed = run.data.params.get("seed")
                if seed not in base_runs:
                    continue
                lines = _pair_lines(run, base_runs[seed], lines_of)
                if lines is None:
                    table.notes.append(
                        f"no significance test for {name} (seed {seed}): no {HYPOTHESES} / "
                        f"{REFERENCES}"
                    )
                    continue
                paired.append(lines)
                p = _paired_bootstrap(*lines, n_samples)
                for i, metric in tested:
                    values[i].p_values[seed] = p[metric]
            pooled = (
                _paired_bootstrap(*(sum(x, []) for x in zip(*paired, strict=True)), n_samples)
                if len(paired) > 1
                else None
            )
            for i, metric in tested:
                if values[i].p_values:
                    values[i].p_value = max(values[i].p_values.values())
                    by_seed = ", ".join(f"seed {s} {p:.3f}" for s, p in values[i].p_values.items())
                    if pooled is not None:
                        values[i].p_pooled = pooled[metric]
                        by_seed += f"; the {len(paired)} seeds pooled {pooled[metric]:.3f}"
                    per_seed.append(f"{name}, {table.headers[i]} p: {by_seed}")
    table.notes.append(
        f"*: p < 0.05 against the baseline for every seed both rows have (sacreBLEU paired "
        f"bootstrap, {n_samples} samples, each seed against the baseline's same seed)"
    )
    table.notes += per_seed


def _pair_lines(run, base_run, lines_of) -> tuple[list[str], list[str], list[str]] | None:
    """`run`'s test hypotheses and references and `base_run`'s hypotheses; None where either
    run lacks its files."""
    lines = (
        test_lines(run, HYPOTHESES, lines_of),
        test_lines(run, REFERENCES, lines_of),
        test_lines(base_run, HYPOTHESES, lines_of),
    )
    return None if any(x is None for x in lines) else lines


def _paired_bootstrap(
    hyp: list[str], ref: list[str], base_hyp: list[str], n_samples: int
) -> dict[str, float]:
    """{BLEU: p, chrF2: p} of the hypotheses `hyp` against the baseline's `base_hyp`."""
    from sacrebleu.metrics import BLEU, CHRF
    from sacrebleu.significance import PairedTest

    test = PairedTest(
        [("baseline", base_hyp), ("system", hyp)],
        {"BLEU": BLEU(), "chrF2": CHRF()},
        [ref],
        test_type="bs",
        n_samples=n_samples,
    )
    results = test()[1]
    return {metric: results[metric][1].p_value for metric in TESTED.values()}
