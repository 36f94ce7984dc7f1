"""The method configs (paper Tables 1-3 rows): what each composes to and what its step computes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from idistill.config import settings_from_dict
from idistill.intra import intra_distill_loss
from idistill.losses import label_smoothed_nll_loss
from idistill.recipes.translation import build_model

METHODS = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "method").glob("*.yaml"))
# presets of a method with other settings, which keep its name (and so its runs' config hash)
SETTINGS_OF = {"intra_distill_multi30k": "intra_distill"}
VOCAB, PAD = 40, 0


def _settings(make_cfg, overrides):
    return settings_from_dict(OmegaConf.to_container(make_cfg(overrides), resolve=True))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_composes_into_valid_settings(make_cfg, method):
    s = _settings(make_cfg, [f"method={method}"])
    assert s.method.name == SETTINGS_OF.get(method, method)


def test_each_method_brings_its_divergence_and_schedule_unless_overridden(make_cfg):
    got = {
        m: (s.method.k, s.method.divergence, s.method.schedule)
        for m in ("baseline", "intra_distill", "intra_distill_js", "rdrop")
        for s in [_settings(make_cfg, [f"method={m}", "experiment=iwslt14"])]
    }
    assert got == {
        "baseline": (1, "x", "constant"),
        "intra_distill": (3, "x", "adaptive"),
        "intra_distill_js": (3, "js", "adaptive"),
        "rdrop": (2, "jeffrey", "constant"),
    }
    assert _settings(make_cfg, ["method=rdrop", "divergence=x"]).method.divergence == "x"


def _model_and_batch():
    torch.manual_seed(0)
    cfg = {"name": "transformer", "embed_dim": 16, "ffn_dim": 32, "heads": 2}
    cfg |= {"encoder_layers": 1, "decoder_layers": 1, "dropout": 0.3, "attention_dropout": 0.1}
    model = build_model(cfg, VOCAB, PAD)
    target = torch.randint(4, VOCAB, (3, 5))
    target[0, 3:] = PAD  # a padded row
    batch = {
        "src_tokens": torch.randint(4, VOCAB, (3, 6)),
        "prev_output_tokens": torch.randint(4, VOCAB, (3, 5)),
        "target": target,
    }
    return model, batch


def _step(model, batch, method):
    """One step as the engine runs it; returns the loss, the gradients and the forward sizes."""
    rows = []

    def forward(b):
        rows.append(b["src_tokens"].shape[0])
        return model(b["src_tokens"], b["prev_output_tokens"])  # [rows, T, V]

    def task_loss(logits, b):
        return label_smoothed_nll_loss(logits, b["target"], 0.1, PAD)[0]

    model.zero_grad()
    torch.manual_seed(1)  # same dropout masks
    res = intra_distill_loss(
        forward,
        batch,
        task_loss,
        k=method.effective_k,
        alpha=method.alpha,
        divergence=method.divergence,
        passes=method.passes,
        mask=batch["target"] != PAD,
    )
    res.loss.backward()
    return res, [p.grad.clone() for p in model.parameters()], rows


def test_baseline_and_intra_distill_with_k1_give_the_same_loss_and_gradients(make_cfg):
    model, batch = _model_and_batch()
    base = _settings(make_cfg, ["method=baseline"]).method
    k1 = _settings(make_cfg, ["method=intra_distill", "method.k=1"]).method
    res_a, grads_a, rows_a = _step(model, batch, base)
    res_b, grads_b, rows_b = _step(model, batch, k1)
    assert rows_a == rows_b == [3]  # one forward over the batch as it is: no extra compute
    assert res_a.loss.item() == res_b.loss.item() and res_a.id_loss.item() == 0.0
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_rdrop_is_intra_distill_with_k2_and_jeffrey(make_cfg):
    rdrop = _settings(make_cfg, ["method=rdrop"]).method
    same = _settings(
        make_cfg,
        ["method=intra_distill", "method.k=2", "divergence=jeffrey", "schedule=constant"],
    ).method
    assert {**vars(rdrop), "name": None} == {**vars(same), "name": None}


def test_rdrop_term_is_half_the_symmetric_kl_of_the_two_passes(make_cfg):
    model, batch = _model_and_batch()
    rdrop = _settings(make_cfg, ["method=rdrop"]).method
    res, _, rows = _step(model, batch, rdrop)
    assert rows == [6]  # one forward over the doubled batch
    keep = batch["target"] != PAD
    logp1, logp2 = (torch.log_softmax(o.detach()[keep].double(), -1) for o in res.outputs)
    kl12 = F.kl_div(logp2, logp1, log_target=True, reduction="sum")  # KL(p1 || p2)
    kl21 = F.kl_div(logp1, logp2, log_target=True, reduction="sum")  # KL(p2 || p1)
    assert res.id_loss.item() == pytest.approx(0.5 * (kl12 + kl21).item(), rel=1e-5)
    assert res.alpha == 5.0


def test_switch_logs_its_balance_loss(tmp_path, make_cfg):
    from mlflow import MlflowClient

    from idistill.cli.main import run

    from conftest import SMALL_RUN

    run(make_cfg([*SMALL_RUN, "method=switch"], tracking=True), tmp_path / "o", progress=False)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (r,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    layers, experts = 4, 4  # transformer_tiny: 2 + 2 switch layers; each loss in (0, E]
    assert 0 < r.data.metrics["train/balance_loss"] <= layers * experts
    assert r.data.tags["method"] == "switch"
