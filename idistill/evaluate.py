"""Evaluation: translate a split with beam search and score it with sacreBLEU; GLUE metrics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from idistill.data.batching import collate, token_batches
from idistill.generate import beam_search


@dataclass
class BleuResult:
    """Corpus BLEU and the sacreBLEU signature that makes it comparable."""

    score: float
    signature: str


def corpus_bleu(hypotheses: list[str], references: list[str]) -> BleuResult:
    """Detokenized corpus BLEU (sacreBLEU defaults: 13a tokenization, case-sensitive)."""
    from sacrebleu.metrics import BLEU

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    bleu = BLEU()
    score = bleu.corpus_score(hypotheses, [references])
    return BleuResult(score.score, str(bleu.get_signature()))


def corpus_chrf(hypotheses: list[str], references: list[str]) -> BleuResult:
    """Corpus chrF2 (sacreBLEU defaults: character 6-grams, beta 2) and its signature."""
    from sacrebleu.metrics import CHRF

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    chrf = CHRF()
    return BleuResult(chrf.corpus_score(hypotheses, [references]).score, str(chrf.get_signature()))


def translate(
    model,
    examples: list[tuple[list[int], list[int]]],
    tokenizer,
    *,
    device,
    max_tokens: int,
    beam: int,
    len_penalty: float,
    max_len_a: float,
    max_len_b: int,
    autocast_dtype=None,
    progress: bool = True,
) -> list[str]:
    """Beam-search translations of `examples` (source ids), detokenized, in input order."""
    src_lens = [len(src) + 1 for src, _ in examples]
    batches = token_batches(
        src_lens, src_lens, max(max_tokens // beam, max(src_lens)), shuffle=False
    )
    out: list[str | None] = [None] * len(examples)
    bar = tqdm(
        total=len(examples), desc="translate", unit="sent", disable=not progress, leave=False
    )
    for idx in batches:
        batch = collate(
            [examples[i] for i in idx], tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id
        )
        src = batch["src_tokens"].to(device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            hyps = beam_search(
                model,
                src,
                bos_id=tokenizer.bos_id,
                eos_id=tokenizer.eos_id,
                pad_id=tokenizer.pad_id,
                beam=beam,
                len_penalty=len_penalty,
                max_len_a=max_len_a,
                max_len_b=max_len_b,
            )
        for i, ids in zip(idx, hyps, strict=False):
            out[i] = tokenizer.decode(ids)
        bar.update(len(idx))
    bar.close()
    return out  # type: ignore[return-value]


# ---- GLUE metrics (numpy only): predictions and gold labels of one split, in the same order


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Fraction of exact matches."""
    pred, gold = _pair(predictions, labels)
    return float((pred == gold).mean())


def binary_f1(predictions: Sequence[int], labels: Sequence[int], positive: int = 1) -> float:
    """F1 of the positive class (MRPC, QQP): 2 tp / (2 tp + fp + fn); 0 when there is no tp."""
    pred, gold = _pair(predictions, labels)
    tp = int(((pred == positive) & (gold == positive)).sum())
    wrong = int((pred != gold).sum())  # fp + fn
    return 2 * tp / (2 * tp + wrong) if tp else 0.0


def matthews_corr(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Matthews correlation (CoLA), multi-class form of Gorodkin (2004):
    (c s - sum_k p_k t_k) / sqrt((s^2 - sum_k p_k^2)(s^2 - sum_k t_k^2)), 0 when undefined;
    c correct, s total, p_k / t_k how often class k is predicted / true."""
    pred, gold = _pair(predictions, labels)
    classes = np.union1d(pred, gold)
    p = np.array([(pred == k).sum() for k in classes], dtype=np.float64)
    t = np.array([(gold == k).sum() for k in classes], dtype=np.float64)
    c, s = float((pred == gold).sum()), float(len(gold))
    denominator = (s * s - (p * p).sum()) * (s * s - (t * t).sum())
    return float((c * s - (p * t).sum()) / np.sqrt(denominator)) if denominator > 0 else 0.0


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation (STS-B); 0 when either side is constant."""
    a, b = _pair(x, y, np.float64)
    a, b = a - a.mean(), b - b.mean()
    norm = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / norm) if norm > 0 else 0.0


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman correlation: Pearson of the ranks, tied values sharing their average rank."""
    a, b = _pair(x, y, np.float64)
    return pearson(_ranks(a), _ranks(b))


def _ranks(x: np.ndarray) -> np.ndarray:
    values, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # 0-based rank of each value's first occurrence
    return (first + (counts + 1) / 2.0)[inverse]  # average 1-based rank of each tie group


def _pair(a, b, dtype=None) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=dtype), np.asarray(b, dtype=dtype)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(
            f"need two non-empty 1-d sequences of equal length (got {a.shape}, {b.shape})"
        )
    return a, b
