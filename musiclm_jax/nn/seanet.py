"""SEANet convolutional encoder / decoder (the SoundStream codec's waveform <-> latent nets).

SEANetEncoder: [B, T] waveform -> [B, T // hop_length, dim] latents.
SEANetDecoder: [B, T', dim] latents -> [B, T' * hop_length] waveform (exact length).

Encoder: conv k7 (channels) -> per stride s_i: 3 residual units (dilations 1, 3, 9; each
ELU -> conv k7 dilated -> ELU -> conv k1, plus skip) -> ELU -> conv (kernel 2 s_i, stride s_i)
to channels * multipliers[i] -> ELU -> conv k7 to dim. The decoder mirrors it with transposed
convs (kernel 2 s, stride s, trimmed so that lengths are exact).

`causal=True` pads (and trims) on the left only, so an output frame never depends on later
samples; `causal=False` pads symmetrically. No weight norm.

Parameters are explicit `self.param`s with logical axes ("conv_kernel", "conv_in", "conv_out")
(2-D convs: ("conv_height", "conv_width", "conv_in", "conv_out")) and ("conv_out",) for biases.
Those names map to None (replicated) unless a rule says otherwise: the codec is data parallel.
Activations are constrained to nn/axes.CONV1D_ACT ("activation_batch", "activation_length", None).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from musiclm_jax.nn import axes, config_io
from musiclm_jax.nn.grouped_conv import grouped_conv1d
from musiclm_jax.nn.initializers import default_kernel_init

Array = jax.Array


ENCODERS = ("seanet", "stft", "spectrum")
DECODERS = ("seanet", "istft", "griffin_lim")


@dataclasses.dataclass(frozen=True)
class SEANetConfig:
    """SEANet hyperparameters. Paper (24 kHz, 50 Hz latents): channels=32, dim=128,
    strides with product 480. `dtype` = activations, `param_dtype` = weights."""

    channels: int = 32
    dim: int = 128
    # Encoder order (the decoder uses them reversed). prod = 480 -> 50 Hz at 24 kHz.
    strides: Tuple[int, ...] = (3, 4, 5, 8)
    channel_multipliers: Tuple[int, ...] = (2, 4, 8, 16)
    kernel_size: int = 7  # first conv
    last_kernel_size: int = 7  # last conv
    residual_kernel_size: int = 7
    dilations: Tuple[int, ...] = (1, 3, 9)
    causal: bool = True
    final_tanh: bool = False  # decoder output activation
    # 'seanet' (the paper's): strided convs down from / transposed convs up to the waveform.
    # 'stft' encoder / 'istft' decoder (nn/spectral_codec.py): an STFT front end or an
    # inverse-STFT head (Vocos-style) around residual units at the frame rate. No layer runs at
    # the sample rate, so they cost a fraction of SEANet's on a CPU; the encoder sees the
    # spectrum (pitch) from its first step, and the decoder can put a partial at any frequency,
    # where small SEANet codecs trained briefly without a GAN emit a fixed comb at the frame
    # rate's harmonics whatever the notes.
    # 'griffin_lim' decoder: the same head to magnitudes only, trained on spectra; the waveform
    # comes from Griffin-Lim at decode time. 'spectrum' encoder: no parameters, the latent is
    # the log-magnitude frame itself (dim = 2 * hop + 1), so the RVQ quantises spectra; it
    # keeps pitch where learned encoders trained for minutes do not (nn/spectral_codec.py).
    encoder: str = "seanet"
    decoder: str = "seanet"
    frame_channels: int = 256  # width of the frame-rate layers of 'stft' / 'istft'
    frame_repeats: int = 2  # times the dilations are stacked in 'stft' / 'istft'
    # 'spectrum' encoder + 'griffin_lim' decoder: whether the decoder learns a correction to the
    # quantised spectrum. Off, the codec has no gradient-trained parameters (the codebooks are
    # k-means by EMA). Measured on the main job's codec (bench/bench_codec_quality.py): the
    # correction raised the held-out mel distance 0.64 -> 0.86 and kept the pitch the same.
    spectrum_correction: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        config_io.normalize_dtypes(self)
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        object.__setattr__(self, "channel_multipliers", tuple(int(m) for m in self.channel_multipliers))
        object.__setattr__(self, "dilations", tuple(int(d) for d in self.dilations))
        if self.encoder not in ENCODERS:
            raise ValueError(f"SEANetConfig.encoder must be one of {ENCODERS}, got {self.encoder!r}")
        if self.encoder == "spectrum":
            bins = 2 * self.hop_length + 1  # spectral_codec.spectrum_bins (OVERLAP 4)
            if self.dim != bins:
                raise ValueError(
                    f"SEANetConfig.encoder='spectrum' makes the latent the {bins}-bin spectrum of hop "
                    f"{self.hop_length}: set SEANetConfig.dim = {bins} (got {self.dim})"
                )
            if self.decoder != "griffin_lim":
                raise ValueError(
                    "SEANetConfig.encoder='spectrum' needs decoder='griffin_lim' (its latents are spectra)"
                )
        if self.decoder not in DECODERS:
            raise ValueError(f"SEANetConfig.decoder must be one of {DECODERS}, got {self.decoder!r}")
        if len(self.strides) != len(self.channel_multipliers):
            raise ValueError(
                f"SEANetConfig.strides {self.strides} and channel_multipliers {self.channel_multipliers} "
                "must have the same length"
            )
        for name in ("channels", "dim", "kernel_size", "last_kernel_size", "residual_kernel_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SEANetConfig.{name} must be positive, got {getattr(self, name)}")
        if any(s <= 0 for s in self.strides) or any(m <= 0 for m in self.channel_multipliers):
            raise ValueError(
                f"SEANetConfig strides/multipliers must be positive: {self.strides}, {self.channel_multipliers}"
            )

    @property
    def hop_length(self) -> int:
        """Waveform samples per latent frame (the total stride)."""
        return int(math.prod(self.strides))


def _same_padding(total: int, causal: bool) -> Tuple[int, int]:
    """(left, right) padding of `total` samples: all left when causal, else split."""
    if causal:
        return (total, 0)
    right = total // 2
    return (total - right, right)


class Conv(nn.Module):
    """N-d convolution (N = len(kernel_size)) with explicit, logically partitioned params.

    x: [B, *spatial, C_in] -> [B, *spatial', features]. `padding` is explicit (lo, hi) pairs.
    """

    features: int
    kernel_size: Sequence[int]
    strides: Optional[Sequence[int]] = None
    dilation: Optional[Sequence[int]] = None
    padding: Optional[Sequence[Tuple[int, int]]] = None  # None = no padding
    groups: int = 1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        nd = len(self.kernel_size)
        cin = x.shape[-1]
        if cin % self.groups or self.features % self.groups:
            raise ValueError(f"Conv {self.name}: channels {cin}->{self.features} not divisible by groups {self.groups}")
        names = (axes.CONV_KERNEL,) if nd == 1 else (axes.CONV_HEIGHT, axes.CONV_WIDTH)
        if nd not in (1, 2):
            raise ValueError(f"Conv supports 1-D and 2-D kernels, got {self.kernel_size}")
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(default_kernel_init(), names + (axes.CONV_IN, axes.CONV_OUT)),
            (*self.kernel_size, cin // self.groups, self.features),
            self.param_dtype,
        )
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros, (axes.CONV_OUT,)),
            (self.features,),
            self.param_dtype,
        )
        if nd == 1 and self.groups > 1 and not any(d > 1 for d in (self.dilation or ())):
            pad = tuple(self.padding[0]) if self.padding else (0, 0)
            y = grouped_conv1d(
                x.astype(self.dtype), kernel.astype(self.dtype), int((self.strides or (1,))[0]), pad, self.groups
            )
            return y + bias.astype(self.dtype)
        spec = ("NWC", "WIO", "NWC") if nd == 1 else ("NHWC", "HWIO", "NHWC")
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            window_strides=tuple(self.strides or (1,) * nd),
            padding=tuple(tuple(p) for p in (self.padding or [(0, 0)] * nd)),
            rhs_dilation=tuple(self.dilation or (1,) * nd),
            dimension_numbers=spec,
            feature_group_count=self.groups,
        )
        return y + bias.astype(self.dtype)


class ConvTranspose1d(nn.Module):
    """Transposed 1-D conv, kernel 2*stride: [B, T, C] -> [B, T * stride, features].

    The full output ((T - 1) * stride + kernel samples) is trimmed by kernel - stride:
    on the right when causal (so sample j depends on frames <= j // stride), else split.
    """

    features: int
    stride: int
    causal: bool
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k = 2 * self.stride
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(default_kernel_init(), (axes.CONV_KERNEL, axes.CONV_IN, axes.CONV_OUT)),
            (k, x.shape[-1], self.features),
            self.param_dtype,
        )
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros, (axes.CONV_OUT,)),
            (self.features,),
            self.param_dtype,
        )
        t, s = x.shape[1], self.stride
        # Polyphase form of jax.lax.conv_transpose(x, kernel, strides=(s,), padding="VALID"): output
        # sample n*s + p is x[n] @ kernel[2s-1-p] + x[n-1] @ kernel[s-1-p], so one stride-1 conv with
        # 2 taps and s*features outputs, reshaped, gives the same numbers without multiplying the
        # zeros that a dilated input would insert (about 4-7x faster on CPU at 32-64 channels).
        taps = kernel.astype(self.dtype)[::-1].reshape(2, s, x.shape[-1], self.features)
        taps = jnp.stack([taps[1], taps[0]]).transpose(0, 2, 1, 3).reshape(2, x.shape[-1], s * self.features)
        y = jax.lax.conv_general_dilated(
            jnp.pad(x.astype(self.dtype), ((0, 0), (1, 1), (0, 0))),
            taps,
            (1,),
            "VALID",
            dimension_numbers=("NWC", "WIO", "NWC"),
        )
        y = y.reshape(y.shape[0], (t + 1) * s, self.features)
        trim = k - self.stride
        left = 0 if self.causal else trim - trim // 2  # causal: trim everything on the right
        y = jax.lax.dynamic_slice_in_dim(y, left, t * self.stride, axis=1)
        return y + bias.astype(self.dtype)


def _conv1d(cfg: SEANetConfig, features: int, kernel: int, name: str, stride: int = 1, dilation: int = 1) -> Conv:
    total = (kernel - 1) * dilation + 1 - stride  # makes output length = ceil(T / stride) for T % stride == 0
    return Conv(
        features,
        (kernel,),
        strides=(stride,),
        dilation=(dilation,),
        padding=(_same_padding(total, cfg.causal),),
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        name=name,
    )


class ResidualUnit(nn.Module):
    """x + conv_k1(elu(conv_k7_dilated(elu(x))))."""

    config: SEANetConfig
    dilation: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        c = x.shape[-1]
        h = _conv1d(cfg, c, cfg.residual_kernel_size, "conv_dilated", dilation=self.dilation)(nn.elu(x))
        h = _conv1d(cfg, c, 1, "conv_pointwise")(nn.elu(h))
        return nn.with_logical_constraint(x + h, axes.CONV1D_ACT)


class SEANetEncoder(nn.Module):
    """[B, T] waveform (T a multiple of config.hop_length) -> [B, T // hop_length, dim] float32."""

    config: SEANetConfig

    @nn.compact
    def __call__(self, waveform: Array) -> Array:
        cfg = self.config
        if waveform.ndim != 2:
            raise ValueError(f"SEANetEncoder expects a [batch, samples] waveform, got shape {waveform.shape}")
        if waveform.shape[1] % cfg.hop_length:
            raise ValueError(
                f"SEANetEncoder: waveform length {waveform.shape[1]} is not a multiple of the total stride "
                f"{cfg.hop_length} (strides {cfg.strides}); pad it first"
            )
        x = waveform.astype(cfg.dtype)[..., None]
        x = _conv1d(cfg, cfg.channels, cfg.kernel_size, "conv_in")(x)
        x = nn.with_logical_constraint(x, axes.CONV1D_ACT)
        for i, (stride, mult) in enumerate(zip(cfg.strides, cfg.channel_multipliers)):
            for j, d in enumerate(cfg.dilations):
                x = ResidualUnit(cfg, d, name=f"block_{i}_res_{j}")(x)
            x = _conv1d(cfg, cfg.channels * mult, 2 * stride, f"block_{i}_down", stride=stride)(nn.elu(x))
            x = nn.with_logical_constraint(x, axes.CONV1D_ACT)
        x = _conv1d(cfg, cfg.dim, cfg.last_kernel_size, "conv_out")(nn.elu(x))
        return nn.with_logical_constraint(x.astype(jnp.float32), axes.CONV1D_ACT)


class SEANetDecoder(nn.Module):
    """[B, T', dim] latents -> [B, T' * hop_length] float32 waveform."""

    config: SEANetConfig

    @nn.compact
    def __call__(self, latents: Array) -> Array:
        cfg = self.config
        if latents.ndim != 3 or latents.shape[-1] != cfg.dim:
            raise ValueError(f"SEANetDecoder expects [batch, frames, {cfg.dim}] latents, got shape {latents.shape}")
        x = latents.astype(cfg.dtype)
        x = _conv1d(cfg, cfg.channels * cfg.channel_multipliers[-1], cfg.kernel_size, "conv_in")(x)
        x = nn.with_logical_constraint(x, axes.CONV1D_ACT)
        n = len(cfg.strides)
        for i in reversed(range(n)):
            out_ch = cfg.channels * (cfg.channel_multipliers[i - 1] if i > 0 else 1)
            x = ConvTranspose1d(
                out_ch, cfg.strides[i], cfg.causal, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=f"block_{i}_up"
            )(nn.elu(x))
            x = nn.with_logical_constraint(x, axes.CONV1D_ACT)
            for j, d in enumerate(cfg.dilations):
                x = ResidualUnit(cfg, d, name=f"block_{i}_res_{j}")(x)
        x = _conv1d(cfg, 1, cfg.last_kernel_size, "conv_out")(nn.elu(x))
        if cfg.final_tanh:
            x = jnp.tanh(x)
        return x[..., 0].astype(jnp.float32)
