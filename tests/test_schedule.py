import math

import pytest

from idistill.schedule import (
    adaptive_alpha,
    alpha_at,
    constant_alpha,
    inverse_sqrt_lr,
    validate_adaptive,
)

N = 50_000  # the paper's IWSLT setting: alpha 5, p 5, q 10


def test_adaptive_alpha_is_zero_at_step_zero():
    assert adaptive_alpha(5.0, 0, N, 5, 10) == 0.0


def test_adaptive_alpha_is_one_at_n_over_q():
    assert adaptive_alpha(5.0, N // 10, N, 5, 10) == pytest.approx(1.0)
    assert adaptive_alpha(5.0, 5_000, 50_000, 6.25, 10) == pytest.approx(1.0)  # WMT


def test_adaptive_alpha_is_alpha_from_n_over_p_on():
    for step in (N // 5, N // 5 + 1, N, 2 * N):
        assert adaptive_alpha(5.0, step, N, 5, 10) == 5.0


def test_adaptive_alpha_follows_eq_12_in_between():
    gamma = math.log(1 / 5) / math.log(5 / 10)
    expected = 5**gamma * 5.0 / N**gamma * 3_000**gamma
    assert adaptive_alpha(5.0, 3_000, N, 5, 10) == pytest.approx(expected)


def test_adaptive_alpha_is_monotone_non_decreasing():
    values = [adaptive_alpha(5.0, s, N, 5, 10) for s in range(0, N + 1, 97)]
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_adaptive_alpha_is_constant_when_alpha_at_most_one(alpha):
    assert {adaptive_alpha(alpha, s, N, 5, 10) for s in (0, 10, N // 10, N)} == {alpha}


def test_p_not_below_q_is_refused_with_the_config_keys():
    with pytest.raises(ValueError, match=r"schedule.p must be < schedule.q \(got p=10, q=5\)"):
        adaptive_alpha(5.0, 0, N, 10, 5)
    with pytest.raises(ValueError, match="schedule.p must be < schedule.q"):
        validate_adaptive(5, 5)


@pytest.mark.parametrize("p", [0, -1])
def test_non_positive_p_is_refused(p):
    with pytest.raises(ValueError, match="schedule.p must be > 0"):
        adaptive_alpha(5.0, 0, N, p, 10)


def test_bad_total_steps_or_step_is_refused():
    with pytest.raises(ValueError, match="got 0"):
        adaptive_alpha(5.0, 0, 0, 5, 10)
    with pytest.raises(ValueError, match="got -1"):
        adaptive_alpha(5.0, -1, N, 5, 10)


def test_alpha_at_dispatches_and_refuses_unknown_schedules():
    assert alpha_at("constant", 5.0, 0, N, 5, 10) == constant_alpha(5.0, 0) == 5.0
    assert alpha_at("adaptive", 5.0, 0, N, 5, 10) == 0.0
    with pytest.raises(ValueError, match="cosine"):
        alpha_at("cosine", 5.0, 0, N, 5, 10)


def test_inverse_sqrt_lr_warms_up_linearly_to_the_peak():
    assert inverse_sqrt_lr(0, 5e-4, 4000) == pytest.approx(1e-7)
    assert inverse_sqrt_lr(2000, 5e-4, 4000) == pytest.approx((1e-7 + 5e-4) / 2)
    assert inverse_sqrt_lr(4000, 5e-4, 4000) == pytest.approx(5e-4)


def test_inverse_sqrt_lr_decays_as_inverse_sqrt_after_warmup():
    assert inverse_sqrt_lr(16000, 5e-4, 4000) == pytest.approx(5e-4 / 2)
    assert inverse_sqrt_lr(36000, 5e-4, 4000) == pytest.approx(5e-4 / 3)


def test_inverse_sqrt_lr_refuses_no_warmup():
    with pytest.raises(ValueError, match="warmup_updates must be >= 1"):
        inverse_sqrt_lr(1, 5e-4, 0)
