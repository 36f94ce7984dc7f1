"""GLUE (Wang et al. 2019), the eight tasks of the paper's Table 4, as the NLU protocol's data.

Offline, `task.source=<dir>` reads the original GLUE tsv files (`<dir>/<CoLA|SST-2|...>/` or the
task folder itself); online, `datasets` loads `nyu-mll/glue`. Pairs are tokenized as
`[CLS] a [SEP] b [SEP]`, truncated to `task.max_len` pieces (longest first). Test splits have no
labels: their predictions are written in the GLUE server's format (`RTE.tsv`: index, prediction).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from idistill.config import ConfigError
from idistill.data.nlu import EvalSet, Feature, NLUData
from idistill.data.parallel_text import DataSourceError, read_text
from idistill.evaluate import accuracy, binary_f1, matthews_corr, pearson, spearman

log = logging.getLogger(__name__)

HF_DATASET = "nyu-mll/glue"
COLA_COLUMNS = ("source", "label", "original_label", "sentence")  # CoLA train/dev: no header


@dataclass(frozen=True)
class GlueTask:
    """Where a GLUE task's text and labels are, and how it is scored."""

    folder: str  # GLUE folder (CoLA, SST-2, ...) and submission file stem
    columns: tuple[str, ...]  # tsv header names of the one or two texts
    hf_columns: tuple[str, ...]  # the same in nyu-mll/glue
    label: str  # tsv header name of the label
    labels: tuple[str, ...]  # class names as the tsv writes them; () for regression
    metric: str  # the dev metric that picks the best checkpoint (higher is better)
    matched: bool = False  # MNLI: dev and test come as matched and mismatched


TASKS = {
    "cola": GlueTask("CoLA", ("sentence",), ("sentence",), "label", ("0", "1"), "matthews"),
    "sst2": GlueTask("SST-2", ("sentence",), ("sentence",), "label", ("0", "1"), "accuracy"),
    "mrpc": GlueTask(
        "MRPC",
        ("#1 String", "#2 String"),
        ("sentence1", "sentence2"),
        "Quality",
        ("0", "1"),
        "f1",
    ),
    "stsb": GlueTask(
        "STS-B", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "score", (), "corr"
    ),
    "qqp": GlueTask(
        "QQP",
        ("question1", "question2"),
        ("question1", "question2"),
        "is_duplicate",
        ("0", "1"),
        "f1",
    ),
    "mnli": GlueTask(
        "MNLI",
        ("sentence1", "sentence2"),
        ("premise", "hypothesis"),
        "gold_label",
        ("entailment", "neutral", "contradiction"),  # nyu-mll/glue's class ids
        "accuracy",
        matched=True,
    ),
    "qnli": GlueTask(
        "QNLI",
        ("question", "sentence"),
        ("question", "sentence"),
        "label",
        ("entailment", "not_entailment"),
        "accuracy",
    ),
    "rte": GlueTask(
        "RTE",
        ("sentence1", "sentence2"),
        ("sentence1", "sentence2"),
        "label",
        ("entailment", "not_entailment"),
        "accuracy",
    ),
}


@dataclass
class Example:
    texts: tuple[str, ...]
    label: int | float | None  # class id, score, or None (test)
    index: str  # the row's id in the split (the GLUE server matches predictions on it)


def _spec(task: dict[str, Any]) -> GlueTask:
    return TASKS[task["glue_task"]]


def head(task: dict[str, Any]) -> str | None:
    """regression for STS-B, classification for the others (None: glue_task not set yet)."""
    name = task.get("glue_task")
    if name not in TASKS:
        return None
    return "regression" if not TASKS[name].labels else "classification"


def check(task: dict[str, Any]) -> None:
    """Refuse a GLUE setting that cannot work, before any data or model is touched."""
    name = task.get("glue_task")
    if name not in TASKS:
        raise ConfigError(f"task=glue needs glue_task=<{'|'.join(TASKS)}> (got {name})")
    max_len = task.get("max_len")
    if not isinstance(max_len, int) or not 8 <= max_len <= 512:
        raise ConfigError(f"task.max_len must be an integer in [8, 512] (got {max_len})")
    for key in ("max_train_examples", "max_eval_examples"):
        value = task.get(key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"task.{key} must be a positive integer or null (got {value})")
    source = task.get("source")
    if source and not Path(str(source)).expanduser().is_dir():
        raise ConfigError(f"task.source={source} is not a directory (a folder of GLUE tsv files)")


def _splits(spec: GlueTask) -> dict[str, str]:
    """our eval set name -> the GLUE file stem."""
    if spec.matched:
        return {f"{s}/{m}": f"{s}_{m}" for s in ("dev", "test") for m in ("matched", "mismatched")}
    return {"dev": "dev", "test": "test"}


def submission_name(spec: GlueTask, eval_name: str) -> str:
    """The GLUE server's file name for a test split: RTE.tsv, MNLI-m.tsv, MNLI-mm.tsv."""
    if spec.matched:
        return "MNLI-m.tsv" if eval_name.endswith("/matched") else "MNLI-mm.tsv"
    return f"{spec.folder}.tsv"


# ---- reading


def task_folder(source: Path, spec: GlueTask) -> Path:
    """The folder holding the task's tsv files: <source>/<CoLA|...> or <source> itself."""
    for folder in (source / spec.folder, source):
        if (folder / "train.tsv").is_file():
            return folder
    raise DataSourceError(
        f"task.source={source}: no {spec.folder}/train.tsv or train.tsv there; point it at the "
        f"GLUE data folder (holding {spec.folder}/) or at {spec.folder}/ itself"
    )


def read_tsv(path: Path, spec: GlueTask) -> list[Example]:
    """One GLUE tsv file: rows split at tabs only (texts hold quotes, so no csv quoting)."""
    lines = read_text(path).removeprefix("\ufeff").split("\n")  # MRPC starts with a BOM
    rows = [line.rstrip("\r").split("\t") for line in lines if line.strip()]
    if not rows:
        raise DataSourceError(f"{path} is empty: a GLUE tsv file starts with its header")
    if spec.folder == "CoLA" and rows and rows[0][0] != "index":  # train/dev have no header
        header = list(COLA_COLUMNS)
    else:
        header, rows = rows[0], rows[1:]
    col = {name: i for i, name in enumerate(header)}
    missing = [c for c in spec.columns if c not in col]
    if missing:
        raise DataSourceError(f"{path}: no column {missing[0]!r} in its header {header}")
    label_col = col.get(spec.label)
    id_col = col.get("index", col.get("id"))
    out, skipped = [], 0
    for n, row in enumerate(rows):
        needed = [col[c] for c in spec.columns] + ([label_col] if label_col is not None else [])
        if max(needed) >= len(row):  # QQP's train file has a few broken rows, as in GLUE
            skipped += 1
            continue
        label = None if label_col is None else _label(spec, row[label_col].strip())
        if label_col is not None and label is None:
            skipped += 1
            continue
        texts = tuple(row[col[c]].strip() for c in spec.columns)
        out.append(Example(texts, label, row[id_col] if id_col is not None else str(n)))
    if skipped:
        log.warning("%s: skipped %d malformed or unlabelled rows", path, skipped)
    return out


def _label(spec: GlueTask, value: str) -> int | float | None:
    if not spec.labels:
        try:
            return float(value)
        except ValueError:
            return None
    return spec.labels.index(value) if value in spec.labels else None


def _read_hf(spec: GlueTask, name: str, stem: str) -> list[Example]:
    """One split from nyu-mll/glue (class ids there are the positions in spec.labels)."""
    try:
        from datasets import load_dataset
    except ImportError:
        raise DataSourceError(
            "task=glue without task.source needs `datasets`: pip install 'idistill[nlu]', or "
            "pass task.source=<folder of GLUE tsv files>"
        ) from None
    split = stem.replace("dev", "validation")
    try:
        rows = load_dataset(HF_DATASET, name, split=split)
    except Exception as e:  # offline: ConnectionError, OSError, or datasets' own errors
        raise DataSourceError(
            f"could not load {HF_DATASET}/{name} split {split} ({type(e).__name__}: {e}). "
            "Offline, pass the GLUE tsv files with task.source=<dir> (and a local model with "
            "model.name_or_path=<local dir>)"
        ) from None
    out = []
    for row in rows:
        label = row["label"]
        label = None if label == -1 else (float(label) if not spec.labels else int(label))
        out.append(Example(tuple(row[c] for c in spec.hf_columns), label, str(row["idx"])))
    return out


def read_glue(task: dict[str, Any]) -> dict[str, list[Example]]:
    """train and every dev/test split there is: {"train": [...], "dev": [...], ...}."""
    spec = _spec(task)
    stems = {"train": "train", **_splits(spec)}
    if task.get("source"):
        folder = task_folder(Path(str(task["source"])).expanduser(), spec)
        return {
            name: read_tsv(folder / f"{stem}.tsv", spec)
            for name, stem in stems.items()
            if (folder / f"{stem}.tsv").is_file()
        }
    return {name: _read_hf(spec, task["glue_task"], stem) for name, stem in stems.items()}


# ---- features and scores


def features(examples: list[Example], tokenizer, max_len: int) -> list[Feature]:
    """Token ids of each example (pairs as one sequence, longest-first truncation) + its label."""
    if not examples:  # an empty split: the preflight names it (the tokenizer cannot take [])
        return []
    firsts = [e.texts[0] for e in examples]
    seconds = [e.texts[1] for e in examples] if examples and len(examples[0].texts) > 1 else None
    enc = tokenizer(firsts, seconds, truncation=True, max_length=max_len)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    out = []
    for i, e in enumerate(examples):
        feature = {k: enc[k][i] for k in keys}
        if e.label is not None:
            feature["labels"] = e.label
        out.append(feature)
    return out


def glue_scores(name: str, predictions: list[float], labels: list[float]) -> dict[str, float]:
    """The GLUE metrics of one task: CoLA Matthews corr., STS-B Pearson/Spearman (and their
    mean, `corr`), MRPC/QQP F1 and accuracy, the others accuracy."""
    if name == "cola":
        return {"matthews": matthews_corr(predictions, labels)}
    if name == "stsb":
        p, s = pearson(predictions, labels), spearman(predictions, labels)
        return {"pearson": p, "spearman": s, "corr": (p + s) / 2}
    scores = {"accuracy": accuracy(predictions, labels)}
    if name in ("mrpc", "qqp"):
        scores["f1"] = binary_f1(predictions, labels)
    return scores


def _decode(spec: GlueTask, outputs: list[np.ndarray]) -> list[float]:
    """Head outputs -> class ids (argmax of [C]) or scores ([])."""
    if not spec.labels:
        return [float(o) for o in outputs]
    return [int(np.argmax(o)) for o in outputs]


def _eval_set(name: str, spec: GlueTask, examples: list[Example], feats, eval_name) -> EvalSet:
    gold = [e.label for e in examples]
    labelled = all(g is not None for g in gold)

    def score(outputs: list[np.ndarray]) -> dict[str, float]:
        return glue_scores(name, _decode(spec, outputs), gold) if labelled else {}

    def write(outputs: list[np.ndarray], folder: Path) -> Path:
        """index<TAB>prediction, as the GLUE server reads it."""
        preds = _decode(spec, outputs)
        shown = [f"{p:.3f}" for p in preds] if not spec.labels else [spec.labels[p] for p in preds]
        path = folder / submission_name(spec, eval_name)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = "".join(f"{e.index}\t{p}\n" for e, p in zip(examples, shown, strict=True))
        path.write_text("index\tprediction\n" + rows, encoding="utf-8")
        return path

    is_test = eval_name.startswith("test")
    return EvalSet(feats, score, write if is_test else None)


def _sample(examples: list, n: int | None, seed: int) -> list:
    """n examples at random (in file order), or all of them."""
    if n is None or n >= len(examples):
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in keep]


def load(task: dict[str, Any], tokenizer, data_dir: Path) -> NLUData:
    """Tokenized GLUE splits of `task.glue_task` (data_dir is unused: tokenizing is seconds,
    and `datasets` keeps its own cache)."""
    check(task)
    name, spec = task["glue_task"], _spec(task)
    splits = read_glue(task)
    if "train" not in splits or not splits["train"]:
        raise DataSourceError(f"GLUE {spec.folder}: no training examples found")
    train = _sample(splits.pop("train"), task.get("max_train_examples"), seed=0)
    evals: dict[str, EvalSet] = {}
    for eval_name, examples in splits.items():
        if task.get("max_eval_examples"):
            examples = examples[: task["max_eval_examples"]]
        feats = features(examples, tokenizer, task["max_len"])
        evals[eval_name] = _eval_set(name, spec, examples, feats, eval_name)
    select_on = "dev/matched" if spec.matched else "dev"
    if select_on not in evals:
        raise DataSourceError(f"GLUE {spec.folder}: no {select_on} split to pick checkpoints on")
    log.info(
        "GLUE %s: %d train, %s",
        spec.folder,
        len(train),
        ", ".join(f"{len(e.features)} {n}" for n, e in evals.items()),
    )
    return NLUData(
        head=head(task) or "classification",
        num_labels=max(1, len(spec.labels)),
        train=features(train, tokenizer, task["max_len"]),
        evals=evals,
        select_on=select_on,
        metric=spec.metric,
        label_names=list(spec.labels),
    )
