"""Tables and figures of the paper from the MLflow runs (`idistill-report`).

A target (table1 ... table5, fig4 ... fig8) names the experiment config whose sweep makes its
runs. Each cell of the sweep's grid is composed as `idistill -m` composes it; its runs are the
FINISHED runs tagged with the cell's hash (the config hash without the seed), so several seeds
give mean +- std. Missing cells are shown as missing, with the command that makes them.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import os
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from idistill.analysis import plots
from idistill.analysis.analyse import FOLDER, SAMPLE_FILE

REPORT_EXPERIMENT = "idistill-report"  # the MLflow experiment that holds the report runs
MISSING = "–"
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
SENSITIVITY_COLUMNS = [
    ("std", "sensitivity/std"),
    ("top-20% mean", "sensitivity/top20_mean"),
    ("bottom-80% mean", "sensitivity/bottom80_mean"),
]


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
    "fig4": Target("Figure 4: the adaptive alpha schedule", "iwslt14", figure="alpha"),
    "fig5": Target("Figure 5: parameter sensitivity, IWSLT'14 De->En", "fig5", figure="violins",
                   columns=lambda col: SENSITIVITY_COLUMNS, fmt=".3e"),
    "fig6": Target("Figure 6: pruning the least sensitive parameters, IWSLT'14 De->En", "fig6",
                   figure="pruning"),
    "fig7": Target("Figure 7: validation loss, IWSLT'14 De->En", "fig7", figure="curves"),
    "fig8": Target("Figure 8: BLEU against K, IWSLT'14 De->En", "fig8", figure="k_sweep",
                   rows="method.k"),
}  # fmt: skip


# ---- the grid of an experiment and its runs


@dataclass
class Cell:
    """One point of an experiment's grid (seeds pooled) and its finished runs."""

    values: dict[str, str]  # grid key -> value, e.g. {"lang": "de", "method": "sage"}
    overrides: list[str]  # what `idistill` is given to make this cell's runs
    cell_hash: str
    seeds: list[str]  # the sweep's seeds, or [] (the config's seed)
    runs: list[Any] = field(default_factory=list)  # MLflow runs: the newest per seed


def split_sweeps(overrides: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """(plain overrides, sweeps): `key=a,b` is a sweep, as for `idistill -m` (lists are
    bracketed: `analysis.ratios=[0,0.1]` is one value)."""
    plain, sweeps = [], {}
    for o in overrides:
        key, _, value = o.partition("=")
        if "," in value and value[:1] not in "[{'\"":
            sweeps[key] = value
        else:
            plain.append(o)
    return plain, sweeps


def sweep_grid(params: dict[str, Any], given: dict[str, str]) -> tuple[list[dict], list[str]]:
    """The cells of a sweep without the seed, and its seeds. `params`: hydra.sweeper.params
    ("a,b,c"); `given`: the command line's keys, which replace or add sweeps as they do for
    `idistill -m`."""
    values = {k: str(v).split(",") for k, v in params.items()}
    values |= {k: str(v).split(",") for k, v in given.items()}
    seeds = values.pop("seed", [])
    keys = sorted(values)
    combos = itertools.product(*(values[k] for k in keys))
    return [dict(zip(keys, c, strict=True)) for c in combos], seeds


def compose_cells(target: Target, overrides: list[str], compose) -> list[Cell]:
    """The target's cells. compose(overrides, hydra) -> DictConfig composes as `idistill`
    does (cli/report.py hands in Hydra's compose); each cell's settings give its hash."""
    from omegaconf import OmegaConf

    from idistill.config import settings_from_dict

    plain, sweeps = split_sweeps(overrides)
    base = [f"experiment={target.experiment}", *plain]
    params = OmegaConf.to_container(compose(base, hydra=True).hydra.sweeper.params or {})
    grid_keys = set(params) | set(sweeps) | {"seed"}  # a plain override narrows a sweep
    given = {**{k: v for k, _, v in (o.partition("=") for o in plain) if k in grid_keys}, **sweeps}
    base = [o for o in base if o.partition("=")[0] not in given]
    grid, seeds = sweep_grid(params, given)
    cells = []
    for values in grid:
        cell = base + [f"{k}={v}" for k, v in values.items()]
        cfg = OmegaConf.to_container(compose(cell, hydra=False), resolve=True)
        cells.append(Cell(values, cell, settings_from_dict(cfg).cell_hash(), seeds))
    return cells


def attach_runs(cells: Sequence[Cell], client) -> None:
    """Each cell's FINISHED runs (tag `cell`), the newest per seed and self-distillation round."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    for cell in cells:
        found = client.search_runs(
            experiments,
            filter_string=f"tags.cell = '{cell.cell_hash}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
        )
        newest: dict[tuple, Any] = {}
        for run in found:  # newest first
            if cell.seeds and run.data.params.get("seed") not in cell.seeds:
                continue
            newest.setdefault((run.data.params.get("seed"), run.data.tags.get("round")), run)
        cell.runs = list(newest.values())


def missing_commands(cells: Sequence[Cell]) -> list[str]:
    """`idistill ...` for every cell (and seed of the sweep) that has no finished run."""
    out = []
    for cell in cells:
        have = {r.data.params.get("seed") for r in cell.runs}
        for seed in cell.seeds or [None]:
            if (seed is None and not cell.runs) or (seed is not None and seed not in have):
                out.append(
                    " ".join(["idistill", *cell.overrides, *([f"seed={seed}"] * bool(seed))])
                )
    return out


# ---- tables


@dataclass
class Value:
    """One table cell: mean +- std over seeds, and the runs it came from."""

    values: list[float]
    run_ids: list[str] = field(default_factory=list)
    p_value: float | None = None  # paired bootstrap against the baseline row (BLEU)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    def text(self, fmt: str = ".2f") -> str:
        """'36.12', '36.12 ± 0.20 (3)' over 3 seeds, '*' when p < 0.05; '–' when missing."""
        if not self.values:
            return MISSING
        out = format(self.mean, fmt)
        if self.std is not None:
            out += f" ± {format(self.std, fmt)} ({len(self.values)})"
        return out + ("*" if self.p_value is not None and self.p_value < 0.05 else "")


def value_of(runs: Sequence[Any], metric: str, scale: float = 1.0) -> Value:
    """`metric` (its last value) of every run that logged it."""
    pairs = [
        (r.data.metrics[metric] * scale, r.info.run_id) for r in runs if metric in r.data.metrics
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
        return [[name] + [v.text(self.fmt) for v in values] for name, values in self.rows]

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
                "run_ids": " ".join(v.run_ids),
            }
            for name, values in self.rows
            for header, v in zip(self.headers, values, strict=True)
        ]


def group_rows(target: Target, cells: Sequence[Cell]) -> dict[str, dict[str | None, Cell]]:
    """row name -> column value -> cell; table1's rows are the runs' rounds."""
    rows: dict[str, dict[str | None, Cell]] = {}
    for cell in cells:
        if target.rows.startswith("tag:"):
            tag = target.rows[4:]
            for run in sorted(cell.runs, key=lambda r: r.data.tags.get(tag, "")):
                one = Cell(cell.values, cell.overrides, cell.cell_hash, cell.seeds, [run])
                rows.setdefault(f"{tag} {run.data.tags.get(tag)}", {})[None] = one
        else:
            rows.setdefault(cell.values.get(target.rows, ""), {})[cell.values.get(target.cols)] = (
                cell
            )
    return rows


def build_table(target: Target, cells: Sequence[Cell]) -> tuple[Table, dict, list]:
    """The target's table in the paper's layout; also its rows and (column, metric) pairs."""
    rows = group_rows(target, cells)
    headers, metrics = [], []  # one (column value, metric) per header
    for col in dict.fromkeys(c.values.get(target.cols) for c in cells):
        cols = target.columns(col)
        for header, metric in cols:
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
    notes = [f"missing: {c}" for c in missing_commands(cells)]
    return Table(target.title, headers, table_rows, notes, target.fmt), rows, metrics


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


def add_significance(table: Table, rows, metrics, n_samples: int, download) -> None:
    """sacreBLEU's paired bootstrap of every row against the baseline row (its first seed that
    both have) from the runs' test.hyp / test.ref artifacts; sets each Value's p_value.
    download(run, name) -> the artifact's lines, or None where it was not stored."""
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    base = rows.get("baseline") or rows.get("round 0")
    if base is None:
        table.notes.append("no significance test: no baseline row")
        return
    for name, values in table.rows:
        for i, (col, _) in enumerate(metrics):
            mine, theirs = rows.get(name, {}).get(col), base.get(col)
            if rows.get(name) is base or mine is None or theirs is None:
                continue
            seeds = {r.data.params.get("seed"): r for r in theirs.runs}
            pair = next((r for r in mine.runs if r.data.params.get("seed") in seeds), None)
            if pair is None:
                continue
            other = seeds[pair.data.params.get("seed")]
            hyp, ref, base_hyp = (
                download(pair, "test.hyp"),
                download(pair, "test.ref"),
                download(other, "test.hyp"),
            )
            if hyp is None or ref is None or base_hyp is None:
                table.notes.append(
                    f"no significance test for {name} ({col}): no test.hyp / test.ref"
                )
                continue
            test = PairedTest(
                [("baseline", base_hyp), (name, hyp)],
                {"BLEU": BLEU()},
                [ref],
                test_type="bs",
                n_samples=n_samples,
            )
            values[i].p_value = test()[1]["BLEU"][1].p_value
    table.notes.append(
        f"*: p < 0.05 against the baseline (sacreBLEU paired bootstrap, {n_samples} samples)"
    )


# ---- the paper's numbers


def paper_numbers() -> list[dict[str, Any]]:
    """The paper's numbers shipped with idistill (idistill/paper.yaml)."""
    text = resources.files("idistill").joinpath("paper.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)["numbers"] or []


def paper_table(name: str, table: Table) -> Table | None:
    """Our number next to the paper's for every number the paper file holds for `name`: a
    `value` is the cell itself, a `gain` the row minus the baseline row in that column."""
    entries = [e for e in paper_numbers() if e["target"] == name]
    if not entries:
        return None
    cells = {
        (row, h): v
        for row, values in table.rows
        for h, v in zip(table.headers, values, strict=True)
    }
    rows = []
    for e in entries:
        ours = cells.get((e["row"], e["column"]), Value([])).mean
        if e["quantity"] == "gain":
            base = cells.get(("baseline", e["column"]), Value([])).mean
            ours = None if ours is None or base is None else ours - base
        diff = None if ours is None else ours - e["value"]
        label = f"{e['row']} {e['column']} ({e['quantity']}; paper: {e['source']})"
        rows.append(
            (
                label,
                [
                    Value([] if ours is None else [ours]),
                    Value([e["value"]]),
                    Value([] if diff is None else [diff]),
                ],
            )
        )
    note = "the paper's other numbers are not in idistill/paper.yaml (see its header)"
    return Table(
        f"{table.title}: against the paper", ["ours", "paper", "ours - paper"], rows, [note]
    )


# ---- figures


def history(client, run, metric: str) -> list[tuple[int, float]]:
    """(step, value) of every logged value of `metric`."""
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, metric))


def pruning_points(client, run) -> list[tuple[float, float]]:
    """(ratio, metric) of the run's pruning analysis (prune/<metric>, step = percent)."""
    name = next((k for k in run.data.metrics if k.startswith("prune/")), None)
    return [(step / 100, v) for step, v in history(client, run, name)] if name else []


def sensitivity_sample(run) -> np.ndarray | None:
    """The violin sample the run's sensitivity analysis stored, or None."""
    path = download(run, f"{FOLDER}/{SAMPLE_FILE}", text=False)
    return None if path is None else np.load(path)


def download(run, name: str, text: bool = True):
    """A run's artifact: its lines (text) or a local copy's path; None where it is missing."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow.artifacts import download_artifacts

    tmp = tempfile.mkdtemp(prefix="idistill-report-")
    try:
        path = Path(
            download_artifacts(artifact_uri=f"{run.info.artifact_uri}/{name}", dst_path=tmp)
        )
    except Exception:  # not stored (an older run, or no analysis)
        return None
    return path.read_text(encoding="utf-8").splitlines() if text else path


# ---- output


def write_outputs(
    name: str, tables: Sequence[Table], figures: Sequence[Path], out_dir: Path
) -> list[Path]:
    """<name>.md (tables and figures), <name>.csv (one line per cell) in out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / f"{name}.md"
    parts = [t.markdown() for t in tables] + [f"![{p.stem}]({p.name})" for p in figures]
    md.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    path = out_dir / f"{name}.csv"
    records = [r for t in tables for r in t.records()]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]) if records else ["table"])
        writer.writeheader()
        writer.writerows(records)
    return [md, path, *figures]


def log_report(uri: str, name: str, params: dict[str, str], files: Sequence[Path]) -> str | None:
    """A run in the MLflow experiment `idistill-report` holding the report's files."""
    from idistill.tracking import MlflowTracker

    tracker = MlflowTracker(uri, REPORT_EXPERIMENT, run_name=name, tags={"report": name})
    tracker.log_params({"report": name, **params})
    for f in files:
        tracker.log_artifact(f)
    tracker.finish()
    return tracker.run_id


@dataclass
class Report:
    """What `make_report` produced."""

    tables: list[Table]
    files: list[Path]
    run_id: str | None = None


def make_report(
    name: str,
    overrides: list[str],
    compose,
    out_dir: Path,
    *,
    bootstrap: int = 1000,
    track: bool = True,
) -> Report:
    """Table or figure `name` from the runs in the config's tracking store; files in out_dir,
    and (track) a run in the MLflow experiment `idistill-report` holding them."""
    from omegaconf import OmegaConf

    from idistill.tracking import client as mlflow_client

    if name not in TARGETS:
        raise ValueError(f"unknown report {name!r} (valid: {', '.join(TARGETS)})")
    target = TARGETS[name]
    plain, _ = split_sweeps(overrides)
    cfg = OmegaConf.to_container(
        compose([f"experiment={target.experiment}", *plain], hydra=False), resolve=True
    )
    uri = cfg["tracking"]["uri"]
    if cfg["tracking"]["backend"] == "none" or not uri:
        raise ValueError("idistill-report reads the runs from MLflow: drop tracking=none")
    client = mlflow_client(uri)
    if target.figure == "alpha":  # no runs: the schedule of the composed config
        m, sched = cfg["method"], cfg["schedule"]
        png = out_dir / f"{name}.png"
        plots.alpha_schedule(m["alpha"], sched["p"], sched["q"], cfg["trainer"]["max_updates"], png)
        tables, figures = [], [png]
    else:
        cells = compose_cells(target, overrides, compose)
        attach_runs(cells, client)
        table, rows, metrics = build_table(target, cells)
        tables, figures = [table], []
        if target.figure in DRAWN_BY:  # the first seed of each row, drawn as plot= draws runs
            first = {n: c.runs[0] for n, by_col in rows.items() for c in by_col.values() if c.runs}
            if first:
                figures, drawn = draw(DRAWN_BY[target.figure], first, out_dir / name, client)
                tables = [dataclasses.replace(drawn, title=target.title, notes=table.notes)]
        elif target.figure == "k_sweep":
            points = [(int(k), v[0].mean, v[0].std or 0.0) for k, v in table.rows if v[0].values]
            if points:
                figures = [
                    plots.metric_vs_k({"intra-distillation": points}, out_dir / f"{name}.png")
                ]
        if target.bleu and bootstrap:
            add_significance(table, rows, metrics, bootstrap, download)
        if target.per_language:
            tables.append(per_language_table(target, rows))
        if (vs_paper := paper_table(name, table)) is not None:
            tables.append(vs_paper)
    files = write_outputs(name, tables, figures, out_dir)
    run_id = log_report(uri, name, {"overrides": " ".join(overrides)}, files) if track else None
    return Report(tables, files, run_id)


def expand_runs(client, ids: Sequence[str]) -> list[Any]:
    """The runs named by `ids`: run ids, or a sweep's parent run id or its directory
    (multirun/...), which stand for the sweep's finished children."""
    from idistill.tracking import PARENT_RUN_FILE

    runs = []
    for given in ids:
        folder = Path(given).expanduser()
        run_id = (folder / PARENT_RUN_FILE).read_text().strip() if folder.is_dir() else given
        run = client.get_run(run_id)
        children = client.search_runs(
            [run.info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{run_id}' and attributes.status = 'FINISHED'",  # noqa: E501
            order_by=["attributes.start_time ASC"],
        )
        runs += children or [run]
    return runs


def short_labels(names: Sequence[str]) -> list[str]:
    """Run names without what they share: sweep jobs "0:a=1,m=x", "1:a=1,m=y" -> "m=x", "m=y"."""
    items = [name.split(":", 1)[-1].split(",") for name in names]
    common = set.intersection(*map(set, items)) if items else set()
    short = [",".join(i for i in its if i not in common) for its in items]
    return short if all(short) and len(set(short)) == len(short) else list(names)


PLOTS = ("sensitivity", "pruning", "loss", "training")
DRAWN_BY = {"violins": "sensitivity", "pruning": "pruning", "curves": "loss"}  # target figures
TRACKED = ("top20_mean", "bottom80_mean", "std")  # analysis.track_every: train/sensitivity_*


def draw(kind: str, runs: dict[str, Any], stem: Path, client) -> tuple[list[Path], Table]:
    """Plot `kind` of the labelled runs to <stem>.png (plot=training: one <stem>-<i>.png per
    run) and the table of the numbers behind it."""
    named = list(runs.items())
    if kind == "sensitivity":  # Figures 3, 5
        samples = {n: s for n, r in named if (s := sensitivity_sample(r)) is not None}
        if len(samples) < len(runs):
            missing = ", ".join(n for n in runs if n not in samples)
            raise ValueError(f"no sensitivity in run(s) {missing}: train with analysis=sensitivity")
        std = {n: r.data.metrics["sensitivity/std"] for n, r in named}
        png = plots.sensitivity_violins(samples, stem.with_suffix(".png"), std=std)
        rows = [(n, [value_of([r], m) for _, m in SENSITIVITY_COLUMNS]) for n, r in named]
        return [png], Table(f"plot={kind}", [h for h, _ in SENSITIVITY_COLUMNS], rows, fmt=".3e")
    if kind == "pruning":  # Figures 6, 10
        curves = {n: pruning_points(client, r) for n, r in named}
        if not all(curves.values()):
            raise ValueError("plot=pruning needs runs trained with analysis=pruning")
        png = plots.pruning_curves(curves, stem.with_suffix(".png"))
        ratios = sorted({x for c in curves.values() for x, _ in c})
        rows = [
            (n, [Value([v for x2, v in c if x2 == x]) for x in ratios]) for n, c in curves.items()
        ]  # noqa: E501
        return [png], Table(f"plot={kind}", [f"{x:.0%}" for x in ratios], rows)
    if kind == "loss":  # Figure 7
        curves = {n: history(client, r, "valid/loss") for n, r in named}
        png = plots.loss_curves(curves, stem.with_suffix(".png"))
        rows = [(n, [Value([min(v for _, v in c)] if c else [])]) for n, c in curves.items()]
        return [png], Table(f"plot={kind}", ["best valid loss"], rows, fmt=".3f")
    if kind != "training":
        raise ValueError(f"unknown plot={kind} (valid: {', '.join(PLOTS)})")
    tracked = {n: [history(client, r, f"train/sensitivity_{k}") for k in TRACKED] for n, r in named}  # noqa: E501
    if not all(t[0] for t in tracked.values()):
        raise ValueError("plot=training needs runs trained with analysis.track_every=N")
    pngs = [  # Figure 2
        plots.sensitivity_during_training(
            [s for s, _ in top], [v for _, v in top], [v for _, v in bottom],
            stem.parent / f"{stem.name}-{i}.png", std=[v for _, v in std], label=n,
        )
        for i, (n, (top, bottom, std)) in enumerate(tracked.items())
    ]  # fmt: skip
    headers = ["first std", "last std", "last top-20% mean", "last bottom-80% mean"]
    rows = [
        (n, [Value([std[0][1]]), Value([std[-1][1]]), Value([top[-1][1]]), Value([bottom[-1][1]])])
        for n, (top, bottom, std) in tracked.items()
    ]
    return pngs, Table(f"plot={kind}", headers, rows, fmt=".3e")


def plot_runs(
    kind: str, ids: Sequence[str], uri: str, out_dir: Path, *, track: bool = True
) -> Report:  # noqa: E501
    """Compare any runs (`plot=`): sensitivity violins (Figures 3, 5), pruning curves (6, 10),
    validation loss (7), sensitivity during training (2); labelled by their run names."""
    from idistill.tracking import client as mlflow_client

    if kind not in PLOTS:
        raise ValueError(f"unknown plot={kind} (valid: {', '.join(PLOTS)})")
    client = mlflow_client(uri)
    runs = expand_runs(client, ids)
    names = short_labels([r.data.tags.get("mlflow.runName") or r.info.run_id[:8] for r in runs])
    figures, table = draw(kind, dict(zip(names, runs, strict=True)), out_dir / kind, client)
    files = write_outputs(kind, [table], figures, out_dir)
    run_id = log_report(uri, f"plot={kind}", {"runs": ",".join(ids)}, files) if track else None
    return Report([table], files, run_id)
