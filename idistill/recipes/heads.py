"""The heads of NLU fine-tuning (see idistill.data.nlu): how a head's batch is padded, what its
loss is summed over (its units), its task loss, its output for the K-pass step, the positions
the divergence counts, and its predictions for scoring."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from idistill.models.encoder import EncoderWithHead

Batch = dict[str, Tensor]
MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids")
LABEL_KEYS = {
    "classification": ("labels",),
    "regression": ("labels",),
    "tokens": ("labels",),
    "span": ("start_positions", "end_positions", "context_mask"),
}
IGNORE = -100  # tokens: label of a position that is not scored
MASKED = -1e4  # span: logit of a position outside the context (exp() is 0 in float32)


def collate(features: list[dict], head: str, pad_id: int) -> Batch:
    """Pad a list of features to the longest one: ids with pad_id, token labels with -100."""
    longest = max(len(f["input_ids"]) for f in features)
    out = {}
    for key in (*MODEL_KEYS, *LABEL_KEYS[head]):
        if key not in features[0]:
            continue
        values = [f[key] for f in features]
        if isinstance(values[0], (list, tuple, np.ndarray)):
            fill = pad_id if key == "input_ids" else IGNORE if key == "labels" else 0
            padded = torch.full((len(values), longest), fill, dtype=torch.long)  # [B, T]
            for i, v in enumerate(values):
                padded[i, : len(v)] = torch.as_tensor(v, dtype=torch.long)
            out[key] = padded
        else:
            dtype = torch.float32 if head == "regression" else torch.long
            out[key] = torch.tensor(values, dtype=dtype)  # [B]
    return out


def count_units(head: str, batch: Batch) -> int:
    """What both loss terms are summed over: examples, labelled positions (tokens), or the
    start and end distributions of each example (span)."""
    if head == "tokens":
        return int((batch["labels"] != IGNORE).sum())
    n = len(batch["input_ids"])
    return 2 * n if head == "span" else n


def task_loss(head: str) -> Callable[[Tensor, Batch], Tensor]:
    """The head's task loss, summed over its units (float32)."""

    def classification(out: Tensor, b: Batch) -> Tensor:  # out [B, C]
        return F.cross_entropy(out.float(), b["labels"], reduction="sum")

    def regression(out: Tensor, b: Batch) -> Tensor:  # out [B]
        return F.mse_loss(out.float(), b["labels"], reduction="sum")

    def tokens(out: Tensor, b: Batch) -> Tensor:  # out [B, T, C]
        return F.cross_entropy(
            out.float().flatten(0, 1), b["labels"].flatten(), ignore_index=IGNORE, reduction="sum"
        )

    def span(out: Tensor, b: Batch) -> Tensor:  # out [B, 2, T], masked to the context
        start = F.cross_entropy(out[:, 0].float(), b["start_positions"], reduction="sum")
        return start + F.cross_entropy(out[:, 1].float(), b["end_positions"], reduction="sum")

    return {"classification": classification, "regression": regression, "tokens": tokens}.get(
        head, span
    )


def model_forward(model: EncoderWithHead, head: str) -> Callable[[Batch], Tensor]:
    """forward(batch) for the K-pass step: the head's output, and for `span` the start and end
    logits over positions [B, 2, T] with positions outside the context at -1e4, so that the
    divergence compares distributions over the context only."""

    def forward(b: Batch) -> Tensor:
        out = model(b["input_ids"], b["attention_mask"], b.get("token_type_ids"))
        if head != "span":
            return out
        out = out.transpose(1, 2)  # [B, T, 2] -> [B, 2, T]
        return out.masked_fill(~b["context_mask"].bool()[:, None, :], MASKED)

    return forward


def divergence_mask(head: str, b: Batch, id_mask: str) -> Tensor | None:
    """Positions the divergence counts: labelled tokens (id_mask=labels) or every non-pad
    token (id_mask=attention, as the official NER code); None (all) for the other heads."""
    if head != "tokens":
        return None
    return b["labels"] != IGNORE if id_mask == "labels" else b["attention_mask"].bool()


@torch.no_grad()
def predict(model, features, head, pad_id, batch_size, device, amp) -> list[np.ndarray]:
    """The head's output for each feature without padding ([C], [], [T, C] or [T, 2]), in order;
    dropout off. Features go through in order of length, so batches hold little padding."""
    model.eval()
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    out: list[np.ndarray] = [None] * len(features)  # type: ignore[list-item]
    for lo in range(0, len(order), batch_size):
        idx = order[lo : lo + batch_size]
        b = collate(
            [{k: features[i][k] for k in MODEL_KEYS if k in features[i]} for i in idx],
            "classification",
            pad_id,
        )
        b = {k: v.to(device) for k, v in b.items()}
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            o = model(b["input_ids"], b["attention_mask"], b.get("token_type_ids"))
        o = o.float().cpu().numpy()  # [B, ...]
        for j, i in enumerate(idx):
            out[i] = o[j, : len(features[i]["input_ids"])] if head in ("tokens", "span") else o[j]
    model.train()
    return out
