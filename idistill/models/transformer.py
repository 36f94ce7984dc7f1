"""Seq2seq Transformer matching fairseq's `transformer_iwslt_de_en`, with an incremental decoder.

Post-norm layers (residual + dropout, then LayerNorm; no final LayerNorm), token embeddings
scaled by sqrt(D), fairseq's sinusoidal positions, decoder input/output embeddings tied.
Targets are right-padded (the decoder relies on the causal mask alone); sources may be
padded on either side. With `experts` > 0 every FFN is a Switch layer (idistill.models.switch)
and `pop_balance_loss` gives the load-balancing loss the training step adds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from idistill.models.dropout import Dropout
from idistill.models.switch import SwitchFeedForward


@dataclass
class TransformerConfig:
    """Sizes and dropouts; the defaults are fairseq's `transformer_iwslt_de_en`."""

    vocab_size: int
    pad_id: int = 0
    embed_dim: int = 512
    ffn_dim: int = 1024
    heads: int = 4
    encoder_layers: int = 6
    decoder_layers: int = 6
    dropout: float = 0.3  # after embeddings, attention blocks and FFNs
    attention_dropout: float = 0.1  # on attention weights
    activation_dropout: float = 0.0  # after the FFN's ReLU
    share_all_embeddings: bool = False  # one table for encoder and decoder (joint vocabulary)
    max_positions: int = 1024  # longest sequence either side accepts
    experts: int = 0  # 0: dense FFNs; E > 0: every FFN is a top-1 switch layer of E FFNs
    capacity_factor: float = 1.0  # training: an expert takes ceil(factor * tokens / E) tokens
    eval_capacity_factor: float | None = None  # eval: None = no limit (tokens routed alone)
    balance_coef: float = 0.01  # weight of the load-balancing loss per switch layer (Switch)

    def __post_init__(self) -> None:
        if self.embed_dim % self.heads:
            raise ValueError(
                f"model.embed_dim ({self.embed_dim}) must be divisible by model.heads "
                f"({self.heads})"
            )
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"pad_id must be in [0, {self.vocab_size}) (got {self.pad_id})")
        if self.experts < 0:
            raise ValueError(f"model.experts must be >= 0, 0 for dense FFNs (got {self.experts})")
        for key in ("capacity_factor", "eval_capacity_factor"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ValueError(f"model.{key} must be > 0 (got {value}); null means no limit")
        if self.balance_coef < 0:
            raise ValueError(f"model.balance_coef must be >= 0 (got {self.balance_coef})")


def model_config(model_cfg: dict, vocab_size: int, pad_id: int) -> TransformerConfig:
    """TransformerConfig from a `model=` config: every key but `name` is a field of it, and
    `experts` > 0 makes it a Switch model. Unknown keys and bad values raise ValueError."""
    known = {f.name for f in fields(TransformerConfig)} - {"vocab_size", "pad_id"}
    values = {k: v for k, v in model_cfg.items() if k != "name"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"unknown key model.{unknown[0]} (valid: name, {', '.join(sorted(known))})"
        )
    return TransformerConfig(vocab_size=vocab_size, pad_id=pad_id, **values)


PRESETS: dict[str, dict] = {
    "transformer_small": {},  # the dataclass defaults
    "transformer_tiny": {
        "embed_dim": 128,
        "ffn_dim": 256,
        "heads": 4,
        "encoder_layers": 2,
        "decoder_layers": 2,
        "dropout": 0.1,
        "attention_dropout": 0.0,
    },
}


def transformer_config(name: str, vocab_size: int, pad_id: int, **overrides) -> TransformerConfig:
    """The named preset (`transformer_small`, `transformer_tiny`) with `overrides` applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r} (valid: {', '.join(PRESETS)})")
    return replace(TransformerConfig(vocab_size, pad_id, **PRESETS[name]), **overrides)


def sinusoidal_table(rows: int, dim: int, pad_id: int) -> Tensor:
    """fairseq's position table [rows, dim]: half sin, half cos, row `pad_id` all zero."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
    angle = torch.arange(rows, dtype=torch.float32)[:, None] * freq[None]  # [rows, half]
    table = torch.cat([angle.sin(), angle.cos()], dim=1)  # [rows, 2*half]
    if dim % 2:
        table = F.pad(table, (0, 1))
    table[pad_id] = 0
    return table


def make_positions(tokens: Tensor, pad_id: int) -> Tensor:
    """Position ids [B, T]: pad_id+1, pad_id+2, ... over non-pad tokens, pad_id at pads."""
    real = tokens.ne(pad_id).long()
    return real.cumsum(dim=1) * real + pad_id


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v/out projections (K/V exposed for caching)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def split(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # [B, H, T, Dh]

    def kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values [B, H, S, Dh] of `memory` [B, S, D]."""
        return self.split(self.k_proj(memory)), self.split(self.v_proj(memory))

    def forward(
        self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, causal: bool = False
    ) -> Tensor:
        """Attend from x [B, T, D] to k, v [B/g, H, S, Dh]; mask [B/g, 1, 1, S] True = may
        attend. With g > 1 (not causal), each g consecutive rows of x share one row of keys
        (the beams of one source): they attend as one query of g*T positions, so the keys are
        computed and read once per source, not once per beam."""
        b, t, d = x.shape
        g = b // k.shape[0]  # rows of x per row of keys
        q = self.split(self.q_proj(x))  # [B, H, T, Dh]
        if g > 1:  # [n, g, H, T, Dh] -> [n, H, g*T, Dh]
            q = q.unflatten(0, (-1, g)).transpose(1, 2).flatten(2, 3)
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal)
        if g > 1:  # [n, H, g*T, Dh] -> [B, H, T, Dh]
            out = out.unflatten(2, (g, t)).transpose(1, 2).flatten(0, 1)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))  # [B, T, D]


class FeedForward(nn.Module):
    """fc2(dropout(relu(fc1(x)))); a separate module so a switch FFN can replace it."""

    def __init__(self, dim: int, ffn_dim: int, activation_dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.activation_dropout = Dropout(activation_dropout)

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        """keep [B, T] (real tokens) is ignored: every position goes through the dense FFN."""
        return self.fc2(self.activation_dropout(F.relu(self.fc1(x))))


def feed_forward(cfg: TransformerConfig) -> nn.Module:
    """One layer's FFN: dense, or a switch layer of `cfg.experts` dense FFNs."""
    d = cfg.embed_dim
    if not cfg.experts:
        return FeedForward(d, cfg.ffn_dim, cfg.activation_dropout)
    experts = [FeedForward(d, cfg.ffn_dim, cfg.activation_dropout) for _ in range(cfg.experts)]
    return SwitchFeedForward(d, experts, cfg.capacity_factor, cfg.eval_capacity_factor)


class EncoderLayer(nn.Module):
    """Post-norm: x = LN(x + drop(attn(x))); x = LN(x + drop(ffn(x)))."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        d = cfg.embed_dim
        self.self_attn = Attention(d, cfg.heads, cfg.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.ffn = feed_forward(cfg)
        self.final_layer_norm = nn.LayerNorm(d)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x: Tensor, mask: Tensor, keep: Tensor | None = None) -> Tensor:
        """x [B, S, D], mask [B, 1, 1, S] True = may attend, keep [B, S] True = real token."""
        k, v = self.self_attn.kv(x)
        x = self.self_attn_layer_norm(x + self.dropout(self.self_attn(x, k, v, mask)))
        return self.final_layer_norm(x + self.dropout(self.ffn(x, keep)))


@dataclass
class LayerCache:
    """One decoder layer's incremental state: self-attention K/V so far, encoder K/V."""

    k: Tensor | None = None  # [B, H, t, Dh], rows in the order of the step that wrote them
    v: Tensor | None = None
    order: Tensor | None = None  # [B'] rows of k/v the next step continues (beam reordering)
    enc_k: Tensor | None = None  # [B/g, H, S, Dh], computed on first use
    enc_v: Tensor | None = None

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """All keys and values [B', H, t+1, Dh] with this step's k, v [B', H, 1, Dh] appended,
        the earlier ones reordered by `order`: one copy of the history a step (not a reorder
        and then a concatenation)."""
        if self.k is None:
            self.k, self.v = k, v
        else:
            self.k, self.v = (
                _gather_append(self.k, k, self.order),
                _gather_append(self.v, v, self.order),
            )
        self.order = None
        return self.k, self.v


def _gather_append(old: Tensor, new: Tensor, order: Tensor | None) -> Tensor:
    """cat([old[order], new], dim=2), written once into a fresh tensor."""
    t = old.shape[2]
    out = new.new_empty(new.shape[0], new.shape[1], t + new.shape[2], new.shape[3])
    if order is None:
        out[:, :, :t] = old
    else:
        torch.index_select(old, 0, order, out=out[:, :, :t])
    out[:, :, t:] = new
    return out


@dataclass
class DecoderCache:
    """Incremental decoding state of all decoder layers."""

    layers: list[LayerCache] = field(default_factory=list)

    @property
    def length(self) -> int:
        """Number of target positions already processed."""
        k = self.layers[0].k if self.layers else None
        return 0 if k is None else k.shape[2]

    def reorder(self, index: Tensor, encoder_index: Tensor | None = None) -> DecoderCache:
        """Continue decoder rows `index` [B'] (beam search: rows may repeat or leave), and keep
        encoder rows `encoder_index` (the sources still decoded; None keeps all, as when the
        rows only move among the beams of one source); returns self. The self-attention K/V
        are reordered lazily, by the next step's append."""
        for layer in self.layers:
            layer.order = index if layer.order is None else layer.order.index_select(0, index)
            if encoder_index is not None and layer.enc_k is not None:
                layer.enc_k = layer.enc_k.index_select(0, encoder_index)
                layer.enc_v = layer.enc_v.index_select(0, encoder_index)
        return self


class DecoderLayer(nn.Module):
    """Post-norm: causal self-attention, encoder-decoder attention, FFN."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        d = cfg.embed_dim
        self.self_attn = Attention(d, cfg.heads, cfg.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.encoder_attn = Attention(d, cfg.heads, cfg.attention_dropout)
        self.encoder_attn_layer_norm = nn.LayerNorm(d)
        self.ffn = feed_forward(cfg)
        self.final_layer_norm = nn.LayerNorm(d)
        self.dropout = Dropout(cfg.dropout)

    def forward(
        self,
        x: Tensor,
        enc_out: Tensor,
        enc_mask: Tensor,
        cache: LayerCache | None = None,
        keep: Tensor | None = None,
    ) -> Tensor:
        """x [B, T, D] (T = 1 with a cache), keep [B, T] True = real token (for switch FFNs)."""
        k, v = self.self_attn.kv(x)
        if cache is not None:  # x is the newest position only: attend to all cached ones
            k, v = cache.append(k, v)
        h = self.self_attn(x, k, v, causal=cache is None)
        x = self.self_attn_layer_norm(x + self.dropout(h))

        if cache is not None and cache.enc_k is not None:
            ek, ev = cache.enc_k, cache.enc_v
        else:
            ek, ev = self.encoder_attn.kv(enc_out)
            if cache is not None:
                cache.enc_k, cache.enc_v = ek, ev
        h = self.encoder_attn(x, ek, ev, enc_mask)
        x = self.encoder_attn_layer_norm(x + self.dropout(h))
        return self.final_layer_norm(x + self.dropout(self.ffn(x, keep)))


@dataclass
class EncoderOut:
    """Encoder states and where the source is padding."""

    out: Tensor  # [B, S, D]
    pad_mask: Tensor  # [B, S] True at pad

    def index_select(self, index: Tensor) -> EncoderOut:
        """Rows `index` [B'] of the batch (e.g. one copy per beam)."""
        return EncoderOut(self.out.index_select(0, index), self.pad_mask.index_select(0, index))


class Embedding(nn.Module):
    """Scaled token embeddings + sinusoidal positions, then dropout."""

    def __init__(self, cfg: TransformerConfig, tokens: nn.Embedding, positions: Tensor):
        super().__init__()
        self.embed_tokens = tokens
        self.register_buffer("positions", positions, persistent=False)
        self.scale = math.sqrt(cfg.embed_dim)
        self.pad_id, self.max_positions = cfg.pad_id, cfg.max_positions
        self.dropout = Dropout(cfg.dropout)

    def forward(self, tokens: Tensor, last_only: bool = False) -> Tensor:
        """Embeddings [B, T, D] of tokens [B, T], or [B, 1, D] of the last one."""
        if tokens.shape[1] > self.max_positions:
            raise ValueError(
                f"a sequence of {tokens.shape[1]} tokens exceeds model.max_positions="
                f"{self.max_positions}: shorten the data or raise model.max_positions"
            )
        pos = make_positions(tokens, self.pad_id)  # [B, T]
        if last_only:
            tokens, pos = tokens[:, -1:], pos[:, -1:]
        x = self.scale * self.embed_tokens(tokens) + self.positions[pos]
        return self.dropout(x)


class Seq2SeqTransformer(nn.Module):
    """Encoder-decoder Transformer; forward(src [B, S], prev_output [B, T]) -> logits [B, T, V]."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        d, pad = cfg.embed_dim, cfg.pad_id
        table = sinusoidal_table(cfg.max_positions + pad + 1, d, pad)  # [P, D]
        enc_tokens = nn.Embedding(cfg.vocab_size, d, padding_idx=pad)
        dec_tokens = (
            enc_tokens if cfg.share_all_embeddings else nn.Embedding(cfg.vocab_size, d, pad)
        )
        self.encoder_embed = Embedding(cfg, enc_tokens, table)
        self.decoder_embed = Embedding(cfg, dec_tokens, table)
        self.encoder_layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.output_projection = nn.Linear(d, cfg.vocab_size, bias=False)
        self.output_projection.weight = dec_tokens.weight  # tied, as in fairseq
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """fairseq's init: xavier_uniform linears (q/k/v with gain 1/sqrt 2), zero biases,
        embeddings N(0, D^-0.5) with a zero pad row; switch routers as in Switch."""
        for name, module in self.named_modules():
            if isinstance(module, SwitchFeedForward):
                module.reset_router()
            if isinstance(module, nn.Linear) and module is not self.output_projection:
                qkv = name.rsplit(".", 1)[-1] in ("q_proj", "k_proj", "v_proj")
                nn.init.xavier_uniform_(module.weight, gain=2**-0.5 if qkv else 1.0)
                nn.init.zeros_(module.bias)
        for embed in (self.encoder_embed.embed_tokens, self.decoder_embed.embed_tokens):
            nn.init.normal_(embed.weight, mean=0.0, std=self.cfg.embed_dim**-0.5)
            with torch.no_grad():
                embed.weight[self.cfg.pad_id].zero_()

    def encode(self, src_tokens: Tensor) -> EncoderOut:
        """Encoder states of src_tokens [B, S]."""
        pad_mask = src_tokens.eq(self.cfg.pad_id)  # [B, S]
        x = self.encoder_embed(src_tokens)  # [B, S, D]
        x = x * (~pad_mask).unsqueeze(-1).to(x.dtype)  # pads start from zero, as in fairseq
        keep = ~pad_mask  # [B, S] real tokens
        attn_mask = keep[:, None, None, :]  # [B, 1, 1, S]
        for layer in self.encoder_layers:
            x = layer(x, attn_mask, keep)
        return EncoderOut(x, pad_mask)

    def decode(
        self, prev_output_tokens: Tensor, enc: EncoderOut, cache: DecoderCache | None = None
    ) -> Tensor:
        """Logits [B, T, V] for prev_output_tokens [B, T].

        `enc` holds B rows, or B/g where each of its rows is the source of g consecutive rows
        (beam search: no copy of the encoder states per beam). With a cache, only the last
        position is computed (the cache must hold the T-1 before it, i.e. call once per step)
        and the result is [B, 1, V].
        """
        if cache is not None:
            if not cache.layers:
                cache.layers = [LayerCache() for _ in self.decoder_layers]
            if cache.length != prev_output_tokens.shape[1] - 1:
                raise ValueError(
                    f"incremental decode got {prev_output_tokens.shape[1]} tokens but the cache "
                    f"holds {cache.length}; pass the whole prefix once per step"
                )
        x = self.decoder_embed(prev_output_tokens, last_only=cache is not None)  # [B, T|1, D]
        enc_mask = (~enc.pad_mask)[:, None, None, :]  # [B, 1, 1, S]
        keep = prev_output_tokens[:, -x.shape[1] :].ne(self.cfg.pad_id)  # [B, T|1]
        for i, layer in enumerate(self.decoder_layers):
            x = layer(x, enc.out, enc_mask, cache.layers[i] if cache is not None else None, keep)
        return self.output_projection(x)  # [B, T|1, V]

    def forward(self, src_tokens: Tensor, prev_output_tokens: Tensor) -> Tensor:
        """Teacher-forced logits [B, T, V]."""
        return self.decode(prev_output_tokens, self.encode(src_tokens))

    def new_cache(self) -> DecoderCache:
        """An empty incremental state for `decode`."""
        return DecoderCache()

    def num_parameters(self) -> int:
        """Trainable parameters, tied tables counted once."""
        return sum(p.numel() for p in self.parameters())

    def pop_balance_loss(self) -> Tensor:
        """Switch load-balancing loss of the training forwards since the last call, then forgets
        them: sum over switch layers of mean over forwards of E * sum_e f_e * P_e.

        A float32 scalar with a gradient to the routers; 0 for a dense model or when no forward
        ran in training mode (eval forwards record nothing). The training step adds
        `cfg.balance_coef * pop_balance_loss()` to its per-token loss; call it once per batch.
        """
        total = self.output_projection.weight.new_zeros((), dtype=torch.float32)
        for module in self.modules():
            if isinstance(module, SwitchFeedForward):
                total = total + module.pop_balance_loss()
        return total
