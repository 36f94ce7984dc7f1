"""Tests for idistill/models/transformer.py: fairseq-equivalent shapes, masks, init, cache."""

from __future__ import annotations

import pytest
import torch

from idistill.models.transformer import (
    Seq2SeqTransformer,
    TransformerConfig,
    make_positions,
    sinusoidal_table,
    transformer_config,
)

PAD, BOS, EOS, V = 0, 1, 2, 40


def tiny(**overrides) -> Seq2SeqTransformer:
    torch.manual_seed(0)
    return Seq2SeqTransformer(transformer_config("transformer_tiny", V, PAD, **overrides)).eval()


def tokens(b: int, t: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, V, (b, t), generator=g)  # [B, T], no specials


def test_forward_returns_logits_per_target_position():
    model = tiny()
    logits = model(tokens(3, 7), tokens(3, 5, seed=1))
    assert logits.shape == (3, 5, V)
    enc = model.encode(tokens(3, 7))
    assert enc.out.shape == (3, 7, 128) and enc.pad_mask.shape == (3, 7)


def test_both_presets_build_and_run():
    for name in ("transformer_small", "transformer_tiny"):
        model = Seq2SeqTransformer(transformer_config(name, V, PAD)).eval()
        assert model(tokens(2, 4), tokens(2, 3)).shape == (2, 3, V)


def test_unknown_preset_and_bad_heads_are_refused():
    with pytest.raises(ValueError, match="transformer_tiny"):
        transformer_config("transformer_huge", V, PAD)
    with pytest.raises(ValueError, match="divisible"):
        TransformerConfig(V, embed_dim=130, heads=4)


@pytest.mark.parametrize("side", ["right", "left"])
def test_source_padding_does_not_change_real_outputs(side):
    model = tiny()
    src, prev = tokens(1, 6), tokens(1, 4, seed=1)
    pads = torch.full((1, 3), PAD)
    padded = torch.cat([src, pads] if side == "right" else [pads, src], dim=1)  # [1, 9]
    real = slice(0, 6) if side == "right" else slice(3, 9)
    torch.testing.assert_close(model.encode(padded).out[:, real], model.encode(src).out)
    torch.testing.assert_close(model(padded, prev), model(src, prev), atol=1e-5, rtol=1e-5)


def test_decoder_is_causal():
    model = tiny()
    src, prev = tokens(2, 6), tokens(2, 5, seed=1)
    changed = prev.clone()
    changed[:, 3] = (changed[:, 3] + 1 - 3) % (V - 3) + 3  # another ordinary token
    a, b = model(src, prev), model(src, changed)
    torch.testing.assert_close(a[:, :3], b[:, :3])
    assert not torch.allclose(a[:, 3:], b[:, 3:])


def test_positions_follow_fairseq():
    toks = torch.tensor([[PAD, PAD, 5, 6], [5, 6, 7, PAD]])
    assert make_positions(toks, PAD).tolist() == [[0, 0, 1, 2], [1, 2, 3, 0]]
    assert make_positions(toks + 1, 1).tolist() == [[1, 1, 2, 3], [2, 3, 4, 1]]  # pad_id 1
    table = sinusoidal_table(10, 8, pad_id=1)
    assert table[1].abs().sum() == 0
    # Row p: sin(p * 10000^(-i/(half-1))) then cos of the same, i < half.
    assert torch.allclose(table[3, :4], torch.sin(3 * 10000 ** (-torch.arange(4) / 3)))
    assert torch.allclose(table[3, 4:], torch.cos(3 * 10000 ** (-torch.arange(4) / 3)))


def test_too_long_sequence_names_max_positions():
    model = tiny(max_positions=8)
    with pytest.raises(ValueError, match="max_positions"):
        model(tokens(1, 9), tokens(1, 3))


def expected_parameters(v: int, d: int, f: int, enc: int, dec: int, shared: bool) -> int:
    attn = 4 * (d * d + d)  # q, k, v, out projections with biases
    ffn = d * f + f + f * d + d
    norm = 2 * d
    embeds = v * d * (1 if shared else 2)  # output projection is tied: no extra table
    return embeds + enc * (attn + ffn + 2 * norm) + dec * (2 * attn + ffn + 3 * norm)


def test_small_parameter_count_matches_formula():
    model = Seq2SeqTransformer(transformer_config("transformer_small", 10000, PAD))
    assert model.num_parameters() == expected_parameters(10000, 512, 1024, 6, 6, False)
    assert model.num_parameters() == 41_783_296  # 31,543,296 in layers + 2 x 5,120,000 embeddings
    shared = Seq2SeqTransformer(
        transformer_config("transformer_small", 10000, PAD, share_all_embeddings=True)
    )
    assert shared.num_parameters() == expected_parameters(10000, 512, 1024, 6, 6, True)


def test_embedding_pad_rows_are_zero_and_init_is_fairseq():
    model = Seq2SeqTransformer(transformer_config("transformer_small", 10000, 1))
    for embed in (model.encoder_embed.embed_tokens, model.decoder_embed.embed_tokens):
        assert embed.weight[1].abs().sum() == 0
        assert abs(embed.weight[2:].std().item() - 512**-0.5) < 1e-3
    layer = model.encoder_layers[0]
    assert layer.ffn.fc1.bias.abs().sum() == 0 and layer.self_attn.q_proj.bias.abs().sum() == 0
    bound = (6 / (512 + 1024)) ** 0.5  # xavier_uniform
    assert layer.ffn.fc1.weight.abs().max() <= bound
    assert layer.ffn.fc1.weight.abs().max() > 0.95 * bound


def test_output_projection_is_tied_to_decoder_embedding():
    model = tiny()
    assert model.output_projection.weight is model.decoder_embed.embed_tokens.weight
    assert model.encoder_embed.embed_tokens is not model.decoder_embed.embed_tokens
    shared = tiny(share_all_embeddings=True)
    assert shared.encoder_embed.embed_tokens is shared.decoder_embed.embed_tokens
    assert shared.output_projection.weight is shared.encoder_embed.embed_tokens.weight


def test_dropout_gives_different_passes_in_training_only():
    model = tiny()
    src, prev = tokens(2, 6), tokens(2, 4, seed=1)
    torch.testing.assert_close(model(src, prev), model(src, prev))
    model.train()
    assert not torch.allclose(model(src, prev), model(src, prev))


def incremental_logits(model, src, prev, reorder=None):
    """Logits [B, T, V] of prev, one position at a time through the cache."""
    enc, cache = model.encode(src), model.new_cache()
    steps = []
    for t in range(1, prev.shape[1] + 1):
        if reorder is not None and t == 3:  # permute the batch mid-way, as beam search does
            cache.reorder(reorder, reorder)
            enc, prev = enc.index_select(reorder), prev.index_select(0, reorder)
            steps = [s.index_select(0, reorder) for s in steps]
        out = model.decode(prev[:, :t], enc, cache)
        assert out.shape == (prev.shape[0], 1, V)
        steps.append(out)
    return torch.cat(steps, dim=1)


@pytest.mark.parametrize("name", ["transformer_tiny", "transformer_small"])
def test_incremental_decode_equals_full_decode(name):
    torch.manual_seed(0)
    model = Seq2SeqTransformer(transformer_config(name, V, PAD)).eval()
    src = tokens(3, 7)
    src[0, 5:] = PAD  # padded source rows must work through the cache too
    prev = torch.cat([torch.full((3, 1), BOS), tokens(3, 5, seed=1)], dim=1)  # [3, 6]
    with torch.no_grad():
        full = model(src, prev)
        torch.testing.assert_close(incremental_logits(model, src, prev), full, atol=1e-5, rtol=0)


def test_cache_reorder_follows_the_batch():
    model = tiny()
    src = tokens(3, 7)
    prev = torch.cat([torch.full((3, 1), BOS), tokens(3, 5, seed=1)], dim=1)
    index = torch.tensor([2, 2, 0])  # duplicate and drop rows, like beam search
    with torch.no_grad():
        full = model(src.index_select(0, index), prev.index_select(0, index))
        got = incremental_logits(model, src, prev, reorder=index)
    torch.testing.assert_close(got, full, atol=1e-5, rtol=0)


def test_beams_share_their_sources_encoder_row():
    """g consecutive decoder rows may share one encoder row (beam search's beams of a source)."""
    model = tiny()
    src = tokens(2, 7)
    src[1, 4:] = PAD
    prev = torch.cat([torch.full((6, 1), BOS), tokens(6, 5, seed=1)], dim=1)  # 3 rows a source
    with torch.no_grad():
        enc = model.encode(src)
        copies = enc.index_select(torch.arange(2).repeat_interleave(3))
        got, want = model.decode(prev, enc), model.decode(prev, copies)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_cache_follows_beams_and_drops_finished_sources():
    model = tiny()
    src = tokens(2, 7)
    src[0, 5:] = PAD
    prev = torch.cat([torch.full((6, 1), BOS), tokens(6, 5, seed=1)], dim=1)  # [6, 6]
    moved = torch.tensor([2, 0, 0, 4, 3, 3])  # rows move among the beams of their source
    with torch.no_grad():
        enc, cache = model.encode(src), model.new_cache()
        for t in (1, 2):
            model.decode(prev[:, :t], enc, cache)
        cache.reorder(moved)  # two reorders before the next step compose
        cache.reorder(torch.tensor([3, 4, 5]), torch.tensor([1]))  # source 0 is done
        prev, enc = prev.index_select(0, moved)[3:], enc.index_select(torch.tensor([1]))
        got = torch.cat([model.decode(prev[:, :t], enc, cache) for t in (3, 4, 5, 6)], dim=1)
        want = model(src[1:].expand(3, -1), prev)[:, 2:]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_incremental_decode_refuses_a_skipped_step():
    model = tiny()
    enc, cache = model.encode(tokens(1, 4)), model.new_cache()
    model.decode(torch.tensor([[BOS]]), enc, cache)
    with pytest.raises(ValueError, match="cache holds 1"):
        model.decode(torch.tensor([[BOS, 5, 6]]), enc, cache)
