"""What trainer.precision=auto means on a device; whether the CPU has native bf16, read from
its flags, not assumed."""

from __future__ import annotations

import torch

from idistill.engine import device as dev

ZEN4 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n"
SAPPHIRE = "processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 amx_tile\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"
GRAVITON2 = "processor\t: 0\nFeatures\t: fp asimd atomics\n"


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    cpus = ((ZEN4, True), (SKYLAKE, False), (SAPPHIRE, True), (GRAVITON3, True), (GRAVITON2, False))
    for text, native in cpus:
        (tmp_path / "cpuinfo").write_text(text)
        assert dev.native_bf16_cpu(str(tmp_path / "cpuinfo")) is native, text
    assert dev.native_bf16_cpu(str(tmp_path / "missing")) is False  # not Linux: no claim


def test_auto_precision_is_bf16_on_cuda_and_fp32_on_any_cpu():
    cpu = torch.device("cpu")
    assert dev.resolve_precision("auto", cpu) == "fp32" and dev.autocast_dtype("auto", cpu) is None
    assert dev.resolve_precision("auto", torch.device("cuda")) == "bf16"
    for given in ("fp32", "bf16", "fp16"):  # what the user asked for
        assert dev.resolve_precision(given, cpu) == given
    assert dev.autocast_dtype("bf16", cpu) == torch.bfloat16
    assert dev.autocast_dtype("fp16", cpu) == torch.float16
