"""T5-style relative position bias for causal (decoder-only) attention.

The bias depends only on how far back a key lies from its query, bucketed: distances below
`num_buckets // 2` get their own bucket, larger ones share log-spaced buckets up to
`max_distance`, beyond which all distances share the last bucket. Keys ahead of the query
(masked anyway by the causal mask) fall in bucket 0.

One `RelativePositionBias` is created per transformer stack and its output is shared by all
layers (as in T5), so a stack has a single `rel_embedding` of shape [heads, buckets].
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from musiclm_jax.nn import axes

Array = jax.Array


def causal_relative_position_bucket(distance: Array, *, num_buckets: int = 32, max_distance: int = 128) -> Array:
    """Bucket index (int32) for `distance = query_position - key_position`.

    Unidirectional T5 bucketing: negative distances (future keys) map to bucket 0; distances
    0 .. num_buckets//2 - 1 are exact; larger ones are log-spaced up to `max_distance` and
    clipped to the last bucket.
    """
    if num_buckets < 2:
        raise ValueError(f"num_buckets must be >= 2, got {num_buckets}")
    max_exact = num_buckets // 2
    if max_distance <= max_exact:
        raise ValueError(f"max_distance ({max_distance}) must exceed num_buckets // 2 ({max_exact})")
    n = jnp.maximum(distance.astype(jnp.int32), 0)
    # log-spaced buckets for n >= max_exact; max(n, 1) keeps log() finite where unused.
    log_ratio = jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(jnp.int32)
    large = jnp.minimum(large, num_buckets - 1)
    return jnp.where(n < max_exact, n, large)


class RelativePositionBias(nn.Module):
    """Additive attention bias [1, heads, q_len, k_len] (float32) from bucketed distances.

    `__call__(q_len, k_len, q_start)` gives the bias of queries at positions
    [q_start, q_start + q_len) against keys at positions [0, k_len). `q_len` and `k_len` are
    static; `q_start` may be a traced scalar (KV-cache decoding writes at a traced index).
    """

    num_heads: int
    num_buckets: int = 32
    max_distance: int = 128
    param_dtype: Any = jnp.float32
    embedding_init: Any = nn.initializers.normal(stddev=0.1)

    @nn.compact
    def __call__(self, q_len: int, k_len: int, q_start: Any = 0) -> Array:
        table = self.param(
            "rel_embedding",
            nn.with_logical_partitioning(self.embedding_init, (axes.HEADS, axes.RELPOS_BUCKETS)),
            (self.num_heads, self.num_buckets),
            self.param_dtype,
        )
        q_pos = jnp.asarray(q_start, jnp.int32) + jnp.arange(q_len, dtype=jnp.int32)
        k_pos = jnp.arange(k_len, dtype=jnp.int32)
        buckets = causal_relative_position_bucket(
            q_pos[:, None] - k_pos[None, :], num_buckets=self.num_buckets, max_distance=self.max_distance
        )  # [q, k]
        bias = jnp.take(jnp.asarray(table, jnp.float32), buckets, axis=1)  # [heads, q, k]
        return bias[None]


def apply_rope(x: Array, positions: Array, max_wavelength: float = 10_000.0) -> Array:
    """Rotary position embedding (Su et al. 2021) of x [batch, length, heads, head_dim] at
    `positions` [length] (int; traced when decoding): feature pairs (i, i + head_dim / 2) are
    rotated by position x max_wavelength^(-2i / head_dim), so that query . key depends on the
    positions only through their difference. Computed in float32, returned in x's dtype."""
    half = x.shape[-1] // 2
    inv_freq = max_wavelength ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angle = jnp.asarray(positions, jnp.float32)[:, None] * inv_freq[None, :]  # [length, half]
    sin, cos = jnp.sin(angle)[None, :, None, :], jnp.cos(angle)[None, :, None, :]
    first, second = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
    return rotated.astype(x.dtype)
