"""Batches by token count (like fairseq's --max-tokens) and padding into tensors."""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from torch import Tensor


def token_batches(
    src_lens: Sequence[int],
    tgt_lens: Sequence[int],
    max_tokens: int,
    *,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
) -> list[list[int]]:
    """Example indices grouped so that each batch holds at most `max_tokens` padded tokens.

    Lengths are as collated (e.g. `len(ids) + 1` for eos / bos). A batch of B examples costs
    B * max over the batch of max(src_len, tgt_len). Examples are sorted by (src_len, tgt_len)
    so that batches waste little padding, and filled greedily. With `shuffle`, ties are broken
    at random and the order of the batches is shuffled, both from (seed, epoch) alone, so a
    resumed run sees the same batches. Without it, batches come in length order.
    """
    if len(src_lens) != len(tgt_lens):
        raise ValueError(f"{len(src_lens)} source lengths for {len(tgt_lens)} target lengths")
    if max_tokens < 1:
        raise ValueError(f"trainer.max_tokens must be >= 1 (got {max_tokens})")
    # A string seed: random.Random hashes it with sha512, the same in every process.
    rng = random.Random(f"{seed}:{epoch}") if shuffle else None
    tie = [rng.random() for _ in src_lens] if rng else [0.0] * len(src_lens)
    order = sorted(range(len(src_lens)), key=lambda i: (src_lens[i], tgt_lens[i], tie[i], i))

    batches: list[list[int]] = []
    batch: list[int] = []
    width = 0  # longest side of the longest example in `batch`
    for i in order:
        size = max(src_lens[i], tgt_lens[i])
        if size > max_tokens:
            raise ValueError(
                f"example {i} has {size} tokens (source {src_lens[i]}, target {tgt_lens[i]}), "
                f"more than trainer.max_tokens={max_tokens}; raise trainer.max_tokens or lower "
                f"task.max_len"
            )
        if batch and (len(batch) + 1) * max(width, size) > max_tokens:
            batches.append(batch)
            batch, width = [], 0
        batch.append(i)
        width = max(width, size)
    if batch:
        batches.append(batch)
    if rng:
        rng.shuffle(batches)
    return batches


def collate(
    examples: list[tuple[list[int], list[int]]], pad_id: int, bos_id: int, eos_id: int
) -> dict[str, Tensor]:
    """Pad (source ids, target ids) pairs into the tensors of a seq2seq step.

    src_tokens [B, S]          source + eos, right-padded
    src_lengths [B]            source lengths including eos
    prev_output_tokens [B, T]  bos + target (teacher forcing input), right-padded
    target [B, T]              target + eos, right-padded
    ntokens []                 number of non-pad target tokens
    """
    if not examples:
        raise ValueError("collate needs at least one example (got an empty batch)")
    n = len(examples)
    src_len = max(len(s) for s, _ in examples) + 1
    tgt_len = max(len(t) for _, t in examples) + 1
    src_tokens = torch.full((n, src_len), pad_id, dtype=torch.long)  # [B, S]
    prev = torch.full((n, tgt_len), pad_id, dtype=torch.long)  # [B, T]
    target = torch.full((n, tgt_len), pad_id, dtype=torch.long)  # [B, T]
    for row, (src, tgt) in enumerate(examples):
        src_tokens[row, : len(src) + 1] = torch.tensor([*src, eos_id], dtype=torch.long)
        prev[row, : len(tgt) + 1] = torch.tensor([bos_id, *tgt], dtype=torch.long)
        target[row, : len(tgt) + 1] = torch.tensor([*tgt, eos_id], dtype=torch.long)
    src_lengths = torch.tensor([len(s) + 1 for s, _ in examples], dtype=torch.long)  # [B]
    return {
        "src_tokens": src_tokens,
        "src_lengths": src_lengths,
        "prev_output_tokens": prev,
        "target": target,
        "ntokens": src_lengths.new_tensor(sum(len(t) + 1 for _, t in examples)),
    }
