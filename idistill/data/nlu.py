"""What an NLU task module (GLUE, WikiANN NER, TyDiQA) hands the fine-tuning loop.

A task module `idistill.data.<name>` provides

    check(task: dict) -> None                       # refuse bad settings before any work
    load(task: dict, tokenizer, data_dir: Path) -> NLUData

where `tokenizer` is the Hugging Face tokenizer of `model.name_or_path`. The loop only knows
the four heads below; everything task-specific (reading files, sub-token labels, windows over
long contexts, turning raw predictions into the task's metric) stays in the task module.

Two optional additions (made with the GLUE module; a module without them still works):

    head(task: dict) -> str | None                  # the head, known from the settings alone:
                                                    # lets the config checks refuse a divergence
                                                    # that cannot work (mse vs. x/js/jeffrey)
                                                    # before any data or model is loaded
    EvalSet.write(predictions, folder) -> Path      # test splits: write the predictions in the
                                                    # task's submission format (GLUE server tsv)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from idistill.data.cache import handed_over

# head -> what the model returns per example, and what a feature's labels hold
#   classification  logits [C]            "labels": int class id
#   regression      value  []             "labels": float
#   tokens          logits [T, C]         "labels": [T] int, -100 where a position is not scored
#   span            logits [T, 2]         "start_positions", "end_positions": int; "context_mask":
#                   (start, end)          [T] 1 where an answer may start/end (context + [CLS])
HEADS = ("classification", "regression", "tokens", "span")

Feature = dict[str, Any]  # "input_ids", "attention_mask", optional "token_type_ids", labels


@dataclass
class EvalSet:
    """An evaluation split: its features and how raw predictions become the task's metrics.

    score(predictions) -> {"accuracy": ..., "f1": ...}; `predictions` holds one numpy array per
    feature, in order: the head's output for that feature without padding ([C], [], [T, C],
    [T, 2]).
    """

    features: list[Feature]
    score: Callable[[list[Any]], dict[str, float]]
    write: Callable[[list[Any], Path], Path] | None = None  # predictions -> submission file


@dataclass
class NLUData:
    """Tokenized features of one NLU task, ready for the loop."""

    head: str
    num_labels: int  # classes (classification, tokens); 1 (regression); 2 (span)
    train: list[Feature]
    evals: dict[str, EvalSet]  # "dev", "test", "dev/de", "test/de", ...
    select_on: str  # the eval set whose `metric` picks the best checkpoint, e.g. "dev/en"
    metric: str  # higher is better, e.g. "accuracy", "f1", "pearson"
    label_names: list[str] = field(default_factory=list)


# task.loader (default task.name) -> module
NLU_MODULES = {
    "glue": "idistill.data.glue",
    "ner": "idistill.data.panx",
    "tydiqa": "idistill.data.tydiqa",
}


def nlu_module(task: dict[str, Any]):
    """The data module of an NLU task."""
    return importlib.import_module(NLU_MODULES[task.get("loader", task["name"])])


@handed_over  # the preflight's load is the recipe's
def load_nlu(task: dict[str, Any], model: dict[str, Any], data_dir: Path) -> tuple[Any, NLUData]:
    """(the tokenizer of `model`, the task's tokenized data)."""
    from idistill.models.encoder import load_tokenizer

    tokenizer = load_tokenizer(model)
    return tokenizer, nlu_module(task).load(task, tokenizer, data_dir)


def task_head(task: dict[str, Any]) -> str | None:
    """The task's head from its settings (module `head(task)`, else `task.head`), or None."""
    module = nlu_module(task)
    if hasattr(module, "head"):
        return module.head(task)
    return task.get("head")
