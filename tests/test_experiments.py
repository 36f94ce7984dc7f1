"""Every experiment file composes, and every method and model it names trains on synthetic data."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from idistill.cli.compose import grid_cells
from idistill.cli.main import run
from idistill.config import settings_from_dict

EXPERIMENTS = sorted(
    p.stem for p in (Path(__file__).parents[1] / "conf" / "experiment").glob("*.yaml")
)
# 2 updates of a tiny model on a small synthetic corpus: what the experiment names must run
TWO_UPDATES = [
    "task=synthetic",
    "task.n_train=200",
    "task.n_valid=20",
    "task.n_test=10",
    "task.vocab_size=150",
    "model.embed_dim=32",
    "model.ffn_dim=64",
    "model.encoder_layers=1",
    "model.decoder_layers=1",
    "trainer.max_updates=2",
    "trainer.max_tokens=600",
    "trainer.warmup_updates=1",
    "trainer.beam=2",
    "trainer.max_len_b=3",
    "trainer.update_freq=1",
    "tracking=none",
]


def _compose(overrides: list[str]):
    with initialize_config_module("idistill.conf", version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=False)


def _sweep(experiment: str) -> list[str]:
    """The method options an experiment's sweep runs (its own method when it sweeps none)."""
    with initialize_config_module("idistill.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    methods = str(params.get("method", cfg.method.name)).split(",")
    return [f"{experiment}:{m}" for m in methods]


def _translation(experiment: str) -> bool:
    """NLU experiments (GLUE, NER, TyDiQA) fine-tune pretrained encoders: tests/test_nlu.py."""
    return _compose([f"experiment={experiment}"]).task.get("type", "translation") != "nlu"


CASES = [case for e in EXPERIMENTS if _translation(e) for case in _sweep(e)]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_into_valid_settings(experiment):
    cfg = _compose([f"experiment={experiment}"])
    settings_from_dict(OmegaConf.to_container(cfg, resolve=True))


def test_tables_sweep_every_method_of_the_paper():
    assert _sweep("table2") == [
        f"table2:{m}"
        for m in ("baseline", "sage", "rdrop", "switch", "intra_distill_js", "intra_distill")
    ]
    assert [c.split(":")[1] for c in _sweep("table3")] == [
        c.split(":")[1] for c in _sweep("table2")
    ]


@pytest.mark.parametrize("case", CASES)
def test_each_method_of_each_experiment_trains_two_updates(tmp_path_factory, case):
    experiment, method = case.split(":")
    data_dir = tmp_path_factory.getbasetemp() / "experiments-data"  # one corpus for all cases
    cfg = _compose(
        [f"experiment={experiment}", f"method={method}", *TWO_UPDATES, f"data_dir={data_dir}"]
    )
    out = tmp_path_factory.mktemp(method)
    result = run(cfg, output_dir=out, progress=False)
    assert result.updates == 2
    assert (result.test_bleu is not None) == cfg.trainer.test  # selection runs skip the test


def test_the_multi30k_comparison_reuses_the_selection_run_of_the_chosen_alpha_and_k():
    # seed 1 of the final comparison is the selection's run of the chosen cell, alpha 1 and K 2
    # (trained without the test set): one config hash, so `idistill -m ... trainer.resume=true`
    # only tests it. The cells as `idistill -m` composes their jobs:
    final = {c.values["method"]: c.settings for c in grid_cells("multi30k_converged", [])}
    selection = {c.values["method.alpha"]: c.settings for c in grid_cells("multi30k_select", [])}
    chosen = final["intra_distill_multi30k"]
    assert (chosen.method.name, chosen.method.alpha, chosen.method.k) == ("intra_distill", 1.0, 2)
    assert chosen.trainer.test and not selection["1"].trainer.test
    assert [a for a, s in selection.items() if s.config_hash() == chosen.config_hash()] == ["1"]
