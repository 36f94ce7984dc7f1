"""Self-distillation (Table 1): the teacher term, finding the teacher, and the chain of rounds."""

from __future__ import annotations

import json

import pytest
import torch
from mlflow import MlflowClient

from idistill.checkpoint import BEST
from idistill.cli.main import run
from idistill.config import ConfigError
from idistill.distill import load_teacher, teacher_checkpoint, teacher_kl
from idistill.engine import FitResult
from idistill.recipes.translation import build_model

from conftest import SMALL_RUN

VOCAB, PAD = 30, 0
TINY = {"name": "transformer", "embed_dim": 16, "ffn_dim": 32, "heads": 2}
TINY |= {"encoder_layers": 1, "decoder_layers": 1, "attention_dropout": 0.0}


def _batch():
    torch.manual_seed(3)
    target = torch.randint(4, VOCAB, (2, 5))
    target[1, 2:] = PAD
    return torch.randint(4, VOCAB, (2, 4)), torch.randint(4, VOCAB, (2, 5)), target


def test_kl_term_is_zero_at_step_0_when_the_teacher_is_the_initial_student(tmp_path):
    torch.manual_seed(0)
    student = build_model({**TINY, "dropout": 0.0}, VOCAB, PAD)
    torch.save({"model": student.state_dict()}, tmp_path / BEST)
    teacher = load_teacher(student, teacher_checkpoint(str(tmp_path)), torch.device("cpu"))
    src, prev, target = _batch()
    student.train()
    kl = teacher_kl(student(src, prev), teacher(src, prev), target != PAD)
    assert abs(kl.item()) < 1e-6
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_kl_term_is_the_kl_from_the_teacher_summed_over_counted_positions():
    torch.manual_seed(1)
    s_logits, t_logits = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    p_t, p_s = t_logits.softmax(-1), s_logits.softmax(-1)
    expected = (p_t * (p_t.log() - p_s.log())).sum(-1)[mask].sum()
    assert teacher_kl(s_logits, t_logits, mask).item() == pytest.approx(expected.item(), rel=1e-5)


def test_teacher_is_found_from_a_file_a_run_dir_or_an_mlflow_run_id(tmp_path):
    ckpt = tmp_path / "run" / "checkpoints" / BEST
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    assert teacher_checkpoint(str(ckpt)) == ckpt
    assert teacher_checkpoint(str(tmp_path / "run")) == ckpt
    assert teacher_checkpoint(str(ckpt.parent)) == ckpt
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("t")).info.run_id
    with pytest.raises(ConfigError, match="its best checkpoint is not at"):
        teacher_checkpoint(run_id, uri)
    client.set_tag(run_id, "checkpoint_dir", str(ckpt.parent))
    assert teacher_checkpoint(run_id, uri) == ckpt
    with pytest.raises(ConfigError, match="no checkpoint_best.pt there, and not an MLflow run id"):
        teacher_checkpoint(str(tmp_path / "nope"))


def test_a_teacher_of_another_architecture_is_refused(tmp_path):
    torch.save({"model": build_model({**TINY, "dropout": 0.0}, VOCAB, PAD).state_dict()},
               tmp_path / BEST)  # fmt: skip
    wider = build_model({**TINY, "embed_dim": 24, "dropout": 0.0}, VOCAB, PAD)
    with pytest.raises(ConfigError, match="must have the student's architecture"):
        load_teacher(wider, tmp_path / BEST, torch.device("cpu"))


def test_a_missing_teacher_is_refused_before_any_data_work(tmp_path, make_cfg):
    cfg = make_cfg([*SMALL_RUN, "method=self_distill", f"method.teacher={tmp_path / 'nope'}"])
    with pytest.raises(ConfigError, match="method.teacher="):
        run(cfg, output_dir=tmp_path / "out", progress=False)
    assert not (tmp_path / "data").exists()


def test_teacher_is_only_for_self_distill(make_cfg):
    with pytest.raises(ConfigError, match="method.teacher is for method=self_distill"):
        run(make_cfg([*SMALL_RUN, "+method.teacher=x"]), progress=False)


def test_two_rounds_run_a_teacher_and_two_students_linked_in_mlflow(tmp_path, make_cfg):
    cfg = make_cfg([*SMALL_RUN, "method=self_distill", "method.rounds=2"], tracking=True)
    result = run(cfg, output_dir=tmp_path / "out", progress=False)
    assert result.save_dir == tmp_path / "out" / "round2" / "checkpoints"
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    by_round = {r.data.tags["round"]: r for r in runs}
    assert sorted(by_round) == ["0", "1", "2"]
    assert [by_round[k].data.tags["method"] for k in "012"] == ["baseline", *["self_distill"] * 2]
    first = by_round["0"].info.run_id
    assert by_round["1"].data.tags["chain"] == by_round["2"].data.tags["chain"] == first
    for student, teacher in (("1", "0"), ("2", "1")):
        tags = by_round[student].data.tags
        assert tags["teacher"] == f"{by_round[teacher].data.tags['checkpoint_dir']}/{BEST}"
        assert "train/kd_loss" in by_round[student].data.metrics
        assert by_round[student].data.params["method.teacher"] == tags["teacher"]
    assert "train/kd_loss" not in by_round["0"].data.metrics
    assert all(r.info.status == "FINISHED" for r in runs)

    # a chain stopped during round 2 continues from its directory: rounds 0-1 are kept
    meta_file = tmp_path / "out" / "round2" / "checkpoints" / "checkpoint_last.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "finished": False}))
    kept = (tmp_path / "out" / "round1" / "checkpoints" / BEST).stat().st_mtime_ns
    chain = [*SMALL_RUN, "method=self_distill", "method.rounds=2"]
    resumed = make_cfg([*chain, f"trainer.resume={tmp_path / 'out'}"], tracking=True)
    assert run(resumed, output_dir=tmp_path / "elsewhere", progress=False).updates == 6
    assert (tmp_path / "out" / "round1" / "checkpoints" / BEST).stat().st_mtime_ns == kept
    again = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(again) == 3 and all(r.info.status == "FINISHED" for r in again)
    assert not (tmp_path / "elsewhere").exists()


def test_a_chain_resumes_only_from_its_directory(tmp_path, make_cfg):
    cfg = make_cfg([*SMALL_RUN, "method=self_distill", "trainer.resume=true"])
    with pytest.raises(ConfigError, match="continues from its run directory"):
        run(cfg, output_dir=tmp_path / "out", progress=False)


def test_round_zero_is_plain_training_whatever_k_and_alpha_the_students_use(
    tmp_path, make_cfg, monkeypatch
):
    import idistill.runs as runs

    seen = []

    def fake_run_one(settings, *args, **kwargs):
        seen.append(settings.method)
        return FitResult(6, 1.0, {}, None, tmp_path), "run-id"

    monkeypatch.setattr(runs, "run_one", fake_run_one)
    cfg = make_cfg([*SMALL_RUN, "method=self_distill", "method.k=3", "method.alpha=2"])
    run(cfg, output_dir=tmp_path / "out", progress=False)
    teacher, student = seen
    assert (teacher.name, teacher.k, teacher.alpha) == ("baseline", 1, 0.0)
    assert teacher.schedule == "constant" and teacher.teacher is None
    assert (student.name, student.k, student.alpha) == ("self_distill", 3, 2.0)
    assert student.teacher == str(tmp_path / "out" / "round0" / "checkpoints" / BEST)
