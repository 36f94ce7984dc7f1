"""WikiANN NER (PAN-X, XTREME's format) for zero-shot cross-lingual transfer (paper Table 5).

Train on one language (English), evaluate entity-level span F1 (seqeval) on the dev and test
sets of every target language. Files, as XTREME's preprocessing writes them:

    <source>/train-en.tsv, dev-<lang>.tsv, test-<lang>.tsv
    one word a line, "word<TAB>tag" (IOB2: O, B-/I-PER, ORG, LOC), a blank line between
    sentences; the raw PAN-X files' "<lang>:" prefix on every word is removed if present.

XTREME's release hides the test labels (test files hold words only): such a test set is left
out with a warning. Without `task.source` the data comes from `datasets` (unimelb-nlp/wikiann,
the same Rahimi et al. splits, with test labels).

Sub-tokens: only the first sub-token of each word carries its tag; the other sub-tokens and the
special tokens get -100 (the loop leaves them out of the loss and, by default, out of the
divergence). A sentence longer than `task.max_length` sub-tokens is truncated, as XTREME's
run_tag.py does; unlike XTREME, its cut-off words stay in the gold standard and count as
predicted "O", so truncation can only lower the score (it touches a handful of sentences).
"""

from __future__ import annotations

import json
import logging
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
from idistill.data.parallel_text import DataSourceError, read_lines

log = logging.getLogger(__name__)

# Label ids as in the Hugging Face wikiann dataset, so its ner_tags need no mapping.
LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC")
LABEL_ID = {tag: i for i, tag in enumerate(LABELS)}
# XTREME's 40 PAN-X languages (the paper's NER evaluation set).
# fmt: off
XTREME_LANGS = (
    "af", "ar", "bg", "bn", "de", "el", "en", "es", "et", "eu", "fa", "fi", "fr", "he",
    "hi", "hu", "id", "it", "ja", "jv", "ka", "kk", "ko", "ml", "mr", "ms", "my", "nl",
    "pt", "ru", "sw", "ta", "te", "th", "tl", "tr", "ur", "vi", "yo", "zh",
)
# fmt: on
SPLITS = ("train", "dev", "test")
HF_DATASET = "unimelb-nlp/wikiann"
HF_SPLIT = {"train": "train", "dev": "validation", "test": "test"}
FORMAT = 1  # bump when the cached features change

FILES = "XTREME PAN-X files: train-en.tsv, dev-<lang>.tsv, test-<lang>.tsv"  # for messages

Sentence = tuple[list[str], list[str] | None]  # words, tags (None: an unlabelled test file)


def head(task: dict[str, Any]) -> str:
    """A tag per word: the tokens head."""
    return "tokens"


def check(task: dict[str, Any]) -> None:
    """Refuse settings that cannot load, before any work starts (reads no data)."""
    splits = list(task.get("eval_splits") or [])
    if "dev" not in splits or not set(splits) <= {"dev", "test"}:
        raise ConfigError(f"task.eval_splits must be [dev] or [dev, test] (got {splits})")
    if task["max_length"] < 8:
        raise ConfigError(f"task.max_length must be >= 8 sub-tokens (got {task['max_length']})")

    def missing(folder: Path, train_lang: str, langs: list[str]) -> list[str]:
        needed = [f"train-{train_lang}.tsv"] + [f"dev-{lang}.tsv" for lang in langs]
        return [name for name in needed if not (folder / name).is_file()]

    check_source(task, "WikiANN", FILES, missing)


# ---- reading


def read_xtreme(path: Path, lang: str) -> list[Sentence]:
    """Sentences of an XTREME PAN-X file: "word<TAB>tag" lines (or "word" alone in a test
    file with hidden labels), blank lines between sentences, optional "<lang>:" prefixes."""
    lines = [line.rstrip("\r") for line in read_lines(path)]
    prefix = f"{lang}:"
    words_only = [line for line in lines if line.strip()]
    strip = bool(words_only) and all(line.startswith(prefix) for line in words_only)
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    labelled = None
    for number, line in enumerate([*lines, ""], 1):
        if not line.strip():
            if words:
                sentences.append((words, tags if labelled else None))
            words, tags = [], []
            continue
        fields = line.split("\t")
        if labelled is None:
            labelled = len(fields) >= 2
        if (len(fields) >= 2) != labelled or len(fields) > 2:
            raise DataSourceError(
                f"{path}:{number}: expected {'word<TAB>tag' if labelled else 'a word alone'} like "
                f"the lines before it (got {line!r})"
            )
        word = fields[0][len(prefix) :] if strip else fields[0]
        words.append(word)
        if labelled:
            if fields[1] not in LABEL_ID:
                raise DataSourceError(
                    f"{path}:{number}: unknown tag {fields[1]!r} (PAN-X tags: {', '.join(LABELS)})"
                )
            tags.append(fields[1])
    return sentences


def _hf_sentences(split: str, lang: str) -> list[Sentence]:
    """One split of one language from the Hugging Face wikiann dataset (needs the network)."""
    try:
        import datasets

        rows = datasets.load_dataset(HF_DATASET, lang, split=HF_SPLIT[split])
        names = rows.features["ner_tags"].feature.names
    except Exception as e:  # offline, an unknown language, a hub error: one actionable message
        raise DataSourceError(
            f"WikiANN {lang} {split} could not be loaded from {HF_DATASET} with `datasets` "
            f"({type(e).__name__}: {e}). Offline? {offline_hint(FILES)}"
        ) from e
    return [(list(r["tokens"]), [names[t] for t in r["ner_tags"]]) for r in rows]


def _source_file(task: dict[str, Any], split: str, lang: str) -> Path | None:
    if not task.get("source"):
        return None
    return Path(str(task["source"])).expanduser() / f"{split}-{lang}.tsv"


def sentences(task: dict[str, Any], split: str, lang: str) -> list[Sentence] | None:
    """The sentences of `split` in `lang`, from task.source or `datasets`; None if no file."""
    path = _source_file(task, split, lang)
    if path is None:
        return _hf_sentences(split, lang)
    return read_xtreme(path, lang) if path.is_file() else None


# ---- tokenization


def encode(sents: list[Sentence], tokenizer: Any, max_length: int) -> dict[str, list[list[int]]]:
    """Columns of the tokenized sentences (labelled ones):

    input_ids    sub-token ids with the special tokens, at most `max_length`
    labels       the word's tag id on its first sub-token, -100 elsewhere
    label_words  the word index of each labelled position, in order
    gold         every word's tag id (words cut off by truncation or with no sub-token too)
    truncated    [1] if the sentence lost sub-tokens to truncation, else [0]
    """
    enc = tokenizer(
        [words for words, _ in sents],
        is_split_into_words=True,
        truncation=True,
        max_length=max_length,
        return_overflowing_tokens=True,  # to see which sentences were cut; overflow is dropped
    )
    sample = enc["overflow_to_sample_mapping"]
    cols: dict[str, list[list[int]]] = {k: [] for k in ("input_ids", "labels", "label_words")}
    cols["gold"] = [[LABEL_ID[t] for t in tags] for _, tags in sents]
    cols["truncated"] = [[0] for _ in sents]
    for i, s in enumerate(sample):
        if i > 0 and sample[i - 1] == s:  # an overflow window: the sentence was truncated
            cols["truncated"][s] = [1]
            continue
        tags = cols["gold"][s]
        labels, label_words, previous = [], [], None
        for w in enc.word_ids(i):
            if w is None or w == previous:
                labels.append(-100)
            else:
                labels.append(tags[w])
                label_words.append(w)
            previous = w
        cols["input_ids"].append(list(enc["input_ids"][i]))
        cols["labels"].append(labels)
        cols["label_words"].append(label_words)
    return cols


def _cache_key(task: dict[str, Any], split: str, lang: str, tok_key: dict, limit) -> dict:
    hf = {"hf": HF_DATASET, "config": lang, "split": HF_SPLIT[split]}
    return {
        "origin": origin(_source_file(task, split, lang), hf),
        "split": split,
        "lang": lang,
        "tokenizer": tok_key,
        "max_length": task["max_length"],
        "limit": limit,
        "format": FORMAT,
    }


def _encoded(task, split, lang, tokenizer, tok_key, data_dir, limit) -> dict | None:
    """Cached columns of one split and language; None if it has no labels (or no file)."""

    def build(out: Path) -> None:
        sents = sentences(task, split, lang)
        labelled = bool(sents) and sents[0][1] is not None
        meta = {"labelled": labelled, "sentences": len(sents or [])}
        if labelled:
            sents = sents[:limit] if limit else sents
            save_columns(out / "features.npz", encode(sents, tokenizer, task["max_length"]))
            meta["sentences"] = len(sents)
        (out / "meta.json").write_text(json.dumps(meta))

    key = _cache_key(task, split, lang, tok_key, limit)
    path = cached(Path(data_dir), "panx-features", key, build)
    if not json.loads((path / "meta.json").read_text())["labelled"]:
        return None
    return load_columns(path / "features.npz")


def _features(cols: dict[str, list[list[int]]], token_types: bool) -> list[dict[str, Any]]:
    feats = []
    for ids, labels in zip(cols["input_ids"], cols["labels"], strict=True):
        f = {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}
        if token_types:  # one segment: all zeros
            f["token_type_ids"] = [0] * len(ids)
        feats.append(f)
    return feats


# ---- scoring


def span_scores(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    """Entity-level precision, recall and F1 (x100) with seqeval's default (conlleval) mode,
    as XTREME scores PAN-X; 0 where nothing is predicted (or nothing is gold)."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    return {
        name: 100.0 * float(metric(gold, predicted, zero_division=0))
        for name, metric in (
            ("precision", precision_score),
            ("recall", recall_score),
            ("f1", f1_score),
        )
    }


def word_tags(logits: np.ndarray, labels: list[int], label_words: list[int], n_words: int):
    """One sentence's predicted tag per word: argmax at each word's first sub-token; words
    without a labelled sub-token (cut off, or no sub-token at all) are "O"."""
    positions = [t for t, label in enumerate(labels) if label != -100]
    tags = ["O"] * n_words
    if positions:
        best = np.asarray(logits)[positions].argmax(-1)  # [labelled positions]
        for w, c in zip(label_words, best.tolist(), strict=True):
            tags[w] = LABELS[c]
    return tags


def scorer(cols: dict[str, list[list[int]]]):
    """score(predictions) for an eval set: one [T, C] logits array per sentence."""
    gold = [[LABELS[t] for t in tags] for tags in cols["gold"]]

    def score(predictions: list[Any]) -> dict[str, float]:
        if len(predictions) != len(gold):
            raise ValueError(f"{len(predictions)} predictions for {len(gold)} sentences")
        predicted = [
            word_tags(p, labels, words, len(g))
            for p, labels, words, g in zip(
                predictions, cols["labels"], cols["label_words"], gold, strict=True
            )
        ]
        return span_scores(gold, predicted)

    return score


def load(task: dict[str, Any], tokenizer: Any, data_dir: Path) -> NLUData:
    """Tokenized PAN-X: train on task.train_lang; "dev/<lang>" and "test/<lang>" eval sets."""
    check(task)
    require_fast(tokenizer, task["name"])
    tok_key = tokenizer_key(tokenizer)
    token_types = "token_type_ids" in getattr(tokenizer, "model_input_names", [])
    train_lang = task["train_lang"]
    train = _encoded(
        task, "train", train_lang, tokenizer, tok_key, data_dir, task.get("max_train_examples")
    )
    if train is None:
        raise DataSourceError(f"PAN-X train-{train_lang} has no tags: it cannot be trained on")
    _log_set(f"train/{train_lang}", train, task["max_length"])
    evals, unlabelled = {}, []
    for split in task["eval_splits"]:
        for lang in task["eval_langs"]:
            cols = _encoded(
                task, split, lang, tokenizer, tok_key, data_dir, task.get("max_eval_examples")
            )
            if cols is None and split == "dev":
                raise DataSourceError(f"PAN-X dev-{lang} has no tagged sentences: it cannot score")
            if cols is None:
                unlabelled.append(lang)
                continue
            _log_set(f"{split}/{lang}", cols, task["max_length"])
            evals[f"{split}/{lang}"] = EvalSet(_features(cols, token_types), scorer(cols))
    if unlabelled:
        log.warning(
            "PAN-X test sets without tags (XTREME hides them) or missing, left out: %s",
            " ".join(unlabelled),
        )
    return NLUData(
        head="tokens",
        num_labels=len(LABELS),
        train=_features(train, token_types),
        evals=evals,
        select_on=f"dev/{train_lang}",
        metric="f1",
        label_names=list(LABELS),
    )


def _log_set(name: str, cols: dict, max_length: int) -> None:
    cut = sum(t[0] for t in cols["truncated"])
    log.info(
        "PAN-X %s: %d sentences, %d truncated at %d sub-tokens",
        name,
        len(cols["gold"]),
        cut,
        max_length,
    )
