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

from musiclm_jax.nn.signal import stft

Array = jax.Array


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
