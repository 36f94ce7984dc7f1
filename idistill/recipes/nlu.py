"""NLU fine-tuning: a pretrained encoder and one of four heads (GLUE, NER, TyDiQA), selected on
the task's dev metric, every eval set scored with the best checkpoint.

The task module (idistill.data.<task>, see idistill.data.nlu) hands over tokenized features and
the head; `idistill.recipes.heads` knows the heads. Both loss terms are normalised alike: summed
over the counted units (examples; labelled positions for `tokens`; the start and the end
distribution of each example for `span`) and divided by their number in the update.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from idistill.config import (
    ALPHA_PER,
    BASE_OPTIMIZERS,
    ID_MASKS,
    LR_SCHEDULES,
    ConfigError,
    RunSettings,
    require,
)
from idistill.data.nlu import NLUData, load_nlu
from idistill.data.parallel_text import DataSourceError
from idistill.engine.recipe import Recipe, TestResult
from idistill.engine.state import Selection
from idistill.intra import IntraLoss, intra_distill_loss
from idistill.losses import CLASSIFICATION_DIVERGENCES
from idistill.models.encoder import (
    EncoderWithHead,
    build_encoder,
    check_model,
    is_encoder,
    sage_groups,
)
from idistill.recipes import heads
from idistill.sage import SageAdamax, SageAdamW, adamw

log = logging.getLogger(__name__)


def make_optimizer(model: EncoderWithHead, s: RunSettings) -> tuple[torch.optim.Optimizer, str]:
    """trainer.optimizer (adamw | adamax), with SAGE's scaling when method.optimizer is sage_*;
    no weight decay on biases and LayerNorms. adamax is SAGE's BERT-style Adamax."""
    t, m = s.trainer, s.method
    name = f"sage_{t.optimizer}" if m.optimizer.startswith("sage_") else t.optimizer
    groups = sage_groups(model, t.weight_decay)
    if not name.startswith("sage_"):
        groups = [{**g, "sage": False} for g in groups]
    hyper = dict(lr=t.lr, betas=tuple(float(b) for b in t.betas), beta3=m.beta3)
    if name == "adamw":
        groups = [{k: v for k, v in g.items() if k != "sage"} for g in groups]
        return adamw(groups, lr=t.lr, betas=hyper["betas"], eps=1e-8), name  # fused, as MT's
    if name.endswith("adamw"):
        return SageAdamW(groups, eps=1e-8, **hyper), name
    return SageAdamax(groups, eps=1e-6, **hyper), name


def nlu_loss(head: str, method, alpha_per_batch: bool, id_mask: str):
    """loss(model, batch, alpha, units): the K-pass loss of `idistill.intra` with the head's task
    loss, summed over the batch's units. alpha_per_batch: the paper's code summed the divergence
    over a batch against a batch-mean task loss, which is alpha x (units in the batch) per unit."""
    loss_of = heads.task_loss(head)

    def loss(model, b: dict, alpha: float, units: int) -> IntraLoss:
        return intra_distill_loss(
            heads.model_forward(model, head),
            b,
            loss_of,
            k=method.effective_k,
            alpha=alpha * units if alpha_per_batch else alpha,
            divergence=method.divergence,
            passes=method.passes,
            mask=heads.divergence_mask(head, b, id_mask),
        )

    return loss


def language_means(scores: dict[str, float], eval_langs: Sequence[str] | None) -> dict[str, float]:
    """Zero-shot tasks (task.eval_langs): "<split>/avg/<metric>", the mean over the languages of
    "<split>/<lang>/<metric>" for dev and test, as the paper reports it (e.g. test/avg/f1);
    {} for other tasks, whose eval sets may also hold a slash (MNLI's dev/matched)."""
    per_lang: dict[str, list[float]] = {}
    for key, value in scores.items():
        split, *lang, name = key.split("/")
        if len(lang) == 1 and lang[0] in (eval_langs or ()) and split in ("dev", "test"):
            per_lang.setdefault(f"{split}/avg/{name}", []).append(value)
    return {k: sum(v) / len(v) for k, v in per_lang.items() if len(v) > 1}


def _check_head(data: NLUData, divergence: str, task_name: str) -> None:
    """The same rule as the config checks, for task modules that cannot tell their head early."""
    if data.head == "regression" and divergence != "mse":
        raise ConfigError(
            f"divergence={divergence} needs probabilities; task {task_name} is a regression "
            "task: use divergence=mse"
        )
    if data.head != "regression" and divergence not in CLASSIFICATION_DIVERGENCES:
        raise ConfigError(
            f"divergence={divergence} is for regression outputs; task {task_name} has a "
            f"{data.head} head: use divergence=x (or js, jeffrey)"
        )


def check_settings(s: RunSettings) -> None:
    """NLU fine-tuning: a pretrained encoder, example batches, and a divergence for the head."""
    from idistill.data.nlu import task_head

    m, t, name = s.method, s.trainer, s.task["name"]
    require(
        is_encoder(s.model),
        f"task={name} fine-tunes a pretrained encoder: model=bert_base, minilm_local, xlmr_base "
        f"or xlmr_large, or model.name_or_path=<dir> (got model={s.model.get('name')})",
    )
    try:
        check_model(s.model)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    require(
        m.name not in ("switch", "self_distill") and not m.teacher,
        f"method={m.name} is implemented for translation only; task={name} runs baseline, "
        "intra_distill, intra_distill_js, rdrop or sage",
    )
    require(
        t.batch_size is not None and t.batch_size >= 1,
        f"task={name} batches by examples: add trainer=finetune (or experiment=glue_cpu / table4) "
        f"or set trainer.batch_size (got {t.batch_size})",
    )
    require(
        t.lr_schedule in LR_SCHEDULES,
        f"trainer.lr_schedule must be one of {LR_SCHEDULES} (got {t.lr_schedule!r})",
    )
    require(
        t.optimizer in BASE_OPTIMIZERS,
        f"trainer.optimizer must be one of {BASE_OPTIMIZERS} (got {t.optimizer!r})",
    )
    require(
        t.warmup_ratio is None or 0 <= t.warmup_ratio < 1,
        f"trainer.warmup_ratio must be in [0, 1) or null (got {t.warmup_ratio})",
    )
    alpha_per = s.task.get("alpha_per", "unit")
    require(
        alpha_per in ALPHA_PER, f"task.alpha_per must be one of {ALPHA_PER} (got {alpha_per!r})"
    )
    id_mask = s.task.get("id_mask", "labels")
    require(id_mask in ID_MASKS, f"task.id_mask must be one of {ID_MASKS} (got {id_mask!r})")
    try:
        head = task_head(s.task)
    except (ImportError, KeyError):
        raise ConfigError(
            f"task={name} has its configuration but no data module in this version of idistill"
        ) from None
    if head == "regression":
        require(
            m.divergence == "mse",
            f"divergence={m.divergence} needs probabilities; task {name} "
            f"({s.task.get('glue_task', '')}) is a regression task: use divergence=mse",
        )
    elif head is not None:
        require(
            m.divergence in CLASSIFICATION_DIVERGENCES,
            f"divergence=mse is for regression outputs; task {name} has a {head} head: use "
            "divergence=x (or js, jeffrey)",
        )


def check_data(s: RunSettings) -> None:
    """Refuse, before any training, data the run could not train, select or test on: no
    training example, or an empty eval set (the selection set; every set with trainer.test)."""
    name = s.task["name"]
    try:
        data = load_nlu(s.task, s.model, s.data_dir)[1]
    except DataSourceError as e:
        raise ConfigError(f"task={name}: {e}") from None
    where = f"task.source={s.task['source']}" if s.task.get("source") else "downloaded"
    require(len(data.train) > 0, f"task={name} has no training examples ({where})")
    for eval_name, eval_set in data.evals.items():
        if eval_name == data.select_on or s.trainer.test:  # trainer.test=false: the selection only
            require(
                len(eval_set.features) > 0,
                f"task={name}: eval set {eval_name} has no examples ({where}); the run needs "
                f"{data.select_on} to pick the best checkpoint and, with trainer.test, every set",
            )


class NLURecipe(Recipe):
    """GLUE, WikiANN NER and TyDiQA-GoldP: fine-tuning a pretrained encoder with a head."""

    name, unit = "finetune", "units"

    def setup(self, device, amp, tracker):
        s, t, m = self.s, self.s.trainer, self.s.method
        self.device, self.amp = device, amp
        tokenizer, self.data = load_nlu(s.task, s.model, s.data_dir)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        _check_head(self.data, m.divergence, s.task["name"])
        self.head, self.train_set = self.data.head, self.data.train
        self.selection = Selection(f"{self.data.select_on}/{self.data.metric}", True)
        self.alpha_per_batch = s.task.get("alpha_per", "unit") == "batch"
        self._loss = nlu_loss(self.head, m, self.alpha_per_batch, s.task.get("id_mask", "labels"))
        self.eval_batch = 2 * t.batch_size * max(1, m.effective_k)  # no K copies, no gradients
        tracker.set_tags(
            {"head": self.head, **{k: str(s.task[k]) for k in ("glue_task",) if s.task.get(k)}}
        )
        log.info(
            "data: %d train features, eval sets %s, %s head with %d labels",
            len(self.train_set),
            ", ".join(f"{k} ({len(v.features)})" for k, v in self.data.evals.items()),
            self.head,
            self.data.num_labels,
        )
        model = build_encoder(s.model, self.head, self.data.num_labels).to(device)
        optimizer, opt_name = make_optimizer(model, s)
        tracker.log_params({"optimizer": opt_name})
        log.info(
            "model: %s, %.2fM parameters, %s",
            s.model["name_or_path"],
            model.num_parameters() / 1e6,
            opt_name,
        )
        return model, optimizer

    def updates_per_epoch(self) -> int:
        t = self.s.trainer
        return math.ceil(len(self.train_set) / (t.batch_size * t.update_freq))

    def epoch_batches(self, epoch: int):
        order = np.random.default_rng([self.s.seed, epoch]).permutation(len(self.train_set))
        size = self.s.trainer.batch_size
        return [order[i : i + size] for i in range(0, len(order), size)]

    def collate(self, indices) -> dict:
        return heads.collate([self.train_set[i] for i in indices], self.head, self.pad_id)

    def units(self, batch: dict) -> int:
        return heads.count_units(self.head, batch)

    def loss(self, model, batch: dict, alpha: float, units: int) -> IntraLoss:
        return self._loss(model, batch, alpha, units)

    def task_loss(self, model, batch: dict) -> Tensor:
        return heads.task_loss(self.head)(heads.model_forward(model, self.head)(batch), batch)

    def train_metrics(self, alpha: float, units: int, batches: int) -> dict[str, float]:
        # the weight per unit: alpha' x the window's mean units per batch (alpha_per=batch)
        effective = alpha * units / batches if self.alpha_per_batch else alpha
        return {"train/effective_alpha": effective}

    def _scores(self, model, names) -> dict[str, float]:
        scores = {}
        for name in names:
            outputs = heads.predict(
                model,
                self.data.evals[name].features,
                self.head,
                self.pad_id,
                self.eval_batch,
                self.device,
                self.amp,
            )
            scores |= {f"{name}/{k}": v for k, v in self.data.evals[name].score(outputs).items()}
        return scores

    def validate(self, model) -> dict[str, float]:
        return self._scores(model, [self.data.select_on])

    def analysis_batches(self, n: int) -> list[dict]:
        """A fixed sample: epoch 0's order, which training never uses."""
        return [self.collate(idx) for idx in self.epoch_batches(0)[:n]]

    def test(self, model, out_dir: Path, tracker, progress: bool) -> TestResult:
        """Every eval set with the best checkpoint; test predictions as files."""
        final: dict[str, float] = {}
        for name, eval_set in self.data.evals.items():
            outputs = heads.predict(
                model,
                eval_set.features,
                self.head,
                self.pad_id,
                self.eval_batch,
                self.device,
                self.amp,
            )
            final |= {f"{name}/{k}": v for k, v in eval_set.score(outputs).items()}
            if eval_set.write is not None:
                tracker.log_artifact(
                    eval_set.write(outputs, out_dir / "predictions"), "predictions"
                )
        final |= language_means(final, self.s.task.get("eval_langs"))  # zero-shot tasks
        log.info("best checkpoint: %s", " | ".join(f"{k} {v:.4f}" for k, v in final.items()))
        # a sweep's objective: test/<metric> (the mean over languages of a zero-shot task) if
        # the test set is scored, else the selection set's metric
        metric = self.data.metric
        test_key = next(
            (k for k in final if k.startswith("test") and k.endswith(f"/{metric}")), None
        )
        keys = (f"test/avg/{metric}", test_key, self.selection.metric)
        return TestResult(final, next((final[k] for k in keys if k in final), None))

    def pruning_metric(self, model):
        return self.selection.metric, lambda: self._scores(model, [self.data.select_on])[
            self.selection.metric
        ]
