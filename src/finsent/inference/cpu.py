"""The CPU this process runs on: its model, the instruction sets that decide how int8 runs, its cores.

ONNX Runtime's int8 matrix products on x86 multiply unsigned 8-bit activations by 8-bit weights. With
VNNI (AVX512-VNNI, AVX-VNNI) or AMX, one instruction multiplies u8 by *signed* s8 and adds in 32 bits,
exactly; there is no such instruction for u8 x u8, which then runs at about fp32's speed. With AVX2
alone, u8 x s8 pairs are summed in 16 bits that saturate (vpmaddubsw), so signed weights there lose
precision, while u8 x u8 is widened first and stays exact. Hence `signed_int8_weights`.

Linux reports the flags in /proc/cpuinfo; elsewhere they are unknown, and the choices that depend on
them take the format that is exact on every CPU.
"""

import os
import platform
from dataclasses import dataclass
from functools import cache
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")

INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16", "amx_bf16")
"""The flags that decide how int8 and bf16 products run, as a results file records them."""

FAST_SIGNED_INT8 = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
"""Flags of an exact, fast u8 x s8 product instruction."""

NATIVE_BF16 = frozenset({"avx512_bf16", "amx_bf16"})
"""Flags of bf16 product instructions (without them, bf16 on a CPU is emulated and slower than fp32)."""


@dataclass(frozen=True)
class Cpu:
    model: str
    architecture: str
    flags: frozenset[str]
    cores: int
    """Cores this process may run on (its affinity)."""

    @property
    def signed_int8_weights(self) -> bool:
        """Whether int8 weights should be signed here: an x86 CPU with VNNI or AMX."""
        return bool(self.flags & FAST_SIGNED_INT8)

    @property
    def native_bf16(self) -> bool:
        """Whether this CPU computes bf16 products natively (AVX512-BF16 or AMX)."""
        return bool(self.flags & NATIVE_BF16)

    def describe(self) -> dict:
        """What a results file records of the machine."""
        return {
            "model": self.model,
            "architecture": self.architecture,
            "cores": self.cores,
            "flags": sorted(self.flags & set(INT8_FLAGS)),
        }


@cache
def this_cpu() -> Cpu:
    model, flags = platform.processor() or "unknown", frozenset()
    try:
        lines = CPUINFO.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:  # not Linux
        lines = []
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            model = value.strip()
        elif key.strip() == "flags":
            flags = frozenset(value.split())
        if model != "unknown" and flags:
            break
    return Cpu(model, platform.machine(), flags, len(os.sched_getaffinity(0)))
