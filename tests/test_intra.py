import pytest
import torch
from torch import nn

from idistill.intra import intra_distill_loss
from idistill.losses import divergence


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


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0, "alpha": 1.0}, r"method.k must be >= 1 \(got 0\)"),
        ({"k": 2, "alpha": -1.0}, r"method.alpha must be >= 0 \(got -1\)"),
        ({"k": 2, "alpha": 1.0, "passes": "parallel"}, "method.passes .*'parallel'"),
        ({"k": 2, "alpha": 1.0, "divergence": "kl"}, "divergence.name .*'kl'"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        intra_distill_loss(TinyClassifier(), make_batch(), ce_sum, **kwargs)


@pytest.mark.parametrize("passes", ["concat", "loop"])
@pytest.mark.parametrize("k", [1, 3])
def test_label_smoothed_ce_takes_the_fused_path_with_the_generic_values(passes, k):
    """LabelSmoothedCE is computed with the divergence in one fused pass: the loss, its parts
    and the gradients equal the generic path's (same dropout masks through the same seed)."""
    from idistill.losses import LabelSmoothedCE, label_smoothed_nll_loss

    torch.manual_seed(0)
    model = TinyClassifier()
    batch = make_batch()
    mask = batch["y"] != 0
    fused_ce = LabelSmoothedCE(0.1, 0, key="y")

    def generic_ce(logits, b):
        return label_smoothed_nll_loss(logits, b["y"], 0.1, 0)[0]

    results = []
    for task_loss in (fused_ce, generic_ce):
        model.zero_grad()
        torch.manual_seed(7)
        res = intra_distill_loss(
            model, batch, task_loss, k=k, alpha=2.0, divergence="x", passes=passes, mask=mask
        )
        res.loss.backward()
        results.append((res, grads(model)))
    (fused, fused_grads), (generic, generic_grads) = results
    assert fused.loss.item() == pytest.approx(generic.loss.item(), rel=1e-5)
    assert fused.task.item() == pytest.approx(generic.task.item(), rel=1e-5)
    assert fused.id_loss.item() == pytest.approx(generic.id_loss.item(), rel=1e-5, abs=1e-7)
    assert len(fused.outputs) == k
    for a, b in zip(fused_grads, generic_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
