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

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from musiclm_jax.nn.attention import MultiHeadAttention
from musiclm_jax.nn.position import RelativePositionBias
from musiclm_jax.nn import config_io

Array = jax.Array

NEG_INF = -1e10  # finite, so fully masked rows (never produced here) cannot give NaN

REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims")


def remat_policy(name: str) -> Optional[Any]:
    """The `jax.checkpoint` policy for a name ('full' saves nothing -> None policy)."""
    if name == "full":
        return None
    if name == "dots":
        return jax.checkpoint_policies.checkpoint_dots
    if name == "dots_with_no_batch_dims":
        return jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims
    raise ValueError(f"unknown remat_policy {name!r}; expected one of {REMAT_POLICIES}")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Hyperparameters of a decoder stack. `dtype` = activations, `param_dtype` = weights."""

    vocab_size: int
    num_layers: int = 2
    num_heads: int = 4
    head_dim: int = 16
    d_model: int = 64
    d_ff: int = 256
    dropout_rate: float = 0.0
    relpos_num_buckets: int = 32
    relpos_max_distance: int = 128
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scan_layers: bool = True
    remat_policy: str = "none"

    def __post_init__(self):
        config_io.normalize_dtypes(self)
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"unknown remat_policy {self.remat_policy!r}; expected one of {REMAT_POLICIES}")
        for name in ("vocab_size", "num_layers", "num_heads", "head_dim", "d_model", "d_ff"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TransformerConfig.{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")


def _kernel_init():
    return nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


def _rms_norm(config: TransformerConfig, name: str) -> nn.RMSNorm:
    return nn.RMSNorm(
        epsilon=1e-6,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
        name=name,
    )


class GatedMlp(nn.Module):
    """T5 v1.1 feed-forward: wo(gelu(x @ wi_0) * (x @ wi_1))."""

    config: TransformerConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config

        def dense(features, axes, name):
            return nn.Dense(
                features,
                use_bias=False,
                dtype=cfg.dtype,
                param_dtype=cfg.param_dtype,
                kernel_init=nn.with_logical_partitioning(_kernel_init(), axes),
                name=name,
            )

        act_axes = ("activation_batch", "activation_length", "activation_mlp")
        h0 = nn.with_logical_constraint(dense(cfg.d_ff, ("embed", "mlp"), "wi_0")(x), act_axes)
        h1 = nn.with_logical_constraint(dense(cfg.d_ff, ("embed", "mlp"), "wi_1")(x), act_axes)
        h = nn.gelu(h0, approximate=True) * h1
        h = nn.Dropout(rate=cfg.dropout_rate)(h, deterministic=self.deterministic)
        h = nn.with_logical_constraint(h, act_axes)
        out = dense(cfg.d_model, ("mlp", "embed"), "wo")(h)
        return nn.with_logical_constraint(out, ("activation_batch", "activation_length", "activation_embed"))


class DecoderLayer(nn.Module):
    """Pre-norm layer: x + drop(attn(norm(x))), then x + drop(mlp(norm(x))).

    Returns (x, None) so that it can be the body of `nn.scan`.
    """

    config: TransformerConfig
    deterministic: bool = True
    decode: bool = False

    @nn.compact
    def __call__(self, x: Array, bias: Array):
        cfg = self.config
        embed_axes = ("activation_batch", "activation_length", "activation_embed")
        x = nn.with_logical_constraint(x, embed_axes)
        h = _rms_norm(cfg, "pre_attention_norm")(x)
        h = MultiHeadAttention(
            num_heads=cfg.num_heads,
            head_dim=cfg.head_dim,
            dropout_rate=cfg.dropout_rate,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            name="attention",
        )(h, bias, deterministic=self.deterministic, decode=self.decode)
        h = nn.Dropout(rate=cfg.dropout_rate)(h, deterministic=self.deterministic)
        x = x + h
        h = _rms_norm(cfg, "pre_mlp_norm")(x)
        h = GatedMlp(cfg, deterministic=self.deterministic, name="mlp")(h)
        h = nn.Dropout(rate=cfg.dropout_rate)(h, deterministic=self.deterministic)
        x = nn.with_logical_constraint(x + h, embed_axes)
        return x, None


class DecoderStack(nn.Module):
    """ids [batch, length] (int) -> logits [batch, length, vocab] (float32).

    `num_logits` (static) projects only the last `num_logits` positions to logits (the
    target part of a prefix-conditioned sequence, or the last prompt position when
    prefilling a cache), saving the [length, vocab] projection of the rest.
    """

    config: TransformerConfig

    @nn.compact
    def __call__(
        self, ids: Array, *, deterministic: bool = True, decode: bool = False, num_logits: Optional[int] = None
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

        rel_bias = RelativePositionBias(
            num_heads=cfg.num_heads,
            num_buckets=cfg.relpos_num_buckets,
            max_distance=cfg.relpos_max_distance,
            param_dtype=cfg.param_dtype,
            name="relpos_bias",
        )(length, k_len, q_start)
        q_pos = q_start + jnp.arange(length, dtype=jnp.int32)
        causal = jnp.arange(k_len, dtype=jnp.int32)[None, :] <= q_pos[:, None]
        bias = jnp.where(causal[None, None], rel_bias, NEG_INF).astype(jnp.float32)  # [1, H, q, k]

        x = nn.Embed(
            num_embeddings=cfg.vocab_size,
            features=cfg.d_model,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(stddev=1.0), ("vocab", "embed")),
            name="token_embed",
        )(ids.astype(jnp.int32))
        x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
        x = nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=deterministic)

        layer_cls = DecoderLayer
        if cfg.remat_policy != "none":
            layer_cls = nn.remat(layer_cls, policy=remat_policy(cfg.remat_policy), prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            scanned = nn.scan(
                layer_cls,
                variable_axes={"params": 0, "cache": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast,),
                length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, _ = scanned(cfg, deterministic=deterministic, decode=decode, name="layers")(x, bias)
        else:
            for i in range(cfg.num_layers):
                x, _ = layer_cls(cfg, deterministic=deterministic, decode=decode, name=f"layers_{i}")(x, bias)

        if num_logits is not None:
            if not 0 < num_logits <= length:
                raise ValueError(f"num_logits must be in [1, {length}], got {num_logits}")
            x = x[:, length - num_logits :]
        x = _rms_norm(cfg, "final_norm")(x)
        x = nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=deterministic)
        logits = nn.Dense(
            cfg.vocab_size,
            use_bias=False,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            kernel_init=nn.with_logical_partitioning(_kernel_init(), ("embed", "vocab")),
            name="logits",
        )(x)
        logits = nn.with_logical_constraint(logits, ("activation_batch", "activation_length", "activation_vocab"))
        return logits.astype(jnp.float32)


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
