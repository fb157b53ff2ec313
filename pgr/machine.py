"""One line naming the machine a figure was measured on: architecture, cores, CPU model and the vector
extensions that decide OpenVINO's and torch's speed (bf16 and int8 paths differ by 2-3x between them)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

# the flags that change inference speed, in the order they are printed
SPEED_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "amx_bf16",
    "amx_int8",
    "neon",
    "asimd",
)


def describe_machine() -> str:
    """e.g. "x86_64, 2 CPUs, AMD EPYC, avx2 fma" (model and flags from /proc/cpuinfo where there is one)."""
    model, flags = platform.processor(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not flags:
                model = value.strip()
            elif key in ("flags", "Features"):
                flags = set(value.split())
                break
    vector = " ".join(f for f in SPEED_FLAGS if f in flags) or "no listed vector extensions"
    return f"{platform.machine()}, {os.cpu_count()} CPUs, {model or platform.platform()}, {vector}"
