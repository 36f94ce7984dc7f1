"""idistill-bench runs end to end and reports what it claims (no timing is asserted)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from idistill import bench
from idistill.cli.bench import run


def test_quick_bench_writes_every_section_and_the_target_ratios(tmp_path, capsys):
    out = tmp_path / "bench.json"
    result = run(["--quick", "--compile", "none", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    steps = result["train_step"]
    assert [(r["k"], r["passes"]) for r in steps] == [(1, "concat"), (3, "concat"), (3, "loop")]
    assert len({r["target_tokens"] for r in steps}) == 1  # the same batch for every variant
    for r in steps:
        assert r["ms_per_step"] > 0 and r["peak_mb"] > 0 and r["gflop_per_step"] > 0
    # K=3 does three forward/backward passes of the same batch: about 3x the FLOPs of K=1
    assert 2.5 < steps[1]["gflop_per_step"] / steps[0]["gflop_per_step"] < 3.5
    assert {r["impl"] for r in result["divergence"]} == {"autograd", "fused", "compiled"}
    assert result["beam_search"][0]["sentences"] == 8
    assert {r["stage"] for r in result["data"]} >= {"sentencepiece encode", "collate"}
    (startup,) = result["startup"]  # a demo run of 2 updates (--quick: one, not two)
    assert 0 < startup["first_update_s"] < startup["total_s"]
    together = result["concurrency"]  # two processes training at once, under each policy
    assert [r["policy"] for r in together] == [name for name, _, _ in bench.THREAD_POLICIES]
    assert all(r["together_ms"] > 0 and r["slowdown"] > 0 for r in together)
    assert together[-1]["threads"] == max(1, len(os.sched_getaffinity(0)) // 2)
    assert set(result["targets"]) >= {"k3_time_ratio", "k3_memory_ratio", "k1_matmul_fraction"}
    printed = capsys.readouterr().out
    assert "targets (ratios measured in this run)" in printed and "K=3 step time" in printed


def test_bench_refuses_an_unknown_compile_setting_shape_or_precision():
    with pytest.raises(SystemExit, match="--compile takes none, loss, model"):
        run(["--quick", "--compile", "fast"])
    with pytest.raises(SystemExit, match="--shapes takes demo, multi30k, iwslt"):
        run(["--quick", "--shapes", "wmt"])
    with pytest.raises(SystemExit, match="--precision takes auto, fp32, bf16"):
        run(["--quick", "--precision", "fp8"])


def test_bench_rows_carry_their_precision_and_the_targets_use_the_first(tmp_path):
    result = run(
        ["--quick", "--compile", "none", "--precision", "fp32,bf16", "--out", str(tmp_path / "b"),
         "--skip", "concurrency,divergence,beam,data,startup"]
    )  # fmt: skip
    steps = result["train_step"]
    assert [r["precision"] for r in steps] == ["fp32"] * 3 + ["bfloat16"] * 3
    assert set(result["matmul_gflops"]) == {"fp32", "bfloat16"}
    k1, k3 = steps[0], steps[1]
    assert result["targets"]["k3_time_ratio"] == k3["ms_per_step"] / k1["ms_per_step"]


def test_training_batch_has_about_the_requested_target_tokens():
    batch = bench.training_batch(4000, 12_000)
    assert 4000 <= int(batch["ntokens"]) < 4000 + 200
    src_lens = batch["src_lengths"]
    assert src_lens.max() - src_lens.min() <= 2  # consecutive in length order, as batching makes


def test_peak_memory_is_reset_between_measurements():
    cpu = torch.device("cpu")
    big = bench.measure(lambda: torch.ones(64 * 2**20 // 4).sum(), cpu, warmup=0, repeats=1)
    small = bench.measure(lambda: torch.ones(16).sum(), cpu, warmup=0, repeats=1)
    assert big.peak_bytes - small.peak_bytes > 32 * 2**20
