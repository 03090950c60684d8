"""What this machine's CPU is and which instructions it has: the one reader of ``/proc/cpuinfo``, for the choice of
training precision (:func:`graft.core.device.resolve_precision`) and of the int8 quantizer
(:mod:`graft.int8.backend`). No heavy imports."""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path

#: The instructions that run bfloat16 matrix work natively on x86 (oneDNN's bf16 convolutions and matmuls): without
#: them torch emulates bf16 and runs slower than fp32.
BF16_FEATURES = ("avx512_bf16", "amx_bf16")


def _cpuinfo_lines() -> list[str]:
    with contextlib.suppress(OSError):
        return Path("/proc/cpuinfo").read_text().splitlines()
    return []


def cpu_flags() -> set[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where it is not readable)."""
    for line in _cpuinfo_lines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_model() -> str:
    """The CPU's model name (``platform.processor()`` or "unknown" where /proc/cpuinfo does not say)."""
    for line in _cpuinfo_lines():
        if line.startswith(("model name", "Model", "Hardware")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def bf16_features(flags: set[str] | None = None) -> list[str]:
    """The :data:`BF16_FEATURES` this CPU (or the given ``flags``) has, sorted; empty: no native bf16."""
    flags = cpu_flags() if flags is None else flags
    return sorted(flags & set(BF16_FEATURES))
