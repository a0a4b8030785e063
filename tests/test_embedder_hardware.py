"""The machine facts trained models and speed benchmarks record (embedder.hardware)."""
from __future__ import annotations

import os

import torch

from oneshot.embedder import hardware


def _cpuinfo(tmp_path, flags: str):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: Example CPU 9000\nflags\t\t: fpu sse2 {flags}\n\n"
                    f"processor\t: 1\nmodel name\t: Example CPU 9000\nflags\t\t: fpu sse2 {flags}\n")
    return str(path)


def test_bfloat16_support_is_read_from_the_cpu_flags(tmp_path, monkeypatch):
    cpu = torch.device("cpu")
    for flags, native in (("avx2 avx512f avx512_bf16", True), ("avx2 amx_bf16", True), ("avx2 avx512f", False),
                          ("avx2 avx512_bf16x", False)):
        monkeypatch.setattr(hardware, "CPUINFO", _cpuinfo(tmp_path, flags))
        assert hardware.native_bfloat16(cpu) is native, flags
    assert hardware.cpu_name() == "Example CPU 9000"
    found = hardware.machine(cpu)
    assert found == {"device": "cpu", "device_name": "Example CPU 9000", "cpu": "Example CPU 9000",
                     "cpus": os.cpu_count(), "native_bfloat16": False}


def test_a_machine_without_cpuinfo_or_x86_flags_claims_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "CPUINFO", str(tmp_path / "absent"))
    assert hardware.native_bfloat16(torch.device("cpu")) is None and hardware.cpu_name() is None
    assert hardware.machine(torch.device("cpu"))["native_bfloat16"] is None
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\nCPU implementer\t: 0x41\n")
    monkeypatch.setattr(hardware, "CPUINFO", str(arm))
    assert hardware.native_bfloat16(torch.device("cpu")) is None and hardware.cpu_name() is None
