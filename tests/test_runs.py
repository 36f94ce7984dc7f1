"""The library trains, resumes and chains without Hydra: idistill.runs from a plain dict."""

from __future__ import annotations

import json
import subprocess
import sys

from omegaconf import OmegaConf

from conftest import SMALL_RUN

# A script as a user would write it; Hydra and omegaconf cannot even be imported.
SCRIPT = """
import json, logging, os, signal, sys
from dataclasses import replace
from pathlib import Path
sys.modules["hydra"] = sys.modules["omegaconf"] = None  # any import of them fails
from idistill import checkpoint
from idistill.config import settings_from_dict
from idistill.runs import launch

logging.basicConfig(level=logging.INFO)
cfg, out, mode = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]), sys.argv[3]
settings = settings_from_dict(cfg)
if mode in ("kill", "term"):  # stop right after the checkpoint of update 3
    real = checkpoint.write_meta
    def write_meta(save_dir, meta):
        real(save_dir, meta)
        if meta["update"] == 3:
            if mode == "term":  # a real SIGTERM, as a scheduler sends
                os.kill(os.getpid(), signal.SIGTERM)
            raise SystemExit(3)
    checkpoint.write_meta = write_meta
else:
    settings = replace(settings, trainer=replace(settings.trainer, resume=str(out)))
result = launch(settings, out, progress=False)
print(json.dumps({"updates": result.updates, "bleu": result.test_bleu}))
"""


def _script(make_cfg, tmp_path, tracking: bool = False):
    cfg = OmegaConf.to_container(make_cfg(SMALL_RUN, tracking=tracking), resolve=True)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    (tmp_path / "script.py").write_text(SCRIPT)

    def script(mode: str) -> subprocess.CompletedProcess:
        args = [sys.executable, "script.py", "cfg.json", str(tmp_path / "run"), mode]
        return subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=600)

    return script


def test_a_script_trains_and_resumes_a_run_without_hydra(make_cfg, tmp_path):
    script = _script(make_cfg, tmp_path)

    killed = script("kill")
    assert killed.returncode == 3, killed.stderr[-3000:]
    resumed = script("resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "at update 3" in resumed.stderr
    result = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert result["updates"] == 6 and 0 <= result["bleu"] <= 100


def test_sigterm_ends_the_mlflow_run_killed_and_resume_continues_it_without_duplicates(
    make_cfg, tmp_path
):
    from idistill.tracking import client

    script = _script(make_cfg, tmp_path, tracking=True)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    terminated = script("term")
    assert terminated.returncode != 0 and "Terminated" in terminated.stderr
    (run,) = client(uri).search_runs(
        [client(uri).get_experiment_by_name("synthetic").experiment_id]
    )
    assert run.info.status == "KILLED"
    resumed = script("resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (again,) = client(uri).search_runs([run.info.experiment_id])
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    history = client(uri).get_metric_history(run.info.run_id, "train/loss")  # log_every=2
    assert sorted(m.step for m in history) == [2, 4, 6]
