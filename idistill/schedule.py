"""Alpha schedules (paper eq. 11-12) and the learning-rate schedule (fairseq's inverse_sqrt)."""

import math

ALPHA_SCHEDULES = ("constant", "adaptive")


def validate_adaptive(p: float, q: float) -> None:
    """Refuse sentinels the adaptive schedule cannot use: it needs q > p > 0."""
    if p <= 0:
        raise ValueError(f"schedule.p must be > 0 (got p={p:g})")
    if p >= q:
        raise ValueError(f"schedule.p must be < schedule.q (got p={p:g}, q={q:g})")


def constant_alpha(alpha: float, step: int) -> float:
    """alpha for every update."""
    return alpha


def adaptive_alpha(alpha: float, step: int, total_steps: int, p: float, q: float) -> float:
    """Paper eq. 11-12: alpha' = (p^gamma * alpha / N^gamma) * x^gamma for x < N/p, else alpha.

    gamma = log_{p/q}(1/alpha), so alpha' is 0 at x = 0, 1 at x = N/q and alpha at x = N/p.
    Only used when alpha > 1; otherwise alpha is returned unchanged (constant).
    """
    validate_adaptive(p, q)
    if total_steps <= 0:
        raise ValueError(f"schedule.total_updates must be > 0 (got {total_steps})")
    if step < 0:
        raise ValueError(f"step must be >= 0 (got {step})")
    if alpha < 0:
        raise ValueError(f"method.alpha must be >= 0 (got {alpha:g})")
    if alpha <= 1:
        return alpha
    progress = p * step / total_steps  # reaches 1 at x = N/p
    if progress >= 1:
        return alpha
    gamma = math.log(1.0 / alpha) / math.log(p / q)
    return alpha * progress**gamma


def alpha_at(schedule: str, alpha: float, step: int, total_steps: int, p: float, q: float) -> float:
    """alpha' at update `step` under schedule "constant" or "adaptive"."""
    if schedule == "constant":
        return constant_alpha(alpha, step)
    if schedule == "adaptive":
        return adaptive_alpha(alpha, step, total_steps, p, q)
    raise ValueError(
        f"schedule.name must be one of {', '.join(ALPHA_SCHEDULES)} (got {schedule!r})"
    )


def inverse_sqrt_lr(
    step: int, peak_lr: float, warmup_updates: int, warmup_init_lr: float = 1e-7
) -> float:
    """fairseq's inverse_sqrt: linear warm-up to peak_lr, then peak_lr * sqrt(warmup / step).

    step counts finished updates (0 before the first one, which gets warmup_init_lr).
    """
    if warmup_updates < 1:
        raise ValueError(f"trainer.warmup_updates must be >= 1 (got {warmup_updates})")
    if step < 0:
        raise ValueError(f"step must be >= 0 (got {step})")
    if step < warmup_updates:
        return warmup_init_lr + step * (peak_lr - warmup_init_lr) / warmup_updates
    return peak_lr * math.sqrt(warmup_updates / step)


def linear_lr(step: int, peak_lr: float, warmup: int, total: int) -> float:
    """Linear warm-up from 0 to peak_lr over `warmup` updates, then linear decay to 0 at `total`."""
    if step < warmup:
        return peak_lr * step / warmup
    return peak_lr * max(0.0, (total - step) / max(1, total - warmup))


def learning_rate(
    schedule: str, step: int, peak_lr: float, warmup: int, total: int, warmup_init_lr: float
) -> float:
    """trainer.lr_schedule at `step`: inverse_sqrt (translation) or linear (fine-tuning)."""
    if schedule == "linear":
        return linear_lr(step, peak_lr, warmup, total)
    return inverse_sqrt_lr(step, peak_lr, max(1, warmup), warmup_init_lr)
