import math

import pytest
import torch
from torch import nn

from idistill.analysis.pruning import pruned, pruning_curve
from idistill.analysis.sensitivity import counted_parameters


def two_layers() -> nn.Module:
    """Linear(4, 3) -> Linear(3, 2) with every weight and bias nonzero and distinct."""
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.copy_(torch.arange(1, p.numel() + 1, dtype=torch.float32).reshape(p.shape) + 100 * i)
    return model


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def assert_restored(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name


def low_in_second() -> dict[str, torch.Tensor]:
    """Sensitivities where the second layer's 6 weights are all below the first layer's 12."""
    order = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    return {
        "0.weight": (6.0 + order.float()).reshape(3, 4),  # 6 .. 17
        "1.weight": torch.tensor([[5.0, 0.0, 3.0], [1.0, 4.0, 2.0]]),  # 0 .. 5
    }


def test_pruned_zeroes_the_globally_lowest_floor_ratio_n():
    model = two_layers()
    params, sens = counted_parameters(model), low_in_second()
    assert list(params) == ["0.weight", "1.weight"]
    before = snapshot(model)
    n = 18
    with pruned(params, sens, 0.5) as zeroed:
        assert zeroed == math.floor(0.5 * n) == 9
        gone = torch.cat([(p == 0).reshape(-1) for p in params.values()])  # [n]
        scores = torch.cat([sens[name].reshape(-1) for name in params])  # [n]
        assert int(gone.sum()) == 9
        assert scores[gone].max() < scores[~gone].min()
        assert (params["1.weight"] == 0).all()  # the whole low tensor, not half of each
        assert int((params["0.weight"] == 0).sum()) == 3
        for name in ("0.bias", "1.bias"):
            assert torch.equal(dict(model.named_parameters())[name], before[name])
    assert_restored(model, before)


def test_pruned_count_is_floor_of_ratio_times_n():
    model = two_layers()
    params, sens = counted_parameters(model), low_in_second()
    for ratio in (0.1, 0.25, 0.3, 0.75, 0.99):
        with pruned(params, sens, ratio) as zeroed:
            got = sum(int((p == 0).sum()) for p in params.values())
            assert got == zeroed == math.floor(ratio * 18)


def test_pruned_breaks_ties_in_parameter_then_row_major_order():
    model = two_layers()
    params = counted_parameters(model)
    sens = {name: torch.ones_like(p) for name, p in params.items()}
    with pruned(params, sens, 0.25) as zeroed:  # floor(4.5) = 4: the first 4 of "0.weight"
        assert zeroed == 4
        assert torch.equal(params["0.weight"].reshape(-1)[:4], torch.zeros(4))
        assert (params["0.weight"].reshape(-1)[4:] != 0).all()
        assert (params["1.weight"] != 0).all()


def test_pruned_restores_exactly_when_the_body_raises():
    model = two_layers()
    before = snapshot(model)
    params, sens = counted_parameters(model), low_in_second()
    with pytest.raises(RuntimeError, match="evaluation failed"), pruned(params, sens, 0.5):
        raise RuntimeError("evaluation failed")
    assert_restored(model, before)


def test_pruned_ratio_zero_changes_nothing():
    model = two_layers()
    before = snapshot(model)
    with pruned(counted_parameters(model), low_in_second(), 0.0) as zeroed:
        assert zeroed == 0
        assert_restored(model, before)


@pytest.mark.parametrize("ratio", [1.0, -0.1, math.nan])
def test_pruned_rejects_ratio_outside_0_1(ratio):
    params, sens = counted_parameters(two_layers()), low_in_second()
    with pytest.raises(ValueError, match=rf"\(got {ratio}\)"), pruned(params, sens, ratio):
        pass


def test_pruned_rejects_sens_of_other_params():
    params, sens = counted_parameters(two_layers()), low_in_second()
    partial = {"0.weight": sens["0.weight"]}
    with (
        pytest.raises(ValueError, match=r"missing in sens: \['1.weight'\]"),
        pruned(params, partial, 0.5),
    ):
        pass
    sens["1.weight"] = sens["1.weight"].T  # [3, 2] for a [2, 3] weight
    with pytest.raises(ValueError, match=r"shape \(3, 2\)"), pruned(params, sens, 0.5):
        pass


def test_pruning_curve_counts_nonzero_weights_and_restores():
    model = two_layers()
    params, sens = counted_parameters(model), low_in_second()
    before = snapshot(model)

    def nonzero() -> float:
        return float(sum(int((p != 0).sum()) for p in params.values()))

    curve = pruning_curve(params, sens, [0.0, 0.25, 0.5, 0.75], nonzero)
    assert curve == [(0.0, 18.0), (0.25, 14.0), (0.5, 9.0), (0.75, 5.0)]  # 18 - floor(r * 18)
    assert_restored(model, before)


def test_pruning_curve_loss_rises_from_zero_and_restores():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))
    x = torch.randn(32, 8)
    y = model(x).detach()  # the unpruned model fits exactly: loss 0

    def loss() -> float:
        with torch.no_grad():
            return float(((model(x) - y) ** 2).mean())

    params = counted_parameters(model)
    sens = {name: p.detach().abs() for name, p in params.items()}  # magnitude as a stand-in
    before = snapshot(model)
    curve = pruning_curve(params, sens, [0.0, 0.3, 0.6, 0.9], loss)
    values = [value for _, value in curve]
    assert values[0] == 0.0
    assert values[-1] > values[0]
    assert_restored(model, before)


def test_pruning_curve_checks_every_ratio_before_evaluating():
    model = two_layers()
    calls = []
    with pytest.raises(ValueError, match=r"\(got 1.5\)"):
        pruning_curve(
            counted_parameters(model), low_in_second(), [0.1, 1.5], lambda: calls.append(1)
        )
    assert calls == []
