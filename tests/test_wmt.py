"""WMT'17 En->De: conversion, cleaning, held-out valid, local files, checks, newstest2014."""

from __future__ import annotations

from pathlib import Path

import pytest

from idistill.config import ConfigError
from idistill.data import wmt
from idistill.evaluate import corpus_bleu

NEWSTEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "wmt_newstest_en_de"


def _task(**overrides):
    task = {
        "name": "wmt17",
        "type": "translation",
        "source": None,
        "test_source": None,
        "src_lang": "en",
        "tgt_lang": "de",
        "valid_size": 5,
        "valid_seed": 1,
        "filter_ratio": 1.5,
        "filter_max_tokens": 256,
    }
    return {**task, **overrides}


def _corpus(n: int) -> list[tuple[str, str]]:
    return [(f"the sentence number {i} .", f"der Satz Nummer {i} .") for i in range(n)]


def _write(folder: Path, stem: str, pairs, langs=("en", "de")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for lang, side in zip(langs, (0, 1), strict=True):
        with open(folder / f"{stem}.{lang}", "w", encoding="utf-8", newline="") as f:
            f.writelines(pair[side] + "\n" for pair in pairs)
    return folder


@pytest.fixture
def with_datasets(monkeypatch):
    """check() believes `datasets` is installed, whether or not it is here."""
    monkeypatch.setattr(wmt, "_has_datasets", lambda: True)


# ---- conversion and cleaning


def _rows(pairs):
    return [{"translation": {"de": de, "en": en}} for en, de in pairs]


def test_rows_become_english_german_pairs_on_one_line_each():
    rows = _rows([(" Hello,  world! ", "Hallo\nWelt\r"), ("tab\tsep\u2028line", "ok")])
    assert wmt.pairs_from_rows(rows, "en", "de") == [
        ("Hello, world!", "Hallo Welt"),
        ("tab sep line", "ok"),
    ]


def test_a_datasets_dataset_converts_like_plain_rows():
    datasets = pytest.importorskip("datasets")
    pairs = [("Hello world", "Hallo Welt"), ("Yes .", "Ja .")] * 3
    ds = datasets.Dataset.from_dict({"translation": [r["translation"] for r in _rows(pairs)]})
    assert wmt.pairs_from_rows(ds, "en", "de") == pairs


def test_tokens_are_words_and_punctuation_marks():
    assert wmt.count_tokens("Hello, world!") == 4
    assert wmt.count_tokens("Das ist's: 12,5 %") == 9
    assert wmt.count_tokens("") == 0


def test_clean_drops_empty_long_and_lopsided_pairs():
    pairs = [
        ("a b c", "x y z"),  # kept
        ("a b", "x y z"),  # 3 / 2 = 1.5: kept
        ("a", "x y"),  # ratio 2
        ("a b c d", "x y"),  # ratio 2 the other way
        ("", "x"),  # empty side
        ("a " * 5, "x " * 5),  # 5 tokens > 4
    ]
    assert wmt.clean(pairs, ratio=1.5, max_tokens=4) == pairs[:2]


def test_held_out_valid_is_seeded_disjoint_and_not_the_tail():
    pairs = _corpus(1000)
    train, valid = wmt.hold_out(pairs, 40, seed=1)
    assert (train, valid) == wmt.hold_out(pairs, 40, seed=1)
    assert valid != wmt.hold_out(pairs, 40, seed=2)[1]
    assert len(valid) == 40 and len(train) == 960
    assert set(train).isdisjoint(valid) and set(train) | set(valid) == set(pairs)
    assert valid != pairs[-40:] and valid == sorted(valid, key=pairs.index)  # corpus order


def test_held_out_valid_larger_than_the_corpus_names_the_setting():
    with pytest.raises(ConfigError, match="task.valid_size=10 leaves nothing"):
        wmt.hold_out(_corpus(10), 10, seed=1)


# ---- local files


def test_local_folder_gives_cleaned_train_held_out_valid_and_whole_test(tmp_path, with_datasets):
    bad = [("a", "x y z w"), ("", "leer")]  # lopsided, empty: cleaned from train
    test = [("", "empty test source"), ("tiny", "ein viel zu langer Satz hier")]  # kept whole
    source = _write(tmp_path / "src", "train", _corpus(30) + bad)
    _write(source, "test", test)
    raw = wmt.raw(_task(source=str(source)), None, tmp_path / "data")
    assert len(raw["train"]) == 25 and len(raw["valid"]) == 5
    assert set(raw["train"]) | set(raw["valid"]) == set(_corpus(30))
    assert raw["test"] == test


def test_local_valid_files_replace_the_held_out_pairs(tmp_path, with_datasets):
    source = _write(tmp_path / "src", "train", _corpus(30))
    _write(source, "valid", [("my own valid .", "mein eigenes Valid .")])
    _write(source, "test", _corpus(2))
    raw = wmt.raw(_task(source=str(source)), None, tmp_path / "data")
    assert raw["valid"] == [("my own valid .", "mein eigenes Valid .")]
    assert raw["train"] == _corpus(30)


def test_windows_line_ends_and_unicode_separators_keep_lines_aligned(tmp_path, with_datasets):
    source = tmp_path / "src"
    source.mkdir()
    (source / "train.en").write_bytes("one two\r\nthree\u2028four five\r\n".encode())
    (source / "train.de").write_bytes("eins zwei\r\ndrei vier fünf\r\n".encode())
    pairs = wmt.read_pairs(source / "train.en", source / "train.de")
    assert pairs == [("one two", "eins zwei"), ("three four five", "drei vier fünf")]


def test_the_cleaned_text_is_cached_and_rebuilt_when_a_file_changes(
    tmp_path, with_datasets, monkeypatch
):
    source = _write(tmp_path / "src", "train", _corpus(30))
    _write(source, "test", _corpus(2))
    builds = []
    real = wmt._build
    monkeypatch.setattr(wmt, "_build", lambda out, task: (builds.append(1), real(out, task)))
    task = _task(source=str(source))
    first = wmt.raw(task, None, tmp_path / "data")
    assert wmt.raw(task, None, tmp_path / "data") == first and len(builds) == 1
    _write(source, "train", _corpus(31))
    assert len(wmt.raw(task, None, tmp_path / "data")["train"]) == 26 and len(builds) == 2


# ---- the online path, without a network: datasets.load_dataset is replaced


def test_online_path_reads_wmt17_train_and_newstest2014_from_wmt14(tmp_path, monkeypatch):
    calls = []

    def fake_load(**kwargs):
        calls.append(kwargs)
        return _rows(_corpus(20) if kwargs["split"] == "train" else [("news", "Nachrichten")])

    monkeypatch.setattr(wmt, "_load_hf", fake_load)
    monkeypatch.setattr(wmt, "_has_datasets", lambda: True)
    raw = wmt.raw(_task(), None, tmp_path / "data")
    assert calls == [wmt.HF_TRAIN, wmt.HF_TEST]
    assert calls[0] == {"path": "wmt/wmt17", "name": "de-en", "split": "train"}
    assert calls[1]["path"] == "wmt/wmt14" and calls[1]["split"] == "test"
    assert len(raw["train"]) == 15 and len(raw["valid"]) == 5
    assert raw["test"] == [("news", "Nachrichten")]


# ---- check(): refused before any work


def test_check_without_datasets_or_source_names_both_fixes(monkeypatch):
    monkeypatch.setattr(wmt, "_has_datasets", lambda: False)
    with pytest.raises(ConfigError, match=r"pip install datasets.*task\.source="):
        wmt.check(_task(), None)


def test_check_with_a_source_but_no_test_set_and_no_datasets_asks_for_test_source(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(wmt, "_has_datasets", lambda: False)
    source = _write(tmp_path, "train", _corpus(3))
    with pytest.raises(ConfigError, match="task.test_source="):
        wmt.check(_task(source=str(source)), None)
    wmt.check(_task(source=str(source), test_source=str(_write(tmp_path / "t", "test", []))), None)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"train.en": "a\n"}, "lacks train.de"),
        ({"train.en": "a\n", "train.de": "b\n", "valid.de": "c\n"}, "lacks valid.en"),
    ],
)
def test_check_names_missing_files_of_the_source(tmp_path, with_datasets, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message):
        wmt.check(_task(source=str(tmp_path)), None)


def test_check_refuses_a_source_that_is_not_a_folder(tmp_path, with_datasets):
    with pytest.raises(ConfigError, match="task.source=.*nope is not a directory"):
        wmt.check(_task(source=str(tmp_path / "nope")), None)


def test_check_refuses_a_test_source_without_a_test_set(tmp_path, with_datasets):
    with pytest.raises(ConfigError, match=r"holds no test set.*newstest2014\.\{en,de\}"):
        wmt.check(_task(test_source=str(tmp_path)), None)


def test_check_refuses_another_language_pair_and_bad_numbers(with_datasets):
    with pytest.raises(ConfigError, match=r"en->de only: drop lang= \(got lang=de\)"):
        wmt.check(_task(), "de")
    with pytest.raises(ConfigError, match=r"task.filter_ratio must be >= 1.0 \(got 0.5\)"):
        wmt.check(_task(filter_ratio=0.5), None)
    wmt.check(_task(), "en")


def test_the_shipped_config_passes_check(make_cfg, with_datasets):
    from omegaconf import OmegaConf

    task = OmegaConf.to_container(make_cfg(["task=wmt17"]).task, resolve=True)
    wmt.check(task, None)
    assert task["vocab_size"] == 32000 and task["max_len"] == 256


# ---- the real newstest2014 (shared data)


@pytest.mark.skipif(not NEWSTEST.is_dir(), reason=f"shared newstest2014 not found at {NEWSTEST}")
@pytest.mark.parametrize("as_prefix", [False, True])
def test_newstest2014_from_shared_data_is_the_whole_test_set(tmp_path, with_datasets, as_prefix):
    source = _write(tmp_path / "src", "train", _corpus(30))
    test_source = NEWSTEST / "newstest2014" if as_prefix else NEWSTEST
    raw = wmt.raw(_task(source=str(source), test_source=str(test_source)), None, tmp_path / "d")
    test = raw["test"]
    assert len(test) == 3003
    first_en = (NEWSTEST / "newstest2014.en").read_text(encoding="utf-8").split("\n")[0]
    first_de = (NEWSTEST / "newstest2014.de").read_text(encoding="utf-8").split("\n")[0]
    assert test[0] == (first_en.strip(), first_de.strip())
    references = [de for _, de in test]
    assert corpus_bleu(references, references).score == pytest.approx(100.0)


@pytest.mark.slow
@pytest.mark.skipif(not NEWSTEST.is_dir(), reason=f"shared newstest2014 not found at {NEWSTEST}")
def test_newstest_pipeline_through_sentencepiece_scores_about_100(tmp_path, with_datasets):
    """newstest2016+2017 stand in for the training text (concatenated into tmp_path)."""
    from idistill.data.translation import prepare_translation

    source = tmp_path / "src"
    source.mkdir()
    for lang in ("en", "de"):
        lines = [(NEWSTEST / f"newstest20{y}.{lang}").read_text(encoding="utf-8") for y in (16, 17)]
        (source / f"train.{lang}").write_text("".join(lines), encoding="utf-8")
    task = _task(source=str(source), test_source=str(NEWSTEST), valid_size=500)
    raw = wmt.raw(task, None, tmp_path / "data")
    data = prepare_translation(
        raw,
        data_dir=tmp_path / "data",
        name="wmt17",
        settings=task,
        vocab_size=8000,
        max_len=256,
        spm_max_sentences=5000,
    )
    assert len(data.splits["test"]) == 3003 and len(data.splits["valid"]) == 500
    decoded = [data.tokenizer.decode(src) for src, _ in data.splits["test"]]
    sources = [en for en, _ in raw["test"]]
    assert corpus_bleu(decoded, sources).score > 99  # only characters never seen are lost


def test_the_task_registry_builds_wmt17_from_local_files(tmp_path, make_cfg):
    from idistill.data.tasks import load_task

    source = _write(tmp_path / "src", "train", _corpus(300))
    _write(source, "test", _corpus(7))
    cfg = make_cfg(
        ["task=wmt17", f"task.source={source}", "task.valid_size=20", "task.vocab_size=200"]
    )
    task = dict(cfg.task)
    data = load_task({**task, "spm_max_sentences": 400}, cfg.lang, tmp_path / "data")
    assert [len(data.splits[s]) for s in ("train", "valid", "test")] == [280, 20, 7]
    assert data.references["test"] == [de for _, de in _corpus(7)]  # En->De: German references
    assert data.tokenizer.decode(data.splits["test"][3][1].tolist()) == "der Satz Nummer 3 ."
