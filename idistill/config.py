"""Plain settings of one run, built from the composed config and checked before any work starts.

The library takes these dataclasses; only `cli/` knows they came from Hydra.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from idistill.losses import CLASSIFICATION_DIVERGENCES, DIVERGENCES
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

# Keys that only one task family reads; runs of the other family neither log nor hash them.
# The engine's keys (updates, lr schedule, validation, precision, ...) are common.
FAMILY_ONLY = {
    "translation": (
        ("trainer", ("max_tokens", "label_smoothing", "beam", "len_penalty", "max_len_a",
                     "max_len_b", "test_max_sentences", "fused_loss", "best_metric",
                     "valid_bleu_sentences")),
        ("method", ("teacher", "rounds")),
    ),
    "nlu": (("trainer", ("batch_size", "optimizer")),),
}  # fmt: skip
# trainer keys added after the first runs were tagged: at their defaults they leave hashes alone
LATER_KEYS = (
    "batch_size", "optimizer", "lr_schedule", "warmup_ratio", "patience", "fused_loss",
    "best_metric", "valid_bleu_sentences",
)  # fmt: skip


class ConfigError(ValueError):
    """Settings that cannot work: one message per problem, each naming the key and the fix."""

    def __init__(self, *problems: str):
        super().__init__("\n".join(problems))
        self.problems = list(problems)


def unknown_key(key: str, known) -> str:
    """The refusal of a mistyped key: `unknown key method.alpah (did you mean method.alpha?)`
    (difflib's nearest known name), or the valid keys where none is near."""
    prefix, _, name = key.rpartition(".")
    what = "unknown key" if prefix else "unknown top-level key"
    near = difflib.get_close_matches(name, sorted(known), n=1)
    if near:
        return f"{what} {key} (did you mean {prefix + '.' if prefix else ''}{near[0]}?)"
    return f"{what} {key} (valid: {', '.join(sorted(known))})"


class _Problems(list):
    """What is wrong with a config, gathered so that one refusal names all of it."""

    def require(self, ok: bool, message: str) -> None:
        if not ok:
            self.append(message)

    def check(self, check, *args) -> None:
        """Run a check that raises ConfigError; its problems join the others."""
        try:
            check(*args)
        except ConfigError as e:
            self.extend(e.problems)

    def raise_any(self) -> None:
        if self:
            raise ConfigError(*self)


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
    best_metric: str = "loss"  # translation: what picks the best checkpoint: loss | bleu
    valid_bleu_sentences: int = 500  # best_metric=bleu: the first N valid sentences, translated
    test: bool = True  # false: no test after training (runs that tune on validation only)
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
    system_metrics: bool = True  # system/* (CPU, memory, GPU memory) with every train/* log


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

    @property
    def run_name(self) -> str:
        """What ran, as the MLflow run's name: `iwslt14-de intra_distill K3 a5 s1`; a method
        that runs one pass without a consistency term (baseline, switch, ...) has no K and alpha."""
        task = self.task["name"]
        variant = self.lang or self.task.get("glue_task")
        parts = [f"{task}-{variant}" if variant else task, self.method.name]
        m = self.method
        if not (m.k == 1 and m.alpha == 0):
            parts += [f"K{m.k}", f"a{m.alpha:g}"]
        return " ".join([*parts, f"s{self.seed}"])

    @property
    def family(self) -> str:
        """translation, or nlu: fine-tuning a pretrained encoder (task.type: nlu)."""
        return "nlu" if self.task.get("type") == "nlu" else "translation"

    def to_dict(self) -> dict[str, Any]:
        """The resolved settings as nested plain values (for params and the config hash),
        without the keys that only the other task family reads."""
        out = self._all()
        for section, keys in FAMILY_ONLY["nlu" if self.family == "translation" else "translation"]:
            for key in keys:
                out[section].pop(key, None)
        return out

    def _all(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["data_dir"] = str(self.data_dir)
        return out

    def config_hash(self, legacy: bool = False) -> str:
        """Short hash of what determines the result (not where it is saved or resumed from).
        legacy: as runs made before the keys of the other task family were left out (the
        hashes of translation runs did not change; those of NLU runs did)."""
        d = self._all() if legacy else self.to_dict()
        for key in ("resume", "save_dir", "device", "num_threads", "test"):  # not the training
            d["trainer"].pop(key, None)
        plain = TrainerSettings()
        # keys added later (NLU's, early stopping): at their defaults they leave the hashes of
        # the runs made before they existed as they were
        for key in LATER_KEYS:
            if key in d["trainer"] and d["trainer"][key] == getattr(plain, key):
                d["trainer"].pop(key)
        if d["method"]["k"] == 1:  # one pass: loop and concat are the same computation
            d["method"]["passes"] = "concat"
        if d["task"].get("source"):  # one folder, however it was spelled (relative, ~)
            d["task"]["source"] = str(Path(str(d["task"]["source"])).expanduser().resolve())
        d.pop("tracking")
        d.pop("analysis")  # analyses read the model; they do not change training
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    def cell_hash(self, legacy: bool = False) -> str:
        """The config hash without the seed and the data directory: the runs of one table cell
        (mean +- std over seeds in `idistill-report`). data_dir comes from $IDISTILL_DATA or ~,
        which differ between shells and hosts that hold the same data."""
        return dataclasses.replace(self, seed=0, data_dir=Path()).config_hash(legacy)

    def hashes(self, cell: bool = False) -> list[str]:
        """The config (or cell) hash, and the legacy one where it differs: what runs made by
        earlier versions of idistill were tagged with."""
        of = self.cell_hash if cell else self.config_hash
        return list(dict.fromkeys([of(), of(legacy=True)]))


# what a numeric or boolean setting must be, by its annotation (`from __future__` makes them
# strings); the message names it
_KINDS = {"int": ((int,), "a whole number"), "float": ((int, float), "a number"),
          "bool": ((bool,), "true or false")}  # fmt: skip


def _type_problems(cls, values: dict[str, Any], prefix: str) -> list[str]:
    """`trainer.lr=abc` is refused by name before anything runs, not met as a TypeError later."""
    problems = _Problems()
    for f in dataclasses.fields(cls):
        base, optional = f.type.removesuffix(" | None"), f.type.endswith(" | None")
        if f.name not in values or base not in _KINDS:
            continue
        value, (types, what) = values[f.name], _KINDS[base]
        if optional and value is None:
            continue
        ok = isinstance(value, types) and (base == "bool") == isinstance(value, bool)
        problems.require(ok, f"{prefix}.{f.name} must be {what}{' or null' if optional else ''} "
                             f"(got {value!r})")  # fmt: skip
    return problems


def _section_problems(cls, values: dict[str, Any], prefix: str, known=None) -> list[str]:
    """Unknown keys (with the nearest known one) and values of the wrong type."""
    known = known or {f.name for f in dataclasses.fields(cls)}
    unknown = [unknown_key(f"{prefix}.{key}", known) for key in sorted(set(values) - set(known))]
    return unknown + _type_problems(cls, values, prefix)


def _build(cls, values: dict[str, Any]):
    floats = {f.name for f in dataclasses.fields(cls) if f.type in ("float", "float | None")}
    # `method.alpha=1` on the command line arrives as an int: log and hash it as 1.0
    values = {k: float(v) if k in floats and isinstance(v, int) else v for k, v in values.items()}
    return cls(**values)


def require(ok: bool, message: str) -> None:
    """Refuse a setting: ConfigError(message) unless `ok`."""
    if not ok:
        raise ConfigError(message)


TOP_KEYS = ("task", "model", "method", "divergence", "schedule", "trainer", "tracking", "analysis",
            "lang", "seed", "data_dir", "glue_task")  # glue_task: read by task=glue  # fmt: skip
SCHEDULE_KEYS = ("p", "q", "total_updates")  # besides its name; MethodSettings holds them


def settings_from_dict(cfg: dict[str, Any]) -> RunSettings:
    """Build and check the run settings from the resolved config (a plain dict); a refusal
    names every problem at once."""
    problems = _Problems(unknown_key(key, TOP_KEYS) for key in sorted(set(cfg) - set(TOP_KEYS)))
    trainer = dict(cfg["trainer"])
    trainer["betas"] = tuple(trainer.get("betas", (0.9, 0.98)))
    problems += _section_problems(TrainerSettings, trainer, "trainer")
    method = dict(cfg["method"])
    problems += _section_problems(MethodSettings, method, "method")
    method["divergence"] = cfg["divergence"]["name"]
    schedule = dict(cfg["schedule"])
    method["schedule"] = schedule.pop("name")
    # schedule.total_updates is ${trainer.max_updates}: a bad value is the trainer's, the key
    # the user typed, and reported once
    typed = {k: v for k, v in schedule.items()
             if not (k == "total_updates" and v == trainer.get("max_updates"))}  # fmt: skip
    problems += _section_problems(MethodSettings, typed, "schedule", SCHEDULE_KEYS)
    problems += _section_problems(TrackingSettings, dict(cfg["tracking"]), "tracking")
    analysis = dict(cfg.get("analysis") or {})
    problems += _section_problems(AnalysisSettings, analysis, "analysis")
    problems.raise_any()
    settings = RunSettings(
        task=dict(cfg["task"]),
        model=dict(cfg["model"]),
        method=_build(MethodSettings, method | schedule),
        trainer=_build(TrainerSettings, trainer),
        tracking=_build(TrackingSettings, dict(cfg["tracking"])),
        analysis=_build(AnalysisSettings, analysis),
        lang=cfg.get("lang"),
        seed=int(cfg.get("seed", 1)),
        data_dir=Path(str(cfg.get("data_dir", "~/.cache/idistill"))).expanduser(),
    )
    validate(settings)
    return settings


def validate(s: RunSettings) -> None:
    """Refuse settings that cannot work, naming every problem's key and fix; touches no data."""
    from idistill.analysis.analyse import check_analysis
    from idistill.engine.state import check_patience
    from idistill.recipes import check_settings

    m, t = s.method, s.trainer
    task_type = s.task.get("type", "translation")
    problems = _Problems()
    problems.require(t.max_updates > 0, f"trainer.max_updates must be > 0 (got {t.max_updates})")
    problems.check(check_settings, s)  # what the task family's recipe needs (model, batching)
    problems.require(isinstance(m.k, int) and m.k >= 1, f"method.k must be >= 1 (got {m.k})")
    problems.require(m.alpha >= 0, f"method.alpha must be >= 0 (got {m.alpha})")
    problems.require(
        isinstance(m.rounds, int) and m.rounds >= 1, f"method.rounds must be >= 1 (got {m.rounds})"
    )
    problems.require(
        m.optimizer in OPTIMIZERS,
        f"method.optimizer must be one of {', '.join(OPTIMIZERS)} (got {m.optimizer!r})",
    )
    problems.require(0 <= m.beta3 < 1, f"method.beta3 must be in [0, 1) (got {m.beta3})")
    problems.require(
        m.teacher is None or m.name == "self_distill",
        f"method.teacher is for method=self_distill (got method={m.name})",
    )
    problems.require(
        m.passes in PASSES, f"method.passes must be one of {PASSES} (got {m.passes!r})"
    )
    problems.require(
        m.divergence in DIVERGENCES,
        f"divergence must be one of {DIVERGENCES} (got {m.divergence!r})",
    )
    problems.require(
        m.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES} (got {m.schedule!r})"
    )
    if m.schedule == "adaptive":
        try:
            validate_adaptive(m.p, m.q)
        except ValueError as e:
            problems.append(str(e))
        # schedule.total_updates is ${trainer.max_updates}: reported once, as the trainer's
        problems.require(
            m.total_updates > 0 or m.total_updates == t.max_updates,
            f"schedule.total_updates must be > 0 (got {m.total_updates})",
        )
    problems.require(
        task_type in TASK_TYPES, f"task.type must be one of {TASK_TYPES} (got {task_type!r})"
    )
    if task_type == "nlu":
        pass  # the head decides (recipes.nlu.check_settings)
    elif task_type == "regression":
        problems.require(
            m.divergence == "mse",
            f"divergence={m.divergence} needs probabilities; task {s.task['name']} is a "
            "regression task: use divergence=mse",
        )
    else:
        problems.require(
            m.divergence in CLASSIFICATION_DIVERGENCES,
            f"divergence=mse is for regression outputs; task {s.task['name']} is "
            f"{task_type}: use divergence=x (or js, jeffrey)",
        )
    problems.check(check_task_keys, s)
    problems.require(t.update_freq >= 1, f"trainer.update_freq must be >= 1 (got {t.update_freq})")
    problems.require(
        t.warmup_updates >= 1, f"trainer.warmup_updates must be >= 1 (got {t.warmup_updates})"
    )
    problems.require(t.lr > 0, f"trainer.lr must be > 0 (got {t.lr})")
    problems.require(t.log_every >= 1, f"trainer.log_every must be >= 1 (got {t.log_every})")
    problems.require(
        t.validate_every >= 0,
        f"trainer.validate_every must be >= 0, 0: every epoch (got {t.validate_every})",
    )
    problems.require(
        t.max_epochs is None or t.max_epochs >= 1,
        f"trainer.max_epochs must be >= 1 or null (got {t.max_epochs})",
    )
    problems.require(
        t.num_threads is None or t.num_threads >= 1,
        f"trainer.num_threads must be >= 1 or null (got {t.num_threads})",
    )
    problems.check(check_patience, t.patience, t.max_updates, t.validate_every)
    problems.require(t.beam >= 1, f"trainer.beam must be >= 1 (got {t.beam})")
    problems.require(
        t.device in ("auto", "cpu", "cuda"),
        f"trainer.device must be auto, cpu or cuda (got {t.device!r})",
    )
    problems.require(
        t.precision in PRECISIONS,
        f"trainer.precision must be one of {', '.join(PRECISIONS)} (got {t.precision!r})",
    )
    problems.require(
        t.compile in COMPILE,
        f"trainer.compile must be one of {', '.join(COMPILE)} (got {t.compile!r})",
    )
    problems.require(
        s.tracking.backend in ("mlflow", "none"),
        f"tracking must be mlflow or none (got {s.tracking.backend!r})",
    )
    problems.check(check_analysis, s.analysis)
    problems.require(
        t.test or not s.analysis.pruning,
        "analysis=pruning scores the test set, which trainer.test=false leaves alone: drop one",
    )
    problems.raise_any()


def check_task_keys(s: RunSettings) -> None:
    """The language a task needs and the local source it was given: both are reported, as a
    user who forgot one may have mistyped the other."""
    problems, task = _Problems(), s.task
    langs = task.get("langs")
    if langs:
        problems.require(
            s.lang in langs,
            f"task={task['name']} needs lang=<one of {', '.join(langs)}> (got {s.lang})",
        )
    elif "src_lang" in task:  # a parallel corpus whose source side is ${lang}
        problems.require(
            task["src_lang"] is not None,
            f"task={task['name']} needs lang=<source language> (got None)",
        )
    source = task.get("source")
    problems.require(
        not source or Path(str(source)).expanduser().exists(),
        f"task.source={source} does not exist (a folder or archive of the task's data)",
    )
    problems.raise_any()
