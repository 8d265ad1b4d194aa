"""Process-wide settings that make CPU inference faster, and a description of the CPU.

A 1024 px render allocates and frees a dozen activations of 67-135 MB. glibc's malloc, left
alone, unmaps every block over 32 MiB when it is freed, so each render faults its activations in
again, 4 KB at a time. ``tune_cpu_allocator`` (applied by ``load_pipeline``) keeps freed memory in
one heap for reuse. Measurements and the options tried: docs/performance.md, "The allocator".
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform
from dataclasses import dataclass

from .errors import PrecisionError

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


def _c_library() -> tuple[str, ctypes.CDLL | None]:
    """The C library's name, and the library itself where it is glibc on Linux (the malloc
    this module tunes and trims); elsewhere None."""
    libc_name, _ = platform.libc_ver()
    if platform.system() != "Linux" or libc_name != "glibc":
        return libc_name, None
    return libc_name, ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


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
    libc_name, libc = _c_library()
    if libc is None:
        _applied = AllocatorSettings(False, f"C library is not glibc ({libc_name or 'unknown'})")
        return _applied
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


def release_free_memory() -> bool:
    """Give the memory the C library holds free back to the system (glibc's ``malloc_trim``;
    elsewhere nothing): with the tuned allocator, what a one-off job freed (loading the models,
    a refinement) would otherwise stay in the process. True where it ran."""
    _, libc = _c_library()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


# CPU features that decide which kernels oneDNN runs (fp32 vs native bf16 and AMX).
_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def _cpu_info() -> tuple[str, set[str]] | None:
    """(model, flags) from /proc/cpuinfo; None where there is none (not Linux). The model is
    the model name with its family, model number and clock: a virtual machine's bare 'AMD
    EPYC' tells little (two machines here reported it with bf16 speeds 2x apart)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            info = f.read()
    except OSError:
        return None
    fields: dict[str, str] = {}
    flags: set[str] = set()
    for line in info.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "flags":
            flags = set(value.split())
            break
        fields.setdefault(key, value.strip())
    model = fields.get("model name") or platform.machine()
    details = [
        f"{label} {fields[key]}"
        for key, label in (("cpu family", "family"), ("model", "model"))
        if fields.get(key)
    ]
    mhz = fields.get("cpu MHz", "")  # absent on ARM and under some hypervisors
    if mhz.replace(".", "", 1).isdigit():
        details.append(f"{float(mhz):.0f} MHz")
    return (f"{model}, {', '.join(details)}" if details else model), flags


def cpu_description() -> str:
    """The CPU's model and the flags that matter for speed, e.g. 'AMD EPYC, family 25, model
    17, 2596 MHz (avx2 avx512f avx512_bf16; no amx_tile amx_bf16)'. Linux reads /proc/cpuinfo;
    elsewhere the platform's processor string."""
    found = _cpu_info()
    if found is None:
        return platform.processor() or platform.machine()
    model, flags = found
    have = [f for f in _CPU_FLAGS if f in flags]
    missing = [f for f in _CPU_FLAGS if f not in flags]
    return f"{model} ({' '.join(have) or 'none of ' + ' '.join(_CPU_FLAGS)}" + (
        f"; no {' '.join(missing)})" if missing and have else ")"
    )


def allocator_settings() -> AllocatorSettings:
    """The settings in force in this process (not applied until ``tune_cpu_allocator``)."""
    return _applied or AllocatorSettings(False, "not tuned: the C library's defaults")


# ---------------------------------------------------------------------- precision
PRECISION_ENV = "CSLA_PRECISION"
PRECISION_CHOICES = ("auto", "fp32", "fp32-compact", "bf16", "fp16")
# What "auto" picks on a CPU without fast bf16: fp32 maths, with the models that run once per
# photo or prompt (the encoder's style blocks, CLIP) stored in bf16 (about 0.7 GB less).
COMPACT_FP32 = "fp32-compact"
# bf16 is chosen only when its convolutions take at most this share of fp32's time: a CPU that
# emulates bf16 (no AVX512-BF16 / AMX) is slower in it, and a marginal gain is not worth the
# rounding.
_BF16_TIME_SHARE = 0.8


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision the models compute in, and why (shown by the bench, the app's log and
    ``CSLAPipeline.precision_reason``)."""

    precision: str  # one of PRECISION_CHOICES but "auto"
    reason: str


def native_bf16_flags() -> list[str]:
    """The CPU's native bfloat16 features (AVX512-BF16, AMX-BF16) found in /proc/cpuinfo."""
    found = _cpu_info()
    return [] if found is None else [f for f in ("avx512_bf16", "amx_bf16") if f in found[1]]


_bf16_probe: tuple[float, float] | None = None


def bf16_conv_speed() -> tuple[float, float]:
    """(fp32 seconds, bf16 seconds) of one generator-sized 3x3 convolution (256 channels,
    64 px, channels-last), the median of 5 after a warm-up: about 0.1 s, measured once per
    process."""
    global _bf16_probe
    if _bf16_probe is None:
        import statistics
        import time

        import torch
        import torch.nn.functional as F

        times = {}
        with torch.inference_mode():
            for dtype in (torch.float32, torch.bfloat16):
                x = torch.randn(1, 256, 64, 64).to(dtype, memory_format=torch.channels_last)
                w = torch.randn(256, 256, 3, 3).to(dtype, memory_format=torch.channels_last)
                F.conv2d(x, w, padding=1)
                runs = []
                for _ in range(5):
                    start = time.perf_counter()
                    F.conv2d(x, w, padding=1)
                    runs.append(time.perf_counter() - start)
                times[dtype] = statistics.median(runs)
        _bf16_probe = (times[torch.float32], times[torch.bfloat16])
    return _bf16_probe


def choose_precision(requested: str, device_type: str) -> PrecisionChoice:
    """What ``requested`` (one of ``PRECISION_CHOICES``) means on this device.

    "auto" (the default; the ``CSLA_PRECISION`` variable overrides it): on a CPU, bf16 where
    the CPU has native bf16 (AVX512-BF16 or AMX) and its convolutions measure faster than
    fp32's (``bf16_conv_speed``), else fp32-compact (fp32 maths; the encoder's style blocks
    and CLIP's matrices stored in bf16, for the memory budget); on a GPU, fp32 (reduced
    precision there is asked for by name). "fp32" is exact. fp16 needs a CUDA GPU.
    """
    import os

    reason = "asked for"
    if requested == "auto" and os.environ.get(PRECISION_ENV):
        requested, reason = os.environ[PRECISION_ENV].strip().lower(), f"{PRECISION_ENV} is set"
    if requested not in PRECISION_CHOICES:
        raise PrecisionError(f"precision must be one of {PRECISION_CHOICES}, got {requested!r}")
    if requested == "fp16" and device_type != "cuda":
        raise PrecisionError("fp16 is for CUDA GPUs; on a CPU use bf16 or fp32")
    if requested != "auto":
        return PrecisionChoice(requested, reason)
    if device_type != "cpu":
        return PrecisionChoice("fp32", f"auto: fp32 on {device_type} (ask for fp16 or bf16)")
    flags = native_bf16_flags()
    if not flags:
        return PrecisionChoice(
            COMPACT_FP32, "auto: this CPU has no native bf16 (AVX512-BF16 or AMX)"
        )
    fp32_s, bf16_s = bf16_conv_speed()
    measured = f"bf16 convolutions take {bf16_s / fp32_s:.2f}x fp32's time"
    if bf16_s <= _BF16_TIME_SHARE * fp32_s:
        return PrecisionChoice("bf16", f"auto: native bf16 ({' '.join(flags)}); {measured}")
    return PrecisionChoice(COMPACT_FP32, f"auto: {measured} here, not worth the rounding")


def exact_cuda_fp32() -> str:
    """Make float32 convolutions float32 on CUDA GPUs (process-wide): cuDNN runs them in TF32
    by default on Ampere and later (a 10-bit mantissa, about 1e-3 relative), which the "exact"
    fp32 precision must not. Matrix products are float32 by default already. The legacy flag
    is used: torch raises when code reads it after the newer per-operator flags were set."""
    import torch

    torch.backends.cudnn.allow_tf32 = False
    return "cuDNN convolutions in IEEE float32, no TF32"
