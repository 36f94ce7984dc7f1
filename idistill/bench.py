"""Benchmarks behind `idistill-bench`: training steps, the divergence, beam search, data path.

Everything runs in one process on one device, with warm-up and the median of several
repetitions, so ratios (K=3 against K=1, ours against Hugging Face) compare like with like.
Inputs are random token ids with IWSLT-like lengths: no data set or download is needed.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch
import yaml

from idistill.config import MethodSettings
from idistill.data.batching import collate, token_batches
from idistill.engine.device import thread_share
from idistill.models.transformer import Seq2SeqTransformer, model_config

PAD, UNK, BOS, EOS = 0, 1, 2, 3  # idistill's sentencepiece ids


@dataclass
class Timing:
    """Median seconds of `repeats` runs after `warmup` runs, and peak memory while timing."""

    seconds: float
    peak_bytes: int
    all_seconds: list[float]


# ---------------------------------------------------------------- measurement


def precision_name(amp: torch.dtype | None) -> str:
    """fp32 (no autocast), bfloat16 or float16."""
    return str(amp).replace("torch.", "") if amp else "fp32"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):  # Linux: "5" resets the peak RSS (VmHWM) of the process
        Path("/proc/self/clear_refs").write_text("5")


def _peak(device: torch.device) -> int:
    """Peak bytes since the last reset: max allocated on CUDA, peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def measure(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> Timing:
    """Time `fn` (median of `repeats` after `warmup` calls), with its peak memory."""
    for _ in range(warmup):
        fn()
    _sync(device)
    _reset_peak(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return Timing(statistics.median(times), _peak(device), times)


def matmul_gflops(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048) -> float:
    """This machine's dense matmul throughput: GFLOP/s of an [n, n] @ [n, n] product."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = measure(lambda: a @ b, device, warmup=2, repeats=5)
    return 2 * n**3 / t.seconds / 1e9


def count_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations of one call of `fn` (matmuls and attention, as PyTorch counts)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


# ---------------------------------------------------------------- inputs


def iwslt_like_lengths(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(source, target) lengths in sentencepiece pieces, shaped like IWSLT'14 De-En at 12K
    pieces: log-normal around 22 pieces, 1..175, the source a little longer."""
    rng = np.random.default_rng(seed)
    tgt = np.clip(np.round(rng.lognormal(math.log(22), 0.6, n)), 1, 175).astype(np.int64)
    src = np.clip(np.round(tgt * rng.uniform(0.8, 1.35, n)), 1, 175).astype(np.int64)
    return src, tgt


def random_examples(src_lens, tgt_lens, vocab: int, seed: int = 0) -> list[tuple]:
    """Random (source ids, target ids) pairs of the given lengths, no special ids."""
    rng = np.random.default_rng(seed)
    return [
        (rng.integers(4, vocab, s), rng.integers(4, vocab, t))
        for s, t in zip(src_lens, tgt_lens, strict=True)
    ]


def training_batch(target_tokens: int, vocab: int, seed: int = 0) -> dict:
    """A collated batch of ~`target_tokens` target tokens (eos included, like fairseq's
    ntokens), made as length-sorted batching makes them: consecutive sentences around the
    median length of IWSLT-like data, so there is little padding."""
    src, tgt = iwslt_like_lengths(20_000, seed)
    order = np.lexsort((tgt, src))  # by source length, then target length
    lo = hi = len(order) // 2
    while int((tgt[order[lo:hi]] + 1).sum()) < target_tokens and hi < len(order):
        hi += 1
    pick = order[lo:hi]
    return collate(random_examples(src[pick], tgt[pick], vocab, seed), PAD, BOS, EOS)


def load_model_config(name: str) -> dict:
    """The `model=<name>` config group file, as a plain dict."""
    path = files("idistill.conf") / "model" / f"{name}.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def build(name: str, vocab: int, device: torch.device) -> Seq2SeqTransformer:
    torch.manual_seed(0)
    return Seq2SeqTransformer(model_config(load_model_config(name), vocab, PAD)).to(device)


# ---------------------------------------------------------------- benchmarks


# A training shape: (model config, vocabulary, target tokens a batch).
SHAPES = {
    "demo": ("transformer_tiny", 1_500, 1_024),  # experiment=demo
    "multi30k": ("transformer_cpu", 6_000, 2_048),  # experiment=multi30k_converged
    "iwslt": ("transformer_small", 12_000, 4_000),  # the paper's IWSLT'14 runs
}


def _train_step(
    model_name: str,
    *,
    k: int,
    passes: str,
    device: torch.device,
    vocab: int,
    target_tokens: int,
    amp: torch.dtype | None,
    compile: str,
) -> tuple[Callable[[], object], dict]:
    """(one optimizer update as a function, its batch): the engine's step on a fresh model."""
    from idistill.engine.step import step as train_step
    from idistill.losses import LabelSmoothedCE
    from idistill.recipes.translation import seq2seq_loss
    from idistill.sage import make_optimizer

    model = build(model_name, vocab, device)
    model.train()
    optimizer = make_optimizer(model, "adamw", 5e-4, (0.9, 0.98), 1e-8, 1e-4)
    batch = training_batch(target_tokens, vocab)
    method = MethodSettings(k=k, alpha=5.0, passes=passes, schedule="constant")
    runner = torch.compile(model) if compile == "model" else model
    loss_fn = seq2seq_loss(
        method, LabelSmoothedCE(0.1, PAD), fused=True, compiled=compile != "none"
    )

    def step():
        return train_step(
            runner, optimizer, [batch], loss_fn, alpha=5.0, units=lambda b: int(b["ntokens"]),
            device=device, amp=amp,
        )  # fmt: skip

    return step, batch


def bench_train_step(
    model_name: str,
    *,
    k: int,
    passes: str,
    device: torch.device,
    vocab: int = 12_000,
    target_tokens: int = 4_000,
    amp: torch.dtype | None = None,
    compile: str = "loss",
    warmup: int = 1,
    repeats: int = 3,
) -> dict:
    """One optimizer update of `model_name` on ~`target_tokens` target tokens (K passes).
    compile: as trainer.compile (none | loss | model)."""
    step, batch = _train_step(
        model_name, k=k, passes=passes, device=device, vocab=vocab,
        target_tokens=target_tokens, amp=amp, compile=compile,
    )  # fmt: skip
    flops = count_flops(step)  # doubles as the first warm-up step
    t = measure(step, device, warmup=warmup, repeats=repeats)
    ntokens = int(batch["ntokens"])
    return {
        "model": model_name,
        "k": k,
        "passes": passes,
        "precision": precision_name(amp),
        "sentences": int(batch["target"].shape[0]),
        "target_tokens": ntokens,
        "ms_per_step": 1000 * t.seconds,
        "tokens_per_s": ntokens / t.seconds,  # counted once per batch, like fairseq's wps
        "peak_mb": t.peak_bytes / 2**20,
        "gflop_per_step": flops / 1e9,
        "gflops": flops / t.seconds / 1e9,
        "all_ms": [1000 * s for s in t.all_seconds],
    }


def _step_alongside_others(
    barrier, shape: tuple, threads: int | None, repeats: int, compile: str
) -> float:
    """In one of several processes: warm up a K=1 CPU update of `shape` (model, vocabulary,
    tokens), wait until every process is warm, then return the median seconds of `repeats`
    updates run together."""
    if threads:
        torch.set_num_threads(threads)
    model_name, vocab, tokens = shape
    cpu = torch.device("cpu")
    step, _ = _train_step(
        model_name, k=1, passes="concat", device=cpu, vocab=vocab, target_tokens=tokens,
        amp=None, compile=compile,
    )  # fmt: skip
    step()  # compiles
    barrier.wait()
    return measure(step, cpu, warmup=1, repeats=repeats).seconds


def _together(
    jobs: int, shape: tuple, threads: int | None, env: dict, repeats: int, compile: str
) -> float:
    """The slowest of `jobs` processes' seconds a step, each training at the same time."""
    ctx = multiprocessing.get_context("spawn")
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the workers start with it (OpenMP reads it when torch loads)
    try:
        with ctx.Manager() as manager, ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
            barrier = manager.Barrier(jobs)
            futures = [
                pool.submit(_step_alongside_others, barrier, shape, threads, repeats, compile)
                for _ in range(jobs)
            ]
            return max(f.result() for f in futures)
    finally:
        for k, v in saved.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v


# How concurrent runs share the cores: (name, threads per process from (cores, jobs), env).
THREAD_POLICIES = [
    ("torch default", lambda cores, jobs: None, {}),
    ("passive OpenMP wait", lambda cores, jobs: None, {"OMP_WAIT_POLICY": "PASSIVE"}),
    ("cores / jobs threads", lambda cores, jobs: thread_share(jobs), {}),
]


def bench_concurrency(
    shape: tuple = SHAPES["demo"], jobs: int = 2, repeats: int = 5, compile: str = "loss"
) -> list[dict]:
    """Seconds a K=1 CPU update of `shape` (model, vocabulary, tokens) takes when `jobs`
    training processes share the machine, under each thread policy, against one process
    alone with torch's defaults."""
    cores = len(os.sched_getaffinity(0))
    alone = _together(1, shape, None, {}, repeats, compile)
    rows = []
    for name, threads_for, env in THREAD_POLICIES:
        threads = threads_for(cores, jobs)
        seconds = _together(jobs, shape, threads, env, repeats, compile)
        rows.append({
            "policy": name, "model": shape[0], "jobs": jobs, "threads": threads or cores,
            "alone_ms": 1000 * alone, "together_ms": 1000 * seconds, "slowdown": seconds / alone,
        })  # fmt: skip
    return rows


def bench_divergence(
    device: torch.device,
    impl: str = "fused",
    k: int = 3,
    tokens: int = 4_000,
    vocab: int = 12_000,
    repeats: int = 3,
) -> dict:
    """The X divergence alone, forward + backward, on random logits [K, tokens, vocab]: the
    plain autograd formula ("autograd"), ours eager ("fused") or torch.compile'd ("compiled")."""
    from idistill.losses import divergence

    torch.manual_seed(0)
    logits = torch.randn(k, tokens, vocab, device=device, requires_grad=True)

    def plain():  # (1/K) sum_i sum_v (p_i - p_bar)(log p_i - log p_bar), autograd throughout
        logp = torch.log_softmax(logits, dim=-1)
        log_pbar = torch.logsumexp(logp, dim=0) - math.log(k)
        ((logp.exp() - log_pbar.exp()) * (logp - log_pbar)).sum().div(k).backward()

    def fused():
        divergence("x", list(logits.unbind(0)), compiled=impl == "compiled").backward()

    t = measure(plain if impl == "autograd" else fused, device, warmup=1, repeats=repeats)
    return {
        "impl": impl, "k": k, "tokens": tokens, "vocab": vocab,
        "ms": 1000 * t.seconds, "peak_mb": t.peak_bytes / 2**20,
    }  # fmt: skip


def _beam_batches(examples: list[tuple], beam: int, max_tokens: int) -> list[list[int]]:
    lens = [len(s) + 1 for s, _ in examples]
    return token_batches(lens, lens, max(max_tokens // beam, max(lens)), shuffle=False)


def bench_beam_search(
    device: torch.device,
    *,
    sentences: int = 200,
    beam: int = 5,
    vocab: int = 12_000,
    model_name: str = "transformer_small",
    max_tokens: int = 4096,
    hf: bool = True,
) -> list[dict]:
    """Beam search (beam 5, length penalty 1, max length 1.2 * source + 10) over `sentences`
    random sources with IWSLT-like lengths: our generator, and Hugging Face `generate` on a
    MarianMT model of the same shape with random weights, when `transformers` is installed.

    Random weights rarely choose eos, so both decoders run to the length limit: the same
    work, measured as sentences/s and generated tokens/s.
    """
    from idistill.generate import beam_search

    src_lens, tgt_lens = iwslt_like_lengths(sentences, seed=1)
    examples = random_examples(src_lens, tgt_lens, vocab, seed=1)
    batches = _beam_batches(examples, beam, max_tokens)
    model = build(model_name, vocab, device).eval()
    sources = [collate([examples[i] for i in idx], PAD, BOS, EOS)["src_tokens"] for idx in batches]

    def ours(sources):
        out = []
        for src in sources:
            out += beam_search(
                model, src.to(device), bos_id=BOS, eos_id=EOS, pad_id=PAD, beam=beam,
                len_penalty=1.0, max_len_a=1.2, max_len_b=10,
            )  # fmt: skip
        return sum(len(h) + 1 for h in out)

    rows = [_generation_row("idistill beam_search", ours, sources, sentences, device)]
    if hf:
        try:
            hf_generate = _hf_generator(model.cfg, beam, device)
        except ImportError:
            rows.append({"decoder": "transformers generate", "skipped": "not installed"})
        else:
            rows.append(
                _generation_row(
                    "transformers generate (Marian)", hf_generate, sources, sentences, device
                )
            )
    return rows


def _generation_row(name: str, fn, sources: list, sentences: int, device) -> dict:
    """Sentences/s and tokens/s of fn(sources) -> generated tokens, after a one-batch warm-up."""
    fn(sources[:1])
    _sync(device)
    start = time.perf_counter()
    tokens = fn(sources)
    _sync(device)
    seconds = time.perf_counter() - start
    return {
        "decoder": name,
        "sentences": sentences,
        "seconds": seconds,
        "sentences_per_s": sentences / seconds,
        "tokens_per_s": tokens / seconds,
    }


def _hf_generator(cfg, beam: int, device) -> Callable[[list], int]:
    """HF MarianMT with our model's sizes (random weights, no download) and a generate loop."""
    from transformers import MarianConfig, MarianMTModel

    hf_cfg = MarianConfig(
        vocab_size=cfg.vocab_size, d_model=cfg.embed_dim,
        encoder_layers=cfg.encoder_layers, decoder_layers=cfg.decoder_layers,
        encoder_attention_heads=cfg.heads, decoder_attention_heads=cfg.heads,
        encoder_ffn_dim=cfg.ffn_dim, decoder_ffn_dim=cfg.ffn_dim,
        max_position_embeddings=cfg.max_positions, pad_token_id=PAD, eos_token_id=EOS,
        decoder_start_token_id=BOS, forced_eos_token_id=EOS, scale_embedding=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = MarianMTModel(hf_cfg).to(device).eval()

    @torch.no_grad()
    def generate(sources) -> int:
        tokens = 0
        for src in sources:
            src = src.to(device)
            mask = src.ne(PAD)
            limit = int(1.2 * int(mask.sum(1).max()) + 10)
            out = model.generate(
                input_ids=src, attention_mask=mask, num_beams=beam, length_penalty=1.0,
                early_stopping=True, max_new_tokens=limit + 1, do_sample=False,
            )  # fmt: skip
            tokens += int(out[:, 1:].ne(PAD).sum())
        return tokens

    return generate


STARTUP_RUN = ["experiment=demo", "trainer.max_updates=2", "trainer.test=false"]
FIRST_UPDATE = re.compile(r"first update done ([0-9.]+) s after the process started")


def bench_startup(compile: str = "loss", runs: int = 2) -> list[dict]:
    """`idistill experiment=demo trainer.max_updates=2 trainer.test=false` in fresh processes,
    one after the other, each in a new run folder of one MLflow store: the first may build the
    data cache and the store, the later ones start as a user's next run does. Per run: seconds
    from the process's start to its first update done (from the run's log line) and in all."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(runs):
            cmd = [
                sys.executable, "-m", "idistill.cli", *STARTUP_RUN, f"trainer.compile={compile}",
                f"hydra.run.dir={tmp}/run{i}", f"tracking.uri=sqlite:///{tmp}/mlflow.db",
            ]  # fmt: skip
            start = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
            total = time.perf_counter() - start
            found = FIRST_UPDATE.search(done.stdout + done.stderr)
            if done.returncode or not found:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
            rows.append({"run": i + 1, "compile": compile, "first_update_s": float(found[1]),
                         "total_s": total})  # fmt: skip
    return rows


def bench_data(sentences: int = 20_000) -> list[dict]:
    """Sentencepiece encoding and token batching throughput (sentences/s)."""
    from idistill.data.synthetic import make_corpus
    from idistill.data.tokenizer import Tokenizer, train_sentencepiece

    pairs = make_corpus(0, sentences, 10, 10)["train"]
    texts = [s for s, _ in pairs]
    with tempfile.TemporaryDirectory() as tmp:
        model_file = train_sentencepiece(texts, Path(tmp) / "spm", 2000)
        tok = Tokenizer(model_file)
        start = time.perf_counter()
        tok.encode_batch(texts)
        encode_s = time.perf_counter() - start

    src, tgt = iwslt_like_lengths(1_000_000, seed=2)
    start = time.perf_counter()
    batches = token_batches(src + 1, tgt + 1, 4096, shuffle=True, seed=1, epoch=1)
    batching_s = time.perf_counter() - start
    examples = random_examples(src[:20_000], tgt[:20_000], 12_000)
    small = token_batches(src[:20_000] + 1, tgt[:20_000] + 1, 4096, shuffle=False)
    start = time.perf_counter()
    for idx in small:
        collate([examples[i] for i in idx], PAD, BOS, EOS)
    collate_s = time.perf_counter() - start
    return [
        {"stage": "sentencepiece encode", "sentences": len(texts),
         "sentences_per_s": len(texts) / encode_s},
        {"stage": "token_batches (1M pairs)", "sentences": len(src),
         "sentences_per_s": len(src) / batching_s, "batches": len(batches)},
        {"stage": "collate", "sentences": 20_000, "sentences_per_s": 20_000 / collate_s},
    ]  # fmt: skip
