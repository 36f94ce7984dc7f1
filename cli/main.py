"""`idistill`: compose the config with Hydra, check it, then train, evaluate and log one run."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def _hydra_runtime() -> tuple[Path | None, Path | None, str | None]:
    """(run output dir, sweep dir in a -m sweep, run name) of the current Hydra job, if any."""
    if not HydraConfig.initialized():
        return None, None, None
    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    if hc.mode != RunMode.MULTIRUN:
        return out, None, out.name
    name = f"{hc.job.num}:{hc.job.override_dirname}"[:250]
    return out, Path(hc.sweep.dir), name


def run(cfg: DictConfig, output_dir: Path | None = None, progress: bool = True):
    """Run one job from a composed config (the undecorated entry point that tests call)."""
    from idistill.config import settings_from_dict
    from idistill.runs import launch

    settings = settings_from_dict(OmegaConf.to_container(cfg, resolve=True))
    hydra_out, sweep_dir, run_name = _hydra_runtime()
    out_dir = output_dir or hydra_out or Path.cwd()
    return launch(settings, out_dir, run_name=run_name, sweep_dir=sweep_dir, progress=progress)


@hydra.main(version_base="1.3", config_path="pkg://idistill.conf", config_name="config")
def _main(cfg: DictConfig) -> float | None:
    from idistill import distributed
    from idistill.config import ConfigError

    if not distributed.from_env().main:  # torchrun: rank 0 speaks for all
        logging.getLogger().setLevel(logging.WARNING)

    try:
        result = run(cfg)
    except ConfigError as e:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # Hydra marks this job failed; the sweep's parent run is marked FAILED
        raise SystemExit(f"idistill: {e}") from None
    if result is None:  # a chain had nothing left to train
        return None
    return getattr(result, "objective", result.test_bleu)  # NLU: the task's test (or dev) metric


def main() -> None:
    """Console script `idistill`."""
    _main()


if __name__ == "__main__":
    main()
