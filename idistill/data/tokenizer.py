"""One joint sentencepiece model for both sides of a language pair: training and use."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


def check_spm_settings(
    vocab_size: int, character_coverage: float, max_sentences: int | None = None
) -> None:
    """Raise ValueError, naming the task key, for settings sentencepiece cannot train with."""
    if vocab_size < 8:
        raise ValueError(f"task.vocab_size must be >= 8 (got {vocab_size})")
    if not 0.0 < character_coverage <= 1.0:
        raise ValueError(f"task.character_coverage must be in (0, 1] (got {character_coverage})")
    if max_sentences is not None and max_sentences <= 100:  # sentencepiece's floor
        raise ValueError(f"task.spm_max_sentences must be > 100 or null (got {max_sentences})")


def train_sentencepiece(
    texts: Iterable[str],
    model_prefix: Path,
    vocab_size: int,
    character_coverage: float = 1.0,
    model_type: str = "unigram",
    seed: int = 0,
    num_threads: int = 1,
    input_sentence_size: int | None = None,
) -> Path:
    """Train a sentencepiece model on `texts`; returns `<model_prefix>.model`.

    Ids 0-3 are pad, unk, bos, eos. `vocab_size` is an upper bound (hard_vocab_limit off), so
    a small corpus gives a smaller vocabulary instead of an error. One thread and a fixed
    seed make the model file identical from run to run. With `input_sentence_size`,
    sentencepiece trains on a seeded random sample of at most that many sentences (it still
    reads them all, but keeps only the sample in memory): 9M WMT sentences need not all fit.
    """
    check_spm_settings(vocab_size, character_coverage, input_sentence_size)
    sampling = {}
    if input_sentence_size is not None:
        sampling = {"input_sentence_size": input_sentence_size, "shuffle_input_sentence": True}
    model_prefix = Path(model_prefix)
    model_prefix.parent.mkdir(parents=True, exist_ok=True)
    spm.set_random_generator_seed(seed)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_prefix=str(model_prefix),
        vocab_size=vocab_size,
        character_coverage=character_coverage,
        model_type=model_type,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        hard_vocab_limit=False,
        num_threads=num_threads,
        minloglevel=2,  # sentencepiece's progress log is pages long
        **sampling,
    )
    return model_prefix.with_name(model_prefix.name + ".model")


class Tokenizer:
    """Text <-> piece ids with a trained sentencepiece model; no bos/eos added by encode."""

    def __init__(self, model_file: Path):
        self.model_file = Path(model_file)
        if not self.model_file.is_file():
            raise FileNotFoundError(f"no sentencepiece model at {self.model_file}")
        self._sp = spm.SentencePieceProcessor(model_file=str(self.model_file))
        specials = (self.pad_id, self.unk_id, self.bos_id, self.eos_id)
        if specials != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise ValueError(
                f"{self.model_file}: special ids (pad, unk, bos, eos) are {specials}, "
                f"expected {(PAD_ID, UNK_ID, BOS_ID, EOS_ID)}; train it with train_sentencepiece"
            )
        self._specials = {PAD_ID, BOS_ID, EOS_ID}

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def pad_id(self) -> int:
        return self._sp.pad_id()

    @property
    def unk_id(self) -> int:
        return self._sp.unk_id()

    @property
    def bos_id(self) -> int:
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    def encode(self, text: str) -> list[int]:
        """Piece ids of one sentence."""
        return self._sp.encode(text, out_type=int)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Piece ids of many sentences."""
        return self._sp.encode(list(texts), out_type=int)

    def decode(self, ids: list[int]) -> str:
        """Detokenized text of `ids`; pad, bos and eos are skipped wherever they are."""
        return self._sp.decode([int(i) for i in ids if int(i) not in self._specials])

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.model_file)!r}, vocab_size={self.vocab_size})"
