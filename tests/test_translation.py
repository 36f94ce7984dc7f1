import json

import numpy as np
import pytest

import idistill.data.translation as translation
from idistill.data.synthetic import make_corpus
from idistill.data.token_pairs import TokenPairs
from idistill.data.translation import load_translation, prepare_translation

SETTINGS = {"name": "synthetic", "data_seed": 3}


@pytest.fixture(scope="module")
def raw():
    return make_corpus(3, 300, 30, 20)


@pytest.fixture
def spm_trainings(monkeypatch):
    """Counts sentencepiece trainings."""
    calls = []
    real = translation.train_sentencepiece

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(translation, "train_sentencepiece", counting)
    return calls


def _prepare(raw, data_dir, **kwargs):
    kwargs = {"vocab_size": 300, **kwargs}
    return prepare_translation(
        raw, data_dir=data_dir, name="synthetic", settings=SETTINGS, **kwargs
    )


def test_splits_hold_ids_and_the_raw_text(raw, tmp_path):
    data = _prepare(raw, tmp_path)
    for split, pairs in raw.items():
        assert data.sources[split] == [s for s, _ in pairs]
        assert data.references[split] == [t for _, t in pairs]
        assert len(data.splits[split]) == len(pairs)
    src, tgt = data.splits["test"][0]
    assert data.tokenizer.decode(src) == raw["test"][0][0]
    assert data.tokenizer.decode(tgt) == raw["test"][0][1]
    both = np.concatenate([src, tgt])
    assert data.tokenizer.eos_id not in both and data.tokenizer.bos_id not in both
    assert data.path.parent == tmp_path / "synthetic"


def test_second_call_loads_the_cache_without_retraining(raw, tmp_path, spm_trainings):
    first = _prepare(raw, tmp_path)
    created = json.loads((first.path / "manifest.json").read_text())["created_unix"]
    second = _prepare(raw, tmp_path)
    assert len(spm_trainings) == 1
    assert second.path == first.path and second.splits == first.splits
    assert json.loads((second.path / "manifest.json").read_text())["created_unix"] == created


def test_other_vocab_size_or_raw_data_gets_a_new_cache(raw, tmp_path, spm_trainings):
    a = _prepare(raw, tmp_path)
    b = _prepare(raw, tmp_path, vocab_size=250)
    changed = {**raw, "test": raw["test"][:-1]}
    c = _prepare(changed, tmp_path)
    assert len({a.path, b.path, c.path}) == 3 and len(spm_trainings) == 3


def test_long_training_pairs_are_dropped_but_valid_and_test_kept_whole(raw, tmp_path):
    full = _prepare(raw, tmp_path)
    limit = 12
    data = _prepare(raw, tmp_path, max_len=limit)
    assert all(max(len(s), len(t)) <= limit for s, t in data.splits["train"])
    assert 0 < len(data.splits["train"]) < len(raw["train"])
    assert len(data.sources["train"]) == len(data.references["train"]) == len(data.splits["train"])
    for split in ("valid", "test"):
        assert data.splits[split] == full.splits[split]
        assert any(max(len(s), len(t)) > limit for s, t in data.splits[split])


def test_missing_split_is_refused(raw, tmp_path):
    with pytest.raises(ValueError, match="test"):
        _prepare({"train": raw["train"], "valid": raw["valid"]}, tmp_path)


def test_ids_are_memory_mapped_numpy_arrays_not_json(raw, tmp_path):
    data = _prepare(raw, tmp_path)
    assert not list(data.path.glob("*.ids.json"))
    train = data.splits["train"]
    assert isinstance(train, TokenPairs) and isinstance(train.src, np.memmap)
    assert train.src.dtype == np.uint16  # a vocabulary under 65536 pieces
    assert train.src_lens.tolist() == [len(s) for s, _ in train]


def test_the_raw_text_is_read_only_when_asked_for(raw, tmp_path):
    path = _prepare(raw, tmp_path).path
    (path / "train.src.txt").write_text("one line too few\n")  # found only on access
    data = load_translation(path)
    assert data.references["test"] == [t for _, t in raw["test"]]
    with pytest.raises(ValueError, match="train.src.txt has 1 lines for"):
        data.sources["train"]


def test_spm_train_on_all_uses_every_split_and_is_part_of_the_cache_key(tmp_path, spm_trainings):
    # A word that only the test split holds: unknown to sentencepiece unless it saw the test text.
    raw = {
        "train": [("a b c", "d e f")] * 20,
        "valid": [("a b", "d e")],
        "test": [("zyxw", "zyxw")],
    }
    train_only = _prepare(raw, tmp_path, vocab_size=40)
    every_split = _prepare(raw, tmp_path, vocab_size=40, spm_train_on="all")
    assert train_only.path != every_split.path and len(spm_trainings) == 2
    unk = train_only.tokenizer.unk_id
    assert unk in train_only.splits["test"][0][0]
    assert unk not in every_split.splits["test"][0][0]


def test_bad_spm_train_on_is_refused_naming_the_fix(raw, tmp_path):
    with pytest.raises(ValueError, match=r"task.spm_train_on must be one of .*got 'valid'"):
        _prepare(raw, tmp_path, spm_train_on="valid")


def test_spm_max_sentences_samples_the_training_text_and_keys_the_cache(raw, tmp_path):
    full = _prepare(raw, tmp_path, vocab_size=1000)
    sampled = _prepare(raw, tmp_path, vocab_size=1000, spm_max_sentences=101)
    assert sampled.path != full.path
    assert sampled.tokenizer.vocab_size < full.tokenizer.vocab_size
