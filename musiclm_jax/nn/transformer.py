"""Decoder-only transformer stack (T5 v1.1 style, pre-norm, relative position bias).

DecoderStack(ids) -> float32 logits. Layers run under `nn.scan` (params and KV caches
stacked on a leading 'layers' axis) wrapped in `nn.remat` with a named policy, or as a
Python loop (`scan_layers=False`, params under layers_0, layers_1, ...).

Decoding (`decode=True`): the stack keeps its own 'cache' variables `cache_index` (positions
written so far) and `key_positions` (arange(max_len); its static length is the cache length),
computes the position bias for the queries [cache_index, cache_index + L) against all
max_len keys once, and passes it to every layer. See nn/attention.py for the cache layout.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from musiclm_jax.nn import axes, config_io
from musiclm_jax.nn.attention import MultiHeadAttention
from musiclm_jax.nn.initializers import default_kernel_init
from musiclm_jax.nn.layers import NEG_INF, Mlp, matmul, norm
from musiclm_jax.nn.position import RelativePositionBias
from musiclm_jax.nn.stack import RelPosStackConfig, stack_layers

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class TransformerConfig(RelPosStackConfig):
    """Hyperparameters of a decoder stack (the StackConfig fields, relative positions and the
    vocabulary)."""

    vocab_size: int = dataclasses.field(kw_only=True)

    def __post_init__(self):
        super().__post_init__()
        config_io.check_positive_ints(self, "vocab_size")


class DecoderLayer(nn.Module):
    """Pre-norm layer: x + drop(attn(norm(x))), then x + drop(mlp(norm(x))) (RMSNorm, gated
    GELU feed-forward as T5 v1.1). Returns (x, None) so that it can be the body of `nn.scan`.
    """

    config: TransformerConfig
    deterministic: bool = True
    decode: bool = False
    causal: bool = False  # the bias is only the causal mask (see MultiHeadAttention)

    @nn.compact
    def __call__(self, x: Array, bias: Array, positions: Optional[Array] = None):
        cfg = self.config
        x = nn.with_logical_constraint(x, axes.EMBED_ACT)
        h = norm("pre_attention_norm", rms=True, **cfg.dtypes)(x)
        h = MultiHeadAttention.of_stack(cfg)(
            h, bias, positions=positions, causal=self.causal, deterministic=self.deterministic, decode=self.decode
        )
        h = nn.Dropout(rate=cfg.dropout_rate)(h, deterministic=self.deterministic)
        x = x + h
        h = norm("pre_mlp_norm", rms=True, **cfg.dtypes)(x)
        h = Mlp(cfg, gated=True, deterministic=self.deterministic, name="mlp")(h)
        h = nn.Dropout(rate=cfg.dropout_rate)(h, deterministic=self.deterministic)
        x = nn.with_logical_constraint(x + h, axes.EMBED_ACT)
        return x, None


class LogitsProjection(nn.Module):
    """The output projection, kernel [d_model, vocab] ('embed', 'vocab'), of which a call may
    use only the columns of one id window [lo, hi). Applied with a kernel of the window's
    columns only (`window_params`), it uses that as is: a decoding loop slices once, outside."""

    vocab_size: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, window: Optional[tuple[int, int]] = None) -> Array:
        if self.has_variable("params", "kernel"):  # read as stored: possibly the window's columns only
            kernel = nn.meta.unbox(self.get_variable("params", "kernel"))
        else:
            kernel = self.param(
                "kernel",
                nn.with_logical_partitioning(default_kernel_init(), (axes.EMBED, axes.VOCAB)),
                (x.shape[-1], self.vocab_size),
                self.param_dtype,
            )
        if window is not None:
            lo, hi = window
            if not 0 <= lo < hi <= self.vocab_size:
                raise ValueError(f"logits window [{lo}, {hi}) is not inside the vocabulary [0, {self.vocab_size})")
            if kernel.shape[1] == self.vocab_size:
                kernel = kernel[:, lo:hi]
            elif kernel.shape[1] != hi - lo:
                raise ValueError(f"logits kernel has {kernel.shape[1]} columns: neither the vocabulary nor the window")
        return matmul(x.astype(self.dtype), kernel.astype(self.dtype))


class DecoderStack(nn.Module):
    """ids [batch, length] (int) -> logits [batch, length, vocab] (float32).

    `num_logits` (static) projects only the last `num_logits` positions to logits (the
    target part of a prefix-conditioned sequence, or the last prompt position when
    prefilling a cache), saving the [length, vocab] projection of the rest.
    `logits_window` (static (lo, hi)) gives the logits of ids [lo, hi) only, [.., hi - lo]:
    a stage predicts one stream, whose ids are a small part of the shared vocabulary (1,024
    semantic ids of 25,728), so the projection and softmax over the rest would be wasted.
    """

    config: TransformerConfig

    @nn.compact
    def __call__(
        self,
        ids: Array,
        *,
        deterministic: bool = True,
        decode: bool = False,
        num_logits: Optional[int] = None,
        logits_window: Optional[tuple[int, int]] = None,
    ) -> Array:
        cfg = self.config
        length = ids.shape[1]

        # Query/key positions for the bias: [q_start, q_start + length) against [0, k_len).
        q_start, k_len = jnp.zeros((), jnp.int32), length
        if decode:
            initialized = self.has_variable("cache", "cache_index")
            cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
            key_positions = self.variable("cache", "key_positions", lambda: jnp.arange(length, dtype=jnp.int32))
            if initialized:
                q_start = cache_index.value
                k_len = key_positions.value.shape[0]
                cache_index.value = q_start + length

        q_pos = q_start + jnp.arange(length, dtype=jnp.int32)
        causal = jnp.arange(k_len, dtype=jnp.int32)[None, :] <= q_pos[:, None]
        if cfg.position == "rope":  # rotary queries and keys; the bias is the causal mask alone
            positions, rel_bias = q_pos, jnp.zeros((1, 1, length, k_len), jnp.float32)
        else:
            positions = None
            rel_bias = RelativePositionBias(
                num_heads=cfg.num_heads,
                num_buckets=cfg.relpos_num_buckets,
                max_distance=cfg.relpos_max_distance,
                param_dtype=cfg.param_dtype,
                name="relpos_bias",
            )(length, k_len, q_start)
        bias = jnp.where(causal[None, None], rel_bias, NEG_INF).astype(jnp.float32)  # [1, H or 1, q, k]

        x = nn.Embed(
            num_embeddings=cfg.vocab_size,
            features=cfg.d_model,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(stddev=1.0), (axes.VOCAB, axes.EMBED)),
            name="token_embed",
        )(ids.astype(jnp.int32))
        x = nn.with_logical_constraint(x, axes.EMBED_ACT)
        x = nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=deterministic)

        causal_only = cfg.position == "rope" and not decode  # queries and keys both from position 0
        layers = stack_layers(
            DecoderLayer, cfg, num_broadcast=2, deterministic=deterministic, decode=decode, causal=causal_only
        )
        x, _ = layers(x, bias, positions)

        if num_logits is not None:
            if not 0 < num_logits <= length:
                raise ValueError(f"num_logits must be in [1, {length}], got {num_logits}")
            x = x[:, length - num_logits :]
        x = norm("final_norm", rms=True, **cfg.dtypes)(x)
        x = nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=deterministic)
        logits = LogitsProjection(cfg.vocab_size, **cfg.dtypes, name="logits")(x, logits_window)
        logits = nn.with_logical_constraint(logits, axes.VOCAB_ACT)
        return logits.astype(jnp.float32)


def window_params(params: Any, window: tuple[int, int]) -> Any:
    """`params` with the logits kernel cut to the columns of `window` (see LogitsProjection)."""
    lo, hi = window
    params = nn.meta.unbox(params)
    return {**params, "logits": {**params["logits"], "kernel": params["logits"]["kernel"][:, lo:hi]}}


def count_params(tree: Any) -> int:
    """Number of parameters in a (possibly boxed, possibly ShapeDtypeStruct) tree."""
    leaves = jax.tree_util.tree_leaves(nn.meta.unbox(tree))
    return int(sum(np.prod(leaf.shape) for leaf in leaves))


def unscanned(module: DecoderStack, params: Any) -> tuple[DecoderStack, Any]:
    """The same stack with `scan_layers=False` (and no remat) and its params unstacked.

    Scanned params {'layers': leaves [num_layers, ...]} become {'layers_0': ..., ...}. Used
    for KV-cache decoding: with scanned layers, every step would slice each layer's cache out
    of the stacked [layers, ...] array and restack it (copying the whole cache per token);
    unrolled layers keep one cache array per layer, updated in place. A stack that is not
    scanned is returned unchanged (params unboxed).
    """
    cfg = module.config
    params = nn.meta.unbox(params)
    if not cfg.scan_layers:
        return module, params
    params = dict(params)
    layers = params.pop("layers")
    for i in range(cfg.num_layers):
        params[f"layers_{i}"] = jax.tree_util.tree_map(lambda x, i=i: x[i], layers)
    return DecoderStack(dataclasses.replace(cfg, scan_layers=False, remat_policy="none")), params
