import pytest
import torch
from torch import nn

from idistill.intra import fused_intra_distill_loss, intra_distill_loss
from idistill.losses import LabelSmoothedCE, divergence, label_smoothed_nll_loss, reference


class TinyClassifier(nn.Module):
    def __init__(self, dropout: float = 0.3):
        super().__init__()
        self.hidden = nn.Linear(6, 16)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(16, 5)

    def forward(self, batch):
        return self.out(self.drop(torch.relu(self.hidden(batch["x"]))))  # [B, T, V]


def ce_sum(logits, batch):
    return nn.functional.cross_entropy(logits.flatten(0, 1), batch["y"].flatten(), reduction="sum")


def make_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(4, 3, 6, generator=g), "y": torch.randint(0, 5, (4, 3), generator=g)}


LS_CE = LabelSmoothedCE(0.1, 0, key="y")  # the fused step's task loss: label-smoothed CE


def grads(model):
    return [p.grad.clone() for p in model.parameters()]


def test_k1_equals_plain_forward_loss_and_gradients_with_dropout():
    torch.manual_seed(0)
    model = TinyClassifier()
    batch = make_batch()

    torch.manual_seed(123)
    plain = ce_sum(model(batch), batch)
    plain.backward()
    plain_grads = grads(model)
    model.zero_grad()

    torch.manual_seed(123)
    out = intra_distill_loss(model, batch, ce_sum, k=1, alpha=5.0)
    out.loss.backward()

    assert torch.equal(out.loss, plain)
    assert out.id_loss.item() == 0.0 and len(out.outputs) == 1
    for a, b in zip(grads(model), plain_grads, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["x", "js", "jeffrey"])
def test_concat_and_loop_agree_without_dropout(name):
    torch.manual_seed(0)
    model = TinyClassifier(dropout=0.3).eval()
    batch = make_batch()
    mask = torch.ones(4, 3, dtype=torch.bool)
    mask[0, 2] = False
    concat = intra_distill_loss(
        model, batch, ce_sum, k=3, alpha=2.0, divergence=name, passes="concat", mask=mask
    )
    loop = intra_distill_loss(
        model, batch, ce_sum, k=3, alpha=2.0, divergence=name, passes="loop", mask=mask
    )
    torch.testing.assert_close(concat.loss, loop.loss)
    torch.testing.assert_close(concat.task, loop.task)
    assert len(concat.outputs) == 3 and concat.outputs[0].shape == (4, 3, 5)


def test_loss_is_mean_task_plus_alpha_times_divergence():
    torch.manual_seed(0)
    model = TinyClassifier(dropout=0.3)
    batch = make_batch()
    out = intra_distill_loss(model, batch, ce_sum, k=3, alpha=2.5, divergence="x")
    mean_task = sum(ce_sum(o, batch) for o in out.outputs) / 3
    id_loss = divergence("x", out.outputs)
    torch.testing.assert_close(out.task, mean_task.detach())
    torch.testing.assert_close(out.id_loss, id_loss.detach())
    torch.testing.assert_close(out.loss, mean_task + 2.5 * id_loss)
    assert out.alpha == 2.5 and not out.task.requires_grad and not out.id_loss.requires_grad
    assert out.loss.requires_grad


def test_concat_passes_draw_different_dropout_masks():
    torch.manual_seed(0)
    model = TinyClassifier(dropout=0.5)
    out = intra_distill_loss(model, make_batch(), ce_sum, k=3, alpha=1.0)
    a, b, c = out.outputs
    assert not torch.allclose(a, b) and not torch.allclose(b, c) and not torch.allclose(a, c)
    assert out.id_loss.item() > 0


def test_zero_alpha_still_runs_k_passes_and_reports_the_divergence():
    torch.manual_seed(0)
    out = intra_distill_loss(TinyClassifier(), make_batch(), ce_sum, k=3, alpha=0.0)
    assert len(out.outputs) == 3 and out.id_loss.item() > 0
    torch.testing.assert_close(out.loss.detach(), out.task)


def test_regression_outputs_use_mse():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.2), nn.Linear(8, 1))
    batch = {"x": torch.randn(5, 6), "y": torch.randn(5)}

    def forward(b):
        return model(b["x"]).squeeze(-1)  # [B]

    def mse_sum(o, b):
        return ((o - b["y"]) ** 2).sum()

    out = intra_distill_loss(forward, batch, mse_sum, k=2, alpha=1.0, divergence="mse")
    torch.testing.assert_close(out.id_loss, divergence("mse", out.outputs).detach())


def test_bf16_outputs_give_a_float32_divergence():
    torch.manual_seed(0)
    model = TinyClassifier().bfloat16()
    batch = make_batch()
    batch["x"] = batch["x"].bfloat16()
    out = intra_distill_loss(model, batch, ce_sum, k=2, alpha=1.0)
    assert out.id_loss.dtype == torch.float32 and torch.isfinite(out.loss)


@pytest.mark.parametrize("step", ["generic", "fused"])
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0, "alpha": 1.0}, r"method.k must be >= 1 \(got 0\)"),
        ({"k": 2, "alpha": -1.0}, r"method.alpha must be >= 0 \(got -1\)"),
        ({"k": 2, "alpha": 1.0, "passes": "parallel"}, "method.passes .*'parallel'"),
        ({"k": 2, "alpha": 1.0, "divergence": "kl"}, "divergence.name .*'kl'"),
    ],
)
def test_bad_arguments_are_refused(step, kwargs, message):
    with pytest.raises(ValueError, match=message):
        if step == "generic":
            intra_distill_loss(TinyClassifier(), make_batch(), ce_sum, **kwargs)
        else:
            fused_intra_distill_loss(TinyClassifier(), make_batch(), LS_CE, **kwargs)


def test_fused_step_refuses_mse_and_names_the_generic_step():
    with pytest.raises(ValueError, match="x, js, jeffrey .*'mse'.*intra_distill_loss"):
        fused_intra_distill_loss(
            TinyClassifier(), make_batch(), LS_CE, k=2, alpha=1.0, divergence="mse"
        )


@pytest.mark.parametrize("passes", ["concat", "loop"])
@pytest.mark.parametrize("k", [1, 3])
def test_fused_step_gives_the_generic_values_with_dropout(passes, k):
    """The fused step computes LabelSmoothedCE with the divergence in one fused pass: the
    loss, its parts and the gradients equal the generic path's (same dropout masks through the
    same seed); it returns no outputs, whose memory holds their gradient after backward."""
    torch.manual_seed(0)
    model = TinyClassifier()
    batch = make_batch()
    mask = batch["y"] != 0

    def generic_ce(logits, b):
        return label_smoothed_nll_loss(logits, b["y"], 0.1, 0)[0]

    results = []
    for step, task_loss in ((fused_intra_distill_loss, LS_CE), (intra_distill_loss, generic_ce)):
        model.zero_grad()
        torch.manual_seed(7)
        res = step(
            model, batch, task_loss, k=k, alpha=2.0, divergence="x", passes=passes, mask=mask
        )
        res.loss.backward()
        results.append((res, grads(model)))
    (fused, fused_grads), (generic, generic_grads) = results
    assert fused.loss.item() == pytest.approx(generic.loss.item(), rel=1e-5)
    assert fused.task.item() == pytest.approx(generic.task.item(), rel=1e-5)
    assert fused.id_loss.item() == pytest.approx(generic.id_loss.item(), rel=1e-5, abs=1e-7)
    assert fused.outputs == [] and len(generic.outputs) == k
    for a, b in zip(fused_grads, generic_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


class ScaledPasses:
    """A deterministic stand-in for dropout: pass i's logits are the model's times (1 + i / 2),
    whether the K passes come as one forward over the repeated batch or as K forwards."""

    def __init__(self, model, rows):
        self.model, self.rows, self.done = model, rows, 0

    def __call__(self, batch):
        out = self.model(batch)  # [n*B, T, V], n passes
        n = out.shape[0] // self.rows
        scale = 1 + torch.arange(self.done, self.done + n, dtype=out.dtype) / 2  # [n]
        self.done += n
        return out * scale.repeat_interleave(self.rows)[:, None, None]


def reference_step(forward, batch, k, alpha, name, mask):
    """Eq. 10 from the reference formulas: K forwards, mean label-smoothed CE + alpha * L_id."""
    outputs = [forward(batch) for _ in range(k)]
    ces = [reference.label_smoothed_nll_loss(o, batch["y"], 0.1, 0)[0] for o in outputs]
    task = torch.stack(ces).mean()
    id_loss = reference.FORMULAS[name](outputs, mask)
    return task, id_loss, task + alpha * id_loss, outputs


def float64_setup():
    torch.manual_seed(0)
    model = TinyClassifier(dropout=0.0).double()
    batch = make_batch()
    batch["x"] = batch["x"].double()
    mask = torch.ones(4, 3, dtype=torch.bool)
    mask[1, 0] = mask[2, 2] = False
    return model, batch, mask


@pytest.mark.parametrize("name", ["x", "js", "jeffrey"])
@pytest.mark.parametrize("passes", ["concat", "loop"])
@pytest.mark.parametrize("k", [1, 3])
def test_fused_step_equals_the_reference_step(name, passes, k):
    model, batch, mask = float64_setup()
    task, id_loss, loss, _ = reference_step(ScaledPasses(model, 4), batch, k, 2.0, name, mask)
    loss.backward()
    expected = grads(model)
    model.zero_grad()
    res = fused_intra_distill_loss(
        ScaledPasses(model, 4), batch, LS_CE, k=k, alpha=2.0, divergence=name, passes=passes,
        mask=mask,
    )  # fmt: skip
    res.loss.backward()
    assert res.task.item() == pytest.approx(task.item(), rel=1e-6)
    assert res.id_loss.item() == pytest.approx(id_loss.item(), rel=1e-5, abs=1e-9)
    assert res.loss.item() == pytest.approx(loss.item(), rel=1e-6)
    for a, b in zip(grads(model), expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def squares_and_first_pass(outputs, batch):
    """Two extra terms; the first keeps its inputs, the logits, for its backward pass."""
    return {"squares": 0.01 * sum((o**2).sum() for o in outputs), "first": outputs[0].sum()}


@pytest.mark.parametrize("passes", ["concat", "loop"])
def test_extra_terms_are_added_to_the_loss_and_reported(passes):
    """Both steps add the hook's terms to `loss` and report them detached; the gradients are
    the reference's, also in the fused step, whose backward overwrites the logits the
    "squares" term reads in its own backward."""
    model, batch, mask = float64_setup()
    _, _, loss, outputs = reference_step(ScaledPasses(model, 4), batch, 3, 2.0, "x", mask)
    terms = squares_and_first_pass(outputs, batch)
    (loss + terms["squares"] + terms["first"]).backward()
    expected = grads(model)
    for step in (intra_distill_loss, fused_intra_distill_loss):
        model.zero_grad()
        res = step(
            ScaledPasses(model, 4), batch, LS_CE, k=3, alpha=2.0, passes=passes, mask=mask,
            extra=squares_and_first_pass,
        )  # fmt: skip
        res.loss.backward()
        assert set(res.extras) == {"squares", "first"}
        assert not any(v.requires_grad for v in res.extras.values())
        for key, value in terms.items():
            assert res.extras[key].item() == pytest.approx(value.item(), rel=1e-9)
        assert res.loss.item() == pytest.approx((loss + sum(terms.values())).item(), rel=1e-6)
        for a, b in zip(grads(model), expected, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_fused_step_returns_no_tensor_that_backward_changes():
    torch.manual_seed(0)
    model, batch = TinyClassifier(), make_batch()
    produced = []

    def forward(b):
        produced.append(model(b))  # [K*B, T, V]
        return produced[-1]

    res = fused_intra_distill_loss(
        forward, batch, LS_CE, k=3, alpha=2.0, extra=squares_and_first_pass
    )
    returned = [res.loss, res.task, res.id_loss, *res.outputs, *res.extras.values()]
    before = [t.detach().clone() for t in returned]
    logits = produced[0].detach().clone()
    res.loss.backward()
    assert res.outputs == []
    for now, then in zip(returned, before, strict=True):
        assert torch.equal(now.detach(), then)
    assert not torch.equal(produced[0].detach(), logits)  # the model's output: now its gradient
