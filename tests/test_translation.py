import json

import pytest

import idistill.data.translation as translation
from idistill.data.synthetic import make_corpus
from idistill.data.translation import prepare_translation

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
    assert data.tokenizer.eos_id not in src + tgt and data.tokenizer.bos_id not in src + tgt
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
