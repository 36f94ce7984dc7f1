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
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from idistill.analysis import plots
from idistill.figures import DRAW, DRAWN_BY, SENSITIVITY_COLUMNS, artifact_lines
from idistill.tables import Table, Value, add_significance, paper_table, value_of

REPORT_EXPERIMENT = "idistill-report"  # the MLflow experiment that holds the report runs
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
    """One point of an experiment's grid (seeds pooled) and its runs."""

    values: dict[str, str]  # grid key -> value, e.g. {"lang": "de", "method": "sage"}
    overrides: list[str]  # what `idistill` is given to make this cell's runs
    settings: Any  # the composed RunSettings
    seeds: list[str]  # the sweep's seeds, or [] (the config's seed)
    runs: list[Any] = field(default_factory=list)  # FINISHED runs: the newest per seed (round)
    unfinished: list[Any] = field(default_factory=list)  # RUNNING / FAILED / KILLED ones

    def command(self, seed: str | None = None) -> str:
        """The `idistill` command that makes this cell's run (of `seed`)."""
        return " ".join(["idistill", *self.overrides, *([f"seed={seed}"] if seed else [])])


def parse_sweeps(overrides: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
    """(plain overrides, sweeps {key: values}), read with Hydra's override grammar, so
    `seed=range(1,4)` or `method=baseline, sage` are the sweeps `idistill -m` runs."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    plain, sweeps = [], {}
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        if o.is_sweep_override():
            sweeps[o.key_or_group] = [str(v) for v in o.sweep_string_iterator()]
        else:
            plain.append(o.input_line)
    return plain, sweeps


def sweep_grid(
    params: dict[str, list[str]], given: dict[str, list[str]]
) -> tuple[list[dict], list[str]]:
    """The cells of a sweep without the seed, and its seeds. `params`: the experiment's
    hydra.sweeper.params; `given`: the command line's keys, which replace or add sweeps as they
    do for `idistill -m`."""
    values = {**params, **given}
    seeds = values.pop("seed", [])
    keys = sorted(values)
    combos = itertools.product(*(values[k] for k in keys))
    return [dict(zip(keys, c, strict=True)) for c in combos], seeds


def compose_cells(target: Target, overrides: list[str], compose) -> list[Cell]:
    """The target's cells. compose(overrides, hydra) -> DictConfig composes as `idistill`
    does (cli/report.py hands in Hydra's compose); each cell's settings give its hash."""
    from omegaconf import OmegaConf

    from idistill.config import settings_from_dict

    plain, sweeps = parse_sweeps(overrides)
    base = [f"experiment={target.experiment}", *plain]
    params = OmegaConf.to_container(compose(base, hydra=True).hydra.sweeper.params or {})
    _, params = parse_sweeps([f"{k}={v}" for k, v in params.items()])
    grid_keys = set(params) | set(sweeps) | {"seed"}  # a plain override narrows a sweep
    given = dict(sweeps)
    for key, value in _plain_values(plain):
        if key in grid_keys:
            given[key] = [value]
    base = [o for o in base if o.partition("=")[0].lstrip("+~") not in given]
    grid, seeds = sweep_grid(params, given)
    cells = []
    for values in grid:
        cell = base + [f"{k}={v}" for k, v in values.items()]
        cfg = OmegaConf.to_container(compose(cell, hydra=False), resolve=True)
        cells.append(Cell(values, cell, settings_from_dict(cfg), seeds))
    return cells


def _plain_values(plain: Sequence[str]) -> list[tuple[str, str]]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(plain))
    return [(o.key_or_group, o.get_value_element_as_str()) for o in parsed]


def attach_runs(cells: Sequence[Cell], client, logged: Callable[[Cell, Any], bool]) -> None:
    """Each cell's runs, found by the tag `cell`: the newest FINISHED run per seed (and
    self-distillation round) that `logged` what the target needs, and the unfinished ones."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    for cell in cells:
        found = client.search_runs(
            experiments,
            filter_string=f"tags.cell = '{cell.settings.cell_hash()}'",
            order_by=["attributes.start_time DESC"],
        )
        newest: dict[tuple, Any] = {}
        for run in found:  # newest first
            if cell.seeds and run.data.params.get("seed") not in cell.seeds:
                continue
            if run.info.status != "FINISHED":
                cell.unfinished.append(run)
            elif logged(cell, run):
                newest.setdefault((run.data.params.get("seed"), run.data.tags.get("round")), run)
        cell.runs = list(newest.values())


def missing_notes(cells: Sequence[Cell]) -> list[str]:
    """'missing: idistill ...' for every cell (and seed of the sweep) without a finished run;
    'unfinished: ...' for runs that a resume would continue."""
    out = []
    for cell in cells:
        have = {r.data.params.get("seed") for r in cell.runs}
        for seed in cell.seeds or [None]:
            if (seed is None and not cell.runs) or (seed is not None and seed not in have):
                out.append(f"missing: {cell.command(seed)}")
        for run in cell.unfinished:  # the ones no finished run of the same seed replaces
            seed = run.data.params.get("seed") if cell.seeds else None
            if (seed in have) if cell.seeds else bool(cell.runs):
                continue
            out.append(
                f"unfinished: run {run.info.run_id} is {run.info.status}; "
                f"continue it: {cell.command(seed)} trainer.resume=true"
            )
    return out


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


def store_uri(tracking: dict[str, Any]) -> str:
    """The tracking URI of the composed config; a SQLite store must exist (a report run in the
    wrong directory would otherwise create an empty one and find nothing)."""
    uri = tracking.get("uri")
    if tracking.get("backend") == "none":
        raise ValueError("idistill-report reads the runs from MLflow: drop tracking=none")
    if not uri:
        raise ValueError("no tracking.uri: give the store the runs were logged to")
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        raise ValueError(
            f"no MLflow store at {uri[len('sqlite:///') :]}: run idistill-report where the runs "
            "were started, or give tracking.uri=<their store>"
        )
    return uri


def logs_what(target: Target, cell: Cell, run) -> bool:
    """Whether `run` logged what `target` shows (runs of one cell may differ in analyses)."""
    metrics = run.data.metrics
    if target.figure == "violins":
        return "sensitivity/std" in metrics
    if target.figure == "pruning":
        return any(k.startswith("prune/") for k in metrics)
    if target.figure == "curves":
        return "valid/loss" in metrics
    return any(m in metrics for _, m in target.columns(cell.values.get(target.cols)))


def alpha_figure(name: str, cfg: dict[str, Any], out_dir: Path) -> Path:
    """fig4: the adaptive alpha schedule of the composed config (eq. 11-12)."""
    m, sched = cfg["method"], cfg["schedule"]
    if sched["name"] != "adaptive" or m["alpha"] <= 1:
        raise ValueError(
            f"{name} draws the adaptive schedule, which acts for alpha > 1 only: schedule=adaptive "
            f"and method.alpha > 1, e.g. method.alpha=5 (got schedule={sched['name']}, "
            f"method.alpha={m['alpha']})"
        )
    total = sched.get("total_updates", cfg["trainer"]["max_updates"])  # N
    return plots.alpha_schedule(m["alpha"], sched["p"], sched["q"], total, out_dir / f"{name}.png")


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
    plain, _ = parse_sweeps(overrides)
    cfg = OmegaConf.to_container(
        compose([f"experiment={target.experiment}", *plain], hydra=False), resolve=True
    )
    if target.figure == "alpha":  # no runs: the schedule of the composed config
        tables, figures = [], [alpha_figure(name, cfg, out_dir)]
        uri = cfg["tracking"]["uri"] if cfg["tracking"]["backend"] == "mlflow" else None
    else:
        uri = store_uri(cfg["tracking"])
        client = mlflow_client(uri)
        cells = compose_cells(target, overrides, compose)
        attach_runs(cells, client, lambda cell, run: logs_what(target, cell, run))
        table, rows, metrics = build_table(target, cells)
        tables, figures = [table], []
        if target.figure in DRAWN_BY:  # the newest run of each row, drawn as plot= draws runs
            newest = {n: c.runs[0] for n, by_col in rows.items() for c in by_col.values() if c.runs}
            if newest:
                figures, drawn = DRAW[DRAWN_BY[target.figure]](newest, out_dir / name, client)
                if target.figure != "violins":  # violins: the mean +- std table stays
                    tables = [dataclasses.replace(drawn, title=target.title, notes=table.notes)]
        elif target.figure == "k_sweep":
            points = [(int(k), v[0].mean, v[0].std or 0.0) for k, v in table.rows if v[0].values]
            if points:
                png = out_dir / f"{name}.png"
                figures = [plots.metric_vs_k({"intra-distillation": points}, png)]
        if target.bleu and bootstrap:
            add_significance(table, rows, metrics, bootstrap, artifact_lines)
        if target.per_language:
            tables.append(per_language_table(target, rows))
        if (vs_paper := paper_table(name, table)) is not None:
            tables.append(vs_paper)
    files = write_outputs(name, tables, figures, out_dir)
    params = {"overrides": " ".join(overrides)}
    run_id = log_report(uri, name, params, files) if track and uri else None
    return Report(tables, files, run_id)


def expand_runs(client, ids: Sequence[str]) -> list[Any]:
    """The runs named by `ids`: run ids, or a sweep's parent run id or its directory
    (multirun/...), which stand for the sweep's finished jobs."""
    from mlflow.exceptions import MlflowException

    from idistill.tracking import PARENT_RUN_FILE

    runs = []
    for given in ids:
        folder = Path(given).expanduser()
        if folder.is_dir() and not (folder / PARENT_RUN_FILE).is_file():
            raise ValueError(
                f"runs={given}: a directory, but not a tracked sweep's (no {PARENT_RUN_FILE})"
            )
        run_id = (folder / PARENT_RUN_FILE).read_text().strip() if folder.is_dir() else given
        try:
            run = client.get_run(run_id)
        except MlflowException:
            raise ValueError(f"runs={given}: no run {run_id} in this tracking store") from None
        children = client.search_runs(
            [run.info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{run_id}'",
            order_by=["attributes.start_time ASC"],
        )
        finished = [c for c in children if c.info.status == "FINISHED"]
        if children and not finished:
            raise ValueError(f"runs={given}: the sweep has no finished job yet")
        runs += finished or [run]
    return runs


def short_labels(names: Sequence[str]) -> list[str]:
    """Run names without what they share: sweep jobs "0:a=1,m=x", "1:a=1,m=y" -> "m=x", "m=y"."""
    items = [name.split(":", 1)[-1].split(",") for name in names]
    common = set.intersection(*map(set, items)) if items else set()
    short = [",".join(i for i in its if i not in common) for its in items]
    return short if all(short) and len(set(short)) == len(short) else list(names)


def plot_runs(
    kind: str, ids: Sequence[str], uri: str, out_dir: Path, *, track: bool = True
) -> Report:
    """Compare any runs (`plot=`): sensitivity violins (Figures 3, 5), pruning curves (6, 10),
    validation loss (7), sensitivity during training (2); labelled by their run names."""
    from idistill.tracking import client as mlflow_client

    if kind not in DRAW:
        raise ValueError(f"unknown plot={kind} (valid: {', '.join(DRAW)})")
    client = mlflow_client(uri)
    runs = expand_runs(client, ids)
    names = short_labels([r.data.tags.get("mlflow.runName") or r.info.run_id[:8] for r in runs])
    figures, table = DRAW[kind](dict(zip(names, runs, strict=True)), out_dir / kind, client)
    files = write_outputs(kind, [table], figures, out_dir)
    run_id = log_report(uri, f"plot={kind}", {"runs": ",".join(ids)}, files) if track else None
    return Report([table], files, run_id)
