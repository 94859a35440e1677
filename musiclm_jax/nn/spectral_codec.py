"""Codec networks that work at the latent frame rate around an STFT (SEANetConfig.encoder='stft',
decoder='istft'): the cheap, quick-to-train alternative to SEANet's sample-rate convolutions.

    STFTEncoder   [B, T] waveform -> log-magnitude STFT (n_fft = 4 hop, hop) -> conv k7 ->
                  residual units (dilations x frame_repeats) -> ELU -> conv k7 -> [B, T / hop, dim]
    ISTFTDecoder  [B, T', dim] -> conv k7 -> residual units -> ELU -> conv k1 to log-magnitude and
                  phase per bin -> irfft (Hann) -> overlap-add at hop -> [B, T' * hop]  (Vocos-style)
    MagnitudeDecoder  the same stack to log-magnitudes only, [B, T', n_fft / 2 + 1]; the codec
                  trains it on spectra and makes a waveform with `griffin_lim` (fast Griffin-Lim)
    SpectrumEncoder  no parameters: the latent is the frame's log-magnitude spectrum itself
                  (clipped DYNAMIC_RANGE below the frame's peak), dim = n_fft / 2 + 1; the
                  residual VQ then quantises spectra, and MagnitudeDecoder passes the quantised
                  spectrum on, plus a learned correction (starting at zero) when
                  SEANetConfig.spectrum_correction is on

Why: every layer runs at the frame rate (100 Hz, not 24 kHz), a small fraction of SEANet's cost
on a CPU; the encoder sees harmonics from its first step instead of learning a filterbank, and
the decoder's output is a spectrum, so a partial can sit at any frequency. (Small SEANet codecs
trained for minutes without a GAN emit one fixed comb at the frame rate's harmonics, whatever the
notes.) Frames are centred on the latent frames (frame t on sample t * hop); the inverse is
normalised by the windows' overlap, so it is exact on an STFT. Neither is causal (each looks two
hops ahead), so `SEANetConfig.causal` does not apply to them.

Why a magnitude decoder: a convolutional decoder trained for minutes cannot learn phase. A
partial's phase must advance by 2 pi f hop / sr per frame, a function of absolute time that a
translation-equivariant stack does not have, and the waveform losses then push its magnitudes to
a blur that keeps no pitch (measured: pyin agreement 5% after 300 steps, the same 5% after
Griffin-Lim on its magnitudes). Trained on magnitudes alone, the decoder only has to put the
partials in the right bins; phase comes from Griffin-Lim at decode time, which on true
magnitudes keeps 95% of the pitch (pyin, 16 synthetic clips, 32 iterations). The price: no GAN (the discriminators
need a differentiable waveform) and SI-SDR means nothing (the phase is not the original's).

Why a parameter-free encoder: the learned encoders above, trained for minutes, did not keep pitch
even without a quantizer (a continuous 32-dim bottleneck: 5-7% pyin agreement on held-out clips
after 3000 steps); residual k-means on the log-magnitude frames themselves keeps 62-72% at 4
levels x 64-1024 codes (bench/bench_codec_quality.py has the numbers of the trained codec).
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
DYNAMIC_RANGE = 7.0  # SpectrumEncoder: nats (~61 dB) kept below each frame's peak; deeper is noise to k-means


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


def frame_spectrum(waveform: Array, hop: int, pad_mode: str = "reflect") -> Array:
    """[B, T] -> complex [B, T // hop, OVERLAP * hop / 2 + 1]: frame t centred on sample t * hop,
    the frames `istft` inverts and the codec's latents sit on."""
    return stft(waveform, OVERLAP * hop, hop, pad_mode=pad_mode)[:, : waveform.shape[1] // hop]


def griffin_lim(magnitude: Array, hop: int, iters: int = 32, momentum: float = 0.99, seed: int = 0) -> Array:
    """Fast Griffin-Lim (Perraudin et al. 2013, librosa's default): [B, T, bins] magnitudes ->
    [B, T * hop] waveform whose STFT magnitude approaches them. Starts from random phase with a
    fixed seed, so decoding is deterministic."""
    magnitude = jnp.asarray(magnitude, jnp.float32)
    phase = jax.random.uniform(jax.random.PRNGKey(seed), magnitude.shape, jnp.float32, 0.0, 2 * np.pi)
    angles = jnp.exp(1j * phase).astype(jnp.complex64)

    def body(_, carry):
        angles, previous = carry
        # zero padding at the ends: jax.export cannot reflect-pad a symbolic number of frames
        rebuilt = frame_spectrum(istft(magnitude * angles, hop), hop, pad_mode="constant")
        accelerated = rebuilt - (momentum / (1.0 + momentum)) * previous
        return accelerated / jnp.maximum(jnp.abs(accelerated), 1e-8), rebuilt

    angles, _ = jax.lax.fori_loop(0, iters, body, (angles, jnp.zeros_like(angles)))
    return istft(magnitude * angles, hop)


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
        x = jnp.log(jnp.maximum(jnp.abs(frame_spectrum(waveform, hop)), LOG_FLOOR)).astype(cfg.dtype)
        x = _frame_stack(cfg, x)
        x = _conv1d(cfg, cfg.dim, cfg.last_kernel_size, "conv_out")(nn.elu(x))
        return nn.with_logical_constraint(x.astype(jnp.float32), axes.CONV1D_ACT)


def spectrum_bins(hop: int) -> int:
    """Bins of the frames at this hop: the latent dim of SpectrumEncoder."""
    return OVERLAP * hop // 2 + 1


def _spectral_head(cfg: SEANetConfig, latents: Array, outputs_per_bin: int) -> Array:
    """[B, T', dim] -> [B, T', outputs_per_bin * bins] float32 (the decoders' shared stack)."""
    if latents.ndim != 3 or latents.shape[-1] != cfg.dim:
        raise ValueError(f"the spectral decoders expect [batch, frames, {cfg.dim}] latents, got shape {latents.shape}")
    x = _frame_stack(cfg, latents.astype(cfg.dtype))
    return _conv1d(cfg, outputs_per_bin * spectrum_bins(cfg.hop_length), 1, "conv_out")(nn.elu(x)).astype(jnp.float32)


class ISTFTDecoder(nn.Module):
    """[B, T', dim] latents -> [B, T' * hop_length] float32 waveform."""

    config: SEANetConfig

    @nn.compact
    def __call__(self, latents: Array) -> Array:
        cfg = dataclasses.replace(self.config, causal=False)
        log_magnitude, phase = jnp.split(_spectral_head(cfg, latents, 2), 2, axis=-1)
        magnitude = jnp.exp(jnp.minimum(log_magnitude, MAX_LOG_MAGNITUDE))
        return istft(magnitude * jnp.exp(1j * phase), cfg.hop_length)


class SpectrumEncoder(nn.Module):
    """[B, T] waveform -> [B, T // hop_length, bins] log-magnitudes, each frame clipped at
    DYNAMIC_RANGE below its peak. No parameters."""

    config: SEANetConfig

    @nn.compact
    def __call__(self, waveform: Array) -> Array:
        hop = self.config.hop_length
        if waveform.ndim != 2 or waveform.shape[1] % hop:
            raise ValueError(
                f"SpectrumEncoder expects a [batch, samples] waveform with samples a multiple of {hop}, "
                f"got shape {waveform.shape}"
            )
        log_magnitude = jnp.log(jnp.maximum(jnp.abs(frame_spectrum(waveform, hop)), LOG_FLOOR))
        peak = jnp.max(log_magnitude, axis=-1, keepdims=True)
        return nn.with_logical_constraint(jnp.maximum(log_magnitude, peak - DYNAMIC_RANGE), axes.CONV1D_ACT)


class MagnitudeDecoder(nn.Module):
    """[B, T', dim] latents -> [B, T', OVERLAP * hop_length / 2 + 1] log-magnitudes (clipped
    above at MAX_LOG_MAGNITUDE); `griffin_lim(jnp.exp(...))` makes the waveform. Behind a
    SpectrumEncoder the latents are spectra: the output is the latent plus the stack's
    correction, scaled by a gate that starts at zero (so training starts from the quantised
    spectrum, not from noise)."""

    config: SEANetConfig

    @nn.compact
    def __call__(self, latents: Array) -> Array:
        cfg = dataclasses.replace(self.config, causal=False)
        if cfg.encoder != "spectrum":
            return jnp.minimum(_spectral_head(cfg, latents, 1), MAX_LOG_MAGNITUDE)
        out = latents.astype(jnp.float32)
        if cfg.spectrum_correction:
            gate = self.param("residual_gate", nn.with_logical_partitioning(nn.initializers.zeros_init(), ()), ())
            out = out + gate * _spectral_head(cfg, latents, 1)
        return jnp.minimum(out, MAX_LOG_MAGNITUDE)
