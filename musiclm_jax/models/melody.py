"""The melody embedding model: MusicLM's second condition (Agostinelli et al. 2023, section 3.4).

Two renditions of one tune (an instrument, a band with drums, a hum, a whistle; transposed by
octaves, a little faster or slower) should embed close together and other tunes far apart, so
the embedding keeps the melody and drops the timbre. One tower, shared by both sides of a pair:

  audio -> pitch spectrogram: |STFT|^2 pooled into one band per semitone (MIDI min_midi ..
           max_midi), log; or its chroma (the bands folded onto 12 pitch classes: octave
           shifts vanish before the model sees them)
        -> spectrogram transformer over patches (nn/encoders.py, MuLan's audio tower) -> 128-d

Loss: the symmetric InfoNCE of MuLan (models/mulan.contrastive_loss) between the two sides
over the global batch. The eval reports pair retrieval recall@k over the whole eval pool.

Melody tokens (tokenizers/melody.py) are the RVQ codes of the embeddings of windows of
`window_seconds` starting every `hop_seconds`: a time-aligned stream at 1 / hop_seconds
windows per second, so the semantic stage can follow the tune window by window.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from musiclm_jax.models.base import BaseModel, Batch, Metrics, Variables
from musiclm_jax.models.mulan import contrastive_loss, recall_at_k
from musiclm_jax.nn import axes, config_io
from musiclm_jax.nn.encoders import EncoderConfig, SpectrogramTransformer
from musiclm_jax.nn.layers import dense, l2_normalize
from musiclm_jax.nn.signal import stft

FRONT_ENDS = ("pitch", "chroma")


@dataclasses.dataclass(frozen=True)
class MelodyConfig:
    """Defaults = the paper-size melody model: 16 kHz, 128 ms STFT at 20 ms hop, semitone bands
    MIDI 36-95 (C2-B6), a 12-layer spectrogram transformer over one-octave patches, 128-d,
    10 s windows every second, RVQ 6 x 1024."""

    sample_rate: int = 16000
    n_fft: int = 2048
    hop_length: int = 320
    min_midi: int = 36
    max_midi: int = 96  # exclusive: max_midi - min_midi bands
    front_end: str = "pitch"
    # Fixed affine normalisation of the log band power (not per example: loudness does not
    # matter for a tune, but a per-example one would turn silence into noise).
    log_offset: float = 5.0
    log_scale: float = 0.25
    encoder: EncoderConfig = EncoderConfig(num_layers=12, num_heads=12, head_dim=64, d_model=768, d_ff=3072)
    patch_frames: int = 10
    patch_bins: int = 12
    max_patches: int = 128
    embed_dim: int = 128
    loss: str = "softmax"
    init_temperature: float = 0.07
    window_seconds: float = 10.0
    hop_seconds: float = 1.0
    rvq_levels: int = 6
    rvq_codebook_size: int = 1024
    rvq_kmeans_iters: int = 20

    def __post_init__(self):
        if self.front_end not in FRONT_ENDS:
            raise ValueError(f"MelodyConfig.front_end must be one of {FRONT_ENDS}, got {self.front_end!r}")
        if not 0 <= self.min_midi < self.max_midi <= 128:
            raise ValueError(
                f"MelodyConfig needs 0 <= min_midi < max_midi <= 128, got {self.min_midi}, {self.max_midi}"
            )
        if self.front_end == "chroma" and self.max_midi - self.min_midi < 12:
            raise ValueError("MelodyConfig: chroma needs at least one octave of bands (max_midi - min_midi >= 12)")
        if self.num_bins % self.patch_bins:
            raise ValueError(
                f"MelodyConfig: {self.num_bins} {self.front_end} bins are not divisible by patch_bins {self.patch_bins}"
            )
        if self.window_seconds <= 0 or self.hop_seconds <= 0:
            raise ValueError("MelodyConfig.window_seconds and hop_seconds must be positive")
        if abs(1.0 / self.hop_seconds - round(1.0 / self.hop_seconds)) > 1e-9:
            raise ValueError(
                f"MelodyConfig.hop_seconds={self.hop_seconds} must divide one second (whole-second crops "
                "must hold whole windows)"
            )
        if self.loss not in ("softmax", "sigmoid"):
            raise ValueError(f"MelodyConfig.loss must be 'softmax' or 'sigmoid', got {self.loss!r}")

    @property
    def num_bins(self) -> int:
        return 12 if self.front_end == "chroma" else self.max_midi - self.min_midi

    @property
    def window_samples(self) -> int:
        return int(round(self.window_seconds * self.sample_rate))

    @property
    def hop_samples(self) -> int:
        return int(round(self.hop_seconds * self.sample_rate))

    @property
    def windows_per_second(self) -> int:
        return int(round(1.0 / self.hop_seconds))

    def to_dict(self) -> dict:
        return config_io.to_plain(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MelodyConfig":
        d = dict(d)
        d["encoder"] = EncoderConfig(**d["encoder"])
        return cls(**d)


@functools.lru_cache(maxsize=16)
def semitone_filterbank(sample_rate: int, n_fft: int, min_midi: int, max_midi: int) -> np.ndarray:
    """float32 [n_fft // 2 + 1, bands]: band m pools the STFT bins within one semitone of MIDI
    pitch min_midi + m (a triangle in bins, at least one bin wide where a semitone is narrower
    than a bin, so low notes are not lost between bins), each band summing to one."""
    bins = np.arange(n_fft // 2 + 1, dtype=np.float64)
    centres = 440.0 * 2.0 ** ((np.arange(min_midi, max_midi) - 69.0) / 12.0) * n_fft / sample_rate
    widths = np.maximum(1.0, centres * (2.0 ** (1 / 12) - 1.0))
    fb = np.maximum(0.0, 1.0 - np.abs(bins[:, None] - centres[None]) / widths[None])
    fb[:, centres >= bins[-1]] = 0.0  # above Nyquist: an empty band, not a wrapped one
    return (fb / np.maximum(fb.sum(0, keepdims=True), 1e-12)).astype(np.float32)


def pitch_spectrogram(audio: jax.Array, config: MelodyConfig) -> jax.Array:
    """[B, samples] -> float32 [B, frames, num_bins]: normalised log power per semitone band, or
    per pitch class (chroma)."""
    c = config
    z = stft(audio.astype(jnp.float32), c.n_fft, c.hop_length, center=True, pad_mode="constant")
    power = jnp.square(z.real) + jnp.square(z.imag)
    fb = semitone_filterbank(c.sample_rate, c.n_fft, c.min_midi, c.max_midi)
    bands = jnp.einsum("...f,fm->...m", power, fb, precision=jax.lax.Precision.HIGHEST)
    if c.front_end == "chroma":
        classes = (np.arange(c.min_midi, c.max_midi) % 12)[:, None] == np.arange(12)[None]
        bands = jnp.einsum("...m,mc->...c", bands, jnp.asarray(classes, jnp.float32))
    return (jnp.log(jnp.maximum(bands, 1e-6)) + c.log_offset) * c.log_scale


class MelodyTower(nn.Module):
    config: MelodyConfig

    def setup(self):
        c = self.config
        self.encoder = SpectrogramTransformer(c.encoder, c.patch_frames, c.patch_bins, c.max_patches)
        self.proj = dense(c.embed_dim, (axes.EMBED, None), "proj")
        scale_init = math.log(1.0 / c.init_temperature) if c.loss == "softmax" else math.log(10.0)
        self.logit_scale = self.param(
            "logit_scale", nn.with_logical_partitioning(nn.initializers.constant(scale_init), ()), ()
        )
        if c.loss == "sigmoid":
            self.logit_bias = self.param(
                "logit_bias", nn.with_logical_partitioning(nn.initializers.constant(-10.0), ()), ()
            )

    def embed(self, audio: jax.Array, deterministic: bool = True) -> jax.Array:
        """[B, samples] -> unit-norm float32 [B, embed_dim]."""
        h = self.encoder(pitch_spectrogram(audio, self.config), deterministic=deterministic)
        return l2_normalize(self.proj(h))

    def __call__(self, audio, paired_audio, deterministic: bool = True):
        bias = self.logit_bias if self.config.loss == "sigmoid" else jnp.zeros(())
        # One pass over both sides: the same tower, one batch of 2B.
        both = self.embed(jnp.concatenate([audio, paired_audio], 0), deterministic)
        a, b = jnp.split(both, 2)
        return a, b, self.logit_scale, bias


class MelodyModel(BaseModel):
    """Batches: `audio` and `paired_audio` [B, samples], row i of each the same tune."""

    FEATURE_DTYPES = {"audio": jnp.float32, "paired_audio": jnp.float32}

    def __init__(self, config: MelodyConfig = MelodyConfig()):
        self.config = config
        self.module = MelodyTower(config)

    def config_dict(self) -> dict:
        return {"model": "MelodyModel", "config": self.config.to_dict()}

    def get_initial_variables(self, rng: jax.Array, input_shapes: Mapping[str, Sequence[int]]) -> Variables:
        audio = jnp.zeros((1, input_shapes["audio"][-1]), jnp.float32)
        return {"params": self.module.init({"params": rng}, audio, audio)["params"]}

    def _embeddings(self, params, batch: Batch, dropout_rng: Optional[jax.Array] = None):
        if batch["audio"].shape != batch["paired_audio"].shape:
            raise ValueError(
                f"audio {batch['audio'].shape} and paired_audio {batch['paired_audio'].shape} must have one shape"
            )
        deterministic = dropout_rng is None
        rngs = {} if deterministic else {"dropout": dropout_rng}
        return self.module.apply({"params": params}, batch["audio"], batch["paired_audio"], deterministic, rngs=rngs)

    def loss_fn(self, params, batch: Batch, dropout_rng: Optional[jax.Array]) -> tuple[jax.Array, Metrics]:
        a, b, scale, bias = self._embeddings(params, batch, dropout_rng)
        loss, metrics = contrastive_loss(a, b, scale, bias, self.config.loss)
        names = {
            "accuracy_text_to_audio": "accuracy_paired_to_audio",
            "accuracy_audio_to_text": "accuracy_audio_to_paired",
        }
        return loss, {names.get(k, k): v for k, v in metrics.items()}

    def eval_outputs(self, params, batch: Batch) -> dict[str, jax.Array]:
        a, b, _, _ = self._embeddings(params, batch)
        return {"embedding": a, "paired_embedding": b}

    def summarize_eval_outputs(self, outputs: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Pair retrieval over the whole eval pool: each rendition finds its partner among all
        (chance recall@k = k / pool)."""
        a, b = outputs["embedding"], outputs["paired_embedding"]
        out = {"retrieval_pool": float(len(a)), "paired_cosine": float(np.mean(np.sum(a * b, -1)))}
        for k, v in recall_at_k(a, b).items():
            out[f"melody_recall@{k}"] = v
        return out

    def predict_batch(self, params, batch: Batch, rng: Optional[jax.Array] = None, **kwargs) -> jax.Array:
        """Embeddings [B, embed_dim] of the batch's audio."""
        return self.embed_audio(params, batch["audio"])

    def embed_audio(self, params, audio: jax.Array) -> jax.Array:
        return self.module.apply({"params": params}, audio, method=MelodyTower.embed)


def melody_window_starts(num_samples: int, window: int, hop: int) -> list[int]:
    """Starts of a clip's melody windows: one every `hop` samples from 0 while it is inside the
    clip (the last windows run past the end, zero-padded), so a crop of S whole seconds holds
    exactly S / hop_seconds windows, as the time-aligned stream needs."""
    if num_samples <= 0:
        raise ValueError("cannot embed an empty clip")
    del window  # every window starting inside the clip counts, however far it runs past the end
    return list(range(0, num_samples, hop))
