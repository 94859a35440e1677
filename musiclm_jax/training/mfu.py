"""FLOPs and peak rates for MFU: XLA's cost analysis of a compiled step, known accelerator
peaks, and a measured float32 matmul rate for CPUs (which have no published peak)."""
from __future__ import annotations

import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

# Dense bf16 peak FLOP/s per chip (vendor figures).
PEAK_FLOPS_BY_DEVICE_KIND = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
}


def xla_flops(compiled: Any) -> Optional[float]:
    """FLOPs of one call of a lowered or compiled function, from XLA's cost analysis.

    A `Compiled`'s count is per device but misses work the backend hands to library calls (on
    GPU, cuBLAS/cuDNN matmuls and convolutions: its count is then ~100x too low). A `Lowered`'s
    count is of the whole (unpartitioned) program before any backend rewrite, the same on every
    platform: divide it by the number of devices."""
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    if not analysis or "flops" not in analysis:
        return None
    flops = float(analysis["flops"])
    return flops if flops > 0 else None


def measure_matmul_flops(n: int = 2048, repeats: int = 7, dtype=jnp.float32) -> float:
    """Median FLOP/s of an n x n matmul on the default device (what this machine can do)."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / float(np.median(times))


def peak_flops_per_device(configured: Optional[float] = None) -> float:
    """The configured peak; else the known peak for the device kind; else (CPU) measured."""
    if configured:
        return float(configured)
    kind = jax.devices()[0].device_kind
    for name, peak in PEAK_FLOPS_BY_DEVICE_KIND.items():
        if kind.startswith(name):
            return peak
    return measure_matmul_flops() / max(jax.local_device_count(), 1)
