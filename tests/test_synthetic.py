import random

import pytest
from sacrebleu.metrics import BLEU

from idistill.data.synthetic import (
    DET_ADJ_SUFFIX,
    MAX_WORDS,
    MIN_WORDS,
    TARGET_PAST,
    TARGET_PLURAL,
    VERB_SUFFIX,
    make_corpus,
    make_lexicon,
)

SEED = 7


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(SEED, 2000, 200, 200)


def _words(text: str) -> list[str]:
    return [w.strip(",.?").lower() for w in text.split()]


def test_corpus_is_deterministic_given_seed(corpus):
    assert make_corpus(SEED, 2000, 200, 200) == corpus


def test_other_seed_gives_other_language():
    assert make_corpus(SEED + 1, 50, 0, 0)["train"] != make_corpus(SEED, 50, 0, 0)["train"]


def test_corpus_leaves_global_random_state_alone():
    random.seed(0)
    state = random.getstate()
    make_corpus(SEED, 50, 5, 5)
    assert random.getstate() == state


def test_splits_have_requested_sizes_and_share_no_sentence(corpus):
    assert {k: len(v) for k, v in corpus.items()} == {"train": 2000, "valid": 200, "test": 200}
    sources = [s for pairs in corpus.values() for s, _ in pairs]
    assert len(set(sources)) == len(sources)


def test_larger_train_split_keeps_valid_and_test(corpus):
    bigger = make_corpus(SEED, 3000, 200, 200)
    assert bigger["valid"] == corpus["valid"] and bigger["test"] == corpus["test"]


def test_sentences_have_3_to_30_words_and_final_punctuation(corpus):
    lengths = []
    for pairs in corpus.values():
        for pair in pairs:
            for text in pair:
                assert MIN_WORDS <= len(text.split()) <= MAX_WORDS, text
                assert text[-1] in ".?" and text[0].isupper(), text
                lengths.append(len(text.split()))
    assert min(lengths) <= 4 and max(lengths) >= 25  # short and long sentences both occur


def test_copying_the_source_scores_below_5_bleu(corpus):
    sources = [s for s, _ in corpus["test"]]
    references = [t for _, t in corpus["test"]]
    assert BLEU().corpus_score(sources, [references]).score < 5


def test_no_word_form_is_shared_between_sides(corpus):
    src = {w for s, _ in corpus["train"] for w in _words(s)}
    tgt = {w for _, t in corpus["train"] for w in _words(t)}
    assert not src & tgt


class _TargetForms:
    """Target word form -> (category, (gender, number)), built from the lexicon's rules."""

    def __init__(self, seed: int):
        lex = make_lexicon(seed)
        self.rel, self.question = lex.rel.tgt, lex.question.tgt
        self.forms: dict[str, tuple[str, tuple[str, str]]] = {}
        for noun in lex.nouns:
            self.forms[noun.tgt] = ("noun", (noun.gender, "sg"))
            self.forms[noun.tgt + TARGET_PLURAL] = ("noun", (noun.gender, "pl"))
        for features, suffix in DET_ADJ_SUFFIX.items():
            for det in lex.dets.values():
                self.forms[det.tgt + suffix] = ("det", features)
            for adj in lex.adjs:
                self.forms[adj.tgt + suffix] = ("adj", features)
        for features, suffix in VERB_SUFFIX.items():
            for verb in lex.verbs_tr + lex.verbs_intr:
                for tense in ("", TARGET_PAST):
                    self.forms[verb.tgt + tense + suffix] = ("verb", features)

    def tag(self, word: str) -> tuple[str, tuple[str, str] | None]:
        return self.forms.get(word, ("other", None))


def test_target_determiners_and_adjectives_agree_with_their_noun(corpus):
    forms = _TargetForms(SEED)
    checked = 0
    for _, target in corpus["train"]:
        tags = [forms.tag(w) for w in _words(target)]
        for i, (cat, features) in enumerate(tags):
            if cat == "det":  # target NP: det noun adj* (adjectives follow the noun)
                assert tags[i + 1] == ("noun", features), target
                checked += 1
            elif cat == "adj":
                j = i - 1
                while tags[j][0] == "adj":
                    j -= 1
                assert tags[j] == ("noun", features), target
                checked += 1
    assert checked > 1000


def test_target_verb_is_last_and_agrees_with_the_subject_across_the_clause(corpus):
    forms = _TargetForms(SEED)
    checked = 0
    for _, target in corpus["train"]:
        words = _words(target)
        simple = "," not in target and forms.rel not in words and forms.question not in words
        if not simple:
            continue
        tags = [forms.tag(w) for w in words]
        subject = next(features for cat, features in tags if cat == "noun")
        assert tags[-1] == ("verb", subject), target
        checked += 1
    assert checked > 500
