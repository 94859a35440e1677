"""Codec networks that work at the latent frame rate around an STFT (SEANetConfig.encoder='stft',
decoder='istft'): the cheap, quick-to-train alternative to SEANet's sample-rate convolutions.

    STFTEncoder   [B, T] waveform -> log-magnitude STFT (n_fft = 4 hop, hop) -> conv k7 ->
                  residual units (dilations x frame_repeats) -> ELU -> conv k7 -> [B, T / hop, dim]
    ISTFTDecoder  [B, T', dim] -> conv k7 -> residual units -> ELU -> conv k1 to log-magnitude and
                  phase per bin -> irfft (Hann) -> overlap-add at hop -> [B, T' * hop]  (Vocos-style)

Why: every layer runs at the frame rate (100 Hz, not 24 kHz), a small fraction of SEANet's cost
on a CPU; the encoder sees harmonics from its first step instead of learning a filterbank, and
the decoder's output is a spectrum, so a partial can sit at any frequency. (Small SEANet codecs
trained for minutes without a GAN emit one fixed comb at the frame rate's harmonics, whatever the
notes.) Frames are centred on the latent frames (frame t on sample t * hop); the inverse is
normalised by the windows' overlap, so it is exact on an STFT. Neither is causal (each looks two
hops ahead), so `SEANetConfig.causal` does not apply to them.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from musiclm_jax.nn import axes
from musiclm_jax.nn.seanet import ResidualUnit, SEANetConfig, _conv1d
from musiclm_jax.nn.signal import hann_window, stft

Array = jax.Array
OVERLAP = 4  # n_fft = OVERLAP * hop
MAX_LOG_MAGNITUDE = float(np.log(100.0))  # as Vocos clips exp(log-magnitude) at 1e2
LOG_FLOOR = 1e-4  # under the encoder's log-magnitudes (~-80 dB of a full-scale partial)


def overlap_add(frames: Array, hop: int) -> Array:
    """[B, T, OVERLAP * hop] frames spaced `hop` apart -> [B, (T + OVERLAP - 1) * hop] sum."""
    b, t, _ = frames.shape
    chunks = frames.reshape(b, t, OVERLAP, hop)
    out = sum(jnp.pad(chunks[:, :, k], ((0, 0), (k, OVERLAP - 1 - k), (0, 0))) for k in range(OVERLAP))
    return out.reshape(b, (t + OVERLAP - 1) * hop)


def istft(spectrum: Array, hop: int) -> Array:
    """[B, T, n_fft / 2 + 1] complex -> [B, T * hop] float32, frame t centred on sample t * hop."""
    n_fft = OVERLAP * hop
    window = jnp.asarray(hann_window(n_fft))
    frames = jnp.fft.irfft(spectrum, n=n_fft, axis=-1) * window
    t = spectrum.shape[1]
    y = overlap_add(frames, hop)
    envelope = overlap_add(jnp.broadcast_to(window**2, (1, t, n_fft)), hop)
    centre = n_fft // 2
    return (y / jnp.maximum(envelope, 1e-3))[:, centre : centre + t * hop]


def _frame_stack(cfg: SEANetConfig, x: Array) -> Array:
    """conv k7 to frame_channels, then the residual units (non-causal, at the frame rate)."""
    x = _conv1d(cfg, cfg.frame_channels, cfg.kernel_size, "conv_in")(x)
    x = nn.with_logical_constraint(x, axes.CONV1D_ACT)
    for r in range(cfg.frame_repeats):
        for j, d in enumerate(cfg.dilations):
            x = ResidualUnit(cfg, d, name=f"res_{r}_{j}")(x)
    return x


class STFTEncoder(nn.Module):
    """[B, T] waveform (T a multiple of hop_length) -> [B, T // hop_length, dim] float32."""

    config: SEANetConfig

    @nn.compact
    def __call__(self, waveform: Array) -> Array:
        cfg = dataclasses.replace(self.config, causal=False)
        hop = cfg.hop_length
        if waveform.ndim != 2 or waveform.shape[1] % hop:
            raise ValueError(
                f"STFTEncoder expects a [batch, samples] waveform with samples a multiple of {hop}, "
                f"got shape {waveform.shape}"
            )
        frames = waveform.shape[1] // hop
        spectrum = stft(waveform, OVERLAP * hop, hop)[:, :frames]  # frame t centred on sample t * hop
        x = jnp.log(jnp.maximum(jnp.abs(spectrum), LOG_FLOOR)).astype(cfg.dtype)
        x = _frame_stack(cfg, x)
        x = _conv1d(cfg, cfg.dim, cfg.last_kernel_size, "conv_out")(nn.elu(x))
        return nn.with_logical_constraint(x.astype(jnp.float32), axes.CONV1D_ACT)


class ISTFTDecoder(nn.Module):
    """[B, T', dim] latents -> [B, T' * hop_length] float32 waveform."""

    config: SEANetConfig

    @nn.compact
    def __call__(self, latents: Array) -> Array:
        cfg = dataclasses.replace(self.config, causal=False)
        if latents.ndim != 3 or latents.shape[-1] != cfg.dim:
            raise ValueError(f"ISTFTDecoder expects [batch, frames, {cfg.dim}] latents, got shape {latents.shape}")
        hop = cfg.hop_length
        bins = OVERLAP * hop // 2 + 1
        x = _frame_stack(cfg, latents.astype(cfg.dtype))
        head = _conv1d(cfg, 2 * bins, 1, "conv_out")(nn.elu(x)).astype(jnp.float32)
        log_magnitude, phase = head[..., :bins], head[..., bins:]
        magnitude = jnp.exp(jnp.minimum(log_magnitude, MAX_LOG_MAGNITUDE))
        return istft(magnitude * jnp.exp(1j * phase), hop)
