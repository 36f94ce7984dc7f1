"""idistill-bench runs end to end and reports what it claims (no timing is asserted)."""

from __future__ import annotations

import json

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
    assert set(result["targets"]) >= {"k3_time_ratio", "k3_memory_ratio", "k1_matmul_fraction"}
    printed = capsys.readouterr().out
    assert "targets (ratios measured in this run)" in printed and "K=3 step time" in printed


def test_bench_refuses_an_unknown_compile_setting():
    with pytest.raises(SystemExit, match="--compile takes none, loss, model"):
        run(["--quick", "--compile", "fast"])


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
