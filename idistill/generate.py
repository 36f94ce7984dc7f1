"""Beam search with a key/value cache, following fairseq's SequenceGenerator.

Every sentence keeps `beam` active hypotheses; each step scores the 2*beam best
(hypothesis, token) extensions by cumulative log-probability, finalizes those ending in eos
among the first `beam` of them (score / length**len_penalty, length counting eos), and keeps
the best `beam` that do not end in eos. A sentence stops as soon as it has `beam` finished
hypotheses (fairseq's default, no look-ahead for better active ones) or reaches its length
limit, where eos is forced. The first token may not be eos (fairseq's min_len = 1); pad and
bos are never emitted. Finished sentences leave the batch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from idistill.models.transformer import Seq2SeqTransformer


def _max_lengths(src_tokens: Tensor, pad_id: int, a: float, b: float, limit: int) -> list[int]:
    """Per-sentence length limit (tokens before eos): a * (non-pad source tokens) + b."""
    src_lens = src_tokens.ne(pad_id).sum(dim=1).tolist()
    return [max(1, min(int(a * n + b), limit)) for n in src_lens]


@torch.no_grad()
def beam_search(
    model: Seq2SeqTransformer,
    src_tokens: Tensor,
    *,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    beam: int = 5,
    len_penalty: float = 1.0,
    max_len_a: float = 1.2,
    max_len_b: int = 10,
) -> list[list[int]]:
    """Best hypothesis per row of src_tokens [B, S], as token ids without bos/eos.

    Score of a finished hypothesis: sum of log p(token) / (generated tokens incl. eos)**len_penalty.
    """
    if beam < 1:
        raise ValueError(f"beam must be >= 1 (got {beam})")
    was_training = model.training
    model.eval()
    try:
        return _search(
            model, src_tokens, bos_id, eos_id, pad_id, beam, len_penalty, max_len_a, max_len_b
        )
    finally:
        model.train(was_training)


def _search(
    model: Seq2SeqTransformer,
    src_tokens: Tensor,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    beam: int,
    len_penalty: float,
    a: float,
    b: float,
) -> list[list[int]]:
    device, n_sent = src_tokens.device, src_tokens.shape[0]
    limit = getattr(getattr(model, "cfg", None), "max_positions", 1024) - 1  # bos takes one
    max_lens = _max_lengths(src_tokens, pad_id, a, b, limit)
    finalized: list[list[tuple[float, list[int]]]] = [[] for _ in range(n_sent)]

    sent_ids = list(range(n_sent))  # original index of each live sentence
    n = n_sent
    enc = model.encode(src_tokens)  # [n, S, D]: one row serves the `beam` rows of its source
    cache = model.new_cache()
    tokens = torch.full((n * beam, 1), bos_id, dtype=torch.long, device=device)  # [n*beam, 1]
    scores = torch.zeros(n * beam, device=device)  # cumulative log-probs
    row_max = torch.tensor(max_lens, device=device).repeat_interleave(beam)  # [n*beam]

    step = 0
    while n > 0:
        logits = model.decode(tokens, enc, cache)[:, -1]  # [n*beam, V]
        lprobs = torch.log_softmax(logits.float(), dim=-1)  # [n*beam, V]
        vocab = lprobs.shape[1]
        lprobs.nan_to_num_(nan=-math.inf)
        lprobs[:, pad_id] = -math.inf
        if bos_id != eos_id:
            lprobs[:, bos_id] = -math.inf
        if step == 0:
            lprobs[:, eos_id] = -math.inf
        force = (row_max <= step)[:, None]  # [n*beam, 1]: at the limit only eos may follow
        not_eos = torch.arange(vocab, device=device) != eos_id  # [V]
        lprobs.masked_fill_(force & not_eos, -math.inf)

        cand = (lprobs + scores[:, None]).view(n, beam, vocab)  # [n, beam, V]
        if step == 0:
            cand = cand[:, :1]  # all beams start identical: expand the first only
        flat = cand.reshape(n, -1)  # [n, beam'*V]
        k2 = min(2 * beam, flat.shape[1])
        cand_scores, cand_idx = flat.topk(k2, dim=1)  # [n, k2]
        cand_tok = cand_idx % vocab
        cand_row = cand_idx // vocab + torch.arange(n, device=device)[:, None] * beam
        eos_mask = cand_tok.eq(eos_id) & cand_scores.isfinite()  # [n, k2]

        # Finalize eos candidates among the first `beam` (a host sync, once per step).
        done = [False] * n
        eos_pos = eos_mask[:, :beam].nonzero().tolist()
        if eos_pos:
            norm = (step + 1) ** len_penalty
            hyp_rows = cand_row[:, :beam].cpu()
            hyp_scores = (cand_scores[:, :beam] / norm).cpu()
            prefix = tokens[:, 1:].cpu()
            for i, j in eos_pos:
                found = finalized[sent_ids[i]]
                if len(found) < beam:
                    found.append((hyp_scores[i, j].item(), prefix[hyp_rows[i, j]].tolist()))
                done[i] = len(found) == beam
        for i, sid in enumerate(sent_ids):
            done[i] = done[i] or step >= max_lens[sid]

        # Keep the `beam` best non-eos candidates of every unfinished sentence.
        order = eos_mask.long() * k2 + torch.arange(k2, device=device)  # eos last, else by rank
        keep_pos = order.topk(beam, dim=1, largest=False).indices  # [n, beam]
        alive = [i for i in range(n) if not done[i]]
        shrink = len(alive) < n  # finished sentences leave the batch
        if shrink:
            sel = torch.tensor(alive, dtype=torch.long, device=device)
            cand_row, cand_tok, cand_scores, keep_pos = (
                t.index_select(0, sel) for t in (cand_row, cand_tok, cand_scores, keep_pos)
            )
        new_rows = cand_row.gather(1, keep_pos).reshape(-1)  # [n'*beam]
        new_tok = cand_tok.gather(1, keep_pos).reshape(-1)
        scores = cand_scores.gather(1, keep_pos).reshape(-1)
        tokens = torch.cat([tokens.index_select(0, new_rows), new_tok[:, None]], dim=1)
        row_max = row_max.index_select(0, new_rows)
        cache.reorder(new_rows, sel if shrink else None)
        if shrink:
            enc = enc.index_select(sel)
            sent_ids = [sent_ids[i] for i in alive]
            n = len(alive)
        step += 1

    return [max(found, key=lambda h: h[0])[1] if found else [] for found in finalized]
