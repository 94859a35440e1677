"""MuLan: a joint text / music embedding trained contrastively (Huang et al. 2022).

Two towers project into one 128-d space, L2-normalised:
  audio  log-mel (the JAX log-mel shared with the codec losses and w2v-BERT) -> a ResNet-50-style
         CNN (the paper's choice) or a spectrogram transformer over patches (gin: audio_encoder),
         optionally beside parameter-free log-mel summaries (log_mel_summary; small configs)
  text   SentencePiece ids of the caption (vocabulary trained on the training captions and
         stored with the model, data/text_vocab.py) -> a bidirectional transformer, mean pooled

Loss over the GLOBAL batch: the embeddings of each tower are all-gathered (a replicated
logical constraint) before the similarity matmul, so every example sees the whole global
batch as negatives while the rows of the similarity matrix stay sharded. Symmetric InfoNCE
with a learnable temperature (CLIP) or the sigmoid loss (SigLIP) with a learnable bias.

A model that does not learn sits at loss = ln(batch): `eval_warning` says so loudly when the
eval loss stays within `chance_tolerance` of ln(eval batch) for `chance_patience` evals in a row.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from musiclm_jax.audio.mel import log_mel
from musiclm_jax.models.base import BaseModel, Batch, Metrics, Variables
from musiclm_jax.nn import axes, config_io
from musiclm_jax.nn.encoders import EncoderConfig, ResNetAudioEncoder, ResNetConfig, SpectrogramTransformer, TextEncoder
from musiclm_jax.nn.layers import dense, l2_normalize, norm

AUDIO_ENCODERS = ("resnet", "transformer")
LOSSES = ("softmax", "sigmoid")
RECALL_KS = (1, 5, 10)


@dataclasses.dataclass(frozen=True)
class MuLanConfig:
    """Defaults = the paper's MuLan: 16 kHz, 64 log-mel bands (25 ms window, 10 ms hop), ResNet-50
    audio tower, 12-layer text transformer, 128-d space, 10 s windows at 1 s stride, RVQ 12 x 1024."""

    sample_rate: int = 16000
    n_fft: int = 400
    hop_length: int = 160
    n_mels: int = 64
    # Fixed affine normalisation of the log-mel (not per example: loudness is information).
    mel_offset: float = 5.0
    mel_scale: float = 0.25
    audio_encoder: str = "resnet"
    resnet: ResNetConfig = ResNetConfig()
    spectrogram_transformer: EncoderConfig = EncoderConfig(
        num_layers=12, num_heads=12, head_dim=64, d_model=768, d_ff=3072
    )
    patch_frames: int = 16
    patch_mels: int = 16
    max_patches: int = 128
    text_encoder: EncoderConfig = EncoderConfig(num_layers=12, num_heads=12, head_dim=64, d_model=768, d_ff=3072)
    vocab_size: int = 8000
    max_text_length: int = 64
    embed_dim: int = 128
    loss: str = "softmax"
    init_temperature: float = 0.07
    # Embedding a clip as the paper does: windows of window_seconds at hop_seconds, averaged.
    window_seconds: float = 10.0
    hop_seconds: float = 1.0
    # MuLan tokens: an RVQ fitted on audio embeddings (tokenizers/mulan.py).
    rvq_levels: int = 12
    rvq_codebook_size: int = 1024
    rvq_kmeans_iters: int = 20
    chance_tolerance: float = 0.01
    chance_patience: int = 3
    # Parameter-free summaries of the log-mel beside the tower's pooled output (0 / False = off,
    # the paper). A small tower trained for minutes learns neither from scratch (measured in
    # README's MuLan section): per-band mean and std over time (drums, loudness, register) and
    # the autocorrelation of the spectral flux up to this many seconds of lag (tempo).
    band_stats: bool = False
    onset_autocorr_seconds: float = 0.0

    def __post_init__(self):
        if self.audio_encoder not in AUDIO_ENCODERS:
            raise ValueError(f"MuLanConfig.audio_encoder must be one of {AUDIO_ENCODERS}, got {self.audio_encoder!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"MuLanConfig.loss must be one of {LOSSES}, got {self.loss!r}")
        if self.window_seconds <= 0 or self.hop_seconds <= 0:
            raise ValueError("MuLanConfig.window_seconds and hop_seconds must be positive")
        if self.onset_autocorr_seconds < 0:
            raise ValueError(f"MuLanConfig.onset_autocorr_seconds must be >= 0, got {self.onset_autocorr_seconds}")
        if self.onset_autocorr_seconds >= self.window_seconds:
            raise ValueError(
                f"MuLanConfig.onset_autocorr_seconds={self.onset_autocorr_seconds} must be shorter than "
                f"window_seconds={self.window_seconds}"
            )
        if self.n_mels % self.patch_mels and self.audio_encoder == "transformer":
            raise ValueError(f"MuLanConfig.n_mels={self.n_mels} is not divisible by patch_mels={self.patch_mels}")

    @property
    def window_samples(self) -> int:
        return int(round(self.window_seconds * self.sample_rate))

    @property
    def hop_samples(self) -> int:
        return int(round(self.hop_seconds * self.sample_rate))

    @property
    def onset_autocorr_lags(self) -> int:
        return int(round(self.onset_autocorr_seconds * self.sample_rate / self.hop_length))

    def to_dict(self) -> dict:
        return config_io.to_plain(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MuLanConfig":
        d = dict(d)
        d["resnet"] = ResNetConfig(**config_io.tuples(d["resnet"]))
        d["spectrogram_transformer"] = EncoderConfig(**d["spectrogram_transformer"])
        d["text_encoder"] = EncoderConfig(**d["text_encoder"])
        return cls(**d)


class MuLanTowers(nn.Module):
    config: MuLanConfig

    def setup(self):
        c = self.config
        if c.audio_encoder == "resnet":
            self.audio_tower = ResNetAudioEncoder(c.resnet)
        else:
            self.audio_tower = SpectrogramTransformer(
                c.spectrogram_transformer, c.patch_frames, c.patch_mels, c.max_patches
            )
        if c.band_stats or c.onset_autocorr_lags:
            self.summary_norm = norm("summary_norm", dtype=jnp.float32, axis=None)
        self.audio_proj = dense(c.embed_dim, (axes.EMBED, None), "audio_proj")
        self.text_tower = TextEncoder(c.text_encoder, c.vocab_size, c.max_text_length)
        self.text_proj = dense(c.embed_dim, (axes.EMBED, None), "text_proj")
        scale_init = math.log(1.0 / c.init_temperature) if c.loss == "softmax" else math.log(10.0)
        self.logit_scale = self.param(
            "logit_scale", nn.with_logical_partitioning(nn.initializers.constant(scale_init), ()), ()
        )
        if c.loss == "sigmoid":
            self.logit_bias = self.param(
                "logit_bias", nn.with_logical_partitioning(nn.initializers.constant(-10.0), ()), ()
            )

    def log_mel(self, audio: jax.Array) -> jax.Array:
        c = self.config
        mel = log_mel(audio, c.sample_rate, c.n_fft, c.hop_length, c.n_mels)
        return (mel + c.mel_offset) * c.mel_scale

    def embed_audio(self, audio: jax.Array, deterministic: bool = True) -> jax.Array:
        """[B, samples] -> unit-norm float32 [B, embed_dim]."""
        mel = self.log_mel(audio)
        if self.config.audio_encoder == "resnet":
            h = self.audio_tower(mel)
        else:
            h = self.audio_tower(mel, deterministic=deterministic)
        c = self.config
        if c.band_stats or c.onset_autocorr_lags:
            summary = log_mel_summary(mel, c.band_stats, c.onset_autocorr_lags)
            h = jnp.concatenate([h.astype(jnp.float32), self.summary_norm(summary)], -1)
        return l2_normalize(self.audio_proj(h))

    def embed_text(self, ids: jax.Array, deterministic: bool = True) -> jax.Array:
        """[B, L] ids (negative = padding) -> unit-norm float32 [B, embed_dim]."""
        return l2_normalize(self.text_proj(self.text_tower(ids, deterministic=deterministic)))

    def __call__(self, audio, ids, deterministic: bool = True):
        scale = self.logit_scale
        bias = self.logit_bias if self.config.loss == "sigmoid" else jnp.zeros(())
        return self.embed_audio(audio, deterministic), self.embed_text(ids, deterministic), scale, bias


def log_mel_summary(mel: jax.Array, band_stats: bool, autocorr_lags: int) -> jax.Array:
    """log-mel [B, frames, mels] -> float32 [B, 2 * mels if band_stats + autocorr_lags]: per-band
    mean and std over time, then the autocorrelation of the spectral flux (the summed positive
    frame-to-frame rise, mean removed) at lags 1..autocorr_lags, normalised by lag 0."""
    mel = mel.astype(jnp.float32)
    parts = [jnp.mean(mel, 1), jnp.std(mel, 1)] if band_stats else []
    if autocorr_lags:
        flux = jnp.sum(jax.nn.relu(jnp.diff(mel, axis=1)), -1)
        flux = flux - jnp.mean(flux, -1, keepdims=True)
        n = flux.shape[-1]
        if autocorr_lags >= n:
            raise ValueError(f"onset autocorrelation of {autocorr_lags} lags needs more than {n} frames of flux")
        spec = jnp.fft.rfft(flux, 2 * n)
        ac = jnp.fft.irfft(spec * jnp.conj(spec), 2 * n)[:, : autocorr_lags + 1]
        parts.append(ac[:, 1:] / (ac[:, :1] + 1e-6))
    return jnp.concatenate(parts, -1)


def _gathered(x: jax.Array) -> jax.Array:
    """The whole global batch on every shard (an all-gather under the trainer's mesh)."""
    return nn.with_logical_constraint(x, (None, None))


def contrastive_loss(
    audio_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array, logit_bias: jax.Array, kind: str = "softmax"
) -> tuple[jax.Array, Metrics]:
    """Loss of matched pairs (row i of each) against every other pair of the global batch.

    softmax: mean of the text->audio and audio->text cross-entropies (chance = ln B).
    sigmoid: mean over all B^2 pairs of -log sigmoid(label * logit), label +1 on the diagonal.
    """
    b = audio_emb.shape[0]
    scale = jnp.exp(jnp.clip(logit_scale, -10.0, math.log(100.0)))  # CLIP caps the scale at 100
    audio_all, text_all = _gathered(audio_emb), _gathered(text_emb)
    logits_t2a = scale * jnp.einsum("id,jd->ij", text_emb, audio_all, precision=jax.lax.Precision.HIGHEST)
    logits_a2t = scale * jnp.einsum("id,jd->ij", audio_emb, text_all, precision=jax.lax.Precision.HIGHEST)
    labels = jnp.arange(b)
    if kind == "softmax":
        ce_t2a = jnp.mean(jax.nn.logsumexp(logits_t2a, -1) - logits_t2a[labels, labels])
        ce_a2t = jnp.mean(jax.nn.logsumexp(logits_a2t, -1) - logits_a2t[labels, labels])
        loss = 0.5 * (ce_t2a + ce_a2t)
    else:
        signs = 2.0 * jnp.eye(b) - 1.0
        loss = -jnp.sum(jax.nn.log_sigmoid(signs * (logits_t2a + logit_bias))) / b
    metrics = {
        "accuracy_text_to_audio": jnp.mean(jnp.argmax(logits_t2a, -1) == labels),
        "accuracy_audio_to_text": jnp.mean(jnp.argmax(logits_a2t, -1) == labels),
        "temperature": 1.0 / scale,
        "chance_loss": jnp.log(jnp.asarray(b, jnp.float32)),
        "positive_cosine": jnp.mean(jnp.sum(audio_emb * text_emb, -1)),
    }
    return loss, metrics


def recall_at_k(query: np.ndarray, candidates: np.ndarray, ks: Sequence[int] = RECALL_KS) -> dict[int, float]:
    """Retrieval recall@k: query i's match is candidate i; both unit-norm [N, D]."""
    sims = np.asarray(query, np.float64) @ np.asarray(candidates, np.float64).T
    # rank of the true match = number of other candidates scoring at least as high (ties count
    # against the query: a tower that maps everything to one point must not look perfect)
    rank = np.sum(sims >= np.diag(sims)[:, None], axis=1) - 1
    return {k: float(np.mean(rank < k)) for k in ks}


def cycle_consistency(text_emb: np.ndarray, audio_emb: np.ndarray) -> float:
    """MuLan cycle consistency (MCC): mean cosine of each text with its (generated) audio."""
    t, a = np.asarray(text_emb, np.float64), np.asarray(audio_emb, np.float64)
    t = t / np.linalg.norm(t, axis=-1, keepdims=True)
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    return float(np.mean(np.sum(t * a, axis=-1)))


def is_at_chance(losses: Sequence[float], chances: Sequence[float], tolerance: float, patience: int) -> bool:
    """True when each of the last `patience` eval losses is no better than (1 - tolerance) x chance."""
    if patience <= 0 or len(losses) < patience:
        return False
    return all(loss > (1.0 - tolerance) * c for loss, c in zip(losses[-patience:], chances[-patience:]))


class MuLan(BaseModel):
    FEATURE_DTYPES = {"audio": jnp.float32, "text_tokens": jnp.int32}

    def __init__(self, config: MuLanConfig = MuLanConfig()):
        self.config = config
        self.module = MuLanTowers(config)

    def config_dict(self) -> dict:
        return {"model": "MuLan", "config": self.config.to_dict()}

    def get_initial_variables(self, rng: jax.Array, input_shapes: Mapping[str, Sequence[int]]) -> Variables:
        samples = input_shapes["audio"][-1]
        text_len = input_shapes["text_tokens"][-1]
        if text_len > self.config.max_text_length:
            raise ValueError(
                f"text_tokens length {text_len} exceeds MuLanConfig.max_text_length {self.config.max_text_length}"
            )
        audio = jnp.zeros((1, samples), jnp.float32)
        ids = jnp.zeros((1, text_len), jnp.int32)
        return {"params": self.module.init({"params": rng}, audio, ids)["params"]}

    def embeddings(self, params, batch: Batch, dropout_rng: Optional[jax.Array] = None):
        deterministic = dropout_rng is None
        rngs = {} if deterministic else {"dropout": dropout_rng}
        return self.module.apply({"params": params}, batch["audio"], batch["text_tokens"], deterministic, rngs=rngs)

    def loss_fn(self, params, batch: Batch, dropout_rng: Optional[jax.Array]) -> tuple[jax.Array, Metrics]:
        audio_emb, text_emb, scale, bias = self.embeddings(params, batch, dropout_rng)
        return contrastive_loss(audio_emb, text_emb, scale, bias, self.config.loss)

    def eval_outputs(self, params, batch: Batch) -> dict[str, jax.Array]:
        audio_emb, text_emb, _, _ = self.embeddings(params, batch)
        out = {"audio_embedding": audio_emb, "text_embedding": text_emb}
        if "heldout_text_tokens" in batch:  # the synthetic tasks' held-out-family captions
            out["heldout_text_embedding"] = self.embed_text(params, batch["heldout_text_tokens"])
        return out

    def summarize_eval_outputs(self, outputs: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Retrieval over the whole eval pool (every eval batch together). With held-out-family
        captions in the batches (`heldout_text_tokens`) also `heldout_text_to_audio_recall@k` and
        `heldout_mcc`: the gap to the training-family figures measures how far the text tower
        generalises beyond the phrasings it was trained on."""
        text, audio = outputs["text_embedding"], outputs["audio_embedding"]
        out = {"retrieval_pool": float(len(text)), "mcc": cycle_consistency(text, audio)}
        for k, v in recall_at_k(text, audio).items():
            out[f"text_to_audio_recall@{k}"] = v
        for k, v in recall_at_k(audio, text).items():
            out[f"audio_to_text_recall@{k}"] = v
        if "heldout_text_embedding" in outputs:
            heldout = outputs["heldout_text_embedding"]
            out["heldout_mcc"] = cycle_consistency(heldout, audio)
            for k, v in recall_at_k(heldout, audio).items():
                out[f"heldout_text_to_audio_recall@{k}"] = v
        return out

    def eval_warning(self, history: Sequence[Mapping[str, float]]) -> Optional[str]:
        losses = [h["loss"] for h in history if "loss" in h and "chance_loss" in h]
        chances = [h["chance_loss"] for h in history if "loss" in h and "chance_loss" in h]
        c = self.config
        if self.config.loss == "softmax" and is_at_chance(losses, chances, c.chance_tolerance, c.chance_patience):
            return (
                f"MuLan IS AT CHANCE: the eval loss has stayed within {c.chance_tolerance:.0%} of ln(batch) = "
                f"{chances[-1]:.3f} for the last {c.chance_patience} evals (last: {losses[-1]:.3f}); the towers "
                "are not learning to match captions with audio. Check that captions belong to their clips, "
                "the learning rate and the temperature."
            )
        return None

    def predict_batch(self, params, batch: Batch, rng: Optional[jax.Array] = None, **kwargs) -> jax.Array:
        """Audio embeddings [B, embed_dim] of the batch's audio."""
        return self.module.apply({"params": params}, batch["audio"], method=MuLanTowers.embed_audio)

    def embed_audio(self, params, audio: jax.Array) -> jax.Array:
        return self.module.apply({"params": params}, audio, method=MuLanTowers.embed_audio)

    def embed_text(self, params, ids: jax.Array) -> jax.Array:
        return self.module.apply({"params": params}, ids, method=MuLanTowers.embed_text)


def window_starts(num_samples: int, window: int, hop: int) -> list[int]:
    """Window starts covering a clip: 0, hop, 2 hop, ... with the last window ending at or past the
    end (a clip shorter than a window has one window, zero-padded)."""
    if num_samples <= 0:
        raise ValueError("cannot embed an empty clip")
    n = 1 + max(0, math.ceil((num_samples - window) / hop))
    return [i * hop for i in range(n)]
