"""`idistill-bench`: time the training step, the divergence, beam search, the data path and
the start-up of a run.

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
        "--precision",
        default="auto",
        help="comma list of auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 (default: auto); "
        "the targets are computed at the first",
    )
    p.add_argument(
        "--shapes",
        default="multi30k,iwslt",
        help="training shapes, comma-separated: demo (transformer_tiny, 1.5K vocabulary, 1,024 "
        "tokens), multi30k (transformer_cpu, 6K, 2,048), iwslt (transformer_small, 12K, 4,000); "
        "the targets are computed at the last",
    )
    p.add_argument("--repeats", type=int, default=3, help="timed steps per measurement")
    p.add_argument("--sentences", type=int, default=200, help="sentences for beam search")
    p.add_argument(
        "--compile",
        default="loss",
        help="trainer.compile settings to time, comma-separated: none,loss,model (default: loss)",
    )
    p.add_argument("--jobs", type=int, default=2, help="concurrent processes (concurrency)")
    p.add_argument(
        "--skip",
        default="",
        help="comma list of sections: train,concurrency,divergence,beam,data,startup",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the bench runs")
    p.add_argument("--out", default="bench.json", help="JSON results (default: bench.json)")
    return p.parse_args(argv)


def _check(args: argparse.Namespace) -> None:
    from idistill.bench import SHAPES

    unknown = set(args.compile.split(",")) - {"none", "loss", "model"}
    if unknown:
        raise SystemExit(f"idistill-bench: --compile takes none, loss, model (got {unknown})")
    unknown = set(args.shapes.split(",")) - set(SHAPES)
    if unknown:
        raise SystemExit(f"idistill-bench: --shapes takes {', '.join(SHAPES)} (got {unknown})")
    unknown = set(args.precision.split(",")) - {"auto", "fp32", "bf16"}
    if unknown:
        raise SystemExit(f"idistill-bench: --precision takes auto, fp32, bf16 (got {unknown})")


def run(argv: list[str] | None = None) -> dict:
    """Run the benchmarks that `argv` selects; print the tables, write and return the JSON."""
    args = _args(argv)
    _check(args)
    import torch

    from idistill import bench
    from idistill.engine.device import autocast_dtype, native_bf16_cpu, pick_device

    device = pick_device(args.device)
    amps = [autocast_dtype(p, device) for p in args.precision.split(",")]
    shapes = {name: bench.SHAPES[name] for name in args.shapes.split(",")}
    if args.quick:
        shapes = {"quick": ("transformer_tiny", 2_000, 500)}
        args.repeats, args.sentences = 1, 8
    skip = set(filter(None, args.skip.split(",")))
    result: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "native_bf16_cpu": native_bf16_cpu(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "precision": ",".join(bench.precision_name(a) for a in amps),
        "allocator": os.environ.get("LD_PRELOAD", "") or "default",
    }
    result["matmul_gflops"] = {
        bench.precision_name(a): bench.matmul_gflops(
            device, a or torch.float32, 512 if args.quick else 2048
        )
        for a in dict.fromkeys(amps)
    }
    print(
        f"device {result['device']} | torch {result['torch']} | {result['threads']} threads | "
        f"allocator {result['allocator']} | native bf16 on the CPU: "
        f"{'yes' if result['native_bf16_cpu'] else 'no'}\nmatmul: "
        + ", ".join(f"{g:.1f} GFLOP/s ({p})" for p, g in result["matmul_gflops"].items()),
        flush=True,
    )
    last_model, vocab, tokens = list(shapes.values())[-1]  # divergence, beam search: the last
    if "train" not in skip:
        result["train_step"] = _train_rows(args, shapes, amps, device, result["matmul_gflops"])
    if "concurrency" not in skip and device.type == "cpu":
        shape = shapes["quick"] if args.quick else bench.SHAPES["demo"]
        rows = bench.bench_concurrency(
            shape,
            jobs=args.jobs,
            repeats=args.repeats + 2,
            compile="none" if args.quick else "loss",
        )
        result["concurrency"] = rows
        print(f"\n{args.jobs} training processes at once on the CPU (K=1 updates of {shape[0]})")
        print(
            _table(
                rows,
                [
                    ("policy", "policy", ""),
                    ("threads each", "threads", "d"),
                    ("alone ms", "alone_ms", ".0f"),
                    ("together ms", "together_ms", ".0f"),
                    ("slowdown", "slowdown", ".2f"),
                ],
            )  # fmt: skip
        )
    if "divergence" not in skip:
        rows = [
            isolated(bench.bench_divergence, device, impl, tokens=tokens, vocab=vocab,
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
            model_name=last_model,
        )
        result["beam_search"] = rows
        print(f"\nbeam search (beam 5, {last_model}, random weights)")
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

    if "startup" not in skip:
        compiled = args.compile.split(",")[0]
        rows = bench.bench_startup(compiled, runs=1 if args.quick else 2)
        result["startup"] = rows
        print(f"\nstart-up: idistill {' '.join(bench.STARTUP_RUN)} trainer.compile={compiled}, "
              "fresh processes one after the other")  # fmt: skip
        print(
            _table(
                rows,
                [
                    ("run", "run", "d"),
                    ("first update done (s)", "first_update_s", ".1f"),
                    ("in all (s)", "total_s", ".1f"),
                ],
            )  # fmt: skip
        )

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


def _train_rows(args, shapes: dict, amps: list, device, matmul: dict) -> list[dict]:
    """An optimizer update for each shape, precision, compile setting and K variant."""
    from idistill import bench

    rows = []
    variants = [(1, "concat"), (3, "concat"), (3, "loop")]
    for shape, (model, vocab, tokens) in shapes.items():
        for amp in amps:
            for compiled in args.compile.split(","):
                for k, passes in variants:
                    row = isolated(
                        bench.bench_train_step,
                        model, k=k, passes=passes, device=device, vocab=vocab,
                        target_tokens=tokens, amp=amp, compile=compiled, repeats=args.repeats,
                    )  # fmt: skip
                    row.update(shape=shape, compile=compiled)
                    row["matmul_fraction"] = row["gflops"] / matmul[row["precision"]]
                    rows.append(row)
                    print(
                        f"  {shape} {row['precision']} K={k} {passes} compile={compiled}: "
                        f"{row['ms_per_step']:.0f} ms",
                        flush=True,
                    )
    print("\ntraining step (forward, loss, backward, AdamW)")
    print(
        _table(
            rows,
            [
                ("shape", "shape", ""),
                ("model", "model", ""),
                ("precision", "precision", ""),
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
    return rows


def _targets(result: dict) -> dict:
    """The issue's target ratios from the last model measured, at the first compile setting."""
    out: dict = {}
    steps = result.get("train_step", [])
    first = steps[0] if steps else {}
    steps = [
        r for r in steps
        if r["compile"] == first["compile"] and r["precision"] == first["precision"]
    ]  # fmt: skip
    if steps:
        last = steps[-1]["shape"]
        by = {(r["k"], r["passes"]): r for r in steps if r["shape"] == last}
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
