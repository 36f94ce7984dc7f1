"""`idistill-report`: a table or figure of the paper from your MLflow runs, beside the paper's
numbers; printed, and written as Markdown, CSV and PNG files.

    idistill-report experiment=table2                    # all of Table 2 (IWSLT'14)
    idistill-report experiment=table2 lang=de            # what you ran of it
    idistill-report experiment=fig6                      # pruning curves
    idistill-report plot=sensitivity runs=<id>,<id>      # any runs; a sweep (parent id or dir): all

Report keys: experiment=<table1..5, table5_tydiqa, fig4..fig8>, or plot=<sensitivity | pruning |
loss | training> with runs=<MLflow run ids, a sweep's parent run id or its multirun/ directory>;
out=<dir> (default reports/<name>); bootstrap=<resamples> (paired bootstrap of BLEU tables,
default 1000, 0: off); track=false (no report run in MLflow).
Every other key=value is an override as given to `idistill` (the same for the report as for the
runs: the cells are found by the hash of their composed config), tracking.uri included.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPORT_KEYS = ("experiment", "plot", "runs", "out", "bootstrap", "track")


def compose_report(
    name: str, overrides: list[str], out_dir: Path, *, bootstrap: int = 1000, track: bool = True
):
    """Report `name` (idistill.report.make_report) on its config and the cells of its grid,
    composed from `overrides` as `idistill -m` composes them."""
    from idistill import report
    from idistill.cli.compose import grid_cells, parse_sweeps, resolved
    from idistill.targets import find_target

    target = find_target(name)
    plain, _ = parse_sweeps(overrides)
    cfg = resolved([f"experiment={target.experiment}", *plain])
    cells = []
    if target.reads_runs:
        report.store_uri(cfg["tracking"])  # refuse a missing store before composing every cell
        cells = grid_cells(target.experiment, overrides)
    params = {"overrides": " ".join(overrides)}
    return report.make_report(
        name, cfg, cells, out_dir, params=params, bootstrap=bootstrap, track=track
    )


def parse(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """(report keys, overrides for the composed config)."""
    keys, overrides = {}, []
    for arg in argv:
        key, eq, value = arg.partition("=")
        if not eq:
            raise ValueError(f"arguments are key=value (got {arg!r}); see idistill-report --help")
        if key in REPORT_KEYS:
            keys[key] = value
        else:
            overrides.append(arg)
    if "experiment" in keys and "plot" in keys:
        raise ValueError("give experiment=<target> or plot=<kind> runs=<ids>, not both")
    if "experiment" not in keys and "plot" not in keys:
        raise ValueError("give experiment=<table1..5, fig4..fig8> or plot=<kind> runs=<ids>")
    if not keys.get("bootstrap", "0").isdigit():
        raise ValueError(f"bootstrap must be a whole number of resamples (got {keys['bootstrap']})")
    from idistill.figures import DRAW  # the plot kinds

    if "plot" in keys and keys["plot"] not in DRAW:
        raise ValueError(f"unknown plot={keys['plot']} (valid: {', '.join(DRAW)})")
    if "plot" in keys and not keys.get("runs"):
        raise ValueError(f"plot={keys['plot']} needs runs=<MLflow run ids, comma-separated>")
    return keys, overrides


def main(argv: list[str] | None = None) -> int:
    """Console script `idistill-report`."""
    import logging

    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from idistill import report
    from idistill.cli.compose import compose
    from idistill.config import ConfigError

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        keys, overrides = parse(argv)
        name = keys.get("experiment") or f"plot-{keys['plot']}"
        out = Path(keys.get("out") or Path("reports") / name)
        track = keys.get("track", "true").lower() not in ("false", "0", "no")
        if "plot" in keys:
            tracking = OmegaConf.to_container(compose(overrides).tracking, resolve=True)
            uri = report.store_uri(tracking)
            result = report.plot_runs(keys["plot"], keys["runs"].split(","), uri, out, track=track)
        else:
            bootstrap = int(keys.get("bootstrap", 1000))
            result = compose_report(
                keys["experiment"], overrides, out, bootstrap=bootstrap, track=track
            )
    except (ValueError, ConfigError, HydraException, OmegaConfBaseException) as e:
        print(f"idistill-report: {e}", file=sys.stderr)
        return 2
    for table in result.tables:
        print(table.terminal(), end="\n\n")
    print("written: " + ", ".join(str(f) for f in result.files))
    if result.run_id:
        print(f"logged to MLflow: experiment {report.REPORT_EXPERIMENT}, run {result.run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
