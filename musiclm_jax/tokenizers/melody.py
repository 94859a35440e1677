"""Melody tokens: a trained melody model (models/melody.py), frozen, plus an RVQ fitted on its
window embeddings.

    tok = MelodyTokenizer.from_model_dir("/runs/melody")   # model.json, checkpoint, melody_rvq/
    tok.tokens(waveforms)      # per clip int32 [windows, levels]: a window every hop_seconds
    tok.tokens_for(tune, sample_rate, seconds)   # [1, seconds / hop_seconds, levels] for generation

A clip of S seconds has S / hop_seconds windows, each `window_seconds` long from its start
(zero-padded past the clip's end): the tokens form a time-aligned stream at
1 / hop_seconds windows per second, like the semantic tokens at 25 Hz. The RVQ
(`fit_melody_rvq`, `musiclm fit_melody_rvq`) is k-means per level on the window embeddings of a
task's clips, kept in MODEL_DIR/melody_rvq/ (codebooks.npz + rvq.json, as MuLan's).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from musiclm_jax import fileio, model_io
from musiclm_jax.audio.io import resample
from musiclm_jax.models.melody import melody_window_starts
from musiclm_jax.tokenizers.mulan import MuLanEmbedder, MuLanTokenizer, fit_embedding_rvq, load_rvq

RVQ_DIR = "melody_rvq"
# A tune quieter than this (RMS, full scale 1) has nothing to follow.
SILENCE_RMS = 1e-3


class UnusableMelodyError(ValueError):
    """A melody input that cannot condition generation (silent, empty, too short)."""


class MelodyEmbedder(MuLanEmbedder):
    """The melody model's window embeddings (no RVQ: what the RVQ is fitted on)."""

    window_starts = staticmethod(melody_window_starts)


class MelodyTokenizer(MuLanTokenizer):
    """The melody model's window embeddings quantized by its frozen RVQ (no text side)."""

    window_starts = staticmethod(melody_window_starts)

    @classmethod
    def from_model_dir(
        cls, model_dir: str, *, step: Optional[int] = None, rvq_dir: Optional[str] = None, **kwargs
    ) -> "MelodyTokenizer":
        """The melody model of a model directory with its fitted RVQ.

        Raises:
          FileNotFoundError: no model.json, or no codebooks.npz (fit the RVQ first: `fit_melody_rvq`).
          ValueError: model.json names another kind of model.
        """
        model, params = model_io.load(model_dir, step, kind="MelodyModel")
        codebooks, _ = load_rvq(rvq_dir or model_io.artifact_path(model_dir, RVQ_DIR))
        return cls(model, params, None, codebooks, **kwargs)

    def text_ids(self, texts):
        """The melody model has no text side (MuLanTokenizer's text methods all come here)."""
        raise TypeError("the melody tokenizer embeds audio only: text goes through MuLan")

    @property
    def windows_per_second(self) -> int:
        return self.model.config.windows_per_second

    def tokens(self, waveforms) -> list[np.ndarray]:
        """Per clip, int32 [windows, levels]: one window every hop_seconds from the start."""
        return self.audio_tokens_with_windows(waveforms)[1]

    def tokens_for(self, tune: np.ndarray, sample_rate: int, seconds: float) -> np.ndarray:
        """int32 [1, ceil(seconds / hop_seconds), levels]: the tokens that make `seconds` of music
        follow `tune` (any length, any rate, mono). A tune shorter than the music is repeated
        (a melody loops as a song's tune does); a longer one is cut.

        Raises:
          UnusableMelodyError: the tune is empty, not mono, or silent.
        """
        tune = np.asarray(tune, np.float32)
        if tune.ndim != 1 or tune.size == 0:
            raise UnusableMelodyError(f"the melody must be one non-empty mono clip, got shape {tune.shape}")
        if not np.all(np.isfinite(tune)):
            raise UnusableMelodyError("the melody has NaN or infinite samples")
        rms = float(np.sqrt(np.mean(np.square(tune, dtype=np.float64))))
        if rms < SILENCE_RMS:
            raise UnusableMelodyError(
                f"the melody is silent (RMS {rms:.1e}, below {SILENCE_RMS:g}): hum, whistle or play the tune louder"
            )
        tune = resample(tune, int(sample_rate), self.sample_rate) if sample_rate != self.sample_rate else tune
        need = int(round(seconds * self.sample_rate))
        if tune.size < need:
            tune = np.tile(tune, math.ceil(need / tune.size))
        windows = math.ceil(seconds * self.windows_per_second - 1e-9)
        return self.tokens([tune[: max(need, 1)]])[0][None, :windows]


def fit_melody_rvq(
    *,
    model_dir: str,
    task: str,
    split: str = "train",
    num_examples: Optional[int] = 2000,
    eval_split: Optional[str] = "validation",
    num_eval_examples: int = 200,
    output_dir: Optional[str] = None,
    seed: int = 0,
    step: Optional[int] = None,
) -> dict:
    """Fits the melody RVQ (the config's rvq_levels x rvq_codebook_size) on the window embeddings
    of up to `num_examples` clips of `task` (a raw-audio task, or the melody pair task: its
    `audio` side), saves it to `output_dir` (default MODEL_DIR/melody_rvq) and returns the info
    dict, with reconstruction cosines on `split` and `eval_split` (as `fit_mulan_rvq`)."""
    model, params = model_io.load(model_dir, step, kind="MelodyModel")
    embedder = MelodyEmbedder(model, params)

    def embed(clips):
        return np.concatenate(embedder.embed_audio_windows(clips))

    return fit_embedding_rvq(
        embed,
        model.config,
        task=task,
        split=split,
        num_examples=num_examples,
        eval_split=eval_split,
        num_eval_examples=num_eval_examples,
        output_dir=output_dir or fileio.join(model_dir, RVQ_DIR),
        seed=seed,
        what="melody",
    )
