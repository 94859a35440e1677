"""MuLan towers' building blocks: a bidirectional transformer encoder, a text encoder, a
spectrogram (patch) transformer and a bottleneck ResNet on log-mel.

  TransformerEncoder(x [B, L, d], mask [B, L] bool)  -> [B, L, d]
  TextEncoder(ids int [B, L]; ids < 0 = padding)      -> [B, d]  (masked mean pool)
  SpectrogramTransformer(log-mel [B, frames, mels])   -> [B, d]  (mean pool over patches)
  ResNetAudioEncoder(log-mel [B, frames, mels])       -> [B, 4 * 8 * width] (global avg pool)

Pooled outputs are float32 whatever the activation dtype (the contrastive loss wants them
so). The 128-d projections into the shared space belong to the MuLan model, not here.

Logical axis names are nn/axes.py's; position tables and the patch-input axis are None
(small, replicated).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from musiclm_jax.nn import axes, config_io
from musiclm_jax.nn.attention import MultiHeadAttention
from musiclm_jax.nn.initializers import he_normal
from musiclm_jax.nn.layers import NEG_INF, Mlp, dense, masked_mean, norm
from musiclm_jax.nn.stack import StackConfig, stack_layers

Array = jax.Array


# ----------------------------------------------------------------------------------------
# Transformer encoder
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EncoderConfig(StackConfig):
    """Bidirectional pre-norm encoder: the StackConfig fields (nn/stack.py)."""


class EncoderLayer(nn.Module):
    """Pre-norm layer: x + drop(attn(norm(x), bias)), then x + drop(mlp(norm(x))) (LayerNorm,
    GELU feed-forward without biases). Returns (x, None) so that it can be the body of `nn.scan`.
    """

    config: EncoderConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array, bias: Array):
        cfg = self.config
        x = nn.with_logical_constraint(x, axes.EMBED_ACT)
        h = norm("pre_attention_norm", **cfg.dtypes)(x)
        h = MultiHeadAttention.of_stack(cfg)(h, bias, deterministic=self.deterministic)
        h = nn.Dropout(rate=cfg.dropout_rate)(h, deterministic=self.deterministic)
        x = x + h
        h = norm("pre_mlp_norm", **cfg.dtypes)(x)
        h = Mlp(cfg, deterministic=self.deterministic, name="mlp")(h)
        h = nn.Dropout(rate=cfg.dropout_rate)(h, deterministic=self.deterministic)
        x = nn.with_logical_constraint(x + h, axes.EMBED_ACT)
        return x, None


class TransformerEncoder(nn.Module):
    """x [B, L, d_model] float, mask [B, L] bool (True = real token; None = all real)
    -> [B, L, d_model] (after a final LayerNorm).

    Padded positions are masked as keys only: their own outputs are computed but
    meaningless, so callers pool with the same mask (see nn/layers.masked_mean).
    """

    config: EncoderConfig

    @nn.compact
    def __call__(self, x: Array, mask: Optional[Array] = None, *, deterministic: bool = True) -> Array:
        cfg = self.config
        if x.ndim != 3 or x.shape[-1] != cfg.d_model:
            raise ValueError(f"TransformerEncoder expects [batch, length, {cfg.d_model}], got {x.shape}")
        if mask is None:
            bias = jnp.zeros((1, 1, 1, x.shape[1]), jnp.float32)
        else:
            if mask.shape != x.shape[:2]:
                raise ValueError(f"mask shape {mask.shape} does not match x's [batch, length] {x.shape[:2]}")
            # Additive key bias [B, 1, 1, L]; NEG_INF is finite, so an all-padding row gives a
            # uniform softmax rather than NaN.
            bias = jnp.where(mask[:, None, None, :], 0.0, NEG_INF).astype(jnp.float32)
        x = nn.with_logical_constraint(x.astype(cfg.dtype), axes.EMBED_ACT)
        x, _ = stack_layers(EncoderLayer, cfg, deterministic=deterministic)(x, bias)
        x = norm("final_norm", **cfg.dtypes)(x)
        return nn.with_logical_constraint(x, axes.EMBED_ACT)


def _position_table(module: nn.Module, name: str, length: int, cfg: EncoderConfig) -> Array:
    """A learned [length, d_model] table (BERT-style init); the length axis is replicated."""
    return module.param(
        name,
        nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02), (None, axes.EMBED)),
        (length, cfg.d_model),
        cfg.param_dtype,
    ).astype(cfg.dtype)


class TextEncoder(nn.Module):
    """ids int [B, L] (ids < 0 = padding, as the data pipeline pads int features with -1)
    -> float32 [B, d_model]: token + learned absolute position embeddings, the encoder, then
    the mean over real tokens (zeros for a row without any).

    Positions count from the start of the row, so padding is expected to trail. Ids must be
    < vocab_size (not checkable under jit: an out-of-range id embeds as NaN).
    """

    config: EncoderConfig
    vocab_size: int
    max_length: int

    @nn.compact
    def __call__(self, ids: Array, *, deterministic: bool = True) -> Array:
        cfg = self.config
        if self.vocab_size <= 0 or self.max_length <= 0:
            raise ValueError(
                f"TextEncoder: vocab_size and max_length must be positive, got {self.vocab_size}, {self.max_length}"
            )
        if ids.ndim != 2:
            raise ValueError(f"TextEncoder expects ids [batch, length], got shape {ids.shape}")
        length = ids.shape[1]
        if length > self.max_length:
            raise ValueError(
                f"TextEncoder: text length {length} exceeds max_length {self.max_length}; "
                f"truncate the text or raise max_length"
            )
        ids = ids.astype(jnp.int32)
        mask = ids >= 0
        x = nn.Embed(
            num_embeddings=self.vocab_size,
            features=cfg.d_model,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02), (axes.VOCAB, axes.EMBED)),
            name="token_embed",
        )(jnp.maximum(ids, 0))  # padding looks up row 0; the mask hides it (a negative id would wrap)
        x = x + _position_table(self, "position_embed", self.max_length, cfg)[None, :length]
        x = nn.with_logical_constraint(x, axes.EMBED_ACT)
        x = nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=deterministic)
        x = TransformerEncoder(cfg, name="encoder")(x, mask, deterministic=deterministic)
        return nn.with_logical_constraint(masked_mean(x, mask, axis=1), axes.POOLED_ACT)


class SpectrogramTransformer(nn.Module):
    """log-mel [B, frames, mels] -> float32 [B, d_model].

    Non-overlapping patch_frames x patch_mels patches (trailing frames that do not fill a
    patch are dropped; mels must be divisible by patch_mels), a linear patch embedding,
    separate learned time and frequency position embeddings (so any number of time patches
    up to max_patches works), the encoder, and the mean over patches.
    """

    config: EncoderConfig
    patch_frames: int
    patch_mels: int
    max_patches: int

    @nn.compact
    def __call__(self, spec: Array, *, deterministic: bool = True) -> Array:
        cfg = self.config
        if min(self.patch_frames, self.patch_mels, self.max_patches) <= 0:
            raise ValueError(
                f"SpectrogramTransformer: patch_frames, patch_mels, max_patches must be positive, got "
                f"{self.patch_frames}, {self.patch_mels}, {self.max_patches}"
            )
        if spec.ndim != 3:
            raise ValueError(f"SpectrogramTransformer expects log-mel [batch, frames, mels], got shape {spec.shape}")
        batch, frames, mels = spec.shape
        if mels % self.patch_mels:
            raise ValueError(
                f"SpectrogramTransformer: {mels} mel bins are not divisible by patch_mels {self.patch_mels}"
            )
        num_t, num_f = frames // self.patch_frames, mels // self.patch_mels
        if num_t == 0:
            raise ValueError(f"SpectrogramTransformer: {frames} frames are fewer than patch_frames {self.patch_frames}")
        if num_t > self.max_patches:
            raise ValueError(
                f"SpectrogramTransformer: {frames} frames give {num_t} time patches, more than "
                f"max_patches {self.max_patches}; crop the input or raise max_patches"
            )
        pf, pm = self.patch_frames, self.patch_mels
        x = spec[:, : num_t * pf].astype(cfg.dtype)
        x = x.reshape(batch, num_t, pf, num_f, pm).transpose(0, 1, 3, 2, 4).reshape(batch, num_t, num_f, pf * pm)
        x = dense(cfg.d_model, (None, axes.EMBED), "patch_embed", use_bias=True, **cfg.dtypes)(x)  # [B, T, F, d]
        x = (
            x
            + _position_table(self, "time_embed", self.max_patches, cfg)[None, :num_t, None]
            + _position_table(self, "freq_embed", num_f, cfg)[None, None]
        )
        x = nn.with_logical_constraint(x.reshape(batch, num_t * num_f, cfg.d_model), axes.EMBED_ACT)
        x = nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=deterministic)
        x = TransformerEncoder(cfg, name="encoder")(x, None, deterministic=deterministic)
        return nn.with_logical_constraint(masked_mean(x, None, axis=1), axes.POOLED_ACT)


# ----------------------------------------------------------------------------------------
# ResNet
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """Bottleneck ResNet; the defaults are ResNet-50 (about 23.5M params on 1-channel input,
    without a classifier)."""

    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    width: int = 64
    expansion: int = 4
    norm_groups: int = 32  # GroupNorm groups (reduced to a divisor for narrow layers)
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        config_io.normalize_dtypes(self)
        object.__setattr__(self, "stage_sizes", tuple(self.stage_sizes))
        if not self.stage_sizes or any(not isinstance(n, int) or n <= 0 for n in self.stage_sizes):
            raise ValueError(f"ResNetConfig.stage_sizes must be positive ints, got {self.stage_sizes}")
        config_io.check_positive_ints(self, "width", "expansion", "norm_groups")

    @property
    def output_dim(self) -> int:
        return self.width * 2 ** (len(self.stage_sizes) - 1) * self.expansion


def _conv(cfg: ResNetConfig, features: int, kernel: int, stride: int, name: str) -> nn.Conv:
    # No bias: every conv is followed by a norm with its own shift. He init (fan_out), as
    # in torchvision / the flax ImageNet example.
    pad = (kernel - 1) // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        kernel_init=nn.with_logical_partitioning(
            he_normal("fan_out"), (axes.CONV_HEIGHT, axes.CONV_WIDTH, axes.CONV_IN, axes.CONV_OUT)
        ),
        name=name,
    )


def _norm(cfg: ResNetConfig, features: int, name: str, zero_scale: bool = False) -> nn.GroupNorm:
    # GroupNorm, not BatchNorm: the trainer keeps no mutable 'batch_stats' collection, and
    # the contrastive loss runs over the global (sharded) batch, where per-device batch
    # statistics would be both inconsistent and a leak between examples.
    return nn.GroupNorm(
        num_groups=math.gcd(cfg.norm_groups, features),
        epsilon=1e-5,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        scale_init=nn.with_logical_partitioning(
            nn.initializers.zeros if zero_scale else nn.initializers.ones, (axes.CONV_OUT,)
        ),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes.CONV_OUT,)),
        name=name,
    )


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 (stride here, ResNet v1.5) -> 1x1 (x expansion), plus a (projected) shortcut."""

    config: ResNetConfig
    width: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        out_features = self.width * cfg.expansion
        h = nn.relu(_norm(cfg, self.width, "norm1")(_conv(cfg, self.width, 1, 1, "conv1")(x)))
        h = nn.relu(_norm(cfg, self.width, "norm2")(_conv(cfg, self.width, 3, self.stride, "conv2")(h)))
        # Zero-initialised last scale: each block starts as the identity (Goyal et al. 2017).
        h = _norm(cfg, out_features, "norm3", zero_scale=True)(_conv(cfg, out_features, 1, 1, "conv3")(h))
        if self.stride != 1 or x.shape[-1] != out_features:
            x = _norm(cfg, out_features, "proj_norm")(_conv(cfg, out_features, 1, self.stride, "proj_conv")(x))
        return nn.with_logical_constraint(nn.relu(x + h), axes.IMAGE_ACT)


class ResNetAudioEncoder(nn.Module):
    """log-mel [B, frames, mels] (a 1-channel image) -> float32 [B, config.output_dim].

    7x7 stride-2 stem conv + 3x3 stride-2 max pool, bottleneck stages (stride 2 at the first
    block of every stage after the first), global average pool.
    """

    config: ResNetConfig

    @nn.compact
    def __call__(self, spec: Array) -> Array:
        cfg = self.config
        if spec.ndim != 3:
            raise ValueError(f"ResNetAudioEncoder expects log-mel [batch, frames, mels], got shape {spec.shape}")
        x = nn.with_logical_constraint(spec.astype(cfg.dtype)[..., None], axes.IMAGE_ACT)
        x = nn.relu(_norm(cfg, cfg.width, "stem_norm")(_conv(cfg, cfg.width, 7, 2, "stem_conv")(x)))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for i, num_blocks in enumerate(cfg.stage_sizes):
            for j in range(num_blocks):
                stride = 2 if i > 0 and j == 0 else 1
                x = BottleneckBlock(cfg, width=cfg.width * 2**i, stride=stride, name=f"stage{i + 1}_block{j + 1}")(x)
        pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        return nn.with_logical_constraint(pooled, axes.POOLED_ACT)
