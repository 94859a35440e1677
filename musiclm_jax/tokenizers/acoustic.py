"""The acoustic tokenizer: a trained SoundStream, frozen, as waveform <-> tokens.

    tok = AcousticTokenizer.from_model_dir("/runs/soundstream")      # model.json + latest checkpoint
    codes = tok.encode(waveforms)            # int32 [batch, frames, levels]
    audio = tok.decode(codes)                # float32 [batch, samples]

Any input length: waveforms are zero-padded to a multiple of the hop and the output is
trimmed back (frames = ceil(samples / hop)). Encoding and decoding are jitted per shape.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from musiclm_jax import model_io
from musiclm_jax.models.soundstream import SoundStream


class AcousticTokenizer:
    """A frozen SoundStream as waveform <-> RVQ codes, for any input length.

    Args:
      model: the SoundStream.
      params: its parameters.
      num_levels: keep the first levels of the RVQ (a lower bitrate); None for all the model's.
    Raises:
      ValueError: `num_levels` outside [1, the model's num_levels].
    """

    def __init__(self, model: SoundStream, params, *, num_levels: Optional[int] = None):
        levels = num_levels or model.config.num_levels
        if not 1 <= levels <= model.config.num_levels:
            raise ValueError(f"num_levels must be in [1, {model.config.num_levels}], got {num_levels}")
        self.model, self.params, self.num_levels = model, params, levels
        self._encode = jax.jit(functools.partial(model.encode, num_levels=levels))
        self._decode = jax.jit(model.decode)

    @classmethod
    def from_model_dir(
        cls, model_dir: str, *, step: Optional[int] = None, num_levels: Optional[int] = None
    ) -> "AcousticTokenizer":
        """Loads `model_dir/model.json` (written by `musiclm train`) and the checkpoint's params.

        Args:
          model_dir: a SoundStream `musiclm train` directory or params-only export.
          step: the checkpoint step; None for the latest.
          num_levels: keeps the first levels of the RVQ (a lower bitrate); None for all.
        Returns:
          The tokenizer.
        Raises:
          FileNotFoundError: `model_dir` has no model.json.
          ValueError: model.json names another kind of model, or `num_levels` is out of range.
          ExportError: `model_dir` is an export whose files changed.
        """
        model, params = model_io.load(model_dir, step, kind="SoundStream")
        return cls(model, params, num_levels=num_levels)

    @property
    def hop_length(self) -> int:
        return self.model.config.hop_length

    @property
    def sample_rate(self) -> int:
        return self.model.config.sample_rate

    def encode(self, waveforms) -> np.ndarray:
        """int32 [batch, ceil(samples / hop), num_levels] for float waveforms [batch, samples].

        Args:
          waveforms: float [batch, samples] at `sample_rate` (a 1-D clip is a batch of one);
            zero-padded to a whole number of hops.
        Returns:
          int32 codes [batch, ceil(samples / hop), num_levels], each in [0, codebook_size).
        Raises:
          ValueError: not [batch, samples], or no samples.
        """
        x = np.asarray(waveforms, np.float32)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] == 0:
            raise ValueError(f"encode expects waveforms [batch, samples], got shape {x.shape}")
        frames = math.ceil(x.shape[1] / self.hop_length)
        x = np.pad(x, ((0, 0), (0, frames * self.hop_length - x.shape[1])))
        return np.asarray(self._encode(self.params, jnp.asarray(x)))

    def decode(self, codes, num_samples: Optional[int] = None) -> np.ndarray:
        """float32 waveforms [batch, frames * hop] (or trimmed to `num_samples`).

        Args:
          codes: int [batch, frames, levels]: the first `levels` RVQ levels (at most the model's),
            each code in [0, codebook_size).
          num_samples: keep the first this many samples (e.g. the length `encode` was given); None
            keeps frames * hop.
        Returns:
          float32 waveforms [batch, frames * hop or num_samples] at `sample_rate`.
        Raises:
          ValueError: codes not [batch, frames, levels], more levels than the model has, or a code
            out of range.
        """
        c = np.asarray(codes, np.int32)
        if c.ndim != 3 or c.shape[-1] > self.model.config.num_levels:
            raise ValueError(
                f"decode expects codes [batch, frames, levels <= {self.model.config.num_levels}], got shape {c.shape}"
            )
        if c.min(initial=0) < 0 or c.max(initial=0) >= self.model.config.codebook_size:
            raise ValueError(f"codes must lie in [0, {self.model.config.codebook_size})")
        audio = np.asarray(self._decode(self.params, jnp.asarray(c)))
        return audio if num_samples is None else audio[:, :num_samples]
