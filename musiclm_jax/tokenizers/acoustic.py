"""The acoustic tokenizer: a trained SoundStream, frozen, as waveform <-> tokens.

    tok = AcousticTokenizer.from_model_dir("/runs/soundstream")      # model.json + latest checkpoint
    codes = tok.encode(waveforms)            # int32 [batch, frames, levels]
    audio = tok.decode(codes)                # float32 [batch, samples]

Any input length: waveforms are zero-padded to a multiple of the hop and the output is
trimmed back (frames = ceil(samples / hop)). Encoding and decoding are jitted per shape.
"""
from __future__ import annotations

import functools
import json
import math
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from musiclm_jax.models.soundstream import SoundStream, SoundStreamConfig
from musiclm_jax.training import checkpoints


class AcousticTokenizer:
    def __init__(self, model: SoundStream, params, *, num_levels: Optional[int] = None):
        levels = num_levels or model.config.num_levels
        if not 1 <= levels <= model.config.num_levels:
            raise ValueError(f"num_levels must be in [1, {model.config.num_levels}], got {num_levels}")
        self.model, self.params, self.num_levels = model, params, levels
        self._encode = jax.jit(functools.partial(model.encode, num_levels=levels))
        self._decode = jax.jit(model.decode)

    @classmethod
    def from_model_dir(cls, model_dir: str, *, step: Optional[int] = None, num_levels: Optional[int] = None
                       ) -> "AcousticTokenizer":
        """Loads `model_dir/model.json` (written by `musiclm train`) and the checkpoint's params."""
        from musiclm_jax.export import check_export

        config_path = os.path.join(model_dir, "model.json")
        if not os.path.exists(config_path):
            raise FileNotFoundError(f"{config_path} not found: is {model_dir!r} a SoundStream training directory?")
        check_export(model_dir)  # an export (`musiclm export`) must be intact
        with open(config_path) as f:
            spec = json.load(f)
        if spec.get("model") != "SoundStream":
            raise ValueError(f"{config_path} describes a {spec.get('model')!r} model, not SoundStream")
        model = SoundStream(SoundStreamConfig.from_dict(spec["config"]))
        hop = model.config.hop_length
        # Parameter shapes do not depend on the length; the discriminators need a few windows.
        init_samples = hop * math.ceil(4 * model.config.discriminators.stft_window / hop)
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                                jax.eval_shape(lambda: _unboxed_params(model, init_samples)))
        source = os.path.join(model_dir, "checkpoints")
        if step is not None:
            source = os.path.join(source, str(step))
        params, _ = checkpoints.restore_params(source, abstract)
        return cls(model, params, num_levels=num_levels)

    @property
    def hop_length(self) -> int:
        return self.model.config.hop_length

    @property
    def sample_rate(self) -> int:
        return self.model.config.sample_rate

    def encode(self, waveforms) -> np.ndarray:
        """int32 [batch, ceil(samples / hop), num_levels] for float waveforms [batch, samples]."""
        x = np.asarray(waveforms, np.float32)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] == 0:
            raise ValueError(f"encode expects waveforms [batch, samples], got shape {x.shape}")
        frames = math.ceil(x.shape[1] / self.hop_length)
        x = np.pad(x, ((0, 0), (0, frames * self.hop_length - x.shape[1])))
        return np.asarray(self._encode(self.params, jnp.asarray(x)))

    def decode(self, codes, num_samples: Optional[int] = None) -> np.ndarray:
        """float32 waveforms [batch, frames * hop] (or trimmed to `num_samples`)."""
        c = np.asarray(codes, np.int32)
        if c.ndim != 3 or c.shape[-1] > self.model.config.num_levels:
            raise ValueError(f"decode expects codes [batch, frames, levels <= {self.model.config.num_levels}], "
                             f"got shape {c.shape}")
        if c.min(initial=0) < 0 or c.max(initial=0) >= self.model.config.codebook_size:
            raise ValueError(f"codes must lie in [0, {self.model.config.codebook_size})")
        audio = np.asarray(self._decode(self.params, jnp.asarray(c)))
        return audio if num_samples is None else audio[:, :num_samples]


def _unboxed_params(model: SoundStream, samples: int):
    from musiclm_jax.training.partitioning import unbox

    return unbox(model.get_initial_variables(jax.random.PRNGKey(0), {"audio": (1, samples)})["params"])
