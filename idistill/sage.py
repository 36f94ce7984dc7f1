"""SAGE (Liang et al., ICLR 2022): sensitivity-guided, elementwise learning rates on AdamW / Adamax.

"No Parameters Left Behind: Sensitivity Guided Adaptive Learning Rate for Training Large
Transformer Models" (arXiv 2202.02664, Sec. 3). For every element j of a SAGE parameter, at
update t with gradient g_t of theta_{t-1}:

    I_t     = |theta_{t-1} * g_t|                       sensitivity, before any change of theta
    Ibar_t  = b3 * Ibar_{t-1} + (1 - b3) * I_t          its EMA, updated before it is used
    U_t     = |I_t - Ibar_t|                            local temporal variation (no EMA)
    eta_t   = lr * U_t / (Ibar_t + eps**2)              the element's learning rate

and eta_t replaces lr in the base optimizer's step. The rule follows the authors' code
(github.com/cliang1453/SAGE, module/bert_optim.py: `UnstructAwareAdamW`, `UnstructAwareAdamax`),
which differs per base optimizer:

- `SageAdamW` (AdamW-SAGE): Ibar is bias-corrected, Ibar_t / (1 - b3**t), in both U_t and the
  ratio (so the first update of a SAGE element is always zero: the corrected Ibar_1 equals I_1);
  the decoupled weight decay is *not* scaled by SAGE. The Adam part is torch.optim.AdamW's math
  (decay first, eps added after the bias-corrected sqrt(v)).
- `SageAdamax` (Adamax-SAGE, the paper's GLUE optimizer): no bias correction anywhere
  (neither Ibar nor the first moment); u_t = max(b2 * u_{t-1}, |g_t| + eps), the step
  m_t / (u_t + eps) + wd * theta (weight decay inside the step) is scaled by eta_t as a whole.

Groups with `sage=False` take the plain base step: bit-identical to torch.optim.AdamW for
`SageAdamW`, and the reference repository's BERT-style Adamax for `SageAdamax` (which is not
torch.optim.Adamax: no bias correction, eps added twice, decay added to the step).

Left out of the reference code on purpose: its per-tensor gradient clipping inside step()
(max_grad_norm; idistill clips the global norm in the loop), its built-in warmup schedule
(idistill sets each group's lr), and, for AdamW-SAGE, its HuggingFace-style Adam details
(eps added to sqrt(v) before the bias correction; decay applied after the step with the
unscheduled lr), replaced by torch.optim.AdamW's so that SAGE and plain groups share one Adam.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from idistill.models.transformer import DecoderLayer, EncoderLayer

OPTIMIZERS = ("adamw", "sage_adamw", "sage_adamax")


class _SageBase(torch.optim.Optimizer):
    """Shared group checks, the update loop and the sensitivity ratio; subclasses name their
    two moment buffers (`BUFFERS`) and write the per-parameter `_update`."""

    BUFFERS: tuple[str, str]

    def __init__(self, params, lr, betas, eps, weight_decay, beta3, sage):
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            beta3=beta3,
            sage=sage,
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        """Add a group (defaults filled in) after checking its hyper-parameters."""
        super().add_param_group(param_group)
        try:
            self._check(self.param_groups[-1])
        except ValueError:
            self.param_groups.pop()  # a rejected group must not stay behind
            raise

    @staticmethod
    def _check(g: dict) -> None:
        if not g["lr"] >= 0.0:
            raise ValueError(f"lr must be >= 0 (got {g['lr']})")
        if not g["eps"] >= 0.0:
            raise ValueError(f"eps must be >= 0 (got {g['eps']})")
        if g["sage"] and g["eps"] == 0.0:
            raise ValueError(
                "eps must be > 0 for a sage group: the ratio |I - Ibar| / (Ibar + eps^2) is 0/0 "
                "for zero weights (got eps=0)"
            )
        if len(g["betas"]) != 2 or not all(0.0 <= b < 1.0 for b in g["betas"]):
            raise ValueError(f"betas must be two values in [0, 1) (got {g['betas']})")
        if not 0.0 <= g["beta3"] < 1.0:
            raise ValueError(f"beta3 must be in [0, 1) (got {g['beta3']}); SAGE uses 0.6-0.9")
        if not g["weight_decay"] >= 0.0:
            raise ValueError(f"weight_decay must be >= 0 (got {g['weight_decay']})")

    @staticmethod
    def _sensitivity_ratio(
        state: dict, ipt: Tensor, beta3: float, eps: float, correction: float
    ) -> Tensor:
        """|I - Ibar| / (Ibar + eps^2) with Ibar <- b3*Ibar + (1-b3)*I, divided by `correction`."""
        if "exp_avg_ipt" not in state:  # a group switched to sage after a resume
            state["exp_avg_ipt"] = torch.zeros_like(ipt)
        exp_avg_ipt = state["exp_avg_ipt"]
        exp_avg_ipt.mul_(beta3).add_(ipt, alpha=1.0 - beta3)
        ibar = exp_avg_ipt / correction  # same shape as the parameter
        return (ipt - ibar).abs_().div_(ibar.add_(eps**2))

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    for name in self.BUFFERS:
                        state[name] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                self._update(p, p.grad, state, group)
        return loss

    def _update(self, p: Tensor, grad: Tensor, state: dict, group: dict) -> None:
        raise NotImplementedError


class SageAdamW(_SageBase):
    """AdamW-SAGE; groups with `sage=False` are exactly torch.optim.AdamW.

    Per element, with t the group's update count (Adam: Kingma & Ba; SAGE: module docstring):

        I = |theta * g|;  theta <- theta * (1 - lr * wd)
        m <- b1*m + (1-b1)*g;  v <- b2*v + (1-b2)*g^2
        Ibar <- b3*Ibar + (1-b3)*I;  Ihat = Ibar / (1 - b3^t)
        theta <- theta - lr * [|I - Ihat| / (Ihat + eps^2)] * m_hat / (sqrt(v_hat) + eps)

    with m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t),
    the bracket being 1 for `sage=False` groups.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        beta3: float = 0.75,
        sage: bool = True,
    ):
        super().__init__(params, lr, betas, eps, weight_decay, beta3, sage)

    BUFFERS = ("exp_avg", "exp_avg_sq")

    def _update(self, p: Tensor, grad: Tensor, state: dict, group: dict) -> None:
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        wd, beta3, sage = group["weight_decay"], group["beta3"], group["sage"]
        t, exp_avg, exp_avg_sq = state["step"], state["exp_avg"], state["exp_avg_sq"]
        ipt = (p * grad).abs() if sage else None  # I_t from theta_{t-1}, before decay
        if wd != 0:
            p.mul_(1 - lr * wd)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = lr / (1 - beta1**t)
        denom = (exp_avg_sq.sqrt() / (1 - beta2**t) ** 0.5).add_(eps)
        if sage:
            ratio = self._sensitivity_ratio(state, ipt, beta3, eps, 1 - beta3**t)
            p.addcdiv_(exp_avg * ratio, denom, value=-step_size)
        else:
            p.addcdiv_(exp_avg, denom, value=-step_size)


class SageAdamax(_SageBase):
    """Adamax-SAGE as in the reference code; `sage=False` groups are its BERT-style Adamax.

    Per element (no bias corrections; weight decay inside the scaled step):

        I = |theta * g|
        m <- b1*m + (1-b1)*g;  u <- max(b2*u, |g| + eps)
        s = m / (u + eps) + wd * theta
        Ibar <- b3*Ibar + (1-b3)*I
        theta <- theta - lr * [|I - Ibar| / (Ibar + eps^2)] * s

    the bracket being 1 for `sage=False` groups.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        beta3: float = 0.75,
        sage: bool = True,
    ):
        super().__init__(params, lr, betas, eps, weight_decay, beta3, sage)

    BUFFERS = ("exp_avg", "exp_inf")  # step is kept for inspection: no bias correction here

    def _update(self, p: Tensor, grad: Tensor, state: dict, group: dict) -> None:
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        wd, beta3, sage = group["weight_decay"], group["beta3"], group["sage"]
        exp_avg, exp_inf = state["exp_avg"], state["exp_inf"]
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        torch.maximum(exp_inf.mul_(beta2), grad.abs().add_(eps), out=exp_inf)
        update = exp_avg / (exp_inf + eps)  # same shape as p
        if wd > 0:
            update.add_(p, alpha=wd)
        if sage:
            ipt = (p * grad).abs()  # theta is still theta_{t-1} here
            update.mul_(self._sensitivity_ratio(state, ipt, beta3, eps, 1.0))
        p.add_(update, alpha=-lr)


def sage_param_groups(model: nn.Module) -> list[dict]:
    """Two groups: Linear weights of the encoder/decoder blocks (sage) and everything else.

    Biases stay plain: SAGE's sensitivity |theta * g| of a zero-initialised bias is 0 at every
    step, so its learning rate 0 / (0 + eps^2) would freeze it at zero forever. Embeddings,
    LayerNorms and the output projection (tied to the decoder embedding) are plain as well.
    """
    blocks = [m for m in model.modules() if isinstance(m, (EncoderLayer, DecoderLayer))]
    sage_ids, sage_params = set(), []
    for block in blocks:
        for module in block.modules():
            if isinstance(module, nn.Linear) and id(module.weight) not in sage_ids:
                sage_ids.add(id(module.weight))
                sage_params.append(module.weight)
    if not sage_params:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear inside EncoderLayer/DecoderLayer blocks, so "
            "SAGE would be plain AdamW; use optimizer name 'adamw' for this model"
        )
    plain = [p for p in model.parameters() if id(p) not in sage_ids]
    return [{"params": sage_params, "sage": True}, {"params": plain, "sage": False}]


def adamw(params, **hyper) -> torch.optim.AdamW:
    """torch's AdamW as one fused kernel per step (~4x faster than the per-tensor loop, on the
    CPU too), or the plain one where a device or dtype has no fused kernel."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, fused=True, **hyper)
    except RuntimeError:  # e.g. an older torch on the CPU
        return torch.optim.AdamW(params, **hyper)


def make_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    beta3: float = 0.75,
) -> torch.optim.Optimizer:
    """The optimizer `name` over `model`: adamw (torch's), sage_adamw or sage_adamax."""
    betas = tuple(float(b) for b in betas)
    hyper = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    if name == "adamw":
        return adamw(model.parameters(), **hyper)
    if name == "sage_adamw":
        return SageAdamW(sage_param_groups(model), beta3=beta3, **hyper)
    if name == "sage_adamax":
        return SageAdamax(sage_param_groups(model), beta3=beta3, **hyper)
    raise ValueError(f"unknown optimizer {name!r} (valid: {', '.join(OPTIMIZERS)})")
