"""Tests for idistill/generate.py: fairseq beam-search semantics on real and hand-built models."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from idistill.generate import beam_search
from idistill.models.transformer import (
    DecoderCache,
    EncoderOut,
    Seq2SeqTransformer,
    transformer_config,
)

PAD, BOS, EOS, V = 0, 1, 2, 16
SPECIAL = dict(bos_id=BOS, eos_id=EOS, pad_id=PAD)


def copy_batch(g: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded sources `x eos` [n, S] and decoder inputs `bos x` [n, S] of 2-8 symbols."""
    lens = torch.randint(2, 9, (n,), generator=g)
    width = int(lens.max())
    sym = torch.randint(3, V, (n, width), generator=g)
    sym = sym.masked_fill(torch.arange(width)[None] >= lens[:, None], PAD)  # [n, W]
    src = torch.cat([sym, torch.full((n, 1), PAD)], dim=1)  # [n, W+1]
    src[torch.arange(n), lens] = EOS
    prev = torch.cat([torch.full((n, 1), BOS), sym], dim=1)  # [n, W+1]
    return src, prev


def strip(src: torch.Tensor) -> list[list[int]]:
    return [[t for t in row if t not in (PAD, BOS, EOS)] for row in src.tolist()]


@pytest.fixture(scope="module")
def random_model() -> Seq2SeqTransformer:
    torch.manual_seed(0)
    return Seq2SeqTransformer(transformer_config("transformer_tiny", V, PAD)).eval()


@pytest.fixture(scope="module")
def copy_model() -> Seq2SeqTransformer:
    """A small transformer trained for 250 steps to copy its source (a few seconds on CPU)."""
    torch.manual_seed(0)
    cfg = transformer_config("transformer_tiny", V, PAD, embed_dim=64, ffn_dim=128, dropout=0.0)
    model = Seq2SeqTransformer(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.98))
    g, steps = torch.Generator().manual_seed(0), 250
    for step in range(steps):
        for group in opt.param_groups:  # warm up 40 steps, decay linearly over the last 60%
            group["lr"] = 3e-3 * min((step + 1) / 40, 1.0, (steps - step) / (0.6 * steps))
        src, prev = copy_batch(g, 64)
        logits = model(src, prev)  # [64, T, V]; the target is the source itself
        loss = nn.functional.cross_entropy(logits.reshape(-1, V), src.reshape(-1), ignore_index=PAD)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def greedy_by_full_forwards(model, src: torch.Tensor, max_len: int) -> list[int]:
    """Greedy decoding of one sentence [1, S] with full forwards, fairseq's rules."""
    out = [BOS]
    for step in range(max_len + 1):
        lprobs = model(src, torch.tensor([out])).float().log_softmax(-1)[0, -1]  # [V]
        lprobs[[PAD, BOS]] = -math.inf
        if step == 0:
            lprobs[EOS] = -math.inf  # fairseq's min_len = 1
        tok = EOS if step == max_len else int(lprobs.argmax())
        if tok == EOS:
            return out[1:]
        out.append(tok)
    raise AssertionError("unreachable")


def beam_by_full_forwards(model, src: torch.Tensor, beam: int, len_penalty: float, max_len: int):
    """fairseq's beam search for one sentence [1, S], written plainly: every hypothesis is
    re-run from bos (no cache, no batching); the reference for the fast implementation."""
    active: list[tuple[float, list[int]]] = [(0.0, [BOS])]  # (cumulative log-prob, tokens)
    finished: list[tuple[float, list[int]]] = []
    for step in range(max_len + 1):
        candidates = []  # (score, rank of the hypothesis, token), ranked as topk over [beam, V]
        for rank, (score, tokens) in enumerate(active):
            lprobs = model(src, torch.tensor([tokens])).float().log_softmax(-1)[0, -1]  # [V]
            lprobs[[PAD, BOS]] = -math.inf
            if step == 0:
                lprobs[EOS] = -math.inf  # fairseq's min_len = 1
            if step >= max_len:  # at the limit only eos may follow
                lprobs[torch.arange(V) != EOS] = -math.inf
            candidates += [(score + lp, rank, tok) for tok, lp in enumerate(lprobs.tolist())]
        candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
        top = candidates[: 2 * beam]
        for score, rank, tok in top[:beam]:  # eos among the best `beam` finishes a hypothesis
            if tok == EOS and math.isfinite(score) and len(finished) < beam:
                finished.append((score / (step + 1) ** len_penalty, active[rank][1][1:]))
        if len(finished) == beam or step >= max_len:
            break
        active = [(s, active[r][1] + [t]) for s, r, t in top if t != EOS][:beam]
    return max(finished, key=lambda h: h[0])[1]


@pytest.fixture(scope="module")
def eos_model() -> Seq2SeqTransformer:
    """Random weights with a 4x larger eos row: hypotheses end at different steps, so beam
    width and length penalty change the results (a plain random model runs to the limit)."""
    torch.manual_seed(0)
    model = Seq2SeqTransformer(transformer_config("transformer_tiny", V, PAD)).eval()
    with torch.no_grad():
        model.output_projection.weight[EOS] *= 4.0
    return model


@pytest.mark.parametrize("len_penalty", [1.0, 0.3])
def test_beam_search_equals_an_unbatched_uncached_reference(eos_model, len_penalty):
    src, _ = copy_batch(torch.Generator().manual_seed(11), 10)  # rows of different lengths
    hyps = beam_search(eos_model, src, beam=5, len_penalty=len_penalty, **SPECIAL)
    assert hyps != beam_search(eos_model, src, beam=4, len_penalty=len_penalty, **SPECIAL)
    assert len({len(h) for h in hyps}) > 3  # hypotheses end early and late
    for row, hyp in zip(src, hyps, strict=True):
        row = row[row != PAD][None]  # [1, S]
        limit = int(1.2 * row.shape[1] + 10)
        assert hyp == beam_by_full_forwards(eos_model, row, 5, len_penalty, limit)


def test_beam_one_equals_greedy_decoding(random_model):
    src, _ = copy_batch(torch.Generator().manual_seed(3), 6)
    hyps = beam_search(random_model, src, beam=1, max_len_a=0.5, max_len_b=3, **SPECIAL)
    for row, hyp in zip(src, hyps, strict=True):
        row = row[row != PAD][None]  # [1, S]
        assert hyp == greedy_by_full_forwards(random_model, row, int(0.5 * row.shape[1] + 3))


def test_beam_search_is_deterministic(random_model):
    src, _ = copy_batch(torch.Generator().manual_seed(4), 8)
    assert beam_search(random_model, src, **SPECIAL) == beam_search(random_model, src, **SPECIAL)


@pytest.mark.parametrize("beam", [1, 5])
def test_trained_copy_model_reproduces_the_source(copy_model, beam):
    src, _ = copy_batch(torch.Generator().manual_seed(1), 32)
    assert beam_search(copy_model, src, beam=beam, **SPECIAL) == strip(src)


def test_hypotheses_never_contain_special_tokens(random_model):
    src, _ = copy_batch(torch.Generator().manual_seed(5), 16)
    for hyp in beam_search(random_model, src, beam=4, **SPECIAL):
        assert hyp and not {PAD, BOS, EOS} & set(hyp)


def test_hypotheses_respect_max_length(random_model, copy_model):
    src, _ = copy_batch(torch.Generator().manual_seed(6), 16)
    limits = [int(0.5 * n + 1) for n in src.ne(PAD).sum(1).tolist()]
    for model in (random_model, copy_model):
        hyps = beam_search(model, src, beam=3, max_len_a=0.5, max_len_b=1, **SPECIAL)
        assert all(1 <= len(h) <= m for h, m in zip(hyps, limits, strict=True))
    assert any(
        len(h) == m for h, m in zip(hyps, limits, strict=True)
    )  # the copy model hits the limit


@pytest.mark.parametrize("name", ["random_model", "copy_model"])
def test_batched_results_equal_per_sentence_results(name, request):
    model = request.getfixturevalue(name)
    src, _ = copy_batch(torch.Generator().manual_seed(7), 8)  # rows of different lengths
    batched = beam_search(model, src, beam=4, **SPECIAL)
    for row, hyp in zip(src, batched, strict=True):
        assert beam_search(model, row[row != PAD][None], beam=4, **SPECIAL) == [hyp]


def test_beam_search_restores_training_mode(random_model):
    src, _ = copy_batch(torch.Generator().manual_seed(8), 2)
    random_model.train()
    try:
        beam_search(random_model, src, **SPECIAL)
        assert random_model.training
    finally:
        random_model.eval()
    beam_search(random_model, src, **SPECIAL)
    assert not random_model.training


class PrefixModel(nn.Module):
    """A stand-in decoder whose next-token distribution is a table keyed by the prefix."""

    A, B = 3, 4

    def __init__(self, table: dict[tuple[int, ...], dict[int, float]]):
        super().__init__()
        self.table = table

    def encode(self, src: torch.Tensor) -> EncoderOut:
        return EncoderOut(torch.zeros(*src.shape, 1), src.eq(PAD))

    def new_cache(self) -> DecoderCache:
        return DecoderCache()

    def decode(self, tokens, enc, cache=None) -> torch.Tensor:
        rows = []
        for prefix in tokens[:, 1:].tolist():
            probs = self.table.get(tuple(prefix), {EOS: 1.0})
            row = torch.full((5,), 1e-9)
            for tok, p in probs.items():
                row[tok] = p
            rows.append(row.log())
        return torch.stack(rows)[:, None]  # [B, 1, V]


def test_len_penalty_normalizes_by_length_including_eos():
    a, b = PrefixModel.A, PrefixModel.B
    model = PrefixModel(
        {
            (): {a: 0.7, b: 0.3},
            (a,): {EOS: 0.9, a: 0.05, b: 0.05},  # "a eos": log .7 + log .9 = -0.462, 2 tokens
            (b,): {b: 0.99, EOS: 0.01},
            (b, b): {EOS: 0.99},  # "b b eos": -1.224, 3 tokens
        }
    )
    src = torch.tensor([[5, 6]])
    assert beam_search(model, src, beam=2, len_penalty=0.0, **SPECIAL) == [[a]]
    # -0.462 / 2**2 = -0.116 > -1.224 / 3**2 = -0.136 (without eos in the length, -0.462 / 1
    # < -1.224 / 2**2 would pick "b b").
    assert beam_search(model, src, beam=2, len_penalty=2.0, **SPECIAL) == [[a]]
    # -0.462 / 2**3 = -0.058 < -1.224 / 3**3 = -0.045: the longer one wins.
    assert beam_search(model, src, beam=2, len_penalty=3.0, **SPECIAL) == [[b, b]]


def test_sentence_stops_once_beam_hypotheses_are_finished():
    a, b = PrefixModel.A, PrefixModel.B
    # Step 1 finishes "b eos" (-1.021 / 2) and "a eos" (-1.204 / 2); "a a eos" (-1.310 / 3)
    # would score better but is never reached: fairseq stops a sentence once `beam`
    # hypotheses are finished.
    model = PrefixModel(
        {
            (): {a: 0.6, b: 0.4},
            (a,): {EOS: 0.5, a: 0.45, b: 0.05},
            (b,): {EOS: 0.9, b: 0.1},
            (a, a): {EOS: 1.0},
        }
    )
    src = torch.tensor([[5, 6]])
    assert beam_search(model, src, beam=2, len_penalty=1.0, **SPECIAL) == [[b]]
    assert beam_search(model, src, beam=3, len_penalty=1.0, **SPECIAL) == [[a, a]]
