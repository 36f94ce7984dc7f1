"""A Switch Transformer FFN (Fedus, Zoph, Shazeer 2021): top-1 routing over E expert FFNs.

Per real (non-pad) token x: p = softmax(W_r x) in float32 (W_r [E, D], no bias), e = argmax p,
output = p_e * expert_e(x). In training each expert takes at most
capacity = ceil(capacity_factor * N / E) of the N real tokens, first come first served in
batch-major order; the tokens over capacity get a zero FFN output, so only the residual
carries them. In eval the limit is `eval_capacity_factor` (None: no limit, so every token is
routed on its own and incremental decoding equals full decoding). Pad tokens are neither
routed nor counted, and their output is zero.

Every training forward records the layer's load-balancing loss (paper eq. 4 without alpha)
E * sum_e f_e * P_e, with f_e the fraction of real tokens whose argmax is e (before capacity
is applied, as in mesh-tensorflow) and P_e the mean router probability of e. It is 1 at a
balanced load or a uniform router, E at worst. `pop_balance_loss` hands the mean over the
forwards since its last call to the training step and forgets them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def expert_capacity(tokens: int, experts: int, capacity_factor: float | None) -> int | None:
    """Tokens each expert may take: ceil(capacity_factor * tokens / experts); None: no limit."""
    if capacity_factor is None:
        return None
    return math.ceil(capacity_factor * tokens / experts)


def within_capacity(expert: Tensor, experts: int, capacity: int | None) -> Tensor:
    """Bool [N]: token i is among the first `capacity` tokens (in order) sent to its expert."""
    if capacity is None:
        return torch.ones_like(expert, dtype=torch.bool)
    onehot = F.one_hot(expert, experts)  # [N, E]
    position = (onehot.cumsum(dim=0) * onehot).sum(dim=1) - 1  # [N] rank within its expert
    return position < capacity


def load_balancing_loss(probs: Tensor, expert: Tensor) -> Tensor:
    """Switch eq. 4 without alpha: E * sum_e f_e * P_e (float32 scalar; 0 for no tokens).

    probs [N, E] router probabilities, expert [N] chosen expert; f_e = mean_i [expert_i == e]
    (not differentiable), P_e = mean_i probs[i, e] (carries the gradient to the router).
    """
    n, e = probs.shape
    if n == 0:
        return probs.new_zeros((), dtype=torch.float32)
    f = torch.bincount(expert, minlength=e).float() / n  # [E]
    p = probs.float().mean(dim=0)  # [E]
    return e * (f * p).sum()


class SwitchFeedForward(nn.Module):
    """Top-1 mixture of `experts` (modules [n, D] -> [n, D]); forward(x [B, T, D], keep [B, T])."""

    def __init__(
        self,
        dim: int,
        experts: list[nn.Module],
        capacity_factor: float = 1.0,
        eval_capacity_factor: float | None = None,
    ):
        super().__init__()
        if not experts:
            raise ValueError("a switch layer needs at least one expert (got 0)")
        self.experts = nn.ModuleList(experts)
        self.router = nn.Parameter(torch.empty(len(experts), dim))  # [E, D], no bias
        self.capacity_factor, self.eval_capacity_factor = capacity_factor, eval_capacity_factor
        self._balance: list[Tensor] = []  # one loss per training forward since the last pop
        self.reset_router()

    def reset_router(self) -> None:
        """Switch's reduced-scale init: truncated normal, std sqrt(0.1 / D), cut at 2 std."""
        std = (0.1 / self.router.shape[1]) ** 0.5
        nn.init.trunc_normal_(self.router, std=std, a=-2 * std, b=2 * std)

    def route(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Router probabilities [N, E] (float32) and chosen expert [N] of tokens x [N, D]."""
        with torch.autocast(x.device.type, enabled=False):  # selective precision (Switch 2.4)
            probs = F.linear(x.float(), self.router.float()).softmax(dim=-1)  # [N, E]
        return probs, probs.argmax(dim=-1)

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        """FFN output [B, T, D]: p_e * expert_e(x) per routed token, 0 at pads and dropped ones."""
        b, t, d = x.shape
        flat = x.reshape(b * t, d)  # [B*T, D]
        rows = (
            torch.arange(b * t, device=x.device)
            if keep is None
            else keep.reshape(-1).nonzero()[:, 0]
        )  # [N] real tokens
        tokens = flat.index_select(0, rows)  # [N, D]
        probs, expert = self.route(tokens)  # [N, E], [N]
        if self.training:
            self._balance.append(load_balancing_loss(probs, expert))
        factor = self.capacity_factor if self.training else self.eval_capacity_factor
        capacity = expert_capacity(len(rows), len(self.experts), factor)
        kept = within_capacity(expert, len(self.experts), capacity)  # [N]
        gate = probs.gather(1, expert[:, None])  # [N, 1]

        out = flat.new_zeros(b * t, d)  # [B*T, D]
        for e, ffn in enumerate(self.experts):
            mine = ((expert == e) & kept).nonzero()[:, 0]  # [n_e] positions in `tokens`
            if mine.numel():
                y = gate[mine] * ffn(tokens[mine])  # [n_e, D]
                out = out.index_add(0, rows[mine], y.to(out.dtype))
        return out.view(b, t, d)

    def pop_balance_loss(self) -> Tensor:
        """Mean load-balancing loss over the training forwards since the last call (0: none)."""
        losses, self._balance = self._balance, []
        if not losses:
            return self.router.new_zeros((), dtype=torch.float32)
        return torch.stack(losses).mean()
