"""The library trains, resumes and chains without Hydra: idistill.runs from a plain dict."""

from __future__ import annotations

import json
import subprocess
import sys

from omegaconf import OmegaConf

from conftest import SMALL_RUN

# A script as a user would write it; Hydra and omegaconf cannot even be imported.
SCRIPT = """
import json, logging, sys
from dataclasses import replace
from pathlib import Path
sys.modules["hydra"] = sys.modules["omegaconf"] = None  # any import of them fails
from idistill import checkpoint
from idistill.config import settings_from_dict
from idistill.runs import launch

logging.basicConfig(level=logging.INFO)
cfg, out, mode = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]), sys.argv[3]
settings = settings_from_dict(cfg)
if mode == "kill":  # stop right after the checkpoint of update 3, as a kill would
    real = checkpoint.write_meta
    def write_meta(save_dir, meta):
        real(save_dir, meta)
        if meta["update"] == 3:
            raise SystemExit(3)
    checkpoint.write_meta = write_meta
else:
    settings = replace(settings, trainer=replace(settings.trainer, resume=str(out)))
result = launch(settings, out, progress=False)
print(json.dumps({"updates": result.updates, "bleu": result.test_bleu}))
"""


def test_a_script_trains_and_resumes_a_run_without_hydra(make_cfg, tmp_path):
    cfg = OmegaConf.to_container(make_cfg(SMALL_RUN), resolve=True)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    (tmp_path / "script.py").write_text(SCRIPT)

    def script(mode: str) -> subprocess.CompletedProcess:
        args = [sys.executable, "script.py", "cfg.json", str(tmp_path / "run"), mode]
        return subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=600)

    killed = script("kill")
    assert killed.returncode == 3, killed.stderr[-3000:]
    resumed = script("resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "at update 3" in resumed.stderr
    result = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert result["updates"] == 6 and 0 <= result["bleu"] <= 100
