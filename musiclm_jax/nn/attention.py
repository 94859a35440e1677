"""Multi-head self-attention with an additive bias and a chunked KV cache.

The caller supplies the additive bias (relative position bias plus causal mask, computed
once per stack), and with rotary embeddings the positions to rotate queries and keys by.

KV cache (`decode=True`): variables in the 'cache' collection,

  cached_key, cached_value  [batch, max_len, heads, head_dim]
  cache_index               int32 scalar: number of positions written so far

The first call with `decode=True` and no cache (i.e. `init`) creates a zero cache whose
length is the input length, and attends within the input as usual. Later calls write the
input's L >= 1 positions at `cache_index` with `jax.lax.dynamic_update_slice` (one call can
prefill a whole prompt, later calls write one token each), then attend the L queries against
all `max_len` cache slots; the bias must then be [.., L, max_len] and mask unwritten slots
(the causal mask does: they lie in the queries' future). Writing past `max_len` is not
checked (the index is traced); callers size the cache.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from musiclm_jax.nn import axes
from musiclm_jax.nn.initializers import default_kernel_init
from musiclm_jax.nn.layers import matmul
from musiclm_jax.nn.position import apply_rope
from musiclm_jax.nn.splash import splash_causal_attention

Array = jax.Array


class MultiHeadAttention(nn.Module):
    """Self-attention: q, k, v and output projections without biases (T5 style).

    `num_kv_heads` < `num_heads` shares each key/value head among num_heads / num_kv_heads
    query heads (grouped-query attention; 1 = multi-query): smaller K/V projections and a KV
    cache num_heads / num_kv_heads times smaller, which is what bounds decoding speed.
    """

    num_heads: int
    head_dim: int
    num_kv_heads: Optional[int] = None  # None: num_heads (plain multi-head attention)
    kernel: str = "xla"  # 'xla' (einsum + softmax) or 'fused' (jax.nn.dot_product_attention)
    rope_max_wavelength: float = 10_000.0
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Any = None

    @classmethod
    def of_stack(cls, config: Any, name: str = "attention") -> "MultiHeadAttention":
        """The self-attention of a layer of the stack that `config` (a StackConfig) describes."""
        return cls(
            num_heads=config.num_heads,
            head_dim=config.head_dim,
            num_kv_heads=config.num_kv_heads,
            kernel=config.attention_kernel,
            rope_max_wavelength=getattr(config, "rope_max_wavelength", 10_000.0),
            dropout_rate=config.dropout_rate,
            dtype=config.dtype,
            param_dtype=config.param_dtype,
            name=name,
        )

    @nn.compact
    def __call__(
        self,
        x: Array,
        bias: Array,
        *,
        positions: Optional[Array] = None,
        causal: bool = False,
        deterministic: bool = True,
        decode: bool = False,
    ) -> Array:
        """x: [batch, length, embed]; bias: float32, broadcastable to [batch, heads, length, keys].

        `positions` [length] (int): rotate queries and keys by these positions (rotary
        embeddings) before the cache write. `causal`: the bias is nothing but the causal mask of
        queries and keys both from position 0, which the fused kernel may apply itself.
        """
        kernel_init = self.kernel_init or default_kernel_init()
        d_model = x.shape[-1]
        kv_heads = self.num_kv_heads or self.num_heads
        if self.num_heads % kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({kv_heads})")
        groups = self.num_heads // kv_heads
        # Shared K/V heads are replicated over the 'model' mesh axis (they are few and small).
        kv_names, kv_act = (axes.HEADS, axes.HEADS_ACT) if groups == 1 else (axes.KV_HEADS, axes.KV_HEADS_ACT)

        # Explicit kernels rather than nn.DenseGeneral: DenseGeneral initialises a flattened
        # 2-D kernel, which clashes with 3-D logical axis names under a mesh.
        def qkv(name, heads, head_axis):
            kernel = self.param(
                name,
                nn.with_logical_partitioning(kernel_init, (axes.EMBED, head_axis, axes.KV)),
                (d_model, heads, self.head_dim),
                self.param_dtype,
            )
            return matmul(x.astype(self.dtype), kernel.astype(self.dtype))

        query = nn.with_logical_constraint(qkv("query", self.num_heads, axes.HEADS), axes.HEADS_ACT)
        key = nn.with_logical_constraint(qkv("key", kv_heads, kv_names), kv_act)
        value = nn.with_logical_constraint(qkv("value", kv_heads, kv_names), kv_act)
        if positions is not None:
            query = apply_rope(query, positions, self.rope_max_wavelength)
            key = apply_rope(key, positions, self.rope_max_wavelength)

        if decode:
            initialized = self.has_variable("cache", "cached_key")
            cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
            cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
            cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
            if initialized:
                index = cache_index.value
                start = (jnp.zeros((), jnp.int32), index, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))
                key = jax.lax.dynamic_update_slice(cached_key.value, key.astype(cached_key.value.dtype), start)
                value = jax.lax.dynamic_update_slice(cached_value.value, value.astype(cached_value.value.dtype), start)
                cached_key.value = key
                cached_value.value = value
                cache_index.value = index + x.shape[1]

        query = query * jnp.asarray(self.head_dim**-0.5, query.dtype)
        batch = query.shape[0]
        # One query against the cache (a decode step): multiply-reduce over the cache in its
        # stored [batch, keys, kv_heads, head_dim] layout, query heads grouped by the K/V head
        # they share. A batched dot over (batch, heads) would make XLA transpose the whole cache
        # on every step, a per-token cost that grows with the cache length.
        single_query = decode and query.shape[1] == 1 and key.shape[1] > 1

        def softmax(logits):  # float32 logits and softmax whatever the activation dtype
            weights = jax.nn.softmax(logits + bias.astype(jnp.float32), axis=-1)
            if not deterministic and self.dropout_rate > 0.0:
                weights = nn.Dropout(rate=self.dropout_rate)(weights, deterministic=False)
            return weights

        if single_query and groups == 1:
            logits = jnp.sum(query.astype(jnp.float32) * key.astype(jnp.float32), axis=-1)  # [b, k, h]
            weights = softmax(jnp.transpose(logits, (0, 2, 1))[:, :, None, :])  # [b, h, 1, k]
            w = jnp.transpose(weights[:, :, 0, :], (0, 2, 1))[..., None]  # [b, k, h, 1]
            out = jnp.sum(w * value.astype(jnp.float32), axis=1, keepdims=True).astype(self.dtype)  # [b, 1, h, d]
        elif single_query:
            grouped = query.astype(jnp.float32).reshape(batch, 1, kv_heads, groups, self.head_dim)
            logits = jnp.sum(grouped * key.astype(jnp.float32)[:, :, :, None, :], axis=-1)  # [b, k, n, g]
            weights = softmax(jnp.transpose(logits.reshape(batch, -1, self.num_heads), (0, 2, 1))[:, :, None, :])
            w = jnp.transpose(weights[:, :, 0, :], (0, 2, 1)).reshape(batch, -1, kv_heads, groups, 1)
            out = jnp.sum(w * value.astype(jnp.float32)[:, :, :, None, :], axis=1)  # [b, n, g, d]
            out = out.reshape(batch, 1, self.num_heads, self.head_dim).astype(self.dtype)
        elif self.kernel == "fused":
            out = fused_attention(query, key.astype(query.dtype), value.astype(query.dtype), bias, causal=causal)
        else:
            if groups > 1:  # query head h uses K/V head h // groups; XLA:CPU runs plain heads fastest
                key, value = jnp.repeat(key, groups, axis=2), jnp.repeat(value, groups, axis=2)
            weights = softmax(jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32))
            out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(self.dtype), value.astype(self.dtype))
        out = nn.with_logical_constraint(out, axes.HEADS_ACT)
        out_kernel = self.param(
            "out",
            nn.with_logical_partitioning(kernel_init, (axes.HEADS, axes.KV, axes.EMBED)),
            (self.num_heads, self.head_dim, d_model),
            self.param_dtype,
        )
        out = matmul(out, out_kernel.astype(self.dtype), num_contract=2)
        return nn.with_logical_constraint(out, axes.EMBED_ACT)


def fused_attention(query: Array, key: Array, value: Array, bias: Array, *, causal: bool = False) -> Array:
    """softmax(q k^T + bias) v by `jax.nn.dot_product_attention` ([batch, length, heads,
    head_dim] in and out; queries already scaled; K/V may have fewer heads). On GPU it takes
    cuDNN's flash attention where shapes and dtypes allow (then the [heads, q, k] weights are
    never stored), elsewhere XLA's own. `causal`: the bias is only the causal mask, passed as
    the kernel's flag instead; on TPU then Pallas splash attention (nn/splash.py)."""
    if causal:  # TPU: Pallas splash attention; elsewhere dot_product_attention's causal flag
        return jax.lax.platform_dependent(
            query,
            key,
            value,
            tpu=splash_causal_attention,
            default=lambda q, k, v: jax.nn.dot_product_attention(q, k, v, scale=1.0, is_causal=True),
        )
    bias = jnp.broadcast_to(bias, bias.shape[:2] + (query.shape[1], key.shape[1])).astype(query.dtype)
    return jax.nn.dot_product_attention(query, key, value, bias=bias, scale=1.0)
