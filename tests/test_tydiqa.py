"""TyDiQA-GoldP: SQuAD json, windows over long contexts, answer positions, SQuAD v1.1 F1/EM."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from idistill.config import ConfigError
from idistill.data import tydiqa
from idistill.data.parallel_text import DataSourceError
from idistill.data.tydiqa import Example

TYDIQA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tydiqa_goldp"
CONF = Path(__file__).resolve().parents[1] / "conf" / "task" / "tydiqa.yaml"
needs_tydiqa = pytest.mark.skipif(
    not TYDIQA.is_dir(), reason=f"shared TyDiQA-GoldP data absent ({TYDIQA})"
)
DEV_SIZES = {  # questions per dev set, as XTREME's tydiqa.<lang>.dev.json
    "ar": 921,
    "bn": 113,
    "en": 440,
    "fi": 782,
    "id": 565,
    "ko": 276,
    "ru": 812,
    "sw": 499,
    "te": 669,
}


@pytest.fixture(scope="module")
def english_train(minilm_tokenizer):
    if not TYDIQA.is_dir():
        pytest.skip(f"shared TyDiQA-GoldP data absent ({TYDIQA})")
    exs = tydiqa.read_squad(TYDIQA / "tydiqa.goldp.en.train.json")
    return exs, tydiqa.encode(exs, minilm_tokenizer, 384, 128, 64)


def _task(**overrides):
    task = OmegaConf.to_container(OmegaConf.load(CONF))
    task.update(source=str(TYDIQA), max_train_examples=100, max_eval_examples=40)
    return {**task, **overrides}


def _oracle(cols) -> list[np.ndarray]:
    """Logits [T, 2] that point at each window's gold start and end."""
    out = []
    for ids, (start, end) in zip(cols["input_ids"], cols["positions"], strict=True):
        logits = np.zeros((len(ids), 2))
        logits[start, 0] = logits[end, 1] = 10.0
        out.append(logits)
    return out


# ---- reading


@needs_tydiqa
def test_reads_the_shared_squad_files():
    train = tydiqa.read_squad(TYDIQA / "tydiqa.goldp.en.train.json")
    assert len(train) == 3696 and all(len(ex.answers) == 1 for ex in train)
    for lang, size in DEV_SIZES.items():
        assert len(tydiqa.read_squad(TYDIQA / f"tydiqa.goldp.{lang}.dev.json")) == size
    ex = tydiqa.read_squad(TYDIQA / "tydiqa.goldp.en.dev.json")[0]
    assert ex.question == "What is a way to increase your wound healing speed?"
    assert ex.answers == [("Wound care", 0)] and ex.context.startswith("Wound care encourages")


def test_a_split_without_questions_is_refused(tmp_path, minilm_tokenizer):
    for name in ("tydiqa.goldp.en.train.json", "tydiqa.goldp.en.dev.json"):
        (tmp_path / name).write_text('{"data": []}')
    task = _task(source=str(tmp_path), eval_langs=["en"])
    with pytest.raises(DataSourceError, match="train en has no questions"):
        tydiqa.load(task, minilm_tokenizer, tmp_path / "cache")


def test_a_file_that_is_not_squad_json_is_named(tmp_path):
    bad = tmp_path / "tydiqa.goldp.en.dev.json"
    bad.write_text('{"data": [{"title": "x"}]}')
    with pytest.raises(DataSourceError, match="is not SQuAD v1.1 json"):
        tydiqa.read_squad(bad)


# ---- windows and answer positions


def test_english_train_windows_cover_every_answer_and_map_back_to_its_text(english_train):
    exs, cols = english_train
    assert max(len(ids) for ids in cols["input_ids"]) <= 384
    found, exact = set(), set()
    for (start, end), (i,), chars, ends in zip(
        cols["positions"], cols["example"], cols["char_start"], cols["char_end"], strict=True
    ):
        if (start, end) == (0, 0):
            continue
        assert 0 < start <= end
        found.add(i)
        if exs[i].context[chars[start] : ends[end]] == exs[i].answers[0][0]:
            exact.add(i)
    assert len(found) == len(exs)  # every answer lies wholly inside one of its windows
    # the rest are gold answers cut mid-word in the data ("1960" of "1960s", "Imag" of "Image")
    assert len(exact) >= 0.985 * len(exs)


def test_windows_start_doc_stride_context_tokens_apart(english_train):
    exs, cols = english_train
    by_example: dict[int, list[list[int]]] = {}
    for (i,), chars in zip(cols["example"], cols["char_start"], strict=True):
        by_example.setdefault(i, []).append([c for c in chars if c >= 0])
    long = [ws for ws in by_example.values() if len(ws) > 1]
    assert len(long) > 50
    for windows in long:
        for this, following in zip(windows, windows[1:], strict=False):
            assert following[0] == this[128]  # the 129th context token starts the next window


def test_context_mask_is_the_context_and_position_0(english_train):
    _, cols = english_train
    for types, mask, chars in zip(
        cols["token_type_ids"], cols["context_mask"], cols["char_start"], strict=True
    ):
        # BERT: segment 1 is the context and the final [SEP]
        expected = [int(t == 0 or (types[t] == 1 and t < len(types) - 1)) for t in range(len(mask))]
        assert mask == expected
        assert [t for t, c in enumerate(chars) if c >= 0] == [
            t for t in range(1, len(mask)) if mask[t]
        ]


def test_answer_outside_a_window_points_at_position_0(minilm_tokenizer):
    context = " ".join(f"word{i}" for i in range(200)) + " the answer is Paris ."
    ex = Example("q1", "Where?", context, [("Paris", context.index("Paris"))])
    cols = tydiqa.encode([ex], minilm_tokenizer, max_length=64, doc_stride=32, max_query_length=8)
    assert len(cols["input_ids"]) > 2
    positions = [tuple(p) for p in cols["positions"]]
    inside = [p for p in positions if p != (0, 0)]
    assert positions[0] == (0, 0) and len(inside) >= 1
    for w, (start, end) in enumerate(positions):
        if (start, end) != (0, 0):
            assert context[cols["char_start"][w][start] : cols["char_end"][w][end]] == "Paris"


def test_long_questions_are_cut_to_max_query_length(minilm_tokenizer):
    question = "why " * 50 + "?"
    ex = Example("q", question, "because it is so .", [("because", 0)])
    cols = tydiqa.encode([ex], minilm_tokenizer, max_length=64, doc_stride=16, max_query_length=10)
    assert cols["token_type_ids"][0].count(0) == 1 + 10 + 1  # [CLS] question [SEP]
    assert tuple(cols["positions"][0]) == (12, 12)


@needs_tydiqa
def test_xlmr_layout_windows_and_answers(xlmr_style_tokenizer):
    exs = tydiqa.read_squad(TYDIQA / "tydiqa.goldp.en.dev.json")
    cols = tydiqa.encode(exs, xlmr_style_tokenizer, 256, 64, 64)
    assert "token_type_ids" not in cols  # XLM-R has none: the context is found by sequence ids
    windows: dict[int, list[list[int]]] = {}
    exact = set()
    for ids, mask, (start, end), (i,), chars, ends in zip(
        cols["input_ids"],
        cols["context_mask"],
        cols["positions"],
        cols["example"],
        cols["char_start"],
        cols["char_end"],
        strict=True,
    ):
        assert xlmr_style_tokenizer.convert_ids_to_tokens(ids[:1]) == ["<s>"]
        assert mask == [int(t == 0 or c >= 0) for t, c in enumerate(chars)]
        windows.setdefault(i, []).append([c for c in chars if c >= 0])
        # "▁word" offsets start at the space before the word
        if (start, end) != (0, 0) and exs[i].context[chars[start] : ends[end]].strip() == (
            exs[i].answers[0][0]
        ):
            exact.add(i)
    assert len(exact) >= 0.95 * len(exs)
    for ws in windows.values():
        for this, following in zip(ws, ws[1:], strict=False):
            assert following[0] == this[64]  # 4 special tokens in a pair, as XLM-R
    scores = tydiqa.scorer(cols, exs, 20, 10_000)(_oracle(cols))
    assert scores["exact_match"] >= 95.0


# ---- SQuAD v1.1 scoring


def test_normalization_and_token_f1_by_hand():
    assert tydiqa.normalize_answer("  The Cat, sat!\tOn a mat. ") == "cat sat on mat"
    assert tydiqa.exact_match("the Mat", "mat.") == 1.0
    # "cat sat" vs "cat sat on mat": precision 2/2, recall 2/4 -> F1 2/3
    assert tydiqa.token_f1("the cat sat", "cat sat on the mat") == pytest.approx(2 / 3)
    assert tydiqa.token_f1("dog", "cat") == 0.0
    assert tydiqa.token_f1("Cat", "cat") == 1.0


def test_squad_scores_take_the_best_gold_answer_per_question():
    golds = {"a": ["Paris", "the city of Paris"], "b": ["1990"], "c": ["red car"]}
    preds = {"a": "city of Paris", "b": "in 1990", "c": ""}
    scores = tydiqa.squad_scores(preds, golds)
    # a: EM 1 ("city of paris" == normalized 2nd gold), b: EM 0, F1 2/3, c: 0
    assert scores["exact_match"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)


def test_best_span_keeps_to_the_context_the_order_and_the_length_limit():
    char_start = [-1, -1, 0, 4, 8, 12, -1]  # [CLS] q [SEP] c c c c [SEP]
    char_end = [-1, -1, 3, 7, 11, 15, -1]

    def span(points, max_answer_length=30):
        logits = np.full((7, 2), -10.0)
        for (t, side), value in points.items():
            logits[t, side] = value
        return tydiqa.best_span(logits, char_start, char_end, 20, max_answer_length)

    answer = {(3, 0): 1.0, (4, 1): 1.0}  # "bbb ccc", score 2
    assert span(answer) == (2.0, 4, 11)
    assert span({**answer, (1, 0): 9.0, (1, 1): 9.0}) == (2.0, 4, 11)  # not in the question
    assert span({**answer, (5, 0): 5.0, (2, 1): 5.0}) == (2.0, 4, 11)  # no end before start
    long = {(2, 0): 3.0, (5, 1): 3.0, (3, 0): 1.5, (4, 1): 1.0}  # 4 sub-tokens score 6
    assert span(long, max_answer_length=4) == (6.0, 0, 15)
    assert span(long, max_answer_length=3) == (4.5, 4, 15)


def test_the_best_window_wins_across_windows():
    context = "aaa bbb ccc ddd"
    ex = Example("q", "?", context, [("ddd", 12)])
    cols = {
        "example": [[0], [0]],
        "char_start": [[-1, 0, 4, 8], [-1, 4, 8, 12]],
        "char_end": [[-1, 3, 7, 11], [-1, 7, 11, 15]],
    }
    first = np.array([[0, 0], [4, 4], [0, 0], [0, 0]])  # "aaa" with score 8
    second = np.array([[0, 0], [0, 0], [0, 0], [5, 5]])  # "ddd" with score 10
    assert tydiqa.scorer(cols, [ex], 20, 30)([first, second]) == {"exact_match": 100.0, "f1": 100.0}
    assert tydiqa.scorer(cols, [ex], 20, 30)([first, second * 0]) == {"exact_match": 0.0, "f1": 0.0}


@needs_tydiqa
def test_oracle_logits_score_nearly_100_on_english_dev(minilm_tokenizer):
    exs = tydiqa.read_squad(TYDIQA / "tydiqa.goldp.en.dev.json")
    cols = tydiqa.encode(exs, minilm_tokenizer, 384, 128, 64)
    scores = tydiqa.scorer(cols, exs, 20, 10_000)(_oracle(cols))
    assert scores["f1"] > 99.5 and scores["exact_match"] > 99.0  # 2 gold answers cut mid-word
    limited = tydiqa.scorer(cols, exs, 20, 30)(_oracle(cols))  # longer gold answers are cut
    assert limited["f1"] < scores["f1"]


# ---- load, caching, refusals


@needs_tydiqa
def test_load_gives_a_dev_set_per_language_and_caches(minilm_tokenizer, tmp_path, caplog):
    data = tydiqa.load(_task(), minilm_tokenizer, tmp_path)
    assert data.head == "span" and data.num_labels == 2 and data.metric == "f1"
    assert data.select_on == "dev/en"
    assert list(data.evals) == [f"dev/{lang}" for lang in DEV_SIZES]
    feature = data.train[0]
    assert set(feature) == {
        "input_ids",
        "attention_mask",
        "token_type_ids",
        "start_positions",
        "end_positions",
        "context_mask",
    }
    scores = data.evals["dev/sw"].score(
        [np.zeros((len(f["input_ids"]), 2)) for f in data.evals["dev/sw"].features]
    )
    assert set(scores) == {"exact_match", "f1"} and 0 <= scores["f1"] <= 100
    with caplog.at_level(logging.INFO, logger="idistill.data.cache"):
        again = tydiqa.load(_task(), minilm_tokenizer, tmp_path)
    assert "building" not in caplog.text and again.train == data.train


def test_bad_settings_are_refused_by_name(tmp_path):
    with pytest.raises(ConfigError, match="must include task.train_lang=en"):
        tydiqa.check(_task(eval_langs=["sw"]))
    with pytest.raises(ConfigError, match="task.doc_stride must be >= 1"):
        tydiqa.check(_task(doc_stride=0))
    with pytest.raises(ConfigError, match="task.max_length must be >= task.max_query_length"):
        tydiqa.check(_task(max_length=40))
    with pytest.raises(ConfigError, match="is not a directory"):
        tydiqa.check(_task(source=str(tmp_path / "nope")))
    with pytest.raises(ConfigError, match="lacks tydiqa.goldp.en.train.json"):
        tydiqa.check(_task(source=str(tmp_path)))
    with pytest.raises(ConfigError, match="has no language xx"):
        tydiqa.check(_task(source=None, eval_langs=["en", "xx"]))


def test_offline_without_source_names_both_overrides(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ConfigError) as err:
        tydiqa.check(_task(source=None))
    assert "task.source=" in str(err.value) and "model.name_or_path=" in str(err.value)


def test_online_rows_are_split_by_the_language_of_their_ids(monkeypatch):
    datasets = pytest.importorskip("datasets")
    rows = [
        {
            "id": f"{name}-{i}",
            "title": "t",
            "context": "Nairobi ni mji mkuu.",
            "question": "Mji mkuu?",
            "answers": {"text": ["Nairobi"], "answer_start": [0]},
        }
        for i, name in enumerate(["english", "swahili", "swahili"])
    ]
    calls = []

    def load_dataset(path, name, split):
        calls.append((path, name, split))
        return rows

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    got = tydiqa.examples(_task(source=None), "dev", "sw")
    assert [ex.id for ex in got] == ["swahili-1", "swahili-2"]
    assert got[0].answers == [("Nairobi", 0)] and got[0].question == "Mji mkuu?"
    assert calls == [("google-research-datasets/tydiqa", "secondary_task", "validation")]
