"""Shared fixtures: composing configs the way the CLI does, and a small synthetic run."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module

# A run small enough for the default suite: tiny model, a few hundred pairs, a few updates.
SMALL_RUN = [
    "experiment=demo",
    "task.n_train=300",
    "task.n_valid=40",
    "task.n_test=20",
    "task.vocab_size=200",
    "trainer.max_updates=6",
    "trainer.max_tokens=600",
    "trainer.validate_every=3",
    "trainer.log_every=2",
    "trainer.beam=2",
    "trainer.max_len_b=5",
]


@pytest.fixture
def make_cfg(tmp_path):
    """compose(overrides) -> DictConfig, with data and tracking inside tmp_path."""

    def _compose(overrides: list[str], tracking: bool = False):
        base = [f"data_dir={tmp_path / 'data'}"]
        base.append(
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}" if tracking else "tracking=none"
        )
        with initialize_config_module("idistill.conf", version_base="1.3"):
            return compose("config", overrides=base + overrides)

    return _compose
