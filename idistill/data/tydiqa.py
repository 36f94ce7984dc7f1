"""TyDiQA-GoldP, extractive QA, zero-shot cross-lingual (paper Table 5).

Train on the English training set, evaluate SQuAD-style F1 / exact match on the dev sets of
the 9 languages. Files (SQuAD v1.1 json), as XTREME distributes them:

    <source>/tydiqa.goldp.en.train.json, tydiqa.goldp.<lang>.dev.json
    (XTREME's own names, tydiqa.en.train.json / tydiqa.<lang>.dev.json, are found too)

Without `task.source` the data comes from `datasets` (google-research-datasets/tydiqa,
secondary_task = GoldP), split by the language prefix of the question ids, as XTREME does.

Features: question + a window of the context, `[CLS] question [SEP] context [SEP]`, at most
`max_length` sub-tokens; windows start every `doc_stride` context sub-tokens (BERT's and
XTREME's run_squad meaning of doc_stride: the step between windows, not their overlap), the
question cut to `max_query_length` sub-tokens. The answer's start/end sub-tokens, or 0/0 (the
first token) when the answer is not wholly inside the window. `context_mask` is 1 on the
context and on position 0: the positions where the span head may point, and the positions the
divergence is taken over.

Scoring: for every question, the best (start logit + end logit) span over all its windows,
among the `n_best` starts and ends of each window, end >= start, at most `max_answer_length`
sub-tokens; its text is the context's characters between the two sub-tokens' offsets. Then F1
and exact match as the SQuAD v1.1 script computes them (lowercase, ASCII punctuation and
English articles removed, whitespace tokens), which is what XTREME uses for TyDiQA-GoldP
(its MLQA-specific normalization is used for MLQA only).
"""

from __future__ import annotations

import collections
import json
import logging
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from idistill.config import ConfigError
from idistill.data.cache import cached
from idistill.data.crosslingual import check_source, offline_hint, origin
from idistill.data.features import (
    load_columns,
    require_fast,
    save_columns,
    tokenizer_key,
)
from idistill.data.nlu import EvalSet, NLUData
from idistill.data.parallel_text import DataSourceError, read_text

log = logging.getLogger(__name__)

LANGS = ("ar", "bn", "en", "fi", "id", "ko", "ru", "sw", "te")
# TyDi QA question ids start with the language's English name: "english-123..."
LANG_NAMES = {
    "ar": "arabic",
    "bn": "bengali",
    "en": "english",
    "fi": "finnish",
    "id": "indonesian",
    "ko": "korean",
    "ru": "russian",
    "sw": "swahili",
    "te": "telugu",
}
HF_DATASET = {"path": "google-research-datasets/tydiqa", "name": "secondary_task"}
HF_SPLIT = {"train": "train", "dev": "validation"}
FORMAT = 1  # bump when the cached features change


@dataclass
class Example:
    """One question: its id, question, context, and gold answers as (text, character start)."""

    id: str
    question: str
    context: str
    answers: list[tuple[str, int]]


FILES = "TyDiQA-GoldP SQuAD json files: tydiqa.goldp.en.train.json, tydiqa.goldp.<lang>.dev.json"


def _file(folder: Path, split: str, lang: str) -> Path | None:
    """The file of `split` in `lang` in folder, under either name XTREME uses; None if absent."""
    for name in (f"tydiqa.goldp.{lang}.{split}.json", f"tydiqa.{lang}.{split}.json"):
        if (folder / name).is_file():
            return folder / name
    return None


def head(task: dict[str, Any]) -> str:
    """An answer span: the span head."""
    return "span"


def check(task: dict[str, Any]) -> None:
    """Refuse settings that cannot load, before any work starts (reads no data)."""
    for key in ("doc_stride", "max_query_length", "max_answer_length", "n_best"):
        if task[key] < 1:
            raise ConfigError(f"task.{key} must be >= 1 (got {task[key]})")
    room = task["max_query_length"] + 8  # the question, special tokens and some context
    if task["max_length"] < room:
        raise ConfigError(
            f"task.max_length must be >= task.max_query_length + 8 = {room} (got "
            f"{task['max_length']})"
        )
    if not task.get("source"):
        unknown = [x for x in [task["train_lang"], *task["eval_langs"]] if x not in LANG_NAMES]
        if unknown:
            raise ConfigError(
                f"TyDiQA-GoldP has no language {', '.join(unknown)} (languages: {', '.join(LANGS)})"
            )

    def missing(folder: Path, train_lang: str, langs: list[str]) -> list[str]:
        needed = [("train", train_lang)] + [("dev", lang) for lang in langs]
        return [f"tydiqa.goldp.{x}.{s}.json" for s, x in needed if _file(folder, s, x) is None]

    check_source(task, "TyDiQA-GoldP", FILES, missing)


# ---- reading


def read_squad(path: Path) -> list[Example]:
    """The questions of a SQuAD v1.1 json file, in file order."""
    try:
        data = json.loads(read_text(path))["data"]
        return [
            Example(
                qa["id"],
                qa["question"],
                paragraph["context"],
                [(a["text"], int(a["answer_start"])) for a in qa["answers"]],
            )
            for article in data
            for paragraph in article["paragraphs"]
            for qa in paragraph["qas"]
        ]
    except (ValueError, KeyError, TypeError) as e:
        raise DataSourceError(
            f"{path} is not SQuAD v1.1 json ({type(e).__name__}: {e}): expected data > "
            f"paragraphs > context and qas > id, question, answers > text, answer_start"
        ) from e


def _hf_examples(split: str, lang: str) -> list[Example]:
    try:
        import datasets

        rows = datasets.load_dataset(**HF_DATASET, split=HF_SPLIT[split])
    except Exception as e:  # offline, a hub error: one actionable message
        raise DataSourceError(
            f"TyDiQA-GoldP {split} could not be loaded from {HF_DATASET['path']} with `datasets` "
            f"({type(e).__name__}: {e}). Offline? {offline_hint(FILES)}"
        ) from e
    prefix = f"{LANG_NAMES[lang]}-"
    return [
        Example(
            r["id"],
            r["question"],
            r["context"],
            list(zip(r["answers"]["text"], map(int, r["answers"]["answer_start"]), strict=True)),
        )
        for r in rows
        if r["id"].startswith(prefix)
    ]


def examples(task: dict[str, Any], split: str, lang: str) -> list[Example]:
    """The questions of `split` in `lang`, from task.source or `datasets`."""
    if not task.get("source"):
        return _hf_examples(split, lang)
    path = _file(Path(str(task["source"])).expanduser(), split, lang)
    if path is None:
        raise DataSourceError(f"task.source={task['source']} has no {split} file for {lang}")
    return read_squad(path)


# ---- windows over the context


def _questions(exs: list[Example], tokenizer: Any, max_query_length: int) -> list[str]:
    """Questions without leading spaces, cut after `max_query_length` sub-tokens."""
    questions = [ex.question.lstrip() for ex in exs]
    enc = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    for i, offsets in enumerate(enc["offset_mapping"]):
        if len(offsets) > max_query_length:
            questions[i] = questions[i][: offsets[max_query_length - 1][1]]
    return questions


def answer_tokens(offsets, first: int, last: int, start: int, end: int) -> tuple[int, int]:
    """(start, end) sub-token of the answer at characters [start, end) in a window whose
    context is sub-tokens first..last; (0, 0) if the answer is not wholly inside it."""
    if start < offsets[first][0] or end > offsets[last][1]:
        return 0, 0
    s = first
    while s < last and offsets[s][1] <= start:  # the first sub-token that ends after `start`
        s += 1
    e = last
    while e > s and offsets[e][0] >= end:  # the last one that begins before `end`
        e -= 1
    return s, e


def encode(
    exs: list[Example], tokenizer: Any, max_length: int, doc_stride: int, max_query_length: int
) -> dict[str, list[list[int]]]:
    """Columns of the windows, ordered by example:

    input_ids, token_type_ids (if the tokenizer has them), context_mask  per sub-token
    positions   [start, end] of the first gold answer, [0, 0] outside the window
    example     [index of the window's question in `exs`]
    char_start, char_end   each sub-token's character span in the context, -1 off the context
    """
    questions = _questions(exs, tokenizer, max_query_length)
    q_lens = [len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]]
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    by_len: dict[int, list[int]] = collections.defaultdict(list)
    for i, n in enumerate(q_lens):
        by_len[n].append(i)
    per_example: list[list[dict[str, list[int]]]] = [[] for _ in exs]
    for q_len, members in by_len.items():
        room = max_length - q_len - specials  # context sub-tokens in a window
        enc = tokenizer(
            [questions[i] for i in members],
            [exs[i].context for i in members],
            truncation="only_second",
            max_length=max_length,
            stride=max(0, room - doc_stride),  # the tokenizer's stride is the overlap
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        for w, sample in enumerate(enc["overflow_to_sample_mapping"]):
            index = members[sample]
            ex = exs[index]
            offsets = enc["offset_mapping"][w]
            in_context = [sid == 1 for sid in enc.sequence_ids(w)]
            first, last = in_context.index(True), len(in_context) - 1 - in_context[::-1].index(True)
            text, char = ex.answers[0] if ex.answers else ("", -1)
            s, e = answer_tokens(offsets, first, last, char, char + len(text)) if text else (0, 0)
            window = {
                "input_ids": list(enc["input_ids"][w]),
                "context_mask": [int(c or t == 0) for t, c in enumerate(in_context)],
                "positions": [s, e],
                "example": [index],
                "char_start": [o[0] if c else -1 for o, c in zip(offsets, in_context, strict=True)],
                "char_end": [o[1] if c else -1 for o, c in zip(offsets, in_context, strict=True)],
            }
            if "token_type_ids" in enc:
                window["token_type_ids"] = list(enc["token_type_ids"][w])
            per_example[index].append(window)
    windows = [w for ws in per_example for w in ws]
    return {key: [w[key] for w in windows] for key in (windows[0] if windows else {})}


# ---- SQuAD v1.1 scoring, written from its definition


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the normalized answers are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """F1 of the bags of normalized whitespace tokens (0 when they share none)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: dict[str, str], golds: dict[str, list[str]]) -> dict[str, float]:
    """Mean over questions of the best EM / F1 against any gold answer, x100."""
    if not golds:
        return {"exact_match": 0.0, "f1": 0.0}
    em = f1 = 0.0
    for qid, answers in golds.items():
        pred = predictions.get(qid, "")
        em += max((exact_match(pred, a) for a in answers), default=0.0)
        f1 += max((token_f1(pred, a) for a in answers), default=0.0)
    return {"exact_match": 100.0 * em / len(golds), "f1": 100.0 * f1 / len(golds)}


def best_span(
    logits: np.ndarray,
    char_start: list[int],
    char_end: list[int],
    n_best: int,
    max_answer_length: int,
) -> tuple[float, int, int] | None:
    """(start + end logit, first char, end char) of the best context span of one window."""
    logits = np.asarray(logits, dtype=np.float64)  # [T, 2]
    context = np.flatnonzero(np.asarray(char_start) >= 0)  # [C]
    if len(context) == 0:
        return None
    starts = context[np.argsort(-logits[context, 0], kind="stable")[:n_best]]
    ends = context[np.argsort(-logits[context, 1], kind="stable")[:n_best]]
    best = None
    for s in starts.tolist():
        for e in ends.tolist():
            if e < s or e - s + 1 > max_answer_length:
                continue
            score = logits[s, 0] + logits[e, 1]
            if best is None or score > best[0]:
                best = (float(score), char_start[s], char_end[e])
    return best


def scorer(cols: dict[str, list[list[int]]], exs: list[Example], n_best: int, max_answer: int):
    """score(predictions) for an eval set: one [T, 2] (start, end) logits array per window."""

    def score(predictions: list[Any]) -> dict[str, float]:
        if len(predictions) != len(cols["example"]):
            raise ValueError(f"{len(predictions)} predictions for {len(cols['example'])} windows")
        best: dict[int, tuple[float, int, int]] = {}
        for logits, (index,), starts, ends in zip(
            predictions, cols["example"], cols["char_start"], cols["char_end"], strict=True
        ):
            span = best_span(logits, starts, ends, n_best, max_answer)
            if span is not None and (index not in best or span[0] > best[index][0]):
                best[index] = span
        texts = {ex.id: "" for ex in exs}
        for index, (_, start, end) in best.items():
            # strip: sentencepiece offsets ("▁word") include the space before the word
            texts[exs[index].id] = exs[index].context[start:end].strip()
        return squad_scores(texts, {ex.id: [a for a, _ in ex.answers] for ex in exs})

    return score


# ---- load


def _cache_key(task: dict[str, Any], split: str, lang: str, tok_key: dict, limit) -> dict:
    folder = Path(str(task["source"])).expanduser() if task.get("source") else None
    path = _file(folder, split, lang) if folder else None
    hf = {**HF_DATASET, "split": HF_SPLIT[split], "lang": lang}
    settings = ("max_length", "doc_stride", "max_query_length")
    return {
        "origin": origin(path, hf),
        "split": split,
        "lang": lang,
        "tokenizer": tok_key,
        **{k: task[k] for k in settings},
        "limit": limit,
        "format": FORMAT,
    }


def _encoded(task, split, lang, tokenizer, tok_key, data_dir, limit):
    """(columns, examples) of one split and language, cached."""

    def build(out: Path) -> None:
        exs = examples(task, split, lang)[:limit] if limit else examples(task, split, lang)
        if not exs:
            raise DataSourceError(f"TyDiQA-GoldP {split} {lang} has no questions")
        if split == "train":  # an answer that is not at its offset cannot be trained on
            kept = [ex for ex in exs if _answer_found(ex)]
            if len(kept) < len(exs):
                log.warning(
                    "TyDiQA %s: %d answers not at their offset, left out",
                    lang,
                    len(exs) - len(kept),
                )
            exs = kept
        cols = encode(
            exs, tokenizer, task["max_length"], task["doc_stride"], task["max_query_length"]
        )
        save_columns(out / "features.npz", cols)
        rows = [[ex.id, ex.question, ex.context, ex.answers] for ex in exs]
        (out / "examples.json").write_text(json.dumps(rows, ensure_ascii=False))

    path = cached(
        Path(data_dir), "tydiqa-features", _cache_key(task, split, lang, tok_key, limit), build
    )
    rows = json.loads((path / "examples.json").read_text(encoding="utf-8"))
    exs = [Example(i, q, c, [tuple(a) for a in answers]) for i, q, c, answers in rows]
    return load_columns(path / "features.npz"), exs


def _answer_found(ex: Example) -> bool:
    return bool(ex.answers) and all(ex.context[s : s + len(t)] == t for t, s in ex.answers)


def _features(cols: dict[str, list[list[int]]]) -> list[dict[str, Any]]:
    feats = []
    for i, ids in enumerate(cols["input_ids"]):
        start, end = cols["positions"][i]
        f = {
            "input_ids": ids,
            "attention_mask": [1] * len(ids),
            "start_positions": start,
            "end_positions": end,
            "context_mask": cols["context_mask"][i],
        }
        if "token_type_ids" in cols:
            f["token_type_ids"] = cols["token_type_ids"][i]
        feats.append(f)
    return feats


def load(task: dict[str, Any], tokenizer: Any, data_dir: Path) -> NLUData:
    """Tokenized TyDiQA-GoldP: train on task.train_lang; "dev/<lang>" eval sets."""
    check(task)
    require_fast(tokenizer, task["name"])
    tok_key = tokenizer_key(tokenizer)
    train_lang = task["train_lang"]
    cols, exs = _encoded(
        task, "train", train_lang, tokenizer, tok_key, data_dir, task.get("max_train_examples")
    )
    _log_set(f"train/{train_lang}", cols, exs)
    train = _features(cols)
    evals = {}
    for lang in task["eval_langs"]:
        cols, exs = _encoded(
            task, "dev", lang, tokenizer, tok_key, data_dir, task.get("max_eval_examples")
        )
        _log_set(f"dev/{lang}", cols, exs)
        score = scorer(cols, exs, task["n_best"], task["max_answer_length"])
        evals[f"dev/{lang}"] = EvalSet(_features(cols), score)
    return NLUData(
        head="span",
        num_labels=2,
        train=train,
        evals=evals,
        select_on=f"dev/{train_lang}",
        metric="f1",
    )


def _log_set(name: str, cols: dict, exs: list[Example]) -> None:
    outside = sum(1 for s, e in cols.get("positions", []) if s == 0 and e == 0)
    log.info(
        "TyDiQA %s: %d questions, %d windows (%d without the answer)",
        name,
        len(exs),
        len(cols.get("input_ids", [])),
        outside,
    )
