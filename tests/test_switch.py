"""Tests for idistill/models/switch.py: top-1 routing, capacity, padding, balance loss, model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from idistill.generate import beam_search
from idistill.intra import intra_distill_loss
from idistill.models.switch import (
    SwitchFeedForward,
    expert_capacity,
    load_balancing_loss,
    within_capacity,
)
from idistill.models.transformer import (
    FeedForward,
    Seq2SeqTransformer,
    TransformerConfig,
    transformer_config,
)
from idistill.recipes.translation import build_model

PAD, BOS, EOS, V = 0, 1, 2, 40
D, E = 16, 4
CONF = Path(__file__).resolve().parents[1] / "conf" / "model"


def switch_layer(capacity_factor: float = 1.0, seed: int = 0) -> SwitchFeedForward:
    torch.manual_seed(seed)
    experts = [FeedForward(D, 32, 0.0) for _ in range(E)]
    return SwitchFeedForward(D, experts, capacity_factor)


def switch_model(**overrides) -> Seq2SeqTransformer:
    torch.manual_seed(0)
    cfg = transformer_config("transformer_tiny", V, PAD, experts=E, **overrides)
    return Seq2SeqTransformer(cfg)


def tokens(b: int, t: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, V, (b, t), generator=g)  # [B, T], no specials


def record_expert_inputs(layer: SwitchFeedForward) -> list[list[torch.Tensor]]:
    """Rows each expert receives, per expert, filled in by forward hooks."""
    seen: list[list[torch.Tensor]] = [[] for _ in layer.experts]
    for e, ffn in enumerate(layer.experts):
        ffn.register_forward_hook(lambda _m, args, _out, e=e: seen[e].append(args[0].detach()))
    return seen


def test_each_token_goes_to_exactly_one_expert():
    layer = switch_layer().eval()  # no capacity limit in eval
    x = torch.randn(3, 5, D)
    seen = record_expert_inputs(layer)
    out = layer(x)
    got = torch.cat([rows for per_expert in seen for rows in per_expert])  # [N, D]
    assert got.shape == (15, D)  # every token once, over all experts together
    assert torch.unique(got, dim=0).shape[0] == 15  # and no token twice
    probs, expert = layer.route(x.reshape(-1, D))
    assert len(set(expert.tolist())) > 1  # a random router spreads the tokens
    for i, row in enumerate(x.reshape(-1, D)):  # out = p_e * expert_e(x), e = argmax p
        e = int(expert[i])
        torch.testing.assert_close(out.reshape(-1, D)[i], probs[i, e] * layer.experts[e](row))


def test_balance_loss_is_one_for_a_balanced_load_or_a_uniform_router():
    uniform = torch.full((8, E), 1 / E)  # [N, E]
    balanced = torch.arange(8) % E  # every expert gets 2 of the 8 tokens
    assert load_balancing_loss(uniform, balanced).item() == pytest.approx(1.0)
    # E * sum_e f_e P_e with P_e = 1/E is 1 whatever f is: all tokens to expert 0 too.
    assert load_balancing_loss(uniform, torch.zeros(8, dtype=torch.long)).item() == pytest.approx(1)
    confident = torch.nn.functional.one_hot(torch.zeros(8, dtype=torch.long), E).float()
    assert load_balancing_loss(confident, torch.zeros(8, dtype=torch.long)).item() == pytest.approx(
        E
    )  # the worst case: all mass and all tokens on one expert
    assert load_balancing_loss(torch.empty(0, E), torch.empty(0, dtype=torch.long)).item() == 0


def test_zero_router_is_uniform_and_records_one_per_layer():
    model = switch_model().train()
    for module in model.modules():
        if isinstance(module, SwitchFeedForward):
            torch.nn.init.zeros_(module.router)
    model(tokens(2, 6), tokens(2, 5, seed=1))
    layers = model.cfg.encoder_layers + model.cfg.decoder_layers
    assert model.pop_balance_loss().item() == pytest.approx(layers)  # summed over layers
    assert model.pop_balance_loss().item() == 0  # popped: nothing left


def test_tokens_over_capacity_get_zero_ffn_output():
    layer = switch_layer().train()
    torch.nn.init.zeros_(layer.router)  # uniform probabilities: argmax picks expert 0 for all
    x = torch.randn(1, 10, D)
    out = layer(x)[0]  # [10, D]
    capacity = expert_capacity(10, E, 1.0)
    assert capacity == 3  # ceil(1.0 * 10 / 4)
    assert (out[:capacity].abs().sum(dim=1) > 0).all()  # the first 3 in order are processed
    assert (out[capacity:] == 0).all()  # the other 7 pass through the residual only
    assert layer.eval()(x)[0].abs().sum(dim=1).gt(0).all()  # eval: no limit


def test_within_capacity_counts_per_expert_in_order():
    expert = torch.tensor([0, 1, 0, 0, 1, 2])
    assert within_capacity(expert, 3, 2).tolist() == [True, True, True, False, True, True]
    assert within_capacity(expert, 3, None).all()


def test_changing_one_expert_changes_only_its_tokens():
    layer = switch_layer().eval()
    x = torch.randn(4, 6, D)
    _, expert = layer.route(x.reshape(-1, D))
    mine = expert.eq(1)  # [N]
    assert mine.any() and not mine.all()
    before = layer(x).reshape(-1, D)
    with torch.no_grad():
        layer.experts[1].fc1.weight.add_(0.5)
    after = layer(x).reshape(-1, D)
    torch.testing.assert_close(after[~mine], before[~mine], rtol=0, atol=0)
    assert (after[mine] - before[mine]).abs().sum(dim=1).gt(0).all()


def test_padding_is_neither_routed_nor_counted():
    layer = switch_layer(capacity_factor=E).train()  # room for every token: none dropped
    x = torch.randn(2, 5, D)
    keep = torch.tensor([[True] * 5, [True, True, False, False, False]])  # [B, T]
    seen = record_expert_inputs(layer)
    out = layer(x, keep)
    assert (out[~keep] == 0).all()
    assert sum(len(rows) for per_expert in seen for rows in per_expert) == 7
    probs, expert = layer.route(x[keep])  # the 7 real tokens alone
    torch.testing.assert_close(layer.pop_balance_loss(), load_balancing_loss(probs, expert))
    # Capacity counts real tokens only: the same tokens without the pads give the same output.
    layer.capacity_factor = 1.0
    torch.testing.assert_close(layer(x, keep)[keep], layer(x[keep][None])[0])


def test_pop_balance_loss_averages_the_forwards_and_eval_records_nothing():
    layer = switch_layer().train()
    x1, x2 = torch.randn(1, 6, D), torch.randn(1, 6, D)
    expected = [load_balancing_loss(*layer.route(x[0])) for x in (x1, x2)]
    layer(x1), layer(x2)
    torch.testing.assert_close(layer.pop_balance_loss(), torch.stack(expected).mean())
    layer.eval()(x1)
    assert layer.pop_balance_loss().item() == 0
    dense = Seq2SeqTransformer(transformer_config("transformer_tiny", V, PAD)).train()
    dense(tokens(2, 4), tokens(2, 3))
    loss = dense.pop_balance_loss()
    assert loss.item() == 0 and loss.dtype == torch.float32


@pytest.mark.parametrize("passes", ["concat", "loop"])
def test_switch_model_trains_a_step_with_k_passes(passes):
    model = switch_model().train()
    src, prev = tokens(3, 7), tokens(3, 5, seed=1)
    src[0, 5:] = PAD
    batch = {"src_tokens": src, "prev_output_tokens": prev, "target": tokens(3, 5, seed=2)}

    def task(logits, b):
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), b["target"].flatten())

    res = intra_distill_loss(
        lambda b: model(b["src_tokens"], b["prev_output_tokens"]),
        batch,
        task,
        k=2,
        alpha=1.0,
        passes=passes,
    )
    balance = model.pop_balance_loss()
    assert 0 < balance.item() <= 4 * E  # 4 switch layers, each at most E
    (res.loss + model.cfg.balance_coef * balance).backward()
    for module in model.modules():
        if isinstance(module, SwitchFeedForward):
            assert module.router.grad is not None and module.router.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_padding_does_not_change_real_outputs(mode):
    model = switch_model(dropout=0.0).train(mode == "train")  # train: capacity limits apply
    src, prev = tokens(1, 9), tokens(1, 6, seed=1)
    padded_src = torch.cat([torch.full((1, 3), PAD), src], dim=1)  # [1, 12], left-padded
    padded_prev = torch.cat([prev, torch.full((1, 4), PAD)], dim=1)  # [1, 10], right-padded
    got = model(padded_src, padded_prev)[:, :6]
    torch.testing.assert_close(got, model(src, prev), atol=1e-5, rtol=1e-5)


def test_switch_incremental_decode_equals_full_decode_and_beam_search_runs():
    model = switch_model().eval()
    src = tokens(3, 7)
    src[1, 4:] = PAD
    prev = torch.cat([torch.full((3, 1), BOS), tokens(3, 4, seed=1)], dim=1)  # [3, 5]
    with torch.no_grad():
        full = model(src, prev)
        enc, cache = model.encode(src), model.new_cache()
        steps = [model.decode(prev[:, :t], enc, cache) for t in range(1, 6)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
    hyps = beam_search(model, src, bos_id=BOS, eos_id=EOS, pad_id=PAD, beam=2, max_len_b=4)
    assert len(hyps) == 3 and all(len(h) <= 4 + int(1.2 * 7) for h in hyps)


def expected_switch_extra(d: int, f: int, layers: int, experts: int) -> int:
    """Parameters a switch model adds to its dense twin: (E - 1) more FFNs + an E x D router."""
    return layers * ((experts - 1) * (d * f + f + f * d + d) + experts * d)


def test_switch_small_parameter_count_matches_formula():
    def count(**kw) -> int:  # parameters without building the 80M-parameter model
        cfg = transformer_config("transformer_small", 12000, PAD, **kw)
        with torch.device("meta"):
            return Seq2SeqTransformer(cfg).num_parameters()

    dense, switch = count(), count(experts=4)
    assert dense == 43_831_296  # 31,543,296 in layers + 2 x 6,144,000 embeddings
    assert switch - dense == expected_switch_extra(512, 1024, 12, 4) == 37_828_608
    assert switch == 81_659_904


def test_switch_small_yaml_is_transformer_small_plus_switch_keys():
    small = OmegaConf.to_container(OmegaConf.load(CONF / "transformer_small.yaml"))
    switch = OmegaConf.to_container(OmegaConf.load(CONF / "switch_small.yaml"))
    extra = {k: v for k, v in switch.items() if small.get(k, "absent") != v}
    assert extra == {
        "name": "switch",
        "experts": 4,
        "capacity_factor": 1.0,
        "eval_capacity_factor": None,
        "balance_coef": 0.01,
    }
    tiny = {**switch, "embed_dim": 32, "ffn_dim": 32, "encoder_layers": 1, "decoder_layers": 1}
    model = build_model(tiny, V, PAD)
    assert isinstance(model.encoder_layers[0].ffn, SwitchFeedForward)
    assert model.cfg.balance_coef == 0.01
    with pytest.raises(ValueError, match="unknown key model.expert "):
        build_model({**tiny, "expert": 4}, V, PAD)


def test_bad_switch_settings_are_refused():
    with pytest.raises(ValueError, match="model.experts must be >= 0"):
        TransformerConfig(V, experts=-1)
    with pytest.raises(ValueError, match="model.capacity_factor must be > 0"):
        TransformerConfig(V, experts=4, capacity_factor=0.0)
    with pytest.raises(ValueError, match="model.balance_coef"):
        TransformerConfig(V, experts=4, balance_coef=-1.0)
