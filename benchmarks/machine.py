"""What every benchmark reports with its timings: the CPU model and its SIMD flags, and one timed loop.

    from benchmarks.machine import cpu_line, time_steps
    print(cpu_line())                       # "CPU: AMD EPYC 7B13 x2 cores; SIMD avx2 fma (no AVX-512)"
    # with ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 set: "...; kernels limited by ATEN_CPU_CAPABILITY=avx2 ..."
    wall_s, cpu_s = time_steps(step, steps=20, warmup=3, on_cuda=False)

Machines of one kind differ (an AVX-512 Xeon runs the CPU pre-training ~3x faster than an AVX2-only EPYC),
so a timing without the CPU it ran on cannot be compared with another.
"""
from __future__ import annotations

import os
import platform
import time

SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile")


def cpu_info() -> dict:
    """{"model", "cores", "simd": [the flags of SIMD_FLAGS this CPU has]} from /proc/cpuinfo."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(), "simd": [f for f in SIMD_FLAGS if f in flags]}


def cpu_line() -> str:
    """One line naming the CPU, its core count and SIMD flags, to print beside every timing."""
    info = cpu_info()
    avx512 = "" if "avx512f" in info["simd"] else " (no AVX-512)"
    # ATEN_CPU_CAPABILITY=avx2 (torch) and ONEDNN_MAX_CPU_ISA=AVX2 (oneDNN) keep an AVX-512 machine's
    # kernels to AVX2: the nearest this machine gets to an AVX2-only CPU (same cores, same caches).
    limits = [f"{k}={os.environ[k]}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if os.environ.get(k)]
    limited = f"; kernels limited by {' '.join(limits)}" if limits else ""
    return (f"CPU: {info['model']} x{info['cores']} cores; SIMD {' '.join(info['simd']) or 'none found'}{avx512}"
            f"{limited}")


def time_steps(step, steps: int, warmup: int, on_cuda: bool) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of `steps` calls of `step()` after `warmup` untimed ones."""
    def sync():
        if on_cuda:
            import torch
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    sync()
    return time.perf_counter() - t0, time.process_time() - c0
