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

Logical axes are nn/axes.py's; the conv module's channels use 'mlp' (it is an MLP-shaped block:
the depthwise conv is per channel, so a 'model'-sharded channel axis needs no communication).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from musiclm_jax.nn import axes, config_io
from musiclm_jax.nn.attention import MultiHeadAttention
from musiclm_jax.nn.layers import NEG_INF, Mlp, dense, norm
from musiclm_jax.nn.position import causal_relative_position_bucket
from musiclm_jax.nn.stack import RelPosStackConfig, stack_layers

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ConformerConfig(RelPosStackConfig):
    """A conformer stack: the StackConfig fields, relative positions and the depthwise conv."""

    conv_kernel_size: int = 5

    def __post_init__(self):
        super().__post_init__()
        config_io.check_positive_ints(self, "conv_kernel_size")
        if self.position != "relative_bias":
            raise ValueError(f"ConformerConfig.position must be 'relative_bias', got {self.position!r}")
        if self.conv_kernel_size % 2 == 0:
            raise ValueError(
                f"ConformerConfig.conv_kernel_size must be odd (centred 'same' conv), got {self.conv_kernel_size}"
            )
        if self.relpos_num_buckets < 4:
            raise ValueError(
                f"ConformerConfig.relpos_num_buckets must be >= 4 (half per direction), got {self.relpos_num_buckets}"
            )
        if self.relpos_max_distance <= self.relpos_num_buckets // 4:
            raise ValueError(
                f"ConformerConfig.relpos_max_distance ({self.relpos_max_distance}) must exceed "
                f"relpos_num_buckets // 4 ({self.relpos_num_buckets // 4})"
            )


def bidirectional_relative_position_bucket(distance: Array, *, num_buckets: int = 32, max_distance: int = 128) -> Array:
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
            nn.with_logical_partitioning(nn.initializers.normal(stddev=0.1), (axes.HEADS, axes.RELPOS_BUCKETS)),
            (self.num_heads, self.num_buckets),
            self.param_dtype,
        )
        pos = jnp.arange(length, dtype=jnp.int32)
        buckets = bidirectional_relative_position_bucket(
            pos[:, None] - pos[None, :], num_buckets=self.num_buckets, max_distance=self.max_distance
        )
        return jnp.take(jnp.asarray(table, jnp.float32), buckets, axis=1)[None]


class ConvModule(nn.Module):
    """LN -> value * sigmoid(gate) (pointwise GLU) -> depthwise conv over time -> LN -> swish
    -> pointwise -> dropout. `mask` [B, T, 1] float zeroes padded frames before the depthwise conv."""

    config: ConformerConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array, mask: Array) -> Array:
        cfg = self.config
        d, k = cfg.d_model, cfg.conv_kernel_size
        h = norm("norm", **cfg.dtypes)(x)
        value = dense(d, (axes.EMBED, axes.MLP), "pointwise_value", use_bias=True, **cfg.dtypes)(h)
        gate = dense(d, (axes.EMBED, axes.MLP), "pointwise_gate", use_bias=True, **cfg.dtypes)(h)
        value = nn.with_logical_constraint(value, axes.MLP_ACT)
        gate = nn.with_logical_constraint(gate, axes.MLP_ACT)
        h = value * nn.sigmoid(gate)
        h = h * mask.astype(h.dtype)
        kernel = self.param(
            "depthwise_kernel",
            nn.with_logical_partitioning(nn.initializers.lecun_normal(), (axes.CONV_KERNEL, None, axes.MLP)),
            (k, 1, d),
            cfg.param_dtype,
        )
        bias = self.param(
            "depthwise_bias", nn.with_logical_partitioning(nn.initializers.zeros, (axes.MLP,)), (d,), cfg.param_dtype
        )
        h = jax.lax.conv_general_dilated(
            h,
            kernel.astype(cfg.dtype),
            window_strides=(1,),
            padding=(((k - 1) // 2, (k - 1) // 2),),
            dimension_numbers=("NWC", "WIO", "NWC"),
            feature_group_count=d,
        )
        h = nn.with_logical_constraint(h + bias.astype(cfg.dtype), axes.MLP_ACT)
        h = nn.swish(norm("depthwise_norm", axis=axes.MLP, **cfg.dtypes)(h))
        h = dense(d, (axes.MLP, axes.EMBED), "pointwise_out", use_bias=True, **cfg.dtypes)(h)
        h = nn.Dropout(rate=cfg.dropout_rate)(h, deterministic=self.deterministic)
        return nn.with_logical_constraint(h, axes.EMBED_ACT)


class ConformerLayer(nn.Module):
    """One conformer block; returns (x, x if return_layers else None) to be the body of nn.scan."""

    config: ConformerConfig
    deterministic: bool = True
    return_layers: bool = False

    @nn.compact
    def __call__(self, x: Array, bias: Array, mask: Array):
        cfg = self.config
        ff = dict(
            activation=nn.swish, use_bias=True, pre_norm=True, output_dropout=True, deterministic=self.deterministic
        )
        x = nn.with_logical_constraint(x, axes.EMBED_ACT)
        x = x + 0.5 * Mlp(cfg, name="ff_in", **ff)(x)
        h = norm("pre_attention_norm", **cfg.dtypes)(x)
        h = MultiHeadAttention.of_stack(cfg)(h, bias, deterministic=self.deterministic)
        x = x + nn.Dropout(rate=cfg.dropout_rate)(h, deterministic=self.deterministic)
        x = x + ConvModule(cfg, self.deterministic, name="conv")(x, mask)
        x = x + 0.5 * Mlp(cfg, name="ff_out", **ff)(x)
        x = nn.with_logical_constraint(norm("final_norm", **cfg.dtypes)(x), axes.EMBED_ACT)
        return x, (x if self.return_layers else None)


class ConformerStack(nn.Module):
    """x [B, T, d_model], mask [B, T] bool (True = real frame; None = all real).

    Returns [B, T, d_model], or with `return_layers=True` every layer's output stacked
    [num_layers, B, T, d_model] (index i = layer i + 1; the last is the stack's output)."""

    config: ConformerConfig

    @nn.compact
    def __call__(
        self, x: Array, mask: Optional[Array] = None, *, deterministic: bool = True, return_layers: bool = False
    ) -> Array:
        cfg = self.config
        if x.ndim != 3 or x.shape[-1] != cfg.d_model:
            raise ValueError(f"ConformerStack expects [batch, length, {cfg.d_model}], got {x.shape}")
        length = x.shape[1]
        rel_bias = BidirectionalRelativePositionBias(
            cfg.num_heads, cfg.relpos_num_buckets, cfg.relpos_max_distance, cfg.param_dtype, name="relpos_bias"
        )(length)
        if mask is None:
            bias = rel_bias
            conv_mask = jnp.ones(x.shape[:2] + (1,), cfg.dtype)
        else:
            if mask.shape != x.shape[:2]:
                raise ValueError(f"mask shape {mask.shape} does not match x's [batch, length] {x.shape[:2]}")
            bias = jnp.where(mask[:, None, None, :], rel_bias, NEG_INF).astype(jnp.float32)
            conv_mask = mask[..., None].astype(cfg.dtype)
        x = nn.with_logical_constraint(x.astype(cfg.dtype), axes.EMBED_ACT)

        x, ys = stack_layers(
            ConformerLayer, cfg, num_broadcast=2, deterministic=deterministic, return_layers=return_layers
        )(x, bias, conv_mask)
        if return_layers and not cfg.scan_layers:
            ys = jnp.stack(ys)
        if return_layers:
            return nn.with_logical_constraint(ys, (None,) + axes.EMBED_ACT)
        return x
