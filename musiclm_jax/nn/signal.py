"""Framing and the STFT in pure JAX (shared by audio/mel.py and the STFT discriminator)."""

from __future__ import annotations

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


def stft(waveform: Array, n_fft: int, hop: int, *, center: bool = True, pad_mode: str = "reflect") -> Array:
    """[B, T] -> complex64 [B, frames, n_fft // 2 + 1], frames = 1 + T // hop when centered."""
    x = jnp.asarray(waveform, jnp.float32)
    if center:
        pad = [(0, 0)] * (x.ndim - 1) + [(n_fft // 2, n_fft // 2)]
        x = jnp.pad(x, pad, mode=pad_mode)
    return jnp.fft.rfft(frame(x, n_fft, hop) * hann_window(n_fft), axis=-1)
