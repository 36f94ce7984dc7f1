"""The fused, chunked implementation of label-smoothed CE + divergence between K passes.

Computes the same values and gradients as `reference.py` (the tests hold it to that), but
keeps no [K, ..., V] log-probabilities for the backward pass: it recomputes chunk by chunk
and writes the closed-form gradient, optionally through torch.compile'd kernels.
"""

import functools
import logging
import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from idistill.losses.reference import CLASSIFICATION_DIVERGENCES

log = logging.getLogger(__name__)


def intra_output_loss(
    logits: Tensor,
    target: Tensor,
    epsilon: float,
    ignore_index: int | None,
    name: str,
    mask: Tensor | None = None,
    compiled: bool = False,
    reuse: bool = False,
) -> tuple[Tensor, Tensor]:
    """(mean over the K passes of the summed label-smoothed CE, divergence) of logits
    [K, ..., V] against target [...], in one pass over the logits.

    Equal to the mean over i of `reference.label_smoothed_nll_loss(logits[i], target, ...)[0]`
    and to `reference.FORMULAS[name](list(logits), mask)`, but no [K, ..., V] log-probabilities
    are kept for the backward pass: it recomputes chunk by chunk and writes one gradient.
    name: "x", "js" or "jeffrey"; mask None means every position whose target is not
    ignore_index.
    compiled: full chunks run through torch.compile'd kernels (eager if compiling fails).
    reuse: the backward writes the logits' gradient into the logits' own memory (no second
    [K, ..., V] tensor); only for logits nothing else reads after the backward pass.
    """
    k, vocab = logits.shape[0], logits.shape[-1]
    if tuple(target.shape) != tuple(logits.shape[1:-1]):
        raise ValueError(
            f"target shape {tuple(target.shape)} must equal the logits' position shape "
            f"{tuple(logits.shape[1:-1])} (logits {tuple(logits.shape)})"
        )
    if vocab < 2:
        raise ValueError(f"label smoothing needs at least 2 classes (got V={vocab})")
    keep = (
        torch.ones_like(target, dtype=torch.bool)
        if ignore_index is None
        else target != ignore_index
    )
    if mask is None:
        mask = keep
    flat = logits.reshape(k, -1, vocab)  # a view when the K passes were one concatenated forward
    ce = (target.reshape(-1), keep.reshape(-1))
    return _fused(flat, ce, mask, epsilon, name, compiled, reuse)


def logits_divergence(
    logits: Tensor,
    name: str,
    mask: Tensor | None = None,
    compiled: bool = False,
    reuse: bool = False,
) -> Tensor:
    """Divergence `name` ("x", "js" or "jeffrey") between the K passes of logits [K, ..., V],
    summed over the positions where mask [...] is True (None: all): equal to
    `reference.FORMULAS[name](list(logits), mask)`, computed like `intra_output_loss`.
    reuse: as in `intra_output_loss`.
    """
    flat = logits.reshape(logits.shape[0], -1, logits.shape[-1])  # [K, N, V]
    return _fused(flat, None, mask, 0.0, name, compiled, reuse)[1]


def _fused(
    logits: Tensor,
    ce: tuple[Tensor, Tensor] | None,
    mask: Tensor | None,
    epsilon: float,
    name: str,
    compiled: bool = False,
    reuse: bool = False,
) -> tuple[Tensor, Tensor]:
    """(CE, divergence) of logits [K, N, V]; ce = (target [N], counted [N]) or None."""
    if name not in CLASSIFICATION_DIVERGENCES:
        raise ValueError(
            f"the fused loss computes one of {', '.join(CLASSIFICATION_DIVERGENCES)} "
            f"(got {name!r}); mse: use reference.mse"
        )
    k, n, _ = logits.shape
    counted = torch.zeros(n, dtype=torch.bool, device=logits.device)
    div_w = mask.reshape(-1) if mask is not None else torch.ones_like(counted)
    if ce is not None:
        counted |= ce[1]
    counted |= div_w
    rows = counted.nonzero().squeeze(1)  # [M] positions that count for either term
    idle = (~counted).nonzero().squeeze(1) if reuse else None  # the rest: zero gradient
    ce_w = (ce[1][rows] if ce is not None else torch.zeros_like(rows, dtype=torch.bool)).float()
    div_w = div_w[rows].float() if k > 1 else torch.zeros_like(ce_w)
    target = ce[0][rows] if ce is not None else torch.zeros_like(rows)
    terms = ("js" if name == "js" else "x", ce is not None, k > 1)
    value_ce, value_div = _FusedOutputLoss.apply(
        logits, rows, target, ce_w, div_w, epsilon, terms, compiled, idle
    )
    # jeffrey: since sum_i (p_i - p_bar) = 0, x = (1/K^2) sum_ij KL(p_i||p_j), so the
    # symmetric pairwise sum (eq. 14 / K^2) is exactly twice x; no [K, K, ..., V] tensor.
    return value_ce, (2.0 * value_div if name == "jeffrey" else value_div)


CHUNK_ELEMENTS = 1 << 21  # CPU: ~8 MB of float32 per temporary, cache-sized, no page faults
CUDA_CHUNK_ELEMENTS = 1 << 26  # GPU: 256 MB per temporary, few kernel launches


def _chunk(logits: Tensor) -> int:
    """Positions per chunk of a [K, M, V] computation on `logits`' device."""
    k, _, vocab = logits.shape
    elements = CUDA_CHUNK_ELEMENTS if logits.is_cuda else CHUNK_ELEMENTS
    return max(1, elements // (k * vocab))


class _FusedOutputLoss(torch.autograd.Function):
    """Label-smoothed CE of each pass and the X or JS divergence between the passes, from
    logits [K, N, V], over the positions `rows` [M], in chunks of positions.

    Autograd through the plain formulas keeps about ten [K, M, V] float32 tensors for the
    backward pass; this keeps the logits and two [K, M] vectors, and the backward recomputes
    each chunk and writes the closed-form gradient (see _forward_chunk / _backward_chunk).
    compiled: full chunks go through torch.compile'd versions of the chunk functions (one
    fused loop instead of ~20 passes over memory); the last, shorter chunk stays eager so
    that one shape is compiled per run. Returns (mean over passes of the summed CE,
    divergence), both float32.
    """

    @staticmethod
    def forward(ctx, logits, rows, target, ce_w, div_w, epsilon, terms, compiled, idle):
        k, _, vocab = logits.shape
        m, step = rows.numel(), _chunk(logits)
        scalars = (epsilon, epsilon / (vocab - 1), *terms)
        total_ce = logits.new_zeros((), dtype=torch.float32)
        total_div = logits.new_zeros((), dtype=torch.float32)
        lse_all = logits.new_empty((k, m), dtype=torch.float32)
        spread_all = logits.new_zeros((k, m), dtype=torch.float32)  # S_i (x) or KL_i (js)
        for lo in range(0, m, step):
            hi = min(lo + step, m)
            fn = _kernel("forward", compiled and hi - lo == step, logits.device.type)
            z = logits.index_select(1, rows[lo:hi])  # [K, c, V]
            ce, div, lse, spread = fn(z, target[lo:hi], ce_w[lo:hi], div_w[lo:hi], *scalars)
            total_ce += ce
            total_div += div
            lse_all[:, lo:hi] = lse
            spread_all[:, lo:hi] = spread
        ctx.save_for_backward(logits, rows, target, ce_w, div_w, lse_all, spread_all, idle)
        ctx.scalars, ctx.compiled = scalars, compiled
        return total_ce / k, total_div / k

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_ce: Tensor, grad_div: Tensor):
        logits, rows, target, ce_w, div_w, lse_all, spread_all, idle = ctx.saved_tensors
        m, step = rows.numel(), _chunk(logits)
        # [K, N, V], 0 outside `rows`; with `idle`, the logits' own memory (each chunk is read
        # before it is overwritten)
        grad = torch.zeros_like(logits) if idle is None else logits.index_fill_(1, idle, 0)
        for lo in range(0, m, step):
            hi = min(lo + step, m)
            fn = _kernel("backward", ctx.compiled and hi - lo == step, logits.device.type)
            g = fn(
                logits.index_select(1, rows[lo:hi]),
                target[lo:hi],
                # copies: a column slice's stride is the batch's position count, and a
                # compiled kernel guarded on it would recompile for every batch (.contiguous()
                # keeps that stride when K = 1, where the first dimension has size 1)
                lse_all[:, lo:hi].clone(memory_format=torch.contiguous_format),
                spread_all[:, lo:hi].clone(memory_format=torch.contiguous_format),
                grad_ce.float() * ce_w[lo:hi],
                grad_div.float() * div_w[lo:hi],
                *ctx.scalars,
            )
            grad.index_copy_(1, rows[lo:hi], g.to(grad.dtype))
        return grad, None, None, None, None, None, None, None, None


def _forward_chunk(z, target, ce_w, div_w, epsilon, eps_i, kind, with_ce, with_div):
    """Summed CE and divergence of one chunk of logits z [K, c, V] (any float dtype), and the
    per-pass vectors [K, c] the backward needs.

    With p_i = softmax(z_i), l_i = log p_i, lse_i = logsumexp(z_i), L = mean_i l_i,
    eps' = epsilon / (V - 1), per position:
      CE_i = (1 - epsilon - eps') (lse_i - z_i[t]) + eps' (V lse_i - sum_v z_i)
      X = (1/K) sum_i S_i,  S_i = sum_v p_i (l_i - L) = sum_v p_i (z_i - z_bar) - (lse_i - mean lse)
          (as sum_i (p_i - p_bar) = 0 this is eq. 8's (1/K) sum_iv (p_i - p_bar)(l_i - l_bar))
      JS = (1/K) sum_i KL_i,  KL_i = sum_v p_i (l_i - l_bar),  l_bar = log p_bar
    The sums returned are not yet divided by K.
    """
    k, _, vocab = z.shape
    z = z.float()
    top = z.amax(-1, keepdim=True)  # [K, c, 1]
    e = (z - top).exp()  # [K, c, V], one exp per element
    total = e.sum(-1, keepdim=True)
    p = e / total
    lse = (top + total.log()).squeeze(-1)  # [K, c]
    ce = z.new_zeros(())
    if with_ce:
        nll = lse - z.gather(-1, target.expand(k, -1).unsqueeze(-1)).squeeze(-1)  # [K, c]
        ce = (((1 - epsilon - eps_i) * nll + eps_i * (vocab * lse - z.sum(-1))) * ce_w).sum()
    spread = torch.zeros_like(lse)
    if with_div:
        if kind == "x":
            spread = (p * (z - z.mean(0))).sum(-1) - (lse - lse.mean(0))
        else:
            logp = z - lse.unsqueeze(-1)
            log_pbar = torch.logsumexp(logp, dim=0) - math.log(k)  # [c, V]
            spread = (p * (logp - log_pbar)).sum(-1)
    return ce, (spread.sum(0) * div_w).sum(), lse, spread


def _backward_chunk(z, target, lse, spread, v, u, epsilon, eps_i, kind, with_ce, with_div):
    """Gradient [K, c, V] (float32) of v * CE + u * divergence for one chunk (v, u [c]: the
    upstream gradients times each position's weight), in closed form:
      dCE_i/dz_i = (1/K) [p_i - (1 - epsilon - eps') onehot(t) - eps']
      dX/dz_i    = (1/K) [p_i (l_i - L - S_i + 1) - p_bar]
      dJS/dz_i   = (1/K) p_i (l_i - l_bar - KL_i)
    """
    k = z.shape[0]
    z = z.float()
    p = (z - lse.unsqueeze(-1)).exp()  # [K, c, V]
    u, v = u[None, :, None], v[None, :, None]  # [1, c, 1]
    if with_div and kind == "x":
        shift = (1 - (lse - lse.mean(0)) - spread).unsqueeze(-1)  # [K, c, 1]
        g = p * (u * (z - z.mean(0) + shift) + v) - u * p.mean(0)
    elif with_div:
        logp = z - lse.unsqueeze(-1)
        log_pbar = torch.logsumexp(logp, dim=0) - math.log(k)
        g = p * (u * (logp - log_pbar - spread.unsqueeze(-1)) + v)
    else:
        g = p * v
    if with_ce:
        hit = -(1 - epsilon - eps_i) * v.expand(k, -1, 1)  # [K, c, 1]
        g = (g - v * eps_i).scatter_add(-1, target.expand(k, -1).unsqueeze(-1), hit)
    return g / k


@functools.cache
def _kernel(which: str, compiled: bool, device_type: str):
    """The forward or backward chunk function; compiled: torch.compile'd, falling back to the
    eager function (with one warning) where compilation is unavailable."""
    eager = _forward_chunk if which == "forward" else _backward_chunk
    if not compiled:
        return eager
    fast = torch.compile(eager, dynamic=False)

    def run(*args):
        nonlocal fast
        try:
            return fast(*args)
        except Exception as e:  # no C++ compiler / Triton: keep training, eagerly
            if fast is eager:
                raise
            log.warning("torch.compile of the fused loss failed (%s); running it eagerly", e)
            fast = eager
            return eager(*args)

    return run
