"""What a machine computes with: its CPU's name and whether a device does bfloat16 natively. Training
and encoding times depend on both, so trained model files and the speed benchmarks record them."""
from __future__ import annotations

import os

import torch

CPUINFO = "/proc/cpuinfo"


def _cpuinfo_line(prefix: str) -> str | None:
    """The first line of ``/proc/cpuinfo`` starting with ``prefix``; None where it has none or cannot
    be read (not Linux; ARM's lists ``Features``, not ``flags``)."""
    try:
        with open(CPUINFO, encoding="utf-8") as info:
            return next((line for line in info if line.startswith(prefix)), None)
    except OSError:
        return None


def cpu_name() -> str | None:
    """The CPU's model name (e.g. ``"AMD EPYC"``), or None where ``/proc/cpuinfo`` has none."""
    line = _cpuinfo_line("model name")
    return line.split(":", 1)[1].strip() if line else None


def native_bfloat16(device: torch.device) -> bool | None:
    """Whether ``device`` computes in bfloat16 natively: CUDA (compute capability 8 or later), or a
    CPU whose flags list avx512_bf16 or amx_bf16; None where there are no x86 flags to read."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    line = _cpuinfo_line("flags")
    if line is None:
        return None
    flags = line.split(":", 1)[-1].split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def machine(device: torch.device) -> dict:
    """``{"device", "device_name", "cpu", "cpus", "native_bfloat16"}`` of the machine running on ``device``."""
    cpu = cpu_name()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    return {"device": str(device), "device_name": name, "cpu": cpu, "cpus": os.cpu_count(),
            "native_bfloat16": native_bfloat16(device)}
