"""`idistill-bench`: time the training step, the divergence, beam search and the data path.

Prints tables and the targets of the performance issue as ratios measured in this run, and
writes everything as JSON (`--out`). A benchmark, not a test: nothing here fails on speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

# (what, measured ratio key, target, higher is better)
TARGETS = [
    ("K=3 step time / K=1 step time", "k3_time_ratio", 3.1, False),
    ("K=3 peak memory / K=1 peak memory", "k3_memory_ratio", 2.0, False),
    ("K=1 step GFLOP/s / matmul GFLOP/s", "k1_matmul_fraction", 0.70, True),
    ("our beam search / HF generate (sentences/s)", "beam_speedup", 2.0, True),
]


def _table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Rows as an aligned text table; columns are (header, key, format)."""
    cells = [[h for h, _, _ in columns]]
    for r in rows:
        cells.append([format(r[k], f) if k in r else "-" for _, k, f in columns])
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def isolated(fn, /, *args, **kwargs):
    """fn(*args, **kwargs) in a fresh Python process: every measurement starts from the same
    heap, so peak memory is its own and not what an earlier measurement left behind."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="idistill-bench", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    p.add_argument(
        "--precision", default="auto", help="auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16"
    )
    p.add_argument("--models", default="transformer_tiny,transformer_small")
    p.add_argument("--tokens", type=int, default=4000, help="target tokens per training batch")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per measurement")
    p.add_argument("--sentences", type=int, default=200, help="sentences for beam search")
    p.add_argument(
        "--compile",
        default="loss",
        help="trainer.compile settings to time, comma-separated: none,loss,model (default: loss)",
    )
    p.add_argument("--skip", default="", help="comma list of sections: train,divergence,beam,data")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the bench runs")
    p.add_argument("--out", default="bench.json", help="JSON results (default: bench.json)")
    return p.parse_args(argv)


def run(argv: list[str] | None = None) -> dict:
    """Run the benchmarks that `argv` selects; print the tables, write and return the JSON."""
    args = _args(argv)
    import torch

    from idistill import bench
    from idistill.engine.device import autocast_dtype, pick_device

    device = pick_device(args.device)
    amp = autocast_dtype(args.precision, device)
    if args.quick:
        args.models, args.tokens, args.repeats, args.sentences = "transformer_tiny", 500, 1, 8
    skip = set(filter(None, args.skip.split(",")))
    unknown = set(args.compile.split(",")) - {"none", "loss", "model"}
    if unknown:
        raise SystemExit(f"idistill-bench: --compile takes none, loss, model (got {unknown})")
    vocab = 2_000 if args.quick else 12_000
    result: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "precision": str(amp).replace("torch.", "") if amp else "fp32",
        "allocator": os.environ.get("LD_PRELOAD", "") or "default",
    }
    result["matmul_gflops"] = bench.matmul_gflops(
        device, amp or torch.float32, 512 if args.quick else 2048
    )
    print(
        f"device {result['device']} | torch {result['torch']} | {result['threads']} threads | "
        f"{result['precision']} | allocator {result['allocator']}\n"
        f"matmul: {result['matmul_gflops']:.1f} GFLOP/s ({result['precision']})",
        flush=True,
    )

    if "train" not in skip:
        rows = []
        variants = [(1, "concat"), (3, "concat"), (3, "loop")]
        for name in args.models.split(","):
            for compiled in args.compile.split(","):
                for k, passes in variants:
                    row = isolated(
                        bench.bench_train_step,
                        name, k=k, passes=passes, device=device, vocab=vocab,
                        target_tokens=args.tokens, amp=amp, compile=compiled,
                        repeats=args.repeats,
                    )  # fmt: skip
                    row["compile"] = compiled
                    row["matmul_fraction"] = row["gflops"] / result["matmul_gflops"]
                    rows.append(row)
                    print(
                        f"  {name} K={k} {passes} compile={compiled}: {row['ms_per_step']:.0f} ms",
                        flush=True,
                    )
        result["train_step"] = rows
        print("\ntraining step (forward, loss, backward, AdamW)")
        print(
            _table(
                rows,
                [
                    ("model", "model", ""),
                    ("K", "k", "d"),
                    ("passes", "passes", ""),
                    ("compile", "compile", ""),
                    ("tokens", "target_tokens", "d"),
                    ("ms/step", "ms_per_step", ".0f"),
                    ("tok/s", "tokens_per_s", ".0f"),
                    ("peak MB", "peak_mb", ".0f"),
                    ("GFLOP/s", "gflops", ".1f"),
                    ("of matmul", "matmul_fraction", ".0%"),
                ],
            )  # fmt: skip
        )
    if "divergence" not in skip:
        rows = [
            isolated(bench.bench_divergence, device, impl, tokens=args.tokens, vocab=vocab,
                     repeats=args.repeats)
            for impl in ("autograd", "fused", "compiled")
        ]  # fmt: skip
        result["divergence"] = rows
        print("\ndivergence alone (X, forward + backward, float32)")
        print(
            _table(
                rows,
                [
                    ("impl", "impl", ""),
                    ("K", "k", "d"),
                    ("tokens", "tokens", "d"),
                    ("vocab", "vocab", "d"),
                    ("ms", "ms", ".0f"),
                    ("peak MB", "peak_mb", ".0f"),
                ],
            )  # fmt: skip
        )
    if "beam" not in skip:
        rows = isolated(
            bench.bench_beam_search,
            device,
            sentences=args.sentences,
            vocab=vocab,
            model_name=args.models.split(",")[-1],
        )
        result["beam_search"] = rows
        print(f"\nbeam search (beam 5, {args.models.split(',')[-1]}, random weights)")
        print(
            _table(
                rows,
                [
                    ("decoder", "decoder", ""),
                    ("sentences", "sentences", "d"),
                    ("seconds", "seconds", ".1f"),
                    ("sent/s", "sentences_per_s", ".1f"),
                    ("tok/s", "tokens_per_s", ".0f"),
                ],
            )  # fmt: skip
        )
    if "data" not in skip:
        rows = bench.bench_data(2_000 if args.quick else 20_000)
        result["data"] = rows
        print("\ndata path")
        print(_table(rows, [("stage", "stage", ""), ("sentences/s", "sentences_per_s", ",.0f")]))

    result["targets"] = _targets(result)
    print("\ntargets (ratios measured in this run)")
    for what, key, target, higher in TARGETS:
        value = result["targets"].get(key)
        if value is None:
            print(f"  {what}: not measured")
            continue
        met = value >= target if higher else value <= target
        shown = f"{value:.0%}" if key == "k1_matmul_fraction" else f"{value:.2f}x"
        want = f"{'>=' if higher else '<='} {target:.0%}" if key == "k1_matmul_fraction" else (
            f"{'>=' if higher else '<='} {target:g}x"
        )  # fmt: skip
        print(f"  {what}: {shown} (target {want}) {'met' if met else 'MISSED'}")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nJSON: {args.out}")
    return result


def _targets(result: dict) -> dict:
    """The issue's target ratios from the last model measured, at the first compile setting."""
    out: dict = {}
    steps = result.get("train_step", [])
    steps = [r for r in steps if r["compile"] == steps[0]["compile"]]
    if steps:
        last = steps[-1]["model"]
        by = {(r["k"], r["passes"]): r for r in steps if r["model"] == last}
        k1, k3 = by.get((1, "concat")), by.get((3, "concat"))
        if k1 and k3:
            out["k3_time_ratio"] = k3["ms_per_step"] / k1["ms_per_step"]
            out["k3_memory_ratio"] = k3["peak_mb"] / k1["peak_mb"]
            out["k1_matmul_fraction"] = k1["matmul_fraction"]
    beams = [r for r in result.get("beam_search", []) if "sentences_per_s" in r]
    if len(beams) == 2:
        out["beam_speedup"] = beams[0]["sentences_per_s"] / beams[1]["sentences_per_s"]
    return out


def main() -> None:
    """Console script `idistill-bench`."""
    run(sys.argv[1:])


if __name__ == "__main__":
    main()
