"""Evaluation: translate a split with beam search and score it with sacreBLEU."""

from __future__ import annotations

from dataclasses import dataclass

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
