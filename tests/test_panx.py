"""WikiANN NER (PAN-X, XTREME format): reading, first-sub-token labels, truncation, span F1."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from idistill.config import ConfigError
from idistill.data import panx
from idistill.data.parallel_text import DataSourceError

PANX = Path(__file__).resolve().parents[2] / "shared" / "data" / "panx_xtreme"
CONF = Path(__file__).resolve().parents[1] / "conf" / "task" / "ner.yaml"
needs_panx = pytest.mark.skipif(not PANX.is_dir(), reason=f"shared PAN-X data absent ({PANX})")


def _task(**overrides):
    task = OmegaConf.to_container(OmegaConf.load(CONF))
    task.update(source=str(PANX), eval_langs=["en", "de", "fr"], max_train_examples=300)
    task["max_eval_examples"] = 200
    return {**task, **overrides}


def _one_hot(labels: list[int]) -> np.ndarray:
    """Logits [T, C] that predict each labelled position's tag (O elsewhere)."""
    return np.eye(len(panx.LABELS))[[max(label, 0) for label in labels]]


# ---- reading


@needs_panx
def test_reads_xtreme_files_with_tags_and_unlabelled_test_files():
    train = panx.read_xtreme(PANX / "train-en.tsv", "en")
    assert len(train) == 20000
    assert train[0] == (
        ["R.H.", "Saunders", "(", "St.", "Lawrence", "River", ")", "(", "968", "MW", ")"],
        ["B-ORG", "I-ORG", "O", "B-ORG", "I-ORG", "I-ORG", "O", "O", "O", "O", "O"],
    )
    assert len(panx.read_xtreme(PANX / "dev-de.tsv", "de")) == 10000
    test = panx.read_xtreme(PANX / "test-de.tsv", "de")
    assert len(test) == 10000 and test[0][1] is None  # XTREME hides the test tags


def test_lang_prefix_is_removed_only_when_every_word_has_it(tmp_path):
    prefixed = tmp_path / "dev-en.tsv"
    prefixed.write_text("en:Paris\tB-LOC\nen:is\tO\n\nen:en:x\tO\n")
    assert panx.read_xtreme(prefixed, "en") == [
        (["Paris", "is"], ["B-LOC", "O"]),
        (["en:x"], ["O"]),
    ]
    plain = tmp_path / "dev-de.tsv"
    plain.write_text("en:wiki\tO\nBerlin\tB-LOC\n")
    assert panx.read_xtreme(plain, "en") == [(["en:wiki", "Berlin"], ["O", "B-LOC"])]


def test_unknown_tag_or_mixed_lines_name_the_file_and_line(tmp_path):
    bad = tmp_path / "dev-en.tsv"
    bad.write_text("Paris\tB-LOC\nis\tB-MISC\n")
    with pytest.raises(DataSourceError, match=r"dev-en.tsv:2: unknown tag 'B-MISC'"):
        panx.read_xtreme(bad, "en")
    bad.write_text("Paris\tB-LOC\nis\n")
    with pytest.raises(DataSourceError, match=r"dev-en.tsv:2: expected word<TAB>tag"):
        panx.read_xtreme(bad, "en")


# ---- first sub-token labels


@needs_panx
def test_only_the_first_sub_token_of_a_word_is_labelled(minilm_tokenizer):
    sents = panx.read_xtreme(PANX / "train-en.tsv", "en")[:2]
    cols = panx.encode(sents, minilm_tokenizer, 128)
    tokens = minilm_tokenizer.convert_ids_to_tokens(cols["input_ids"][1])
    pieces = list(zip(tokens, cols["labels"][1], strict=True))
    # checked by hand: ; ' '' Anders Lindström '' '  ->  B-PER on "anders", I-PER on "lin" only
    OUT, B_PER, I_PER = (panx.LABEL_ID[t] for t in ("O", "B-PER", "I-PER"))
    assert pieces == [
        ("[CLS]", -100),
        (";", OUT),
        ("'", OUT),
        ("'", OUT),
        ("'", -100),
        ("anders", B_PER),
        ("lin", I_PER),
        ("##ds", -100),
        ("##trom", -100),
        ("'", OUT),
        ("'", -100),
        ("'", OUT),
        ("[SEP]", -100),
    ]
    assert cols["label_words"][1] == list(range(7))


def test_first_pieces_with_an_xlmr_style_tokenizer(xlmr_style_tokenizer):
    sents = [(["(", "Saunders", "River", ")"], ["O", "B-LOC", "I-LOC", "O"])]
    cols = panx.encode(sents, xlmr_style_tokenizer, 128)
    tokens = xlmr_style_tokenizer.convert_ids_to_tokens(cols["input_ids"][0])
    labels = cols["labels"][0]
    assert (tokens[0], labels[0]) == ("<s>", -100) and (tokens[-1], labels[-1]) == ("</s>", -100)
    firsts = [t for t, label in enumerate(labels) if label != -100]
    assert [labels[t] for t in firsts] == [panx.LABEL_ID[t] for t in sents[0][1]]
    assert all(
        tokens[t].startswith("\u2581") for t in firsts
    )  # each word's "▁" piece (or "▁" alone)
    assert len(tokens) > len(firsts) + 2  # and there are continuation pieces, at -100


@needs_panx
def test_minus_100_on_special_and_continuation_sub_tokens(minilm_tokenizer):
    sents = panx.read_xtreme(PANX / "dev-de.tsv", "de")[:300]
    cols = panx.encode(sents, minilm_tokenizer, 128)
    enc = minilm_tokenizer(
        [w for w, _ in sents], is_split_into_words=True, truncation=True, max_length=128
    )
    for i, (_, tags) in enumerate(sents):
        word_ids, labels = enc.word_ids(i), cols["labels"][i]
        assert len(labels) == len(word_ids) == len(cols["input_ids"][i])
        firsts = [t for t, w in enumerate(word_ids) if w is not None and w != word_ids[t - 1]]
        assert [t for t, label in enumerate(labels) if label != -100] == firsts
        assert [labels[t] for t in firsts] == [panx.LABEL_ID[tags[word_ids[t]]] for t in firsts]
        assert labels[0] == labels[-1] == -100  # [CLS], [SEP]


def test_a_word_without_sub_tokens_is_predicted_o(minilm_tokenizer):
    sents = [(["Anna", "\u200b", "Berlin"], ["B-PER", "O", "B-LOC"])]
    cols = panx.encode(sents, minilm_tokenizer, 128)
    assert cols["label_words"][0] == [0, 2]  # the zero-width space has no sub-token
    assert panx.scorer(cols)([_one_hot(cols["labels"][0])])["f1"] == 100.0


def test_long_sentences_are_truncated_and_cut_words_count_as_o(minilm_tokenizer):
    words = ["Anna"] + ["went"] * 20 + ["Berlin"]
    tags = ["B-PER"] + ["O"] * 20 + ["B-LOC"]
    cols = panx.encode([(words, tags)], minilm_tokenizer, max_length=8)
    assert len(cols["input_ids"][0]) == 8 and cols["truncated"] == [[1]]
    assert cols["label_words"][0] == list(range(6))  # [CLS] + 6 words + [SEP]
    scores = panx.scorer(cols)([_one_hot(cols["labels"][0])])
    # gold: PER, LOC; predicted: PER only -> precision 100, recall 50, F1 66.67
    assert scores["precision"] == 100.0 and scores["recall"] == 50.0
    assert scores["f1"] == pytest.approx(200 / 3)
    assert panx.encode([(words, tags)], minilm_tokenizer, 128)["truncated"] == [[0]]


# ---- span F1


def test_span_f1_of_a_known_partial_prediction():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "O", "O", "B-LOC"], ["O", "B-ORG"]]
    # gold entities PER[0:2] LOC[3] ORG[0]; predicted PER[0] LOC[3] ORG[1]: 1 of 3 right
    scores = panx.span_scores(gold, pred)
    assert scores["precision"] == pytest.approx(100 / 3)
    assert scores["recall"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(100 / 3)
    assert panx.span_scores(gold, gold)["f1"] == 100.0


@needs_panx
def test_perfect_predictions_score_100_on_real_dev(minilm_tokenizer):
    sents = panx.read_xtreme(PANX / "dev-fr.tsv", "fr")[:1000]
    cols = panx.encode(sents, minilm_tokenizer, 128)
    assert sum(t for (t,) in cols["truncated"]) == 0
    assert panx.scorer(cols)([_one_hot(labels) for labels in cols["labels"]])["f1"] == 100.0
    all_o = [np.eye(len(panx.LABELS))[[0] * len(labels)] for labels in cols["labels"]]
    assert panx.scorer(cols)(all_o)["f1"] == 0.0


# ---- load: eval sets, caching


@needs_panx
def test_load_builds_dev_sets_per_language_and_leaves_unlabelled_test_out(
    minilm_tokenizer, tmp_path, caplog
):
    with caplog.at_level(logging.INFO, logger="idistill"):
        data = panx.load(_task(), minilm_tokenizer, tmp_path)
    assert data.head == "tokens" and data.num_labels == 7 and data.metric == "f1"
    assert data.select_on == "dev/en" and list(data.label_names) == list(panx.LABELS)
    assert list(data.evals) == ["dev/en", "dev/de", "dev/fr"]
    assert "left out: en de fr" in caplog.text  # test-*.tsv hold no tags
    assert len(data.train) == 300 and len(data.evals["dev/de"].features) == 200
    feature = data.train[0]
    assert set(feature) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert len(feature["labels"]) == len(feature["input_ids"]) == len(feature["attention_mask"])
    built = sorted(p.name for p in (tmp_path / "panx-features").iterdir() if p.is_dir())
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="idistill.data.cache"):
        again = panx.load(_task(), minilm_tokenizer, tmp_path)
    assert "building" not in caplog.text
    assert sorted(p.name for p in (tmp_path / "panx-features").iterdir() if p.is_dir()) == built
    assert again.train == data.train
    changed = panx.load(_task(max_length=32, eval_langs=["en"]), minilm_tokenizer, tmp_path)
    assert max(len(f["input_ids"]) for f in changed.train) == 32


# ---- refusals


def test_default_languages_are_xtremes_40():
    assert tuple(OmegaConf.load(CONF).eval_langs) == panx.XTREME_LANGS
    assert len(panx.XTREME_LANGS) == 40


@needs_panx
def test_missing_language_files_are_named_with_the_fix():
    with pytest.raises(ConfigError, match=r"lacks dev-th.tsv.*task.eval_langs"):
        panx.check(_task(eval_langs=["en", "de", "th"]))
    panx.check(_task(eval_langs=[lang for lang in panx.XTREME_LANGS if lang != "th"]))


def test_bad_settings_are_refused_by_name(tmp_path):
    with pytest.raises(ConfigError, match="must include task.train_lang=en"):
        panx.check(_task(eval_langs=["de"]))
    with pytest.raises(ConfigError, match=r"task.eval_splits must be \[dev\]"):
        panx.check(_task(eval_splits=["test"]))
    with pytest.raises(ConfigError, match="task.max_length must be >= 8"):
        panx.check(_task(max_length=4))
    with pytest.raises(ConfigError, match="task.max_train_examples must be >= 1"):
        panx.check(_task(max_train_examples=0))
    with pytest.raises(ConfigError, match="is not a directory"):
        panx.check(_task(source=str(tmp_path / "nope")))


def test_offline_without_source_names_both_overrides(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if importlib.util.find_spec("datasets") is None:
        match = "pip install 'idistill\\[nlu\\]'"
    else:
        match = "offline"
    with pytest.raises(ConfigError, match=match) as err:
        panx.check(_task(source=None))
    assert "task.source=" in str(err.value) and "model.name_or_path=" in str(err.value)


def test_a_failed_download_says_how_to_run_offline(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def unreachable(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(DataSourceError, match="no network") as err:
        panx.sentences(_task(source=None), "dev", "de")
    assert "task.source=" in str(err.value) and "model.name_or_path=" in str(err.value)


def test_online_rows_become_sentences_with_tag_names(monkeypatch):
    datasets = pytest.importorskip("datasets")
    names = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
    features = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names)),
        }
    )
    rows = {"tokens": [["Anna", "lebt", "in", "Berlin"]], "ner_tags": [[1, 0, 0, 5]]}
    calls = []

    def load_dataset(path, name, split):
        calls.append((path, name, split))
        return datasets.Dataset.from_dict(rows, features=features)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    got = panx.sentences(_task(source=None), "dev", "de")
    assert got == [(["Anna", "lebt", "in", "Berlin"], ["B-PER", "O", "O", "B-LOC"])]
    assert calls == [("unimelb-nlp/wikiann", "de", "validation")]
