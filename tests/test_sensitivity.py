import math

import numpy as np
import pytest
import torch
from torch import nn

from idistill.analysis.sensitivity import (
    SensitivityStats,
    counted_parameters,
    sensitivity,
    summarize,
    violin_sample,
)
from idistill.losses import label_smoothed_nll_loss
from idistill.models.transformer import Seq2SeqTransformer, transformer_config


class TwoWeights(nn.Module):
    """y = w2 @ (w1 @ x): w1 = [[a, b]] = [[1, 2]], w2 = [[3]]; optional dropout in between."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.w1 = nn.Parameter(torch.tensor([[1.0, 2.0]]))  # [1, 2]
        self.w2 = nn.Parameter(torch.tensor([[3.0]]))  # [1, 1]
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [N, 2] -> y [1, N]
        return self.w2 @ self.drop(self.w1 @ x.T)


def squared_loss(model: nn.Module, batch) -> torch.Tensor:
    x, t = batch
    return ((model(x) - t) ** 2).sum()


# Batch 1: x = (1, 1), t = 0:  h = 3, y = 9, dL/dy = 2(y - t) = 18
#   g_a = 18 * 3 * 1 = 54, g_b = 54, g_w2 = 18 * h = 54
#   |theta * g|: a 54, b 108, w2 162
# Batch 2: x = (1, 1), t = 20: h = 3, y = 9, dL/dy = -22
#   g_a = g_b = g_w2 = -66;  |theta * g|: a 66, b 132, w2 198
BATCHES = [
    (torch.tensor([[1.0, 1.0]]), torch.tensor(0.0)),
    (torch.tensor([[1.0, 1.0]]), torch.tensor(20.0)),
]
EXPECTED = {"w1": [[60.0, 120.0]], "w2": [[180.0]]}  # mean of the per-batch |theta * g|
OF_MEAN_GRAD = {"w1": [[6.0, 12.0]], "w2": [[18.0]]}  # |theta * mean g|: (54 - 66) / 2 = -6


def test_sensitivity_is_mean_of_per_batch_abs_theta_grad_by_hand():
    sens = sensitivity(TwoWeights(), BATCHES, squared_loss)
    assert set(sens) == {"w1", "w2"}
    for name, expected in EXPECTED.items():
        assert torch.allclose(sens[name], torch.tensor(expected))
        assert not torch.allclose(sens[name], torch.tensor(OF_MEAN_GRAD[name]))


def test_sensitivity_only_of_given_params():
    model = TwoWeights()
    sens = sensitivity(model, BATCHES, squared_loss, {"w2": model.w2})
    assert list(sens) == ["w2"]
    assert torch.allclose(sens["w2"], torch.tensor(EXPECTED["w2"]))


def test_sensitivity_returns_detached_float32_like_params():
    model = TwoWeights()
    sens = sensitivity(model, BATCHES, squared_loss)
    for name, p in model.named_parameters():
        assert sens[name].shape == p.shape
        assert sens[name].dtype == torch.float32
        assert not sens[name].requires_grad


def test_sensitivity_turns_dropout_off_and_is_deterministic():
    model = TwoWeights(dropout=0.9).train()
    first = sensitivity(model, BATCHES, squared_loss)
    second = sensitivity(model, BATCHES, squared_loss)
    for name, expected in EXPECTED.items():
        assert torch.allclose(first[name], torch.tensor(expected))
        assert torch.equal(first[name], second[name])


def test_sensitivity_draws_no_random_numbers():
    model = TwoWeights(dropout=0.5).train()
    torch.manual_seed(3)
    sensitivity(model, BATCHES, squared_loss)
    after = torch.rand(4)
    torch.manual_seed(3)
    assert torch.equal(after, torch.rand(4))


def test_sensitivity_restores_each_modules_training_mode():
    model = TwoWeights(dropout=0.5).train()
    model.drop.eval()  # a mixed state must come back as it was, not as model.train()
    sensitivity(model, BATCHES, squared_loss)
    assert model.training and not model.drop.training


def test_sensitivity_restores_training_mode_on_error():
    model = TwoWeights(dropout=0.5).train()

    def failing(model, batch):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        sensitivity(model, BATCHES, failing)
    assert model.training and model.drop.training


def test_sensitivity_leaves_grads_as_they_were():
    model = TwoWeights()
    model.w1.grad = torch.tensor([[7.0, 8.0]])
    sensitivity(model, BATCHES, squared_loss)
    assert torch.equal(model.w1.grad, torch.tensor([[7.0, 8.0]]))
    assert model.w2.grad is None


def test_sensitivity_of_frozen_parameter_keeps_it_frozen():
    model = TwoWeights()
    model.w2.requires_grad_(False)
    sens = sensitivity(model, BATCHES, squared_loss, {"w1": model.w1, "w2": model.w2})
    assert torch.allclose(sens["w2"], torch.tensor(EXPECTED["w2"]))
    assert not model.w2.requires_grad and model.w1.requires_grad


def test_sensitivity_of_unreached_parameter_is_zero():
    model = TwoWeights()
    model.unused = nn.Parameter(torch.ones(2, 2))
    sens = sensitivity(model, BATCHES, squared_loss)
    assert torch.equal(sens["unused"], torch.zeros(2, 2))


def test_sensitivity_rejects_empty_batches():
    with pytest.raises(ValueError, match="at least one batch"):
        sensitivity(TwoWeights(), [], squared_loss)


def test_sensitivity_rejects_non_scalar_and_non_finite_loss():
    with pytest.raises(ValueError, match="scalar"):
        sensitivity(TwoWeights(), BATCHES, lambda m, b: m(b[0]) - b[1])
    with pytest.raises(ValueError, match="non-finite"):
        sensitivity(TwoWeights(), BATCHES, lambda m, b: squared_loss(m, b) * math.inf)


@pytest.fixture(scope="module")
def tiny() -> Seq2SeqTransformer:
    torch.manual_seed(0)
    return Seq2SeqTransformer(transformer_config("transformer_tiny", 100, 1))


def test_counted_parameters_of_transformer_are_the_matrices(tiny):
    names = list(counted_parameters(tiny))
    assert not [n for n in names if n.endswith("bias") or "layer_norm" in n]
    assert "encoder_embed.embed_tokens.weight" in names
    assert "decoder_embed.embed_tokens.weight" in names  # tied with the output projection
    assert "output_projection.weight" not in names  # ... and counted once
    assert "encoder_layers.0.self_attn.q_proj.weight" in names
    assert all(p.dim() >= 2 for p in counted_parameters(tiny).values())


def test_counted_parameters_include_and_exclude(tiny):
    only_q = counted_parameters(tiny, include=["*.q_proj.*"])
    assert only_q and all(".q_proj." in n for n in only_q)
    assert len(only_q) == 6  # 2 encoder self-attn + 2 x (decoder self- and cross-attn)
    no_embed = counted_parameters(tiny, exclude=["*embed*"])
    assert no_embed and not [n for n in no_embed if "embed" in n]
    assert set(no_embed) < set(counted_parameters(tiny))


def test_counted_parameters_without_match_names_the_patterns(tiny):
    with pytest.raises(ValueError, match=r"no_such_layer\*"):
        counted_parameters(tiny, include=["no_such_layer*"])
    with pytest.raises(ValueError, match=r"exclude=\['\*'\]"):
        counted_parameters(tiny, exclude=["*"])


def test_sensitivity_of_transformer_with_label_smoothed_ce(tiny):
    pad = 1
    gen = torch.Generator().manual_seed(0)
    src = torch.randint(2, 100, (2, 5), generator=gen)  # [B, S]
    prev = torch.randint(2, 100, (2, 4), generator=gen)  # [B, T]
    target = torch.randint(2, 100, (2, 4), generator=gen)  # [B, T]
    target[1, -1] = prev[1, -1] = pad

    def token_loss(model, batch):
        src, prev, target = batch
        loss, _ = label_smoothed_nll_loss(model(src, prev), target, 0.1, pad)
        return loss / target.ne(pad).sum()

    params = counted_parameters(tiny)
    sens = sensitivity(tiny, [(src, prev, target)] * 2, token_loss, params)
    assert list(sens) == list(params)
    for name, p in params.items():
        assert sens[name].shape == p.shape
        assert torch.isfinite(sens[name]).all() and (sens[name] >= 0).all()
    assert summarize(sens).mean > 0


def test_summarize_matches_numpy():
    gen = torch.Generator().manual_seed(1)
    sens = {"a": torch.rand(17, 6, generator=gen), "b": torch.rand(3, 7, generator=gen) * 5}
    values = np.concatenate([s.numpy().ravel() for s in sens.values()]).astype(np.float64)
    n = values.size  # 123: 20% is 24.6 -> the 25 largest are the top
    k = math.ceil(0.2 * n)
    assert k == 25
    ordered = np.sort(values)[::-1]
    stats = summarize(sens)
    assert stats.count == n
    assert stats.mean == pytest.approx(values.mean(), rel=1e-6)
    assert stats.std == pytest.approx(values.std(), rel=1e-6)  # population std (ddof=0)
    assert stats.top20_mean == pytest.approx(ordered[:k].mean(), rel=1e-6)
    assert stats.bottom80_mean == pytest.approx(ordered[k:].mean(), rel=1e-6)


def test_summarize_splits_ties_at_the_boundary_by_hand():
    # 10 values 5,3,3,3,1,0,0,0,0,0: top 2 = {5, 3} -> 4; bottom 8 = {3, 3, 1, 0 x5} -> 7/8
    sens = {"a": torch.tensor([[5.0, 3.0], [3.0, 0.0]]), "b": torch.tensor([3.0, 1, 0, 0, 0, 0])}
    stats = summarize(sens)
    assert (stats.top20_mean, stats.bottom80_mean, stats.count) == (4.0, 0.875, 10)
    assert stats.mean == pytest.approx(1.5)
    assert stats.std == pytest.approx(math.sqrt((5**2 + 3 * 3**2 + 1) / 10 - 1.5**2))


def test_summarize_rejects_empty_and_nan():
    with pytest.raises(ValueError, match="at least one tensor"):
        summarize({})
    with pytest.raises(ValueError, match="'w'"):
        summarize({"w": torch.tensor([[1.0, math.nan]])})


def test_stats_as_metrics_names():
    stats = SensitivityStats(std=1.0, mean=2.0, top20_mean=3.0, bottom80_mean=4.0, count=5)
    assert stats.as_metrics() == {
        "sensitivity/std": 1.0,
        "sensitivity/mean": 2.0,
        "sensitivity/top20_mean": 3.0,
        "sensitivity/bottom80_mean": 4.0,
        "sensitivity/count": 5.0,
    }
    assert set(stats.as_metrics("train/sensitivity_")) == {
        f"train/sensitivity_{k}" for k in ("std", "mean", "top20_mean", "bottom80_mean", "count")
    }


@pytest.fixture
def spread() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    return {"a": torch.rand(100, 50, generator=gen), "b": torch.rand(50, 100, generator=gen) * 3}


def all_values(sens) -> np.ndarray:
    return np.concatenate([s.numpy().ravel() for s in sens.values()])


def test_violin_sample_drops_the_top_and_samples_the_fraction(spread):
    values = all_values(spread)  # 10,000 distinct values
    sample = violin_sample(spread, drop_top=0.01, fraction=0.1)
    assert sample.dtype == np.float32
    assert sample.size == 990  # 10% of the 9,900 left after dropping the top 100
    assert sample.max() <= np.quantile(values, 0.99)
    assert np.isin(sample, values).all()
    assert np.unique(sample).size == sample.size  # without replacement


def test_violin_sample_with_fraction_one_is_everything_but_the_top(spread):
    sample = violin_sample(spread, drop_top=0.01, fraction=1.0)
    assert np.array_equal(np.sort(sample), np.sort(all_values(spread))[:9900])


def test_violin_sample_caps_size_and_is_seeded(spread):
    assert violin_sample(spread, max_size=50).size == 50
    assert np.array_equal(violin_sample(spread, seed=4), violin_sample(spread, seed=4))
    assert not np.array_equal(violin_sample(spread, seed=4), violin_sample(spread, seed=5))


def test_violin_sample_rejects_bad_fractions(spread):
    with pytest.raises(ValueError, match="drop_top"):
        violin_sample(spread, drop_top=1.0)
    with pytest.raises(ValueError, match=r"fraction.*\(got 0\)"):
        violin_sample(spread, fraction=0)


def test_summarize_and_violin_sample_leave_sens_unchanged():
    gen = torch.Generator().manual_seed(3)
    sens = {"w": torch.rand(40, 30, generator=gen)}  # one tensor: the flat copy must be a copy
    before = sens["w"].clone()
    summarize(sens)
    violin_sample(sens, fraction=1.0)
    assert torch.equal(sens["w"], before)
