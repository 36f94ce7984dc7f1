"""Plain settings of one run, built from the composed config and checked before any work starts.

The library takes these dataclasses; only `cli/` knows they came from Hydra.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from idistill.losses import CLASSIFICATION_DIVERGENCES, DIVERGENCES
from idistill.models.encoder import check_model, is_encoder
from idistill.models.transformer import model_config
from idistill.sage import OPTIMIZERS
from idistill.schedule import validate_adaptive

TASK_TYPES = ("translation", "classification", "regression", "nlu")
SCHEDULES = ("constant", "adaptive")
PASSES = ("concat", "loop")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
COMPILE = ("none", "loss", "model")  # what torch.compile compiles: nothing, the fused loss, both
LR_SCHEDULES = ("inverse_sqrt", "linear")
BASE_OPTIMIZERS = ("adamw", "adamax")  # NLU fine-tuning; method=sage adds SAGE's scaling to it
ALPHA_PER = ("unit", "batch")  # NLU: what alpha weighs (see the README's "Alpha normalization")
ID_MASKS = ("labels", "attention")  # tokens head: positions the divergence counts

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A setting that cannot work; the message names the key and the fix."""


@dataclass
class MethodSettings:
    """The training method: K passes, alpha, divergence and alpha schedule."""

    name: str = "intra_distill"
    k: int = 3
    alpha: float = 5.0
    passes: str = "concat"
    divergence: str = "x"
    schedule: str = "adaptive"
    p: float = 5.0
    q: float = 10.0
    total_updates: int = 50000
    teacher: str | None = None  # self_distill: checkpoint, run directory or MLflow run id
    rounds: int = 1  # self_distill: student rounds, each taught by the previous one
    optimizer: str = "adamw"  # adamw | sage_adamw | sage_adamax (method=sage)
    beta3: float = 0.75  # SAGE: EMA factor of the sensitivity

    @property
    def effective_k(self) -> int:
        """alpha = 0 is the plain baseline: one pass, no extra compute."""
        return 1 if self.alpha == 0 else self.k


@dataclass
class TrainerSettings:
    """Optimisation, batching, evaluation and checkpointing."""

    max_updates: int = 50000
    max_epochs: int | None = None
    max_tokens: int = 4096
    batch_size: int | None = None  # NLU: examples per batch (translation batches by max_tokens)
    optimizer: str = "adamw"  # NLU: adamw | adamax (method=sage makes it sage_adamw/_adamax)
    lr_schedule: str = "inverse_sqrt"  # inverse_sqrt (translation) | linear (NLU)
    warmup_ratio: float | None = None  # linear: warm-up as a fraction of all updates
    update_freq: int = 1
    lr: float = 5e-4
    warmup_updates: int = 4000
    warmup_init_lr: float = 1e-7
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.0001
    clip_norm: float = 0.0
    label_smoothing: float = 0.1
    validate_every: int = 0
    patience: int = 0  # stop after this many validations without a better score (0: off)
    log_every: int = 20
    beam: int = 5
    len_penalty: float = 1.0
    max_len_a: float = 1.2
    max_len_b: int = 10
    test_max_sentences: int | None = None
    device: str = "auto"
    precision: str = "auto"
    compile: str = "loss"
    fused_loss: bool = True  # translation: CE + divergence in one chunked pass (false: reference)
    num_threads: int | None = None
    resume: Any = False
    save_dir: str | None = None


@dataclass
class TrackingSettings:
    """Where the run is logged."""

    backend: str = "mlflow"
    uri: str | None = "sqlite:///mlflow.db"
    experiment: str | None = None


@dataclass
class AnalysisSettings:
    """Analyses of the trained model (paper section 2): sensitivity, pruning, tracking."""

    sensitivity: bool = False  # after training: sensitivity of the best checkpoint (eq. 2)
    pruning: bool = False  # after training: metric with the least sensitive elements pruned
    track_every: int = 0  # during training: sensitivity statistics every N updates (0: off)
    batches: int = 100  # training batches the sensitivity is averaged over
    track_batches: int = 10  # ... when tracked during training
    include: list[str] = field(default_factory=lambda: ["*"])  # counted tensors (fnmatch)
    exclude: list[str] = field(default_factory=list)
    ratios: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    drop_top: float = 0.01  # violin plot: the most sensitive fraction left out (Appendix B)
    sample: float = 0.1  # violin plot: the fraction of the rest that is plotted

    def __post_init__(self):
        # `analysis.include=encoder_layers.*` on the command line arrives as one string
        for key in ("include", "exclude"):
            if isinstance(getattr(self, key), str):
                setattr(self, key, [getattr(self, key)])

    @property
    def after_training(self) -> bool:
        """Whether an analysis runs on the best checkpoint."""
        return self.sensitivity or self.pruning


@dataclass
class RunSettings:
    """Everything one run needs, in plain Python types."""

    task: dict[str, Any]
    model: dict[str, Any]
    method: MethodSettings = field(default_factory=MethodSettings)
    trainer: TrainerSettings = field(default_factory=TrainerSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    analysis: AnalysisSettings = field(default_factory=AnalysisSettings)
    lang: str | None = None
    seed: int = 1
    data_dir: Path = Path("~/.cache/idistill")

    @property
    def experiment_name(self) -> str:
        """One MLflow experiment per task (+ language pair)."""
        if self.tracking.experiment:
            return self.tracking.experiment
        return f"{self.task['name']}-{self.lang}" if self.lang else self.task["name"]

    def to_dict(self) -> dict[str, Any]:
        """The resolved settings as nested plain values (for params and the config hash)."""
        out = dataclasses.asdict(self)
        out["data_dir"] = str(self.data_dir)
        return out

    def config_hash(self) -> str:
        """Short hash of what determines the result (not where it is saved or resumed from)."""
        d = self.to_dict()
        for key in ("resume", "save_dir", "device", "num_threads"):
            d["trainer"].pop(key, None)
        plain = TrainerSettings()
        # keys added later (NLU's, early stopping): at their defaults they leave the hashes of
        # the runs made before they existed as they were
        for key in (
            "batch_size",
            "optimizer",
            "lr_schedule",
            "warmup_ratio",
            "patience",
            "fused_loss",
        ):
            if d["trainer"][key] == getattr(plain, key):
                d["trainer"].pop(key)
        d.pop("tracking")
        d.pop("analysis")  # analyses read the model; they do not change training
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    def cell_hash(self) -> str:
        """The config hash without the seed and the data directory: the runs of one table cell
        (mean +- std over seeds in `idistill-report`). data_dir comes from $IDISTILL_DATA or ~,
        which differ between shells and hosts that hold the same data."""
        return dataclasses.replace(self, seed=0, data_dir=Path()).config_hash()


def _section(cls, values: dict[str, Any], prefix: str):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown key {prefix}.{unknown[0]} (valid: {', '.join(sorted(known))})")
    floats = {f.name for f in dataclasses.fields(cls) if f.type in ("float", "float | None")}
    # `method.alpha=1` on the command line arrives as an int: log and hash it as 1.0
    values = {k: float(v) if k in floats and isinstance(v, int) else v for k, v in values.items()}
    return cls(**values)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def settings_from_dict(cfg: dict[str, Any]) -> RunSettings:
    """Build and check the run settings from the resolved config (a plain dict)."""
    top = {"task", "model", "method", "divergence", "schedule", "trainer", "tracking", "analysis"}
    top |= {"lang", "seed", "data_dir", "glue_task"}  # glue_task: read by task=glue
    unknown = sorted(set(cfg) - top)
    _require(
        not unknown,
        f"unknown top-level key {unknown[0] if unknown else ''!r} (valid: "
        f"{', '.join(sorted(top))})",
    )
    method = dict(cfg["method"])
    method["divergence"] = cfg["divergence"]["name"]
    schedule = dict(cfg["schedule"])
    method["schedule"] = schedule.pop("name")
    method.update(schedule)
    trainer = dict(cfg["trainer"])
    trainer["betas"] = tuple(trainer.get("betas", (0.9, 0.98)))
    settings = RunSettings(
        task=dict(cfg["task"]),
        model=dict(cfg["model"]),
        method=_section(MethodSettings, method, "method"),
        trainer=_section(TrainerSettings, trainer, "trainer"),
        tracking=_section(TrackingSettings, dict(cfg["tracking"]), "tracking"),
        analysis=_section(AnalysisSettings, dict(cfg.get("analysis") or {}), "analysis"),
        lang=cfg.get("lang"),
        seed=int(cfg.get("seed", 1)),
        data_dir=Path(str(cfg.get("data_dir", "~/.cache/idistill"))).expanduser(),
    )
    validate(settings)
    return settings


def validate(s: RunSettings) -> None:
    """Refuse settings that cannot work, naming the key and the fix; touches no data."""
    m, t = s.method, s.trainer
    task_type = s.task.get("type", "translation")
    if task_type == "nlu":
        _validate_nlu(s)
    else:
        _require(
            not is_encoder(s.model),
            f"model.name_or_path={s.model.get('name_or_path')} is a pretrained encoder for NLU "
            f"tasks (task=glue, ...); task={s.task['name']} needs a seq2seq model "
            "(model=transformer_small, ...)",
        )
        _require(
            t.lr_schedule == "inverse_sqrt" and t.optimizer == "adamw",
            f"trainer.lr_schedule={t.lr_schedule} / trainer.optimizer={t.optimizer} are for NLU "
            "fine-tuning; translation uses inverse_sqrt and method.optimizer",
        )
        try:  # the model's keys and sizes, with a stand-in vocabulary (the real one: with data)
            model_config(s.model, vocab_size=64, pad_id=0)
        except (TypeError, ValueError) as e:
            raise ConfigError(str(e)) from None
    _require(isinstance(m.k, int) and m.k >= 1, f"method.k must be >= 1 (got {m.k})")
    _require(m.alpha >= 0, f"method.alpha must be >= 0 (got {m.alpha})")
    _require(
        isinstance(m.rounds, int) and m.rounds >= 1, f"method.rounds must be >= 1 (got {m.rounds})"
    )
    _require(
        m.optimizer in OPTIMIZERS,
        f"method.optimizer must be one of {', '.join(OPTIMIZERS)} (got {m.optimizer!r})",
    )
    _require(0 <= m.beta3 < 1, f"method.beta3 must be in [0, 1) (got {m.beta3})")
    _require(
        m.teacher is None or m.name == "self_distill",
        f"method.teacher is for method=self_distill (got method={m.name})",
    )
    _require(m.passes in PASSES, f"method.passes must be one of {PASSES} (got {m.passes!r})")
    _require(
        m.divergence in DIVERGENCES,
        f"divergence must be one of {DIVERGENCES} (got {m.divergence!r})",
    )
    _require(m.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES} (got {m.schedule!r})")
    if m.schedule == "adaptive":
        try:
            validate_adaptive(m.p, m.q)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        _require(m.total_updates > 0, f"schedule.total_updates must be > 0 (got {m.total_updates})")
    _require(task_type in TASK_TYPES, f"task.type must be one of {TASK_TYPES} (got {task_type!r})")
    if task_type == "nlu":
        pass  # the head decides (_validate_nlu)
    elif task_type == "regression":
        _require(
            m.divergence == "mse",
            f"divergence={m.divergence} needs probabilities; task {s.task['name']} is a "
            "regression task: use divergence=mse",
        )
    else:
        _require(
            m.divergence in CLASSIFICATION_DIVERGENCES,
            f"divergence=mse is for regression outputs; task {s.task['name']} is "
            f"{task_type}: use divergence=x (or js, jeffrey)",
        )
    langs = s.task.get("langs")
    if langs:
        _require(
            s.lang in langs,
            f"task={s.task['name']} needs lang=<one of {', '.join(langs)}> (got {s.lang})",
        )
    _require(t.max_updates > 0, f"trainer.max_updates must be > 0 (got {t.max_updates})")
    _require(t.update_freq >= 1, f"trainer.update_freq must be >= 1 (got {t.update_freq})")
    _require(t.warmup_updates >= 1, f"trainer.warmup_updates must be >= 1 (got {t.warmup_updates})")
    _require(t.lr > 0, f"trainer.lr must be > 0 (got {t.lr})")
    _validate_patience(t)
    _require(t.beam >= 1, f"trainer.beam must be >= 1 (got {t.beam})")
    _require(
        t.device in ("auto", "cpu", "cuda"),
        f"trainer.device must be auto, cpu or cuda (got {t.device!r})",
    )
    _require(
        t.precision in PRECISIONS,
        f"trainer.precision must be one of {', '.join(PRECISIONS)} (got {t.precision!r})",
    )
    _require(
        t.compile in COMPILE,
        f"trainer.compile must be one of {', '.join(COMPILE)} (got {t.compile!r})",
    )
    max_len = s.task.get("max_len")
    if max_len is not None and task_type != "nlu":
        longest = max_len + 1  # a sentence of max_len pieces plus eos (or bos)
        _require(
            t.max_tokens >= longest,
            f"trainer.max_tokens={t.max_tokens} is smaller than the longest allowed sentence "
            f"(task.max_len={max_len} + 1 = {longest} tokens): raise trainer.max_tokens or "
            "lower task.max_len",
        )
    _require(
        s.tracking.backend in ("mlflow", "none"),
        f"tracking must be mlflow or none (got {s.tracking.backend!r})",
    )
    _validate_analysis(s.analysis)


def _validate_patience(t: TrainerSettings) -> None:
    """trainer.patience: a whole number >= 0; a warning when the run cannot validate that often."""
    _require(
        isinstance(t.patience, int) and not isinstance(t.patience, bool) and t.patience >= 0,
        f"trainer.patience must be a whole number >= 0 (0: off) (got {t.patience!r})",
    )
    if t.patience and t.validate_every and t.max_updates // t.validate_every <= t.patience:
        log.warning(
            "trainer.patience=%d can never stop the run: trainer.max_updates=%d allows only %d "
            "validations every %d updates",
            t.patience, t.max_updates, t.max_updates // t.validate_every, t.validate_every,
        )  # fmt: skip


def _validate_analysis(a: AnalysisSettings) -> None:
    _require(a.track_every >= 0, f"analysis.track_every must be >= 0 (got {a.track_every})")
    _require(a.batches >= 1, f"analysis.batches must be >= 1 (got {a.batches})")
    _require(a.track_batches >= 1, f"analysis.track_batches must be >= 1 (got {a.track_batches})")
    _require(
        isinstance(a.ratios, (list, tuple)),
        f"analysis.ratios must be a list, e.g. [0,0.3] (got {a.ratios})",
    )
    _require(
        a.ratios and all(0 <= r < 1 for r in a.ratios),
        f"analysis.ratios must be fractions in [0, 1), e.g. [0,0.1,0.2] (got {a.ratios})",
    )
    for r in a.ratios:  # prune/<metric> is logged at step round(100 * ratio)
        _require(
            abs(100 * r - round(100 * r)) < 1e-6,
            "analysis.ratios are logged with step = the percentage: use whole percents such as "
            f"0.1, 0.25 (got {r})",
        )
    _require(0 <= a.drop_top < 1, f"analysis.drop_top must be in [0, 1) (got {a.drop_top})")
    _require(0 < a.sample <= 1, f"analysis.sample must be in (0, 1] (got {a.sample})")


def _validate_nlu(s: RunSettings) -> None:
    """NLU fine-tuning: a pretrained encoder, example batches, and a divergence for the head."""
    from idistill.data.nlu import task_head

    m, t, name = s.method, s.trainer, s.task["name"]
    _require(
        is_encoder(s.model),
        f"task={name} fine-tunes a pretrained encoder: model=bert_base, minilm_local, xlmr_base "
        f"or xlmr_large, or model.name_or_path=<dir> (got model={s.model.get('name')})",
    )
    try:
        check_model(s.model)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _require(
        m.name not in ("switch", "self_distill") and not m.teacher,
        f"method={m.name} is implemented for translation only; task={name} runs baseline, "
        "intra_distill, intra_distill_js, rdrop or sage",
    )
    _require(
        t.batch_size is not None and t.batch_size >= 1,
        f"task={name} batches by examples: add trainer=finetune (or experiment=glue_cpu / table4) "
        f"or set trainer.batch_size (got {t.batch_size})",
    )
    _require(
        t.lr_schedule in LR_SCHEDULES,
        f"trainer.lr_schedule must be one of {LR_SCHEDULES} (got {t.lr_schedule!r})",
    )
    _require(
        t.optimizer in BASE_OPTIMIZERS,
        f"trainer.optimizer must be one of {BASE_OPTIMIZERS} (got {t.optimizer!r})",
    )
    _require(
        t.warmup_ratio is None or 0 <= t.warmup_ratio < 1,
        f"trainer.warmup_ratio must be in [0, 1) or null (got {t.warmup_ratio})",
    )
    alpha_per = s.task.get("alpha_per", "unit")
    _require(
        alpha_per in ALPHA_PER, f"task.alpha_per must be one of {ALPHA_PER} (got {alpha_per!r})"
    )
    id_mask = s.task.get("id_mask", "labels")
    _require(id_mask in ID_MASKS, f"task.id_mask must be one of {ID_MASKS} (got {id_mask!r})")
    try:
        head = task_head(s.task)
    except (ImportError, KeyError):
        raise ConfigError(
            f"task={name} has its configuration but no data module in this version of idistill"
        ) from None
    if head == "regression":
        _require(
            m.divergence == "mse",
            f"divergence={m.divergence} needs probabilities; task {name} "
            f"({s.task.get('glue_task', '')}) is a regression task: use divergence=mse",
        )
    elif head is not None:
        _require(
            m.divergence in CLASSIFICATION_DIVERGENCES,
            f"divergence=mse is for regression outputs; task {name} has a {head} head: use "
            "divergence=x (or js, jeffrey)",
        )
