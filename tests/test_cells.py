"""A report cell finds its runs by their `cell` tag, also runs tagged by earlier versions."""

from __future__ import annotations

from omegaconf import OmegaConf

from idistill.cells import Cell, attach_runs
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
