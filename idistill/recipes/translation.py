"""Translation: a seq2seq transformer trained with fairseq's label-smoothed cross-entropy,
selected on validation loss, tested with beam search and sacreBLEU on the raw references."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from idistill.config import ConfigError, RunSettings, require
from idistill.data.batching import collate, token_batches
from idistill.data.parallel_text import DataSourceError
from idistill.data.tasks import load_task
from idistill.distill import load_teacher, teacher_kl
from idistill.engine.device import to_device
from idistill.engine.recipe import Recipe, TestResult
from idistill.engine.state import Selection
from idistill.engine.step import LossFn
from idistill.evaluate import corpus_bleu, corpus_chrf, translate
from idistill.intra import IntraLoss, fused_intra_distill_loss, intra_distill_loss
from idistill.losses import LabelSmoothedCE, label_smoothed_nll_loss
from idistill.models.encoder import is_encoder
from idistill.models.transformer import Seq2SeqTransformer, model_config
from idistill.sage import make_optimizer
from idistill.tables import HYPOTHESES, REFERENCES

log = logging.getLogger(__name__)


def build_model(model_cfg: dict, vocab_size: int, pad_id: int) -> Seq2SeqTransformer:
    """The seq2seq transformer of `model=` (transformer_small, switch_small, ...)."""
    return Seq2SeqTransformer(model_config(model_cfg, vocab_size, pad_id))


@torch.no_grad()
def validate(model, examples, tokenizer, max_tokens, device, amp, label_smoothing) -> dict:
    """Label-smoothed loss and NLL per target token on `examples` (dropout off)."""
    model.eval()
    loss_sum = nll_sum = ntok = 0.0
    src_lens, tgt_lens = examples.src_lens + 1, examples.tgt_lens + 1  # [N] + eos, + bos / eos
    pad, bos, eos = tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id
    # a pair longer than trainer.max_tokens (which bounds training batches) is a batch alone:
    # valid sentences are never dropped, and the model's positions are checked before training
    budget = max(max_tokens, int(np.maximum(src_lens, tgt_lens).max(initial=0)))
    for idx in token_batches(src_lens, tgt_lens, budget, shuffle=False):
        b = to_device(collate([examples[i] for i in idx], pad, bos, eos), device)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(b["src_tokens"], b["prev_output_tokens"])  # [B, T, V]
        loss, nll = label_smoothed_nll_loss(logits, b["target"], label_smoothing, pad)
        loss_sum, nll_sum = loss_sum + loss.item(), nll_sum + nll.item()
        ntok += b["ntokens"].item()
    model.train()
    return {
        "loss": loss_sum / ntok,
        "nll_loss": nll_sum / ntok,
        "ppl": math.exp(min(nll_sum / ntok, 50.0)),
    }


def seq2seq_loss(
    method, ce: LabelSmoothedCE, *, fused: bool, compiled: bool = False, teacher=None
) -> LossFn:
    """loss(model, batch, alpha, units): the K-pass loss of `idistill.intra` with label-smoothed
    CE, summed over the batch's target tokens, plus the switch models' routing loss and, with
    a `teacher`, self-distillation's KL (eq. 3). fused: CE and divergence in one chunked pass
    (`fused_intra_distill_loss`), else the plain formulas; the same loss and gradients."""

    def distill(outputs: list[Tensor], b: dict) -> dict[str, Tensor]:
        with torch.no_grad():
            t_logits = teacher(b["src_tokens"], b["prev_output_tokens"])  # [B, T, V]
        mask = b["target"] != ce.ignore_index
        return {"kd_loss": sum(teacher_kl(o, t_logits, mask) for o in outputs) / len(outputs)}

    def loss(model, batch: dict, alpha: float, units: int) -> IntraLoss:
        def forward(b: dict) -> Tensor:
            return model(b["src_tokens"], b["prev_output_tokens"])  # [B, T, V]

        kwargs = dict(
            k=method.effective_k,
            alpha=alpha,
            divergence=method.divergence,
            passes=method.passes,
            mask=batch["target"] != ce.ignore_index,  # [B, T] counted
            extra=distill if teacher is not None else None,
        )
        if fused:
            res = fused_intra_distill_loss(forward, batch, ce, compiled=compiled, **kwargs)
        else:
            res = intra_distill_loss(forward, batch, ce, **kwargs)
        core = getattr(model, "module", model)  # the DDP-wrapped model
        if core.cfg.experts:  # switch models' routing loss; the loss sums over tokens
            balance = core.pop_balance_loss() * units
            res.loss = res.loss + core.cfg.balance_coef * balance
            res.extras["balance_loss"] = balance.detach()
        return res

    return loss


def check_settings(s: RunSettings) -> None:
    """Refuse what a translation run cannot train, naming the key: an encoder for a model,
    NLU trainer keys, a bad model config, batches smaller than the longest sentence."""
    t = s.trainer
    require(
        not is_encoder(s.model),
        f"model.name_or_path={s.model.get('name_or_path')} is a pretrained encoder for NLU "
        f"tasks (task=glue, ...); task={s.task['name']} needs a seq2seq model "
        "(model=transformer_small, ...)",
    )
    require(
        t.lr_schedule == "inverse_sqrt" and t.optimizer == "adamw",
        f"trainer.lr_schedule={t.lr_schedule} / trainer.optimizer={t.optimizer} are for NLU "
        "fine-tuning; translation uses inverse_sqrt and method.optimizer",
    )
    try:  # the model's keys and sizes, with a stand-in vocabulary (the real one: with data)
        model_config(s.model, vocab_size=64, pad_id=0)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None
    require(
        t.best_metric in ("loss", "bleu"),
        f"trainer.best_metric must be loss or bleu (got {t.best_metric!r})",
    )
    require(
        isinstance(t.valid_bleu_sentences, int) and t.valid_bleu_sentences >= 1,
        f"trainer.valid_bleu_sentences must be >= 1 (got {t.valid_bleu_sentences!r})",
    )
    max_len = s.task.get("max_len")
    if max_len is not None:
        longest = max_len + 1  # a sentence of max_len pieces plus eos (or bos)
        require(
            t.max_tokens >= longest,
            f"trainer.max_tokens={t.max_tokens} is smaller than the longest allowed sentence "
            f"(task.max_len={max_len} + 1 = {longest} tokens): raise trainer.max_tokens or "
            "lower task.max_len",
        )


def check_data(s: RunSettings) -> None:
    """Refuse, before any training, data the run could not validate or test: an empty valid
    split (or test split, with trainer.test), a sentence longer than the model's positions (an
    empty train split is refused when the data is built)."""
    name, t = s.task["name"], s.trainer
    try:
        data = load_task(s.task, s.lang, s.data_dir)
    except DataSourceError as e:
        raise ConfigError(f"task={name}: {e}") from None
    for split in ("valid", "test") if t.test else ("valid",):
        require(
            len(data.splits[split]) > 0,
            f"task={name}: the {split} split is empty ({_origin(s.task, split, data.path)})",
        )
    train, valid = data.splits["train"], data.splits["valid"]
    lengths = {  # [N] pieces of what the model reads; the test translates its sources only
        "train.src.txt": train.src_lens,
        "train.ref.txt": train.tgt_lens,
        "valid.src.txt": valid.src_lens,
        "valid.ref.txt": valid.tgt_lens,
    }
    if t.test:
        lengths["test.src.txt"] = data.splits["test"][: t.test_max_sentences or None].src_lens
    positions = model_config(s.model, vocab_size=64, pad_id=0).max_positions
    for file, lens in lengths.items():
        i = int(lens.argmax())
        longest, split = int(lens[i]) + 1, file.split(".")[0]  # + eos (source), bos/eos (target)
        if longest <= positions:
            continue
        fix = (
            f"lower task.max_len below {positions} (longer training pairs are dropped) or raise "
            "model.max_positions"
            if split == "train"
            else f"raise model.max_positions to at least {longest} (valid and test sentences are "
            "never dropped or cut, so that every reference is scored; task.max_len drops "
            "training pairs only), or remove the pair from the data"
        )
        raise ConfigError(
            f"{data.path / file}, line {i + 1}: a {split} sentence of {longest} tokens does not "
            f"fit the model (model.max_positions={positions}): {fix}"
        )


def _origin(task: dict, split: str, built: Path) -> str:
    """Where a split's text came from, for messages: its files, or the processed data."""
    if task.get("loader") == "parallel_text" and task.get("source"):
        stem = task["splits"][split]
        return f"files {task['source']}/{stem}.{task['src_lang']} and .{task['tgt_lang']}"
    return f"processed into {built}"


class TranslationRecipe(Recipe):
    """IWSLT'14, WMT'17, Multi30k, parallel text and the synthetic task."""

    name, unit = "train", "tokens"
    selection = Selection("valid/loss", higher_is_better=False)

    def __init__(self, s: RunSettings):
        super().__init__(s)
        t = s.trainer
        if t.best_metric == "bleu":  # many select on BLEU; the paper selects on loss
            self.selection = Selection("valid/bleu", higher_is_better=True)
        # trainer.fused_loss: CE and divergence in one chunked pass (idistill.losses.fused),
        # else the plain reference formulas; the same loss and gradients
        self.fused = t.fused_loss
        self.compiled = t.compile != "none"

    def setup(self, device, amp, tracker):
        s, t, m = self.s, self.s.trainer, self.s.method
        self.device, self.amp = device, amp
        self.data = load_task(s.task, s.lang, s.data_dir)
        self.tok, self.train_set = self.data.tokenizer, self.data.splits["train"]
        log.info(
            "data: %s train, %s valid, %s test pairs, vocabulary %d (%s)",
            len(self.train_set),
            len(self.data.splits["valid"]),
            len(self.data.splits["test"]),
            self.tok.vocab_size,
            self.data.path,
        )
        self.model = build_model(s.model, self.tok.vocab_size, self.tok.pad_id).to(device)
        log.info("model: %.2fM parameters", self.model.num_parameters() / 1e6)
        teacher = load_teacher(self.model, Path(m.teacher), device) if m.teacher else None
        ce = LabelSmoothedCE(t.label_smoothing, self.tok.pad_id)  # summed over target tokens
        self._loss = seq2seq_loss(m, ce, fused=self.fused, compiled=self.compiled, teacher=teacher)
        optimizer = make_optimizer(  # adamw, or SAGE's sensitivity-scaled variants (method=sage)
            self.model, m.optimizer, t.lr, t.betas, 1e-8, t.weight_decay, beta3=m.beta3
        )
        return self.model, optimizer

    def epoch_batches(self, epoch: int):
        lens = self.train_set.src_lens + 1, self.train_set.tgt_lens + 1  # [N] + eos, bos / eos
        t = self.s.trainer
        return token_batches(*lens, t.max_tokens, shuffle=True, seed=self.s.seed, epoch=epoch)

    def collate(self, indices) -> dict:
        tok = self.tok
        return collate([self.train_set[i] for i in indices], tok.pad_id, tok.bos_id, tok.eos_id)

    def units(self, batch: dict) -> int:
        return int(batch["ntokens"])  # target tokens

    def loss(self, model, batch: dict, alpha: float, units: int) -> IntraLoss:
        return self._loss(model, batch, alpha, units)

    def task_loss(self, model, batch: dict) -> Tensor:
        logits = model(batch["src_tokens"], batch["prev_output_tokens"])  # [B, T, V]
        t = self.s.trainer
        return label_smoothed_nll_loss(logits, batch["target"], t.label_smoothing, self.tok.pad_id)[
            0
        ]

    def validate(self, model) -> dict[str, float]:
        t = self.s.trainer
        v = validate(
            model, self.data.splits["valid"], self.tok, t.max_tokens, self.device, self.amp,
            t.label_smoothing,
        )  # fmt: skip
        scores = {f"valid/{k}": value for k, value in v.items()}
        if t.best_metric == "bleu":
            n = t.valid_bleu_sentences
            hyps = self._translate(model, self.data.splits["valid"][:n], progress=False)
            scores["valid/bleu"] = corpus_bleu(hyps, self.data.references["valid"][:n]).score
        return scores

    def analysis_batches(self, n: int) -> list[dict]:
        """A fixed random sample: epoch 0's order, which training never uses."""
        return [self.collate(idx) for idx in self.epoch_batches(0)[:n]]

    def _test_set(self):
        test, refs = self.data.splits["test"], self.data.references["test"]
        n = self.s.trainer.test_max_sentences
        return (test[:n], refs[:n]) if n else (test, refs)

    def _translate(self, model, examples, progress: bool) -> list[str]:
        t = self.s.trainer
        return translate(
            model,
            examples,
            self.tok,
            device=self.device,
            max_tokens=t.max_tokens,
            beam=t.beam,
            len_penalty=t.len_penalty,
            max_len_a=t.max_len_a,
            max_len_b=t.max_len_b,
            autocast_dtype=self.amp,
            progress=progress,
        )

    def test(self, model, out_dir: Path, tracker, progress: bool) -> TestResult:
        """Beam search on the test set, sacreBLEU against the raw references; test.hyp.txt and
        test.ref.txt as artifacts (idistill-report's paired bootstrap needs both sides)."""
        test, refs = self._test_set()
        hyps = self._translate(model, test, progress)
        bleu, chrf = corpus_bleu(hyps, refs), corpus_chrf(hyps, refs)
        for name, lines in ((HYPOTHESES, hyps), (REFERENCES, refs)):
            path = out_dir / name
            path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
            tracker.log_artifact(path)
        tracker.set_tags({"sacrebleu.signature": bleu.signature, "chrf.signature": chrf.signature})
        log.info("test BLEU %.2f (%s), chrF2 %.2f", bleu.score, bleu.signature, chrf.score)
        metrics = {"test/bleu": bleu.score, "test/chrf": chrf.score}
        return TestResult(metrics, bleu.score, {"bleu_signature": bleu.signature})

    def score_valid(self, model, out_dir: Path, progress: bool) -> TestResult:
        """Beam search on the whole validation set: dev/bleu, dev/chrf (valid.hyp.txt)."""
        hyps = self._translate(model, self.data.splits["valid"], progress)
        refs = self.data.references["valid"]
        bleu, chrf = corpus_bleu(hyps, refs), corpus_chrf(hyps, refs)
        (out_dir / "valid.hyp.txt").write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
        log.info("valid BLEU %.2f, chrF2 %.2f (the best checkpoint)", bleu.score, chrf.score)
        return TestResult({"dev/bleu": bleu.score, "dev/chrf": chrf.score}, None)

    def pruning_metric(self, model):
        test, refs = self._test_set()
        return "bleu", lambda: corpus_bleu(self._translate(model, test, False), refs).score
