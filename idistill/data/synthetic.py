"""The embedded demo task: a seeded artificial language pair, generated, never downloaded.

A fixed lexicon (a few hundred lexemes with generated, pronounceable word forms, different on
each side) and deterministic rules, so a tiny Transformer learns it in minutes on a CPU:

    source  SVO, then adverb, then PPs; adjectives before the noun; prepositions; nouns mark
            plural, verbs mark number (present) or past; questions open with a particle
    target  SOV; adjectives after the noun, in mirrored order; postpositions; PPs, then object,
            then adverb, then the verb; determiner and adjectives agree with their noun in
            gender and number, the verb agrees with its subject (across the whole clause) and
            carries tense; no indefinite determiner in the plural; questions close with a particle

Relative clauses follow their noun on both sides (verb-object in the source, object-verb in
the target, the verb agreeing with the noun). Sentences have 3-30 words on both sides
(relative clauses, PPs and a conjoined second clause make the long ones), a capital first
letter and final punctuation.
"""

from __future__ import annotations

import functools
import itertools
import random
from dataclasses import dataclass, field

# Agreement suffixes of the target side, keyed by (gender, number).
DET_ADJ_SUFFIX = {("m", "sg"): "o", ("f", "sg"): "a", ("m", "pl"): "os", ("f", "pl"): "as"}
VERB_SUFFIX = {("m", "sg"): "et", ("f", "sg"): "at", ("m", "pl"): "en", ("f", "pl"): "an"}
TARGET_PAST = "av"  # target tense marker, between the verb stem and the agreement suffix
TARGET_PLURAL = "i"  # target noun plural suffix
SOURCE_PLURAL, SOURCE_PRESENT_SG, SOURCE_PAST = "s", "s", "ed"

MIN_WORDS, MAX_WORDS = 3, 30  # per side, punctuation not counted

# Lexicon sizes: a few hundred lexemes in all.
SIZES = {"noun": 160, "adj": 60, "verb_tr": 40, "verb_intr": 25, "adv": 15, "prep": 10}

# Distinct syllable inventories per side, so that copying the source scores near zero BLEU.
_SRC_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "w"]
_SRC_ONSETS += ["st", "tr", "pl", "gr", "br", "sk"]
_SRC_VOWELS = ["a", "e", "i", "o", "u", "ea", "oo"]
_SRC_CODAS = ["", "", "n", "t", "k", "m", "l", "nd", "rk"]
_TGT_ONSETS = ["v", "z", "j", "h", "sh", "ch", "ny", "zh", "kv", "y", "l", "m", "n", "r"]
_TGT_VOWELS = ["a", "e", "i", "o", "u", "ai", "au", "ei"]
_TGT_CODAS = ["", "", "", "l", "n", "r", "z"]


@dataclass(frozen=True)
class Word:
    """One lexeme: its source stem, target stem and (nouns only) target gender."""

    src: str
    tgt: str
    gender: str = ""


@dataclass(frozen=True)
class Lexicon:
    """Every lexeme of the language pair, by category (lists, in a seeded order)."""

    nouns: list[Word]
    adjs: list[Word]
    verbs_tr: list[Word]
    verbs_intr: list[Word]
    advs: list[Word]
    preps: list[Word]
    dets: dict[str, Word]  # "def", "indef", "dem"; source plural forms in `src_det_plural`
    src_det_plural: dict[str, str]
    conjs: list[Word]
    rel: Word  # relative pronoun
    question: Word  # question particle


def _syllables(rng: random.Random, onsets, vowels, codas, n: int) -> str:
    return "".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(n))


def make_lexicon(seed: int) -> Lexicon:
    """The seeded lexicon; no word form is shared, so the translation is a function."""
    rng = random.Random(f"{seed}:lexicon")
    taken_src: set[str] = set()
    taken_tgt: set[str] = set()

    def draw(side: str, syllables: tuple[int, ...], forms) -> str:
        """A stem whose inflected `forms(stem)` are all still unused on `side`."""
        inventory = (
            (_SRC_ONSETS, _SRC_VOWELS, _SRC_CODAS)
            if side == "src"
            else (_TGT_ONSETS, _TGT_VOWELS, _TGT_CODAS)
        )
        taken = taken_src if side == "src" else taken_tgt
        other = taken_tgt if side == "src" else taken_src
        while True:
            stem = _syllables(rng, *inventory, rng.choice(syllables))
            out = forms(stem)
            if not any(f in taken or f in other for f in out) and len(set(out)) == len(out):
                taken.update(out)
                return stem

    invariant = lambda s: [s]
    src_noun = lambda s: [s, s + SOURCE_PLURAL]
    tgt_noun = lambda s: [s, s + TARGET_PLURAL]
    tgt_agreeing = lambda s: [s + x for x in DET_ADJ_SUFFIX.values()]
    src_verb = lambda s: [s, s + SOURCE_PRESENT_SG, s + SOURCE_PAST]
    tgt_verb = lambda s: [s + t + x for t in ("", TARGET_PAST) for x in VERB_SUFFIX.values()]

    def words(n: int, src_forms, tgt_forms, src_syl=(1, 2), tgt_syl=(1, 2, 2, 3)) -> list[Word]:
        return [
            Word(draw("src", src_syl, src_forms), draw("tgt", tgt_syl, tgt_forms)) for _ in range(n)
        ]

    nouns = [
        Word(w.src, w.tgt, rng.choice("mf"))
        for w in words(SIZES["noun"], src_noun, tgt_noun, tgt_syl=(2, 2, 3))
    ]
    # Function words are short: one syllable on the source side, a bare onset + suffix on the
    # target side for determiners.
    dets, src_det_plural = {}, {}
    for kind in ("def", "indef", "dem"):
        src = draw("src", (1,), invariant)
        plural = src if kind == "def" else draw("src", (1,), invariant)
        tgt_stem = next(
            o
            for o in rng.sample(_TGT_ONSETS, len(_TGT_ONSETS))
            if not any(f in taken_tgt or f in taken_src for f in tgt_agreeing(o))
        )
        taken_tgt.update(tgt_agreeing(tgt_stem))
        dets[kind], src_det_plural[kind] = Word(src, tgt_stem), plural
    return Lexicon(
        nouns=nouns,
        adjs=words(SIZES["adj"], invariant, tgt_agreeing),
        verbs_tr=words(SIZES["verb_tr"], src_verb, tgt_verb),
        verbs_intr=words(SIZES["verb_intr"], src_verb, tgt_verb),
        advs=words(SIZES["adv"], invariant, invariant, tgt_syl=(2, 3)),
        preps=words(SIZES["prep"], invariant, invariant, src_syl=(1,), tgt_syl=(1,)),
        dets=dets,
        src_det_plural=src_det_plural,
        conjs=words(3, invariant, invariant, src_syl=(1,), tgt_syl=(1,)),
        rel=words(1, invariant, invariant, src_syl=(1,), tgt_syl=(1,))[0],
        question=words(1, invariant, invariant, src_syl=(1,), tgt_syl=(1,))[0],
    )


# ---- sentence structure: sampled once, rendered on each side


@dataclass
class NounPhrase:
    """Determiner, adjectives and noun, maybe with a relative clause."""

    det: str  # "def" | "indef" | "dem"
    adjs: list[Word]
    noun: Word
    number: str  # "sg" | "pl"
    rel: Clause | None = None  # a subject relative: "the dog that sees a cat"


@dataclass
class Clause:
    """Subject, verb, object, adverb and prepositional phrases, independent of word order."""

    subj: NounPhrase | None  # None inside a relative clause (the head noun is the subject)
    verb: Word
    tense: str  # "present" | "past"
    obj: NounPhrase | None = None
    adv: Word | None = None
    pps: list[tuple[Word, NounPhrase]] = field(default_factory=list)


@dataclass
class Sentence:
    """One or two clauses joined by a conjunction; a statement or a question."""

    clauses: list[Clause]  # one or two
    conj: Word | None
    question: bool


@functools.cache
def _zipf_cum_weights(n: int) -> list[float]:
    return list(itertools.accumulate(1.0 / (rank + 10) for rank in range(n)))


def _zipf(rng: random.Random, items: list):
    """A Zipf-like draw (weight 1/(rank+10)): frequent and rarer words, all seen often enough."""
    return rng.choices(items, cum_weights=_zipf_cum_weights(len(items)))[0]


def _sample_np(rng: random.Random, lex: Lexicon, allow_rel: bool) -> NounPhrase:
    n_adj = rng.choices((0, 1, 2), (0.55, 0.33, 0.12))[0]
    adjs: list[Word] = []
    while len(adjs) < n_adj:
        adj = _zipf(rng, lex.adjs)
        if adj not in adjs:
            adjs.append(adj)
    np_ = NounPhrase(
        det=rng.choices(("def", "indef", "dem"), (0.5, 0.35, 0.15))[0],
        adjs=adjs,
        noun=_zipf(rng, lex.nouns),
        number=rng.choices(("sg", "pl"), (0.6, 0.4))[0],
    )
    if allow_rel and rng.random() < 0.15:
        np_.rel = _sample_clause(rng, lex, subject=False)
    return np_


def _sample_clause(rng: random.Random, lex: Lexicon, subject: bool = True) -> Clause:
    transitive = rng.random() < 0.6
    clause = Clause(
        subj=_sample_np(rng, lex, allow_rel=True) if subject else None,
        verb=_zipf(rng, lex.verbs_tr if transitive else lex.verbs_intr),
        tense=rng.choice(("present", "past")),
        obj=_sample_np(rng, lex, allow_rel=subject) if transitive else None,
    )
    if subject:  # relative clauses stay short: no adverb, no PPs
        clause.adv = _zipf(rng, lex.advs) if rng.random() < 0.2 else None
        n_pp = rng.choices((0, 1, 2), (0.5, 0.35, 0.15))[0]
        clause.pps = [
            (_zipf(rng, lex.preps), _sample_np(rng, lex, allow_rel=False)) for _ in range(n_pp)
        ]
    return clause


def _sample_sentence(rng: random.Random, lex: Lexicon) -> Sentence:
    two = rng.random() < 0.3
    return Sentence(
        clauses=[_sample_clause(rng, lex) for _ in range(2 if two else 1)],
        conj=rng.choice(lex.conjs) if two else None,
        question=rng.random() < 0.15,
    )


# ---- rendering


def _src_np(np_: NounPhrase, lex: Lexicon) -> list[str]:
    det = lex.dets[np_.det].src if np_.number == "sg" else lex.src_det_plural[np_.det]
    noun = np_.noun.src + (SOURCE_PLURAL if np_.number == "pl" else "")
    words = [det] + [a.src for a in np_.adjs] + [noun]
    if np_.rel is not None:
        words += [lex.rel.src] + _src_clause(np_.rel, lex, np_.number)
    return words


def _src_clause(c: Clause, lex: Lexicon, rel_number: str = "sg") -> list[str]:
    number = c.subj.number if c.subj is not None else rel_number
    if c.tense == "past":
        verb = c.verb.src + SOURCE_PAST
    else:
        verb = c.verb.src + (SOURCE_PRESENT_SG if number == "sg" else "")
    words = _src_np(c.subj, lex) if c.subj is not None else []
    words.append(verb)
    if c.obj is not None:
        words += _src_np(c.obj, lex)
    if c.adv is not None:
        words.append(c.adv.src)
    for prep, np_ in c.pps:
        words += [prep.src] + _src_np(np_, lex)
    return words


def _tgt_np(np_: NounPhrase, lex: Lexicon) -> list[str]:
    features = (np_.noun.gender, np_.number)
    words = []
    if not (np_.det == "indef" and np_.number == "pl"):
        words.append(lex.dets[np_.det].tgt + DET_ADJ_SUFFIX[features])
    words.append(np_.noun.tgt + (TARGET_PLURAL if np_.number == "pl" else ""))
    words += [a.tgt + DET_ADJ_SUFFIX[features] for a in reversed(np_.adjs)]
    if np_.rel is not None:
        words += [lex.rel.tgt] + _tgt_clause(np_.rel, lex, features)
    return words


def _tgt_clause(c: Clause, lex: Lexicon, rel_features: tuple[str, str] = ("m", "sg")) -> list[str]:
    features = (c.subj.noun.gender, c.subj.number) if c.subj is not None else rel_features
    words = _tgt_np(c.subj, lex) if c.subj is not None else []
    for post, np_ in c.pps:
        words += _tgt_np(np_, lex) + [post.tgt]
    if c.obj is not None:
        words += _tgt_np(c.obj, lex)
    if c.adv is not None:
        words.append(c.adv.tgt)
    tense = TARGET_PAST if c.tense == "past" else ""
    words.append(c.verb.tgt + tense + VERB_SUFFIX[features])
    return words


def _finish(clauses: list[list[str]], conj: str | None, final: str) -> str:
    words = clauses[0]
    if conj is not None:
        words = words[:-1] + [words[-1] + ","] + [conj] + clauses[1]
    text = " ".join(words)
    return text[0].upper() + text[1:] + final


def render(sentence: Sentence, lex: Lexicon) -> tuple[str, str]:
    """(source, target) text of one sentence."""
    conj = sentence.conj
    src = [_src_clause(c, lex) for c in sentence.clauses]
    tgt = [_tgt_clause(c, lex) for c in sentence.clauses]
    if sentence.question:
        src[0] = [lex.question.src] + src[0]
        tgt[-1] = tgt[-1] + [lex.question.tgt]
    final = "?" if sentence.question else "."
    return (
        _finish(src, conj.src if conj else None, final),
        _finish(tgt, conj.tgt if conj else None, final),
    )


def word_count(text: str) -> int:
    """Words of a rendered sentence, punctuation not counted."""
    return len(text.split())


def make_corpus(
    seed: int, n_train: int, n_valid: int, n_test: int
) -> dict[str, list[tuple[str, str]]]:
    """Seeded (source, target) pairs: {"train", "valid", "test"}, no sentence in two splits.

    Test is drawn first, then valid, then train, so a larger n_train never changes the
    evaluation sets. Deterministic given `seed` (its own random.Random, no global state).
    """
    for split, n in (("n_train", n_train), ("n_valid", n_valid), ("n_test", n_test)):
        if n < 0:
            raise ValueError(f"task.{split} must be >= 0 (got {n})")
    lex = make_lexicon(seed)
    rng = random.Random(f"{seed}:sentences")
    seen: set[str] = set()
    out: dict[str, list[tuple[str, str]]] = {}
    for split, n in (("test", n_test), ("valid", n_valid), ("train", n_train)):
        pairs: list[tuple[str, str]] = []
        attempts = 0
        while len(pairs) < n:
            attempts += 1
            if attempts > 20 * n + 1000:
                raise ValueError(f"could not draw {n} distinct {split} sentences (seed {seed})")
            src, tgt = render(_sample_sentence(rng, lex), lex)
            lengths_ok = all(MIN_WORDS <= word_count(t) <= MAX_WORDS for t in (src, tgt))
            if lengths_ok and src not in seen:
                seen.add(src)
                pairs.append((src, tgt))
        out[split] = pairs
    return {k: out[k] for k in ("train", "valid", "test")}
