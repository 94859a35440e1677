"""A codec decoder that works at the frame rate and ends in an inverse STFT (Vocos-style).

[B, T', dim] latents -> [B, T' * hop] float32 waveform, hop = SEANetConfig.hop_length.

    conv k7 (dim -> C) -> residual units (dilations 1, 3, 9, stacked `istft_repeats` times, at C
    channels) -> ELU -> conv k1 to 2 * (n_fft / 2 + 1): log-magnitude and phase per bin ->
    complex spectrum -> irfft (n_fft = 4 * hop, Hann) -> overlap-add at `hop`

Why beside the SEANet decoder: every layer runs at the latent frame rate (100 Hz, not 24 kHz), so
it costs a small fraction of the mirrored transposed-conv decoder on a CPU; and its output is a
spectrum, so a partial can sit at any frequency. Small SEANet decoders trained briefly without a
GAN emit a fixed comb at the frame rate's harmonics whatever the notes; this head does not.
Frames are centred on the latent frames (frame t on sample t * hop); the output is normalised by
the windows' overlap so that edges are not attenuated. Not causal (the head looks 2 hops ahead).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from musiclm_jax.nn import axes
from musiclm_jax.nn.seanet import ResidualUnit, SEANetConfig, _conv1d
from musiclm_jax.nn.signal import hann_window

Array = jax.Array
OVERLAP = 4  # n_fft = OVERLAP * hop
MAX_LOG_MAGNITUDE = float(np.log(100.0))  # as Vocos clips exp(log-magnitude) at 1e2


def overlap_add(frames: Array, hop: int) -> Array:
    """[B, T, OVERLAP * hop] frames spaced `hop` apart -> [B, (T + OVERLAP - 1) * hop] sum."""
    b, t, n = frames.shape
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


class ISTFTDecoder(nn.Module):
    """[B, T', dim] latents -> [B, T' * hop_length] float32 waveform."""

    config: SEANetConfig

    @nn.compact
    def __call__(self, latents: Array) -> Array:
        cfg = self.config
        if latents.ndim != 3 or latents.shape[-1] != cfg.dim:
            raise ValueError(f"ISTFTDecoder expects [batch, frames, {cfg.dim}] latents, got shape {latents.shape}")
        hop = cfg.hop_length
        bins = OVERLAP * hop // 2 + 1
        # Non-causal convs: the head is not causal anyway, and centred kernels see both sides.
        frame_cfg = dataclasses.replace(cfg, causal=False)
        x = _conv1d(frame_cfg, cfg.istft_channels, cfg.kernel_size, "conv_in")(latents.astype(cfg.dtype))
        x = nn.with_logical_constraint(x, axes.CONV1D_ACT)
        for r in range(cfg.istft_repeats):
            for j, d in enumerate(cfg.dilations):
                x = ResidualUnit(frame_cfg, d, name=f"res_{r}_{j}")(x)
        head = _conv1d(frame_cfg, 2 * bins, 1, "conv_out")(nn.elu(x)).astype(jnp.float32)
        log_magnitude, phase = head[..., :bins], head[..., bins:]
        magnitude = jnp.exp(jnp.minimum(log_magnitude, MAX_LOG_MAGNITUDE))
        return istft(magnitude * jnp.exp(1j * phase), hop)
