"""A report cell finds its runs by their `cell` tag (also the legacy one); missing cells are
the fewest sweep commands that make them, unfinished runs are resumed."""

from __future__ import annotations

from omegaconf import OmegaConf

from idistill.cells import Cell, attach_runs, missing_notes, sweep_commands
from idistill.config import settings_from_dict
from idistill.tracking import client


def test_a_cell_finds_runs_tagged_with_its_hash_or_its_legacy_hash(make_cfg, tmp_path):
    cfg = make_cfg(["experiment=glue_cpu"])
    settings = settings_from_dict(OmegaConf.to_container(cfg, resolve=True))
    mlflow = client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.create_experiment("glue")
    ids = []
    for seed, tag in (("1", settings.cell_hash(legacy=True)), ("2", settings.cell_hash())):
        run = mlflow.create_run(experiment, tags={"cell": tag})
        mlflow.log_param(run.info.run_id, "seed", seed)
        mlflow.set_terminated(run.info.run_id, "FINISHED")
        ids.append(run.info.run_id)
    stranger = mlflow.create_run(experiment, tags={"cell": "0123456789ab"})
    mlflow.set_terminated(stranger.info.run_id, "FINISHED")
    cell = Cell({}, ["experiment=glue_cpu"], settings, ["1", "2"])
    attach_runs([cell], mlflow, lambda c, r: True)
    assert sorted(r.info.run_id for r in cell.runs) == sorted(ids)


def _cell(values: dict[str, str], seeds: list[str] | None = None) -> Cell:
    overrides = [
        "experiment=table2",
        "trainer.max_updates=10",
        *(f"{k}={v}" for k, v in values.items()),
    ]
    return Cell(values, overrides, None, seeds or [])


def test_the_missing_cells_of_a_grid_are_one_sweep_command():
    cells = [
        _cell({"lang": g, "method": m}) for g in ("ar", "de", "es") for m in ("baseline", "sage")
    ]
    notes = missing_notes(cells)
    assert notes == [
        "missing 6 of 6 cells; this command makes them:",
        "missing: idistill -m experiment=table2 trainer.max_updates=10 lang=ar,de,es "
        "method=baseline,sage",
    ]


def test_missing_cells_off_a_grid_are_the_fewest_sweeps_that_make_exactly_them():
    cells = [_cell({"lang": g, "method": m}) for g in ("ar", "de") for m in ("baseline", "sage")]
    assert sweep_commands([(c, None) for c in cells[1:]]) == [  # (ar, baseline) is done
        "idistill -m experiment=table2 trainer.max_updates=10 lang=ar,de method=sage",
        "idistill experiment=table2 trainer.max_updates=10 lang=de method=baseline",
    ]
    seeded = [_cell({"method": m}, ["1", "2", "3"]) for m in ("baseline", "sage")]
    points = [(seeded[0], "3"), (seeded[1], "2"), (seeded[1], "3")]
    assert sweep_commands(points) == [
        "idistill -m experiment=table2 trainer.max_updates=10 method=baseline,sage seed=3",
        "idistill experiment=table2 trainer.max_updates=10 method=sage seed=2",
    ]


def test_an_unfinished_run_is_resumed_not_counted_missing(make_cfg, tmp_path):
    cfg = make_cfg(["experiment=glue_cpu"])
    settings = settings_from_dict(OmegaConf.to_container(cfg, resolve=True))
    mlflow = client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.create_experiment("glue")
    failed = None
    for seed, status in (("1", "FINISHED"), ("2", "FAILED")):
        run = mlflow.create_run(experiment, tags={"cell": settings.cell_hash()})
        mlflow.log_param(run.info.run_id, "seed", seed)
        mlflow.set_terminated(run.info.run_id, status)
        failed = run.info.run_id
    cell = Cell({}, ["experiment=glue_cpu"], settings, ["1", "2", "3"])
    attach_runs([cell], mlflow, lambda c, r: True)
    assert missing_notes([cell]) == [
        "missing 1 of 3 runs (cells x seeds); this command makes them:",
        "missing: idistill experiment=glue_cpu seed=3",
        f"unfinished: run {failed} is FAILED; continue it: idistill experiment=glue_cpu seed=2 "
        "trainer.resume=true",
        "or all at once (finished runs are skipped, stopped ones continue): "
        "idistill -m experiment=glue_cpu seed=1,2,3 trainer.resume=true",
    ]
