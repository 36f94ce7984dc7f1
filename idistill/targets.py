"""The report's targets: each table and figure of the paper (table1 ... table5, fig4 ... fig8),
the experiment whose sweep makes its runs, and its table in the paper's layout."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from idistill.cells import Cell, missing_notes
from idistill.figures import SENSITIVITY_COLUMNS
from idistill.tables import Table, Value, value_of

GLUE_COLUMNS = {  # GLUE task -> Table 4's (header, metric); the first enters the average
    "cola": [("CoLA mcc", "dev/matthews")],
    "sst2": [("SST-2 acc", "dev/accuracy")],
    "mrpc": [("MRPC F1", "dev/f1"), ("MRPC acc", "dev/accuracy")],
    "stsb": [("STS-B corr", "dev/corr"), ("STS-B pearson", "dev/pearson")],
    "qqp": [("QQP F1", "dev/f1"), ("QQP acc", "dev/accuracy")],
    "mnli": [("MNLI-m", "dev/matched/accuracy"), ("MNLI-mm", "dev/mismatched/accuracy")],
    "qnli": [("QNLI acc", "dev/accuracy")],
    "rte": [("RTE acc", "dev/accuracy")],
}
BLEU_COLUMN = [("BLEU", "test/bleu")]


@dataclass(frozen=True)
class Target:
    """One table or figure of the paper and where its numbers come from."""

    title: str
    experiment: str  # the experiment config that makes its runs: idistill -m experiment=...
    figure: str | None = None  # violins | pruning | curves | k_sweep | alpha; None: a table
    rows: str = "method"  # grid key of the rows, or "tag:<name>" (table1: the round)
    cols: str | None = None  # grid key of the columns (lang, glue_task)
    columns: Callable[[str | None], list[tuple[str, str]]] = lambda col: BLEU_COLUMN
    scale: float = 1.0  # GLUE's metrics are fractions: x100
    fmt: str = ".2f"
    average: bool = False  # an "avg" column: the mean of every column's first metric
    bleu: bool = False  # paired bootstrap of each row against the baseline row
    per_language: str | None = None  # Appendix D: "{split}/{lang}/f1" for every language

    @property
    def reads_runs(self) -> bool:
        """Whether its numbers come from runs (fig4 draws the composed config's schedule)."""
        return self.figure != "alpha"


TARGETS = {
    "table1": Target("Table 1: self-distillation, IWSLT'14 De->En, BLEU", "table1",
                     rows="tag:round", bleu=True),
    "table2": Target("Table 2: IWSLT'14 Xx->En, BLEU", "table2", cols="lang", average=True,
                     columns=lambda col: [("{col}", "test/bleu")], bleu=True),
    "table3": Target("Table 3: WMT'17 En->De (newstest2014), BLEU", "table3", bleu=True),
    "table4": Target("Table 4: GLUE dev, BERT-base", "table4", cols="glue_task",
                     columns=GLUE_COLUMNS.__getitem__, scale=100.0, average=True),
    "table5": Target("Table 5: WikiANN NER, zero-shot from English (XLM-R large)", "table5",
                     columns=lambda col: [("test avg F1", "test/avg/f1"),
                                          ("dev avg F1", "dev/avg/f1")],
                     per_language="{split}/{lang}/f1"),
    "table5_tydiqa": Target(
        "Table 5: TyDiQA-GoldP, zero-shot from English (XLM-R base)", "table5_tydiqa",
        columns=lambda col: [(f"{split} avg {name}", f"{split}/avg/{metric}")
                             for split in ("test", "dev")
                             for name, metric in (("F1", "f1"), ("EM", "exact_match"))],
        per_language="{split}/{lang}/f1"),
    "multi30k": Target(
        "Multi30k De->En (test_2016_flickr), trained to convergence on CPU",
        "multi30k_converged", bleu=True,
        columns=lambda col: [("BLEU", "test/bleu"), ("chrF2", "test/chrf"),
                             ("best valid loss", "best/valid/loss")]),
    "multi30k_curves": Target("Multi30k De->En: validation loss", "multi30k_converged",
                              figure="curves"),
    "multi30k_select": Target(
        "Multi30k De->En: intra-distillation by alpha and K on validation (seed 1): the best "
        "validation loss, and the valid BLEU and chrF2 of that checkpoint",
        "multi30k_select", rows="method.alpha", cols="method.k", fmt=".3f",
        columns=lambda col: [("K={col} valid loss", "best/valid/loss"),
                             ("K={col} valid BLEU", "dev/bleu"),
                             ("K={col} valid chrF2", "dev/chrf")]),
    "fig4": Target("Figure 4: the adaptive alpha schedule", "iwslt14", figure="alpha"),
    "fig5": Target("Figure 5: parameter sensitivity, IWSLT'14 De->En", "fig5", figure="violins",
                   columns=lambda col: SENSITIVITY_COLUMNS, fmt=".3e"),
    "fig6": Target("Figure 6: pruning the least sensitive parameters, IWSLT'14 De->En", "fig6",
                   figure="pruning"),
    "fig7": Target("Figure 7: validation loss, IWSLT'14 De->En", "fig7", figure="curves"),
    "fig8": Target("Figure 8: BLEU against K, IWSLT'14 De->En", "fig8", figure="k_sweep",
                   rows="method.k"),
}  # fmt: skip


def find_target(name: str) -> Target:
    """The target called `name` (table1 ... fig8)."""
    if name not in TARGETS:
        raise ValueError(f"unknown report {name!r} (valid: {', '.join(TARGETS)})")
    return TARGETS[name]


def logs_what(target: Target, cell: Cell, run) -> bool:
    """Whether `run` logged what `target` shows (runs of one cell may differ in analyses)."""
    metrics = run.data.metrics
    if target.figure == "violins":
        return "sensitivity/std" in metrics
    if target.figure == "pruning":
        return any(k.startswith("prune/") for k in metrics)
    if target.figure == "curves":
        return "valid/loss" in metrics
    columns = [m for _, m in target.columns(cell.values.get(target.cols))]
    if target.bleu:  # a tested run: a run tuned on validation alone may share the cell
        return columns[0] in metrics
    return any(m in metrics for m in columns)


# ---- tables in the paper's layout


def group_rows(target: Target, cells: Sequence[Cell]) -> dict[str, dict[str | None, Cell]]:
    """row name -> column value -> cell. A grid key that varies but is neither the rows' nor
    the columns' is added to the row name (`intra_distill method.alpha=1`); table1's rows are
    the self-distillation rounds, each pooling its seeds."""
    varying = [
        k
        for k in cells[0].values
        if k not in (target.rows, target.cols) and len({c.values[k] for c in cells}) > 1
    ] if cells else []  # fmt: skip
    rows: dict[str, dict[str | None, Cell]] = {}
    for cell in cells:
        extra = "".join(f" {k}={cell.values[k]}" for k in varying)
        if target.rows.startswith("tag:"):  # table1: round 0 (the teacher) .. method.rounds
            tag = target.rows[4:]
            for r in range(cell.settings.method.rounds + 1):
                runs = [run for run in cell.runs if run.data.tags.get(tag) == str(r)]
                one = dataclasses.replace(cell, runs=runs, unfinished=[])
                rows.setdefault(f"{tag} {r}{extra}", {})[None] = one
        else:
            name = cell.values.get(target.rows, "") + extra
            rows.setdefault(name, {})[cell.values.get(target.cols)] = cell
    return rows


def build_table(target: Target, cells: Sequence[Cell]) -> tuple[Table, dict, list]:
    """The target's table in the paper's layout; also its rows and (column, metric) pairs."""
    rows = group_rows(target, cells)
    headers, metrics = [], []  # one (column value, metric) per header
    for col in dict.fromkeys(c.values.get(target.cols) for c in cells):
        for header, metric in target.columns(col):
            headers.append(header.format(col=col))  # table2: the pair's name
            metrics.append((col, metric))
    table_rows = [
        (
            name,
            [
                value_of(by_col[col].runs, metric, target.scale) if col in by_col else Value([])
                for col, metric in metrics
            ],
        )
        for name, by_col in rows.items()
    ]
    if target.average:  # the mean over columns of each column's first metric
        headers.append("avg")
        firsts = [i for i, (col, _) in enumerate(metrics) if i == 0 or metrics[i - 1][0] != col]
        for _, values in table_rows:
            means = [values[i].mean for i in firsts]
            values.append(Value([statistics.fmean(means)] if None not in means else []))
    table = Table(target.title, headers, table_rows, missing_notes(cells), target.fmt)
    return table, rows, metrics


def per_language_table(target: Target, rows: dict[str, dict[str | None, Cell]]) -> Table:
    """Appendix D: the metric on every language evaluated, mean over seeds; the test sets, or
    the dev sets where no run has test scores (XTREME's PAN-X test tags are not public)."""
    runs = {n: [r for cell in by_col.values() for r in cell.runs] for n, by_col in rows.items()}
    found = {k for rs in runs.values() for r in rs for k in r.data.metrics}
    for split in ("test", "dev"):
        pattern = target.per_language.format(split=split, lang="{lang}")
        prefix, suffix = pattern.split("{lang}")
        langs = sorted(
            k[len(prefix) : len(k) - len(suffix)]
            for k in found
            if k.startswith(prefix) and k.endswith(suffix) and k.count("/") == pattern.count("/")
        )
        langs = [lang for lang in langs if lang != "avg"]
        if langs:
            break
    table_rows = [
        (name, [value_of(rs, pattern.format(lang=lang), target.scale) for lang in langs])
        for name, rs in runs.items()
    ]
    title = f"{target.title}, {split} {suffix.strip('/')} per language (Appendix D)"
    return Table(title, langs, table_rows, fmt=target.fmt)
