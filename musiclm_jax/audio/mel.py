"""Log-mel spectrogram in JAX (the shared front end of the codec losses, w2v-BERT and MuLan).

Matches librosa: centered frames (padding n_fft // 2 each side), periodic Hann window,
|rfft|**power, librosa's Slaney mel filter bank (built in numpy at trace time, cached).
Note that librosa >= 0.10 pads with zeros by default (`pad_mode='constant'`); here the
default is 'reflect' (librosa < 0.10, torchaudio); pass pad_mode='constant' to match
current librosa defaults exactly.
"""
from __future__ import annotations

import functools
import warnings
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def frame(x: Array, frame_length: int, hop: int) -> Array:
    """[..., L] -> [..., 1 + (L - frame_length) // hop, frame_length].

    Gather-free (reshape + shifted concat) when hop divides frame_length, else an index gather.
    """
    if x.shape[-1] < frame_length:
        raise ValueError(f"frame: signal of {x.shape[-1]} samples is shorter than the frame length {frame_length}")
    n = 1 + (x.shape[-1] - frame_length) // hop
    if frame_length % hop == 0:
        r = frame_length // hop
        chunks = x[..., : (n - 1 + r) * hop].reshape(*x.shape[:-1], n - 1 + r, hop)
        return jnp.concatenate([chunks[..., i : i + n, :] for i in range(r)], axis=-1)
    idx = np.arange(n)[:, None] * hop + np.arange(frame_length)[None, :]
    return x[..., idx]


def hann_window(n: int) -> np.ndarray:
    """Periodic Hann window (scipy.signal.get_window('hann', n), librosa's default)."""
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float32)


def stft(
    waveform: Array, n_fft: int, hop: int, *, center: bool = True, pad_mode: str = "reflect"
) -> Array:
    """[B, T] -> complex64 [B, frames, n_fft // 2 + 1], frames = 1 + T // hop when centered."""
    x = jnp.asarray(waveform, jnp.float32)
    if center:
        pad = [(0, 0)] * (x.ndim - 1) + [(n_fft // 2, n_fft // 2)]
        x = jnp.pad(x, pad, mode=pad_mode)
    return jnp.fft.rfft(frame(x, n_fft, hop) * hann_window(n_fft), axis=-1)


@functools.lru_cache(maxsize=64)
def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: Optional[float] = None
) -> np.ndarray:
    """librosa.filters.mel (Slaney), transposed: float32 [n_fft // 2 + 1, n_mels]."""
    import librosa  # slow import; only needed at trace time

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty filters at tiny n_fft are expected
        fb = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    return np.ascontiguousarray(fb.T.astype(np.float32))


def mel_spectrogram(
    waveform: Array,
    sample_rate: int,
    n_fft: int,
    hop: int,
    n_mels: int,
    fmin: float = 0.0,
    fmax: Optional[float] = None,
    *,
    power: float = 2.0,
    center: bool = True,
    pad_mode: str = "reflect",
) -> Array:
    """[B, T] -> float32 [B, frames, n_mels] of mel-weighted |STFT|**power (power 1 = magnitude)."""
    z = stft(waveform, n_fft, hop, center=center, pad_mode=pad_mode)
    spec = jnp.square(z.real) + jnp.square(z.imag)
    if power != 2.0:
        # tiny offset: finite gradients at exact silence (|z| has an infinite slope at 0)
        spec = (spec + 1e-12) ** (power / 2.0)
    fb = mel_filterbank(int(sample_rate), int(n_fft), int(n_mels), float(fmin), None if fmax is None else float(fmax))
    return jnp.einsum("...f,fm->...m", spec, fb, precision=jax.lax.Precision.HIGHEST)


def log_mel(
    waveform: Array,
    sample_rate: int,
    n_fft: int,
    hop: int,
    n_mels: int,
    fmin: float = 0.0,
    fmax: Optional[float] = None,
    *,
    power: float = 2.0,
    floor: float = 1e-5,
    center: bool = True,
    pad_mode: str = "reflect",
) -> Array:
    """Natural log of `mel_spectrogram` floored at `floor`: [B, T] -> [B, frames, n_mels]."""
    mel = mel_spectrogram(
        waveform, sample_rate, n_fft, hop, n_mels, fmin, fmax, power=power, center=center, pad_mode=pad_mode
    )
    return jnp.log(jnp.maximum(mel, floor))
