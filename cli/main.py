"""`idistill`: compose the config with Hydra, check it, then train, evaluate and log one run.

A run refused before training (a config problem, a missing extra, data that cannot be had)
ends with one `idistill: ...` line per problem, no traceback, and leaves no run folder."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# overrides that a run's name already says (RunSettings.run_name)
RUN_NAME_KEYS = {"task", "lang", "glue_task", "method", "method.k", "method.alpha", "seed"}


def _hydra_runtime() -> tuple[Path | None, Path | None]:
    """(run output dir, sweep dir in a -m sweep) of the current Hydra job, if any."""
    if not HydraConfig.initialized():
        return None, None
    hc = HydraConfig.get()
    sweep_dir = Path(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else None
    return Path(hc.runtime.output_dir), sweep_dir


def _parallel_jobs() -> int:
    """How many jobs of this sweep run at once on this machine: n_jobs of the joblib launcher
    (-1: one per core), else 1."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return 1
    launcher = HydraConfig.get().launcher
    if "joblib" not in str(launcher.get("_target_", "")):
        return 1
    n_jobs = int(launcher.get("n_jobs") or 1)
    return len(os.sched_getaffinity(0)) if n_jobs < 0 else n_jobs


def run_name(settings) -> str:
    """The MLflow run's name: what ran (`iwslt14-de intra_distill K3 a5 s1`); a sweep job's
    starts with its number and ends with its overrides that the name does not already say."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return settings.run_name
    hc = HydraConfig.get()
    hidden = RUN_NAME_KEYS | {"experiment", *hc.job.config.override_dirname.exclude_keys}
    rest = [o for o in hc.overrides.task if o.partition("=")[0].lstrip("+~") not in hidden]
    return " ".join([f"{hc.job.num}: {settings.run_name}", *rest])[:250]


def run(cfg: DictConfig, output_dir: Path | None = None, progress: bool = True):
    """Run one job from a composed config (the undecorated entry point that tests call)."""
    from idistill.config import settings_from_dict
    from idistill.engine.device import thread_share
    from idistill.runs import launch

    settings = settings_from_dict(OmegaConf.to_container(cfg, resolve=True))
    _check_installed(settings)
    jobs = _parallel_jobs()
    if jobs > 1 and settings.trainer.num_threads is None:  # each job its share of the cores
        threads = thread_share(jobs)
        settings = replace(settings, trainer=replace(settings.trainer, num_threads=threads))
        log.info("%d jobs at once: trainer.num_threads=%d for this one", jobs, threads)
    hydra_out, sweep_dir = _hydra_runtime()
    out_dir = output_dir or hydra_out or Path.cwd()
    name = run_name(settings)
    return launch(settings, out_dir, run_name=name, sweep_dir=sweep_dir, progress=progress)


def _check_installed(settings) -> None:
    """Fine-tuning needs the nlu extra: say so before anything starts."""
    from idistill.config import ConfigError

    if settings.family == "nlu" and importlib.util.find_spec("transformers") is None:
        fix = f"pip install 'idistill[{extra_for('transformers') or 'nlu'}]'"
        raise ConfigError(
            f"task={settings.task['name']} needs transformers, which is not installed: {fix}"
        )


def extra_for(module: str) -> str | None:
    """The extra of idistill's package that installs `module` (transformers -> nlu), if any."""
    from importlib.metadata import PackageNotFoundError, metadata, requires

    from packaging.requirements import Requirement

    try:
        extras = metadata("idistill").get_all("Provides-Extra") or []
        reqs = [Requirement(r) for r in requires("idistill") or []]
    except PackageNotFoundError:
        return None
    wanted = module.split(".")[0].lower().replace("-", "_")
    for extra in extras:
        for r in reqs:
            named = r.name.lower().replace("-", "_") == wanted
            if named and r.marker and r.marker.evaluate({"extra": extra}):
                return extra
    return None


USAGE = """usage: idistill [-m] key=value ...
idistill: say what to run; for example:
"""
DEFAULT_RUN = """The default config (--help shows it and the config groups) is a full-size run,
transformer_small on the synthetic task for trainer.max_updates: `idistill task=synthetic`."""


def _usage() -> str:
    """The usage and the examples of `idistill --help` (conf/config.yaml's help footer)."""
    from importlib.resources import files

    config = OmegaConf.load(files("idistill.conf").joinpath("config.yaml").open())
    examples = config.hydra.help.footer.removeprefix("Examples:\n")
    return f"{USAGE}{examples}\n{DEFAULT_RUN}"


@hydra.main(version_base="1.3", config_path="pkg://idistill.conf", config_name="config")
def _main(cfg: DictConfig) -> float | None:
    from idistill import distributed
    from idistill.config import ConfigError

    if not distributed.from_env().main:  # torchrun: rank 0 speaks for all
        logging.getLogger().setLevel(logging.WARNING)

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        result = run(cfg)
    except ConfigError as e:
        if multirun:
            raise  # Hydra marks this job failed; the sweep's parent run is marked FAILED
        _remove_fresh_run_dir()
        raise SystemExit("\n".join(f"idistill: {p}" for p in e.problems)) from None
    except ModuleNotFoundError as e:  # an optional dependency met later than checked
        extra = extra_for(e.name or "")
        if multirun or extra is None:
            raise
        raise SystemExit(
            f"idistill: {e.name} is not installed: pip install 'idistill[{extra}]'"
        ) from None
    if result is None:  # a chain had nothing left to train
        return None
    return getattr(result, "objective", result.test_bleu)  # NLU: the task's test (or dev) metric


def _remove_fresh_run_dir() -> None:
    """A refused run leaves no folder: the one Hydra made for it goes, with the folders above
    it that only held it, when it holds nothing but Hydra's files and the log and was not named
    by the user (hydra.run.dir: it may hold a run to resume)."""
    hc = HydraConfig.get()
    if any(o.startswith("hydra.run.dir=") for o in hc.overrides.hydra):
        return
    out = Path(hc.runtime.output_dir)
    if not out.is_dir() or {p.name for p in out.iterdir()} - {".hydra", f"{hc.job.name}.log"}:
        return
    for handler in logging.getLogger().handlers[:]:  # Hydra's file handler holds the log open
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == out:
            handler.close()
            logging.getLogger().removeHandler(handler)
    shutil.rmtree(out, ignore_errors=True)
    cwd = Path.cwd().resolve()
    parent = out.resolve().parent
    while parent != cwd and cwd in parent.parents and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


def main() -> None:
    """Console script `idistill`: a bare call prints the usage; overrides that name no key or
    option are refused with the nearest one before Hydra starts."""
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args()
    informative = args.help or args.hydra_help or args.info or args.shell_completion
    own_configs = args.config_dir or args.config_path or args.config_name
    if not (informative or own_configs or args.cfg or args.overrides or args.experimental_rerun):
        print(_usage(), file=sys.stderr)
        raise SystemExit(2)
    if not (informative or own_configs):
        from idistill.cli.overrides import override_problems

        problems = override_problems(args.overrides)
        if problems:
            raise SystemExit("\n".join(f"idistill: {p}" for p in problems))
    _main()


if __name__ == "__main__":
    main()
