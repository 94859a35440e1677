"""XLA options per backend for the library's compiled steps (samplers and train steps)."""

from __future__ import annotations

from typing import Optional

import jax


def compiler_options(platform: Optional[str] = None) -> Optional[dict]:
    """XLA options for compiling on `platform` (default: the default backend).

    On CPU (jax 0.10), XLA hands reductions and elementwise fusions to YNNPACK too, where some
    are slow: the single-query attention's multiply-reduce over a KV cache cost 0.2-0.45 ms per
    layer per token (decoding ~3x slower at batch 1, bench/bench_generate.py), and the reduce
    over the batch that gives the relative-position bias its gradient 12 ms per layer at batch
    8 x 257 (bench/bench_stage.py). Keeping YNNPACK to matmuls avoids both. Other backends:
    None (their defaults).
    """
    if (platform or jax.default_backend()) == "cpu":
        return {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}
    return None
