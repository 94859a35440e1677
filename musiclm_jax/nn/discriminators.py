"""SoundStream discriminators: a complex-STFT discriminator and multi-scale waveform
discriminators (MelGAN style). Every discriminator returns (logits, features) where
features is the list of hidden activations (after each leaky ReLU) for feature matching.

Discriminators(config)(waveform [B, T]) -> [(logits, features)] for STFT + each wave scale.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, List, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from musiclm_jax.nn import axes, config_io
from musiclm_jax.nn.seanet import Conv
from musiclm_jax.nn.signal import hann_window, stft

Array = jax.Array
DiscOutput = Tuple[Array, List[Array]]


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig:
    """Sizes of the discriminators (defaults: paper scale at 24 kHz)."""

    stft_window: int = 1024
    stft_hop: int = 256
    stft_channels: int = 32
    stft_dilations: Tuple[int, ...] = (1, 2, 4)  # one (3, 9) conv, freq stride 2, per dilation
    wave_channels: int = 16
    wave_max_channels: int = 1024
    wave_downsample: Tuple[int, ...] = (4, 4, 4, 4)
    wave_grouped: bool = True  # grouped strided convs (groups = in_channels // 4), as MelGAN
    wave_num_scales: int = 3
    leaky_slope: float = 0.2
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        config_io.normalize_dtypes(self)
        for name in (
            "stft_window",
            "stft_hop",
            "stft_channels",
            "wave_channels",
            "wave_max_channels",
            "wave_num_scales",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"DiscriminatorConfig.{name} must be positive, got {getattr(self, name)}")


def complex_stft(x: Array, window: int, hop: int) -> Array:
    """Centered (reflect-padded), Hann-windowed STFT normalised by the window's energy:
    [B, T] -> complex [B, frames, window//2+1]."""
    return stft(x, window, hop) / np.sqrt(np.sum(hann_window(window) ** 2))


class STFTDiscriminator(nn.Module):
    """Real/imag STFT as 2 channels -> 2-D conv stack (time x freq). Returns (logits [B, t, f], features)."""

    config: DiscriminatorConfig

    @nn.compact
    def __call__(self, waveform: Array) -> DiscOutput:
        cfg = self.config
        if waveform.shape[-1] <= cfg.stft_window // 2:
            raise ValueError(
                f"STFTDiscriminator: waveform of {waveform.shape[-1]} samples is too short for window {cfg.stft_window}"
            )
        spec = complex_stft(waveform, cfg.stft_window, cfg.stft_hop)
        x = jnp.stack([spec.real, spec.imag], axis=-1).astype(cfg.dtype)  # [B, frames, bins, 2]
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        c = cfg.stft_channels
        features = []
        x = Conv(c, (3, 9), padding=((1, 1), (4, 4)), name="conv_in", **kw)(x)
        x = nn.leaky_relu(x, cfg.leaky_slope)
        features.append(x)
        for i, d in enumerate(cfg.stft_dilations):
            x = Conv(c, (3, 9), strides=(1, 2), dilation=(d, 1), padding=((d, d), (4, 4)), name=f"conv_{i}", **kw)(x)
            x = nn.leaky_relu(x, cfg.leaky_slope)
            features.append(x)
        x = Conv(c, (3, 3), padding=((1, 1), (1, 1)), name="conv_last", **kw)(x)
        x = nn.leaky_relu(x, cfg.leaky_slope)
        features.append(x)
        logits = Conv(1, (3, 3), padding=((1, 1), (1, 1)), name="conv_post", **kw)(x)
        return logits[..., 0].astype(jnp.float32), features


class WaveDiscriminator(nn.Module):
    """MelGAN waveform discriminator: [B, T] -> (logits [B, T'], features)."""

    config: DiscriminatorConfig

    @nn.compact
    def __call__(self, waveform: Array) -> DiscOutput:
        cfg = self.config
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        x = waveform.astype(cfg.dtype)[..., None]
        features = []
        c = cfg.wave_channels
        x = Conv(c, (15,), padding=((7, 7),), name="conv_in", **kw)(x)
        x = nn.leaky_relu(x, cfg.leaky_slope)
        features.append(x)
        for i, f in enumerate(cfg.wave_downsample):
            out = min(c * f, cfg.wave_max_channels)
            groups = math.gcd(math.gcd(max(1, c // 4), c), out) if cfg.wave_grouped else 1
            x = Conv(
                out, (10 * f + 1,), strides=(f,), padding=((5 * f, 5 * f),), groups=groups, name=f"conv_{i}", **kw
            )(x)
            x = nn.leaky_relu(x, cfg.leaky_slope)
            features.append(x)
            c = out
        x = Conv(min(c * 2, cfg.wave_max_channels), (5,), padding=((2, 2),), name="conv_last", **kw)(x)
        x = nn.leaky_relu(x, cfg.leaky_slope)
        features.append(x)
        logits = Conv(1, (3,), padding=((1, 1),), name="conv_post", **kw)(x)
        return logits[..., 0].astype(jnp.float32), features


def _avg_pool(x: Array) -> Array:
    """[B, T] -> [B, ~T/2]: average pool, window 4, stride 2, padding 1 (padding not counted)."""
    y = nn.avg_pool(x[..., None], (4,), strides=(2,), padding=((1, 1),), count_include_pad=False)
    return y[..., 0]


class MultiScaleWaveDiscriminator(nn.Module):
    """WaveDiscriminators on the input and on 2x, 4x, ... average-pooled copies."""

    config: DiscriminatorConfig

    @nn.compact
    def __call__(self, waveform: Array) -> List[DiscOutput]:
        outs = []
        x = waveform
        for i in range(self.config.wave_num_scales):
            if i > 0:
                x = _avg_pool(x)
            outs.append(WaveDiscriminator(self.config, name=f"scale_{i}")(x))
        return outs


class Discriminators(nn.Module):
    """All discriminators: [(logits, features)] = [STFT, wave scale 0, 1, 2]."""

    config: DiscriminatorConfig

    @nn.compact
    def __call__(self, waveform: Array) -> List[DiscOutput]:
        if waveform.ndim != 2:
            raise ValueError(f"Discriminators expect a [batch, samples] waveform, got shape {waveform.shape}")
        waveform = nn.with_logical_constraint(waveform, (axes.ACT_BATCH, axes.ACT_LENGTH))
        outs = [STFTDiscriminator(self.config, name="stft")(waveform)]
        outs.extend(MultiScaleWaveDiscriminator(self.config, name="wave")(waveform))
        return outs
