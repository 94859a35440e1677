"""Conformer stack (Gulati et al. 2020), the body of w2v-BERT's contrastive and MLM modules.

  ConformerStack(config)(x [B, T, d_model], mask [B, T] bool or None, *, deterministic,
                         return_layers=False)
      -> [B, T, d_model], or with return_layers the per-layer outputs [num_layers, B, T, d_model]
         (the last of them is the stack's output)

One conformer block (pre-norm sub-modules, each with a residual):

  x = x + 1/2 FF(x)           LN -> Dense(d_ff) -> swish -> drop -> Dense(d_model) -> drop
  x = x + MHSA(x, rel bias)   LN -> self-attention (nn/attention.py) -> drop
  x = x + Conv(x)             LN -> pointwise value/gate (GLU) -> depthwise conv (k) -> LN -> swish
                              -> pointwise -> drop
  x = x + 1/2 FF(x)
  x = LN(x)                   every block ends normalised, so any layer's output is a usable feature

Differences from the paper, deliberate:
  * Relative positions are a learned T5-style *bidirectional* bucketed bias (one [heads, buckets]
    table per stack shared by all its layers, as T5 and nn/transformer.py do), built on
    nn/position.py's bucketing, instead of Transformer-XL relative encodings: cheap, no extra
    matmuls per layer, and length-agnostic (any crop length at inference).
  * The conv module normalises with LayerNorm, not BatchNorm: the trainer keeps no mutable
    'batch_stats', and per-device batch statistics would differ under sharding.
  * The GLU's value and gate are two [d, d] kernels rather than one [d, 2d] kernel split in half
    (same parameters), so the channel axis can be sharded over 'model' without a reshuffle.

Padding (mask False) is masked as attention keys and zeroed before the depthwise conv, so real
frames never see padded content; outputs at padded frames are computed but meaningless.

Logical axes as nn/encoders.py: weights 'embed', 'mlp', 'heads', 'kv', 'layers' (scanned stack),
'relpos_buckets', 'conv_kernel' (depthwise taps); the conv module's channels use 'mlp' (it is an
MLP-shaped block: the depthwise conv is per channel, so a 'model'-sharded channel axis needs no
communication). Activations 'activation_batch', 'activation_length', 'activation_embed',
'activation_mlp'.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from musiclm_jax.nn.attention import MultiHeadAttention
from musiclm_jax.nn.position import causal_relative_position_bucket
from musiclm_jax.nn.transformer import NEG_INF, REMAT_POLICIES, _kernel_init, remat_policy
from musiclm_jax.nn import config_io

Array = jax.Array

EMBED_ACT = ("activation_batch", "activation_length", "activation_embed")
MLP_ACT = ("activation_batch", "activation_length", "activation_mlp")


@dataclasses.dataclass(frozen=True)
class ConformerConfig:
    """A conformer stack. `dtype` = activations, `param_dtype` = weights."""

    num_layers: int = 2
    num_heads: int = 4
    head_dim: int = 16
    d_model: int = 64
    d_ff: int = 256
    conv_kernel_size: int = 5
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
        config_io.check_positive_ints(self, "num_layers", "num_heads", "head_dim", "d_model", "d_ff", "conv_kernel_size",
                                      "relpos_num_buckets", "relpos_max_distance")
        if self.conv_kernel_size % 2 == 0:
            raise ValueError(f"ConformerConfig.conv_kernel_size must be odd (centred 'same' conv), got "
                             f"{self.conv_kernel_size}")
        if self.relpos_num_buckets < 4:
            raise ValueError(f"ConformerConfig.relpos_num_buckets must be >= 4 (half per direction), got "
                             f"{self.relpos_num_buckets}")
        if self.relpos_max_distance <= self.relpos_num_buckets // 4:
            raise ValueError(f"ConformerConfig.relpos_max_distance ({self.relpos_max_distance}) must exceed "
                             f"relpos_num_buckets // 4 ({self.relpos_num_buckets // 4})")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"ConformerConfig.dropout_rate must be in [0, 1), got {self.dropout_rate}")


def bidirectional_relative_position_bucket(distance: Array, *, num_buckets: int = 32,
                                           max_distance: int = 128) -> Array:
    """T5's bidirectional bucketing of `distance = query_position - key_position`: half the
    buckets for keys at or before the query, half (offset by num_buckets // 2) for keys after it,
    each half bucketed as nn/position.causal_relative_position_bucket does."""
    half = num_buckets // 2
    past = causal_relative_position_bucket(distance, num_buckets=half, max_distance=max_distance)
    future = causal_relative_position_bucket(-distance, num_buckets=half, max_distance=max_distance)
    return jnp.where(distance >= 0, past, half + future)


class BidirectionalRelativePositionBias(nn.Module):
    """Additive attention bias [1, heads, length, length] (float32) from bucketed distances."""

    num_heads: int
    num_buckets: int = 32
    max_distance: int = 128
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, length: int) -> Array:
        table = self.param(
            "rel_embedding",
            nn.with_logical_partitioning(nn.initializers.normal(stddev=0.1), ("heads", "relpos_buckets")),
            (self.num_heads, self.num_buckets),
            self.param_dtype,
        )
        pos = jnp.arange(length, dtype=jnp.int32)
        buckets = bidirectional_relative_position_bucket(
            pos[:, None] - pos[None, :], num_buckets=self.num_buckets, max_distance=self.max_distance)
        return jnp.take(jnp.asarray(table, jnp.float32), buckets, axis=1)[None]


def _layer_norm(cfg: ConformerConfig, name: str, axis_name: str = "embed") -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=1e-6,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, (axis_name,)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axis_name,)),
        name=name,
    )


def _dense(cfg: ConformerConfig, features: int, axes: tuple, name: str, use_bias: bool = True) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        kernel_init=nn.with_logical_partitioning(_kernel_init(), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[-1:]),
        name=name,
    )


class FeedForward(nn.Module):
    """LN -> Dense(d_ff) -> swish -> dropout -> Dense(d_model) -> dropout (the caller halves it)."""

    config: ConformerConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        h = _layer_norm(cfg, "norm")(x)
        h = nn.with_logical_constraint(_dense(cfg, cfg.d_ff, ("embed", "mlp"), "wi")(h), MLP_ACT)
        h = nn.swish(h)
        h = nn.Dropout(rate=cfg.dropout_rate)(h, deterministic=self.deterministic)
        h = _dense(cfg, cfg.d_model, ("mlp", "embed"), "wo")(h)
        h = nn.Dropout(rate=cfg.dropout_rate)(h, deterministic=self.deterministic)
        return nn.with_logical_constraint(h, EMBED_ACT)


class ConvModule(nn.Module):
    """LN -> value * sigmoid(gate) (pointwise GLU) -> depthwise conv over time -> LN -> swish
    -> pointwise -> dropout. `mask` [B, T, 1] float zeroes padded frames before the depthwise conv."""

    config: ConformerConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array, mask: Array) -> Array:
        cfg = self.config
        d, k = cfg.d_model, cfg.conv_kernel_size
        h = _layer_norm(cfg, "norm")(x)
        value = nn.with_logical_constraint(_dense(cfg, d, ("embed", "mlp"), "pointwise_value")(h), MLP_ACT)
        gate = nn.with_logical_constraint(_dense(cfg, d, ("embed", "mlp"), "pointwise_gate")(h), MLP_ACT)
        h = value * nn.sigmoid(gate)
        h = h * mask.astype(h.dtype)
        kernel = self.param("depthwise_kernel",
                            nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("conv_kernel", None, "mlp")),
                            (k, 1, d), cfg.param_dtype)
        bias = self.param("depthwise_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)), (d,),
                          cfg.param_dtype)
        h = jax.lax.conv_general_dilated(
            h, kernel.astype(cfg.dtype), window_strides=(1,), padding=(((k - 1) // 2, (k - 1) // 2),),
            dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=d)
        h = nn.with_logical_constraint(h + bias.astype(cfg.dtype), MLP_ACT)
        h = nn.swish(_layer_norm(cfg, "depthwise_norm", "mlp")(h))
        h = _dense(cfg, d, ("mlp", "embed"), "pointwise_out")(h)
        h = nn.Dropout(rate=cfg.dropout_rate)(h, deterministic=self.deterministic)
        return nn.with_logical_constraint(h, EMBED_ACT)


class ConformerLayer(nn.Module):
    """One conformer block; returns (x, x if return_layers else None) to be the body of nn.scan."""

    config: ConformerConfig
    deterministic: bool = True
    return_layers: bool = False

    @nn.compact
    def __call__(self, x: Array, bias: Array, mask: Array):
        cfg = self.config
        x = nn.with_logical_constraint(x, EMBED_ACT)
        x = x + 0.5 * FeedForward(cfg, self.deterministic, name="ff_in")(x)
        h = _layer_norm(cfg, "pre_attention_norm")(x)
        h = MultiHeadAttention(num_heads=cfg.num_heads, head_dim=cfg.head_dim, dropout_rate=cfg.dropout_rate,
                               dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="attention"
                               )(h, bias, deterministic=self.deterministic)
        x = x + nn.Dropout(rate=cfg.dropout_rate)(h, deterministic=self.deterministic)
        x = x + ConvModule(cfg, self.deterministic, name="conv")(x, mask)
        x = x + 0.5 * FeedForward(cfg, self.deterministic, name="ff_out")(x)
        x = nn.with_logical_constraint(_layer_norm(cfg, "final_norm")(x), EMBED_ACT)
        return x, (x if self.return_layers else None)


class ConformerStack(nn.Module):
    """x [B, T, d_model], mask [B, T] bool (True = real frame; None = all real).

    Returns [B, T, d_model], or with `return_layers=True` every layer's output stacked
    [num_layers, B, T, d_model] (index i = layer i + 1; the last is the stack's output)."""

    config: ConformerConfig

    @nn.compact
    def __call__(self, x: Array, mask: Optional[Array] = None, *, deterministic: bool = True,
                 return_layers: bool = False) -> Array:
        cfg = self.config
        if x.ndim != 3 or x.shape[-1] != cfg.d_model:
            raise ValueError(f"ConformerStack expects [batch, length, {cfg.d_model}], got {x.shape}")
        length = x.shape[1]
        rel_bias = BidirectionalRelativePositionBias(cfg.num_heads, cfg.relpos_num_buckets, cfg.relpos_max_distance,
                                                     cfg.param_dtype, name="relpos_bias")(length)
        if mask is None:
            bias = rel_bias
            conv_mask = jnp.ones(x.shape[:2] + (1,), cfg.dtype)
        else:
            if mask.shape != x.shape[:2]:
                raise ValueError(f"mask shape {mask.shape} does not match x's [batch, length] {x.shape[:2]}")
            bias = jnp.where(mask[:, None, None, :], rel_bias, NEG_INF).astype(jnp.float32)
            conv_mask = mask[..., None].astype(cfg.dtype)
        x = nn.with_logical_constraint(x.astype(cfg.dtype), EMBED_ACT)

        layer_cls = ConformerLayer
        if cfg.remat_policy != "none":
            layer_cls = nn.remat(layer_cls, policy=remat_policy(cfg.remat_policy), prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            scanned = nn.scan(
                layer_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast, nn.broadcast),
                length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, ys = scanned(cfg, deterministic=deterministic, return_layers=return_layers, name="layers")(
                x, bias, conv_mask)
        else:
            outs = []
            for i in range(cfg.num_layers):
                x, y = layer_cls(cfg, deterministic=deterministic, return_layers=return_layers,
                                 name=f"layers_{i}")(x, bias, conv_mask)
                outs.append(y)
            ys = jnp.stack(outs) if return_layers else None
        if return_layers:
            return nn.with_logical_constraint(ys, (None,) + EMBED_ACT)
        return x
