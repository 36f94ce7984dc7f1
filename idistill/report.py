"""Tables and figures of the paper from the MLflow runs (`idistill-report`).

A target (idistill/targets.py) names the experiment config whose sweep makes its runs. The
caller hands in the target's composed config and the cells of the sweep's grid, each composed as
`idistill -m` composes it (cli/compose.py); a cell's runs are the FINISHED runs tagged with its
hash (the config hash without the seed), so several seeds give mean +- std. Missing cells are
shown as missing, with the sweep command that makes them; the paper's numbers sit under ours.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from idistill.analysis import plots
from idistill.cells import Cell, attach_runs
from idistill.figures import DRAW, DRAWN_BY, artifact_lines
from idistill.paper import add_paper_numbers
from idistill.tables import Table, add_significance, seed_order
from idistill.targets import build_table, find_target, logs_what, per_language_table

REPORT_EXPERIMENT = "idistill-report"  # the MLflow experiment that holds the report runs


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
    cfg: dict[str, Any],
    cells: Sequence[Cell],
    out_dir: Path,
    *,
    params: dict[str, str] | None = None,
    bootstrap: int = 1000,
    track: bool = True,
) -> Report:
    """Table or figure `name` from the runs of `cells` in the tracking store of `cfg` (the
    target's config, composed and resolved); files in out_dir, and (track) a run in the MLflow
    experiment `idistill-report` holding them, with `params`."""
    from idistill.tracking import client as mlflow_client

    target = find_target(name)
    if not target.reads_runs:  # fig4: the schedule of the composed config
        tables, figures = [], [alpha_figure(name, cfg, out_dir)]
        uri = cfg["tracking"]["uri"] if cfg["tracking"]["backend"] == "mlflow" else None
    else:
        uri = store_uri(cfg["tracking"])
        client = mlflow_client(uri)
        attach_runs(cells, client, lambda cell, run: logs_what(target, cell, run))
        table, rows, metrics = build_table(target, cells)
        tables, figures = [table], []
        if target.figure in DRAWN_BY:  # drawn as plot= draws runs
            if drawn_runs := figure_runs(target, rows):
                figures, drawn = DRAW[DRAWN_BY[target.figure]](drawn_runs, out_dir / name, client)
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
        if (gains := add_paper_numbers(name, tables)) is not None:
            tables.append(gains)
    files = write_outputs(name, tables, figures, out_dir)
    run_id = log_report(uri, name, params or {}, files) if track and uri else None
    return Report(tables, files, run_id)


def figure_runs(target, rows: dict[str, dict[str | None, Cell]]) -> dict[str, Any]:
    """The labelled runs a figure draws: the newest of each row; for validation-loss curves,
    every seed ("baseline, seed 2") where a row has several."""
    runs = [(n, c.runs) for n, by_col in rows.items() for c in by_col.values() if c.runs]
    if target.figure == "curves" and any(len(rs) > 1 for _, rs in runs):
        return {
            f"{n}{plots.SEED}{r.data.params.get('seed')}": r
            for n, rs in runs
            for r in seed_order(rs)
        }
    return {n: rs[0] for n, rs in runs}


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
