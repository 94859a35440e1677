"""Text -> music: the frozen tokenizers and the three token stages composed (MusicLM section 3.3).

    texts -> MuLan text tokens M_T                                  (MuLanTokenizer.text_tokens)
          -> semantic tokens S      [seconds * semantic_rate]       (semantic stage, conditioned on M_T)
          -> coarse acoustic A_c    [frames, coarse levels]         (coarse stage, on M_T + S)
          -> fine acoustic A_f      [frames, fine levels]           (fine stage, on M_T + A_c)
          -> waveform                                                (SoundStream decoder on [A_c, A_f])

Training conditioned the stages on MuLan *audio* tokens; generation feeds the *text* tokens of
the same RVQ in their place. `num_candidates` samples per prompt are re-ranked by the MuLan
cosine between the prompt and the generated audio; the best is returned with its score.
Sampling is deterministic by seed (each stage folds its own key out of it).

Library code, no gin: `musiclm generate` (generate.py) builds this from checkpoint directories.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from musiclm_jax.models.stages import StageModel

STAGES = ("semantic", "coarse", "fine")


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """One stage's sampling: temperature (0 = greedy), top-k (0 = off), top-p (1 = off) and the
    classifier-free guidance scale (1 = unguided)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    guidance_scale: float = 1.0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}")


# The paper's temperatures (section 4): semantic 1.0, coarse 0.95, fine 0.4.
PAPER_SETTINGS = {"semantic": SamplingSettings(1.0), "coarse": SamplingSettings(0.95), "fine": SamplingSettings(0.4)}


@dataclasses.dataclass
class Generation:
    """The best candidate per prompt: audio float32 [B, samples] at `sample_rate`, its MuLan
    text-audio cosine [B] (None with one candidate and no scoring), the tokens it came from,
    and every candidate's score [B, num_candidates]."""

    audio: np.ndarray
    sample_rate: int
    mulan_score: Optional[np.ndarray]
    candidate_scores: Optional[np.ndarray]
    mulan_tokens: np.ndarray
    semantic_tokens: np.ndarray
    acoustic_tokens: np.ndarray


class MusicLM:
    """`mulan`: a MuLanTokenizer; `stages`: {'semantic'|'coarse'|'fine': (StageModel, params)};
    `codec`: an AcousticTokenizer; `semantic_rate`: semantic tokens per second (w2v-BERT's frame
    rate, 25 at the paper config)."""

    def __init__(self, mulan, stages: Mapping[str, tuple[StageModel, Any]], codec, *, semantic_rate: float = 25.0):
        missing = [s for s in STAGES if s not in stages]
        if missing:
            raise ValueError(f"MusicLM needs the {', '.join(missing)} stage(s)")
        self.mulan, self.stages, self.codec = mulan, dict(stages), codec
        self.semantic_rate = float(semantic_rate)
        self._check_streams()
        self._samplers: dict = {}

    # --- consistency of the parts ------------------------------------------------------------

    @property
    def acoustic_rate(self) -> float:
        return self.codec.sample_rate / self.codec.hop_length

    @property
    def coarse_levels(self) -> int:
        return self.stages["coarse"][0].config.target.num_levels

    @property
    def fine_levels(self) -> int:
        return self.stages["fine"][0].config.target.num_levels

    def _check_streams(self) -> None:
        """Clear errors for parts that do not fit together (e.g. a stage trained on another codec)."""
        coarse, fine = self.stages["coarse"][0].config, self.stages["fine"][0].config
        if coarse.target.first_level != 0 or fine.target.first_level != coarse.target.num_levels:
            raise ValueError(f"the fine stage must predict the levels after the coarse stage's: coarse "
                             f"{coarse.target}, fine {fine.target}")
        levels = coarse.target.num_levels + fine.target.num_levels
        if levels > self.codec.num_levels:
            raise ValueError(f"the stages predict {levels} RVQ levels but the codec has {self.codec.num_levels}")
        codebook = self.codec.model.config.codebook_size
        for name in ("coarse", "fine"):
            layout = self.stages[name][0].layout
            if any(layout.codebook_size("acoustic", j) != codebook for j in range(levels)):
                raise ValueError(f"the {name} stage's acoustic codebooks do not match the codec's {codebook} codes")
        for name, (model, _) in self.stages.items():
            for spec in model.config.conditions:
                if spec.stream == "mulan" and spec.num_levels > self.mulan.num_levels:
                    raise ValueError(f"the {name} stage reads {spec.num_levels} MuLan levels; the MuLan RVQ has "
                                     f"{self.mulan.num_levels}")

    # --- sampling ----------------------------------------------------------------------------

    def _sampler(self, stage: str, num_tokens: int, settings: SamplingSettings, num_samples: int) -> Callable:
        """A compiled sampler per (stage, length, settings); the temperature is traced (one compile
        for any temperature), the guidance scale static (predict_batch needs a Python number)."""
        key = (stage, num_tokens, settings.top_k, settings.top_p, settings.guidance_scale, num_samples)
        if key not in self._samplers:
            model = self.stages[stage][0]

            def sample(params, batch, rng, temperature):
                return model.predict_batch(params, batch, rng, num_target_tokens=num_tokens, temperature=temperature,
                                           top_k=settings.top_k, top_p=settings.top_p,
                                           guidance_scale=settings.guidance_scale, num_samples=num_samples)

            self._samplers[key] = jax.jit(sample)
        return self._samplers[key]

    def _run_stage(self, stage: str, batch: dict, rng, num_tokens: int, settings: SamplingSettings,
                   num_samples: int = 1) -> np.ndarray:
        fn = self._sampler(stage, num_tokens, settings, num_samples)
        return np.asarray(fn(self.stages[stage][1], {k: jnp.asarray(v) for k, v in batch.items()}, rng,
                             jnp.float32(settings.temperature)))

    def generate(self, texts: Sequence[str], seconds: float, *, seed: int = 0,
                 settings: Optional[Mapping[str, SamplingSettings]] = None, num_candidates: int = 1,
                 progress: Optional[Callable[[str], None]] = None) -> Generation:
        """Music for each text, `seconds` long (within the stages' training window)."""
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            raise ValueError("generate needs at least one text")
        if not seconds > 0:
            raise ValueError(f"seconds must be positive, got {seconds}")
        if num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
        settings = {**PAPER_SETTINGS, **(settings or {})}
        note = progress or (lambda _: None)
        b, n = len(texts), num_candidates
        semantic_len = max(1, math.ceil(seconds * self.semantic_rate))
        frames = max(1, math.ceil(seconds * self.acoustic_rate))
        k_sem, k_coarse, k_fine = jax.random.split(jax.random.key(seed), 3)

        mulan_tokens = self.mulan.text_tokens(list(texts))  # validates empty texts
        note("semantic")
        semantic = self._run_stage("semantic", {"mulan_tokens": mulan_tokens}, k_sem, semantic_len,
                                   settings["semantic"], num_samples=n)
        mulan_rep = np.repeat(mulan_tokens, n, axis=0)
        note("coarse")
        coarse = self._run_stage("coarse", {"mulan_tokens": mulan_rep, "semantic_tokens": semantic}, k_coarse,
                                 frames * self.coarse_levels, settings["coarse"])
        coarse = coarse.reshape(b * n, frames, self.coarse_levels)
        note("fine")
        fine_batch = {"mulan_tokens": mulan_rep, self.stages["fine"][0].config.target.feature: coarse}
        fine = self._run_stage("fine", fine_batch, k_fine, frames * self.fine_levels, settings["fine"])
        acoustic = np.concatenate([coarse, fine.reshape(b * n, frames, self.fine_levels)], axis=2)
        note("decode")
        num_samples = int(round(seconds * self.codec.sample_rate))
        audio = self.codec.decode(acoustic, num_samples=num_samples)

        scores = None
        best = np.zeros(b, np.int64)
        if n > 1:
            scores = self.mulan_scores(texts, audio).reshape(b, n)
            best = scores.argmax(axis=1)
        rows = np.arange(b) * n + best
        return Generation(audio=audio[rows], sample_rate=self.codec.sample_rate,
                          mulan_score=None if scores is None else scores[np.arange(b), best],
                          candidate_scores=scores, mulan_tokens=mulan_tokens,
                          semantic_tokens=semantic[rows], acoustic_tokens=acoustic[rows])

    def mulan_scores(self, texts: Sequence[str], audio: np.ndarray) -> np.ndarray:
        """MuLan cosine of each clip with its text (clips grouped per text in order): [len(audio)]."""
        from musiclm_jax.audio.io import resample

        if self.codec.sample_rate != self.mulan.sample_rate:
            audio = [resample(a, self.codec.sample_rate, self.mulan.sample_rate) for a in audio]
        a = self.mulan.embed_audio(list(audio))
        t = np.repeat(self.mulan.embed_text(list(texts)), len(a) // len(texts), axis=0)
        return np.sum(a * t, axis=1)
