"""Process-wide settings that make CPU inference faster, and a description of the CPU.

A 1024 px render allocates and frees a dozen activations of 67-135 MB. glibc's malloc, left
alone, unmaps every block over 32 MiB when it is freed, so each render faults its activations in
again, 4 KB at a time. ``tune_cpu_allocator`` (applied by ``load_pipeline``) keeps freed memory in
one heap for reuse. Measurements and the options tried: README, "The allocator".
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform
from dataclasses import dataclass

logger = logging.getLogger(__name__)

# mallopt() parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


@dataclass(frozen=True)
class AllocatorSettings:
    """What ``tune_cpu_allocator`` set. ``applied`` is False where the C library is not glibc
    (macOS, Windows, musl): those allocators are left as they are."""

    applied: bool
    reason: str
    mmap_threshold: int = 0
    trim_threshold: int = 0
    arena_max: int = 0


_applied: AllocatorSettings | None = None


def minor_page_faults() -> int:
    """Minor page faults of this process so far (what fresh memory costs). Unix only."""
    import resource  # not on Windows

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def tune_cpu_allocator(
    mmap_threshold: int = 1 << 30, trim_threshold: int = 1 << 30, arena_max: int = 1
) -> AllocatorSettings:
    """Keep freed tensor memory for reuse instead of unmapping it (see the module docstring).

    Call it once, before starting worker threads (a thread that already has its own malloc
    arena keeps it). Idempotent; returns what was set, or why nothing was.
    """
    global _applied
    if _applied is not None and _applied.applied:
        return _applied
    libc_name, _ = platform.libc_ver()
    if platform.system() != "Linux" or libc_name != "glibc":
        _applied = AllocatorSettings(False, f"C library is not glibc ({libc_name or 'unknown'})")
        return _applied
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    wanted = {
        _M_MMAP_THRESHOLD: mmap_threshold,
        _M_TRIM_THRESHOLD: trim_threshold,
        _M_ARENA_MAX: arena_max,
    }
    refused = [param for param, value in wanted.items() if libc.mallopt(param, value) != 1]
    if refused:
        # mallopt refuses values outside its limits (older glibc caps the mmap threshold at
        # 32 MiB): the settings it took stay in force, and the report says what was refused.
        _applied = AllocatorSettings(False, f"glibc mallopt refused parameters {refused}")
        logger.warning("allocator tuning incomplete: %s", _applied.reason)
        return _applied
    _applied = AllocatorSettings(
        True, "glibc malloc keeps freed memory", mmap_threshold, trim_threshold, arena_max
    )
    return _applied


# CPU features that decide which kernels oneDNN runs (fp32 vs native bf16 and AMX).
_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_description() -> str:
    """The CPU's model and the flags that matter for speed, e.g. 'AMD EPYC (avx2 avx512f
    avx512_bf16; no amx_tile amx_bf16)'. Linux reads /proc/cpuinfo; elsewhere the platform's
    processor string."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            info = f.read()
    except OSError:
        return platform.processor() or platform.machine()
    model, flags = platform.machine(), set()
    for line in info.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name":
            model = value.strip()
        elif key == "flags":
            flags = set(value.split())
            break
    have = [f for f in _CPU_FLAGS if f in flags]
    missing = [f for f in _CPU_FLAGS if f not in flags]
    return f"{model} ({' '.join(have) or 'none of ' + ' '.join(_CPU_FLAGS)}" + (
        f"; no {' '.join(missing)})" if missing and have else ")"
    )


def allocator_settings() -> AllocatorSettings:
    """The settings in force in this process (not applied until ``tune_cpu_allocator``)."""
    return _applied or AllocatorSettings(False, "not tuned: the C library's defaults")
