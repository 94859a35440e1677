"""Text -> music: the frozen tokenizers and the three token stages composed (MusicLM section 3.3).

    texts -> MuLan text tokens M_T                                  (MuLanTokenizer.text_tokens)
          -> semantic tokens S      [seconds * semantic_rate]       (semantic stage, conditioned on M_T)
          -> coarse acoustic A_c    [frames, coarse levels]         (coarse stage, on M_T + S)
          -> fine acoustic A_f      [frames, fine levels]           (fine stage, on M_T + A_c)
          -> waveform                                                (SoundStream decoder on [A_c, A_f])

Training conditioned the stages on MuLan *audio* tokens; generation feeds the *text* tokens of
the same RVQ in their place. `num_candidates` samples per prompt are re-ranked by the MuLan
cosine between the prompt and the generated audio; the best is returned with its score.
Sampling is deterministic by seed (each stage folds its own key out of it, and each window
its index out of that).

Length beyond a stage's training window: each stage slides a `Window` (paper: 30 s windows at a
15 s stride for the semantic stage). Every window after the first re-reads the overlap with the
previous one as a continuation prefix (prefilled into the KV cache in one chunk) and samples the
rest; time-aligned conditions (semantic tokens for the coarse stage, coarse levels for the fine
stage) are sliced to the window's span. Story mode (`generate_story`) changes the text at given
times: a window never crosses a change, so the tokens after time t are sampled under the text
of t while the prefix carries the music over. Continuation (`prompt_audio`) tokenizes an audio
clip with w2v-BERT and SoundStream and treats its tokens as already generated.

Library code, no gin: `musiclm generate` (generate.py) builds this from checkpoint directories.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import functools
import math
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from musiclm_jax.audio.io import resample
from musiclm_jax.models.stages import TARGET_PREFIX_KEY, StageModel
from musiclm_jax.models.token_layout import NULL_CODE
from musiclm_jax.nn.compiler import compiler_options

STAGES = ("semantic", "coarse", "fine")


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """One stage's sampling: temperature (0 = greedy), top-k (0 = off), top-p (1 = off) and the
    classifier-free guidance scale s (0 = unguided; logits cond + s * (cond - uncond))."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    guidance_scale: float = 0.0

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


@dataclasses.dataclass(frozen=True)
class Window:
    """A stage's sliding window in seconds: a window samples at most `seconds` of tokens, and
    the next starts `stride` later, reading the overlap (seconds - stride) as its prefix."""

    seconds: float
    stride: float

    def __post_init__(self):
        if not 0 < self.stride <= self.seconds:
            raise ValueError(f"a window needs 0 < stride <= seconds, got stride {self.stride}, seconds {self.seconds}")


# The paper's semantic window (section 4: 30 s windows, 15 s stride) and its training crops for
# the acoustic stages (10 s coarse, 3 s fine), each sliding at half its length.
PAPER_WINDOWS = {"semantic": Window(30.0, 15.0), "coarse": Window(10.0, 5.0), "fine": Window(3.0, 1.5)}


def plan_windows(
    total: int, window: int, stride: int, *, done: int = 0, changes: Sequence[int] = ()
) -> list[tuple[int, int, int]]:
    """The windows that extend `done` generated frames to `total`: (start, done, end) per window,
    where [start, done) is the prefix read back and [done, end) is sampled. Windows start
    `stride` apart (start = done - (window - stride)) and never cross a change point (story
    mode): a window ends at the next change and the next window starts the new text there."""
    if not 0 < stride <= window:
        raise ValueError(f"need 0 < stride <= window, got stride {stride}, window {window}")
    overlap = window - stride
    spans = []
    while done < total:
        start = max(0, done - overlap)
        end = min([start + window, total, *(c for c in changes if c > done)])
        spans.append((start, done, end))
        done = end
    return spans


def _frames(seconds: float, rate: float, what: str) -> int:
    """Seconds as a whole number of frames at `rate` (windows must fall on frame boundaries)."""
    frames = seconds * rate
    if abs(frames - round(frames)) > 1e-6 or round(frames) < 1:
        raise ValueError(f"{what} of {seconds} s is not a whole number of frames at {rate} Hz")
    return int(round(frames))


class _Prompt(NamedTuple):
    """A continuation prompt's tokens: its length, semantic [rows, S], acoustic [rows, F, levels]."""

    seconds: float
    semantic: np.ndarray
    acoustic: np.ndarray


@dataclasses.dataclass
class Generation:
    """The best candidate per prompt: audio float32 [B, samples] at `sample_rate`, its MuLan
    text-audio cosine [B] (None from `generate_from_tokens`, which has no text), the tokens it came from
    (MuLan tokens of the first text), every candidate's score [B, num_candidates], and the
    length of the continuation prompt the audio starts with (0 without one)."""

    audio: np.ndarray
    sample_rate: int
    mulan_score: Optional[np.ndarray]
    candidate_scores: Optional[np.ndarray]
    mulan_tokens: np.ndarray
    semantic_tokens: np.ndarray
    acoustic_tokens: np.ndarray
    prompt_seconds: float = 0.0


class MusicLM:
    """`mulan`: a MuLanTokenizer; `stages`: {'semantic'|'coarse'|'fine': (StageModel, params)};
    `codec`: an AcousticTokenizer; `semantic_rate`: semantic tokens per second (w2v-BERT's frame
    rate, 25 at the paper config); `windows`: each stage's sliding `Window` or (seconds, stride)
    (default PAPER_WINDOWS); `semantic_tokenizer`: a SemanticTokenizer, needed only to continue
    an audio prompt; `melody`: a MelodyTokenizer, needed only to follow a tune (a semantic stage
    trained with a melody condition)."""

    # Compiled samplers kept (least recently used dropped): one per stage, window length and
    # compiled settings, so a long-running server asked for many lengths does not grow forever.
    max_samplers = 64

    def __init__(
        self,
        mulan,
        stages: Mapping[str, tuple[StageModel, Any]],
        codec,
        *,
        semantic_rate: float = 25.0,
        windows: Optional[Mapping[str, Any]] = None,
        semantic_tokenizer=None,
        melody=None,
    ):
        missing = [s for s in STAGES if s not in stages]
        if missing:
            raise ValueError(f"MusicLM needs the {', '.join(missing)} stage(s)")
        self.mulan, self.stages, self.codec = mulan, dict(stages), codec
        self.semantic_rate = float(semantic_rate)
        self.windows = {
            **PAPER_WINDOWS,
            **{k: w if isinstance(w, Window) else Window(*w) for k, w in (windows or {}).items()},
        }
        self.semantic_tokenizer = semantic_tokenizer
        self.melody = melody
        self._check_streams()
        if self.melody_spec is not None and melody is None:
            raise ValueError(
                "the semantic stage was trained with melody tokens: MusicLM needs the melody tokenizer "
                "(the melody model's directory) even for text-only music"
            )
        self._samplers: collections.OrderedDict = collections.OrderedDict()  # least recently used first

    # --- consistency of the parts ------------------------------------------------------------

    @property
    def acoustic_rate(self) -> float:
        return self.codec.sample_rate / self.codec.hop_length

    @property
    def melody_spec(self):
        """The semantic stage's melody condition (a StreamSpec), or None without one."""
        return next((c for c in self.stages["semantic"][0].config.conditions if c.stream == "melody"), None)

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
            raise ValueError(
                f"the fine stage must predict the levels after the coarse stage's: coarse "
                f"{coarse.target}, fine {fine.target}"
            )
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
                if spec.stream == "melody" and name != "semantic":
                    raise ValueError(f"the {name} stage reads melody tokens; only the semantic stage may")
                if spec.stream == "melody" and self.melody is not None:
                    if spec.first_level + spec.num_levels > self.melody.num_levels:
                        raise ValueError(
                            f"the semantic stage reads melody levels up to {spec.first_level + spec.num_levels}; "
                            f"the melody RVQ has {self.melody.num_levels}"
                        )
                if spec.stream == "mulan" and spec.num_levels > self.mulan.num_levels:
                    raise ValueError(
                        f"the {name} stage reads {spec.num_levels} MuLan levels; the MuLan RVQ has "
                        f"{self.mulan.num_levels}"
                    )

    # --- sampling ----------------------------------------------------------------------------

    def _sampler(self, stage: str, num_tokens: int, settings: SamplingSettings) -> Callable:
        """A compiled sampler per (stage, length, settings); the temperature is traced (one compile
        for any temperature), the guidance scale static (predict_batch needs a Python number).
        jit retraces for new condition / prefix shapes (the first and last windows)."""
        key = (stage, num_tokens, settings.top_k, settings.top_p, settings.guidance_scale)
        if key in self._samplers:
            self._samplers.move_to_end(key)
        else:
            model = self.stages[stage][0]

            def sample(params, batch, rng, temperature):
                return model.predict_batch(
                    params,
                    batch,
                    rng,
                    num_target_tokens=num_tokens,
                    temperature=temperature,
                    top_k=settings.top_k,
                    top_p=settings.top_p,
                    guidance_scale=settings.guidance_scale,
                )

            self._samplers[key] = jax.jit(sample, compiler_options=compiler_options())
            while len(self._samplers) > self.max_samplers:  # a long-running server sees many lengths
                self._samplers.popitem(last=False)
        return self._samplers[key]

    def _run_stage(self, stage: str, batch: dict, rng, num_tokens: int, settings: SamplingSettings) -> np.ndarray:
        fn = self._sampler(stage, num_tokens, settings)
        return np.asarray(
            fn(
                self.stages[stage][1],
                {k: jnp.asarray(v) for k, v in batch.items()},
                rng,
                jnp.float32(settings.temperature),
            )
        )

    def generate(
        self,
        texts: Sequence[str],
        seconds: float,
        *,
        seed: int = 0,
        settings: Optional[Mapping[str, SamplingSettings]] = None,
        num_candidates: int = 1,
        prompt_audio: Optional[np.ndarray] = None,
        prompt_sample_rate: Optional[int] = None,
        melody_audio: Optional[np.ndarray] = None,
        melody_sample_rate: Optional[int] = None,
        progress: Optional[Callable[[str, int, int], None]] = None,
    ) -> Generation:
        """`seconds` of music for each text (any length: stages slide their windows). With
        `prompt_audio` (one mono clip at `prompt_sample_rate`), the music continues that clip; the
        returned audio starts with the clip's codec reconstruction. With `melody_audio` (a hummed,
        whistled or played tune, mono, at `melody_sample_rate`; needs a semantic stage trained with
        melody tokens) the music follows that tune, looped or cut to the music's length.
        `progress(stage, window, num_windows)` is called before each window (stage 'decode' once at
        the end)."""
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            raise ValueError("generate needs at least one text")
        return self._generate(
            [(list(texts), 0.0)],
            seconds,
            seed=seed,
            settings=settings,
            num_candidates=num_candidates,
            prompt_audio=prompt_audio,
            prompt_sample_rate=prompt_sample_rate,
            melody_audio=melody_audio,
            melody_sample_rate=melody_sample_rate,
            progress=progress,
        )

    def generate_story(self, story: Sequence[tuple[str, float]], **kwargs) -> Generation:
        """One piece whose text changes over time: `story` = [(text, seconds), ...] in order
        (story mode, MusicLM section 4.5). Keyword arguments as `generate`."""
        if not story:
            raise ValueError("a story needs at least one (text, seconds) segment")
        schedule, start = [], 0.0
        for i, (text, seconds) in enumerate(story):
            if not seconds > 0:
                raise ValueError(f"story segment {i} ({text!r}) must last > 0 seconds, got {seconds}")
            schedule.append(([text], start))
            start += float(seconds)
        return self._generate(schedule, start, **kwargs)

    def _generate(
        self,
        schedule: list,
        seconds: float,
        *,
        seed: int = 0,
        settings: Optional[Mapping[str, SamplingSettings]] = None,
        num_candidates: int = 1,
        prompt_audio: Optional[np.ndarray] = None,
        prompt_sample_rate: Optional[int] = None,
        melody_audio: Optional[np.ndarray] = None,
        melody_sample_rate: Optional[int] = None,
        progress: Optional[Callable[[str, int, int], None]] = None,
    ) -> Generation:
        """`schedule`: [(texts [B], start second of the new music), ...], the first at 0."""
        if not seconds > 0:
            raise ValueError(f"seconds must be positive, got {seconds}")
        if num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
        b, n = len(schedule[0][0]), num_candidates

        melody = self.tune_tokens(melody_audio, melody_sample_rate, None)  # checked before any work
        prompt = self._encode_prompt(prompt_audio, prompt_sample_rate, b * n)
        segment_tokens = [np.repeat(self.mulan.text_tokens(texts), n, axis=0) for texts, _ in schedule]
        starts = [prompt.seconds + start for _, start in schedule]
        total = prompt.seconds + seconds
        if melody_audio is not None:  # over the whole timeline, the continuation prompt's part included
            melody = self.tune_tokens(melody_audio, melody_sample_rate, total)
        semantic, acoustic, audio = self._sample_tokens(
            segment_tokens, starts, total, prompt, seed=seed, settings=settings, progress=progress, melody=melody
        )

        # Every candidate's MuLan text-audio cosine (also with one: the score is worth showing).
        scores = self._schedule_scores(schedule, starts, audio).reshape(b, n)
        best = scores.argmax(axis=1)
        rows = np.arange(b) * n + best
        return Generation(
            audio=audio[rows],
            sample_rate=self.codec.sample_rate,
            mulan_score=scores[np.arange(b), best],
            candidate_scores=scores,
            mulan_tokens=segment_tokens[0][rows],
            semantic_tokens=semantic[rows, :, 0],
            acoustic_tokens=acoustic[rows],
            prompt_seconds=prompt.seconds,
        )

    def generate_from_tokens(
        self,
        mulan_tokens: np.ndarray,
        seconds: float,
        *,
        semantic_tokens: Optional[np.ndarray] = None,
        melody_tokens: Optional[np.ndarray] = None,
        seed: int = 0,
        settings: Optional[Mapping[str, SamplingSettings]] = None,
    ) -> Generation:
        """`seconds` of music from given MuLan tokens [B, levels] (e.g. a clip's audio tokens)
        instead of text; with `semantic_tokens` [B, frames] (covering `seconds`) the semantic stage
        is skipped and the acoustic stages follow them; with `melody_tokens` [B, windows, levels]
        (a clip's own, covering `seconds`) a melody-conditioned semantic stage follows them. What
        the stages make of their true conditions: the adherence bench's stage ceilings."""
        if not seconds > 0:
            raise ValueError(f"seconds must be positive, got {seconds}")
        mulan_tokens = np.asarray(mulan_tokens, np.int32)
        if mulan_tokens.ndim != 2:
            raise ValueError(f"mulan_tokens must be [batch, levels], got shape {mulan_tokens.shape}")
        rows = mulan_tokens.shape[0]
        if semantic_tokens is not None:
            semantic_tokens = np.asarray(semantic_tokens, np.int32)
            need = math.ceil(seconds * self.semantic_rate - 1e-9)
            if semantic_tokens.ndim != 2 or semantic_tokens.shape[0] != rows or semantic_tokens.shape[1] < need:
                raise ValueError(
                    f"semantic_tokens must be [{rows}, >= {need}] for {seconds:g} s, got shape {semantic_tokens.shape}"
                )
            semantic_tokens = semantic_tokens[:, :need, None]
        semantic, acoustic, audio = self._sample_tokens(
            [mulan_tokens],
            [0.0],
            seconds,
            self._encode_prompt(None, None, rows),
            seed=seed,
            settings=settings,
            semantic=semantic_tokens,
            melody=None if melody_tokens is None else np.asarray(melody_tokens, np.int32),
        )
        return Generation(
            audio=audio,
            sample_rate=self.codec.sample_rate,
            mulan_score=None,
            candidate_scores=None,
            mulan_tokens=mulan_tokens,
            semantic_tokens=semantic[:, :, 0],
            acoustic_tokens=acoustic,
        )

    def _sample_tokens(
        self,
        segment_tokens: list,
        starts: Sequence[float],
        total: float,
        prompt: "_Prompt",
        *,
        seed: int,
        settings: Optional[Mapping[str, SamplingSettings]],
        progress: Optional[Callable[[str, int, int], None]] = None,
        semantic: Optional[np.ndarray] = None,
        melody: Optional[np.ndarray] = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The three stages and the decoder: (semantic [rows, frames, 1], acoustic [rows, frames,
        levels], audio [rows, samples]) for `total` seconds, segment i under MuLan tokens
        segment_tokens[i] from starts[i] on; `semantic` given skips the semantic stage. `melody`
        [1 or rows, windows, levels]: the tune's tokens for a melody-conditioned semantic stage
        (None: no tune, NULL_CODE in their place)."""
        settings = {**PAPER_SETTINGS, **(settings or {})}
        note = progress or (lambda *_: None)
        k_sem, k_coarse, k_fine = jax.random.split(jax.random.key(seed), 3)
        slide = functools.partial(self._slide, segment_tokens=segment_tokens, changes=starts[1:], progress=note)
        if semantic is None:
            rows = prompt.semantic.shape[0]
            semantic = slide(
                "semantic",
                k_sem,
                settings["semantic"],
                rate=self.semantic_rate,
                total=math.ceil(total * self.semantic_rate - 1e-9),
                generated=prompt.semantic[..., None],
                aligned=self._melody_stream(melody, total, rows),
            )
        frames = math.ceil(total * self.acoustic_rate - 1e-9)
        coarse = slide(
            "coarse",
            k_coarse,
            settings["coarse"],
            rate=self.acoustic_rate,
            total=frames,
            generated=prompt.acoustic[..., : self.coarse_levels],
            aligned={"semantic": (semantic, self.semantic_rate)},
        )
        fine = slide(
            "fine",
            k_fine,
            settings["fine"],
            rate=self.acoustic_rate,
            total=frames,
            generated=prompt.acoustic[..., self.coarse_levels : self.coarse_levels + self.fine_levels],
            aligned={"acoustic": (coarse, self.acoustic_rate)},
        )
        acoustic = np.concatenate([coarse, fine], axis=2)
        note("decode", 0, 1)
        audio = self.codec.decode(acoustic, num_samples=int(round(total * self.codec.sample_rate)))
        return semantic, acoustic, audio

    def _slide(
        self,
        stage: str,
        key,
        settings: SamplingSettings,
        *,
        rate: float,
        total: int,
        generated: np.ndarray,
        segment_tokens: Sequence[np.ndarray],
        changes: Sequence[float],
        progress,
        aligned: Optional[Mapping[str, tuple[np.ndarray, float]]] = None,
    ) -> np.ndarray:
        """Extends `generated` [rows, done, levels] to `total` frames at `rate`, window by window;
        frames from `changes[i]` seconds on are sampled under the MuLan tokens segment_tokens[i + 1]."""
        model = self.stages[stage][0]
        window = self.windows[stage]
        change_frames = [round(t * rate) for t in changes]
        spans = plan_windows(
            total,
            _frames(window.seconds, rate, f"{stage} window"),
            _frames(window.stride, rate, f"{stage} stride"),
            done=generated.shape[1],
            changes=change_frames,
        )
        levels = model.config.target.num_levels
        rows = generated.shape[0]
        for i, (start, done, end) in enumerate(spans):
            progress(stage, i, len(spans))
            batch = {}
            for spec in model.config.conditions:
                if spec.stream == "mulan":
                    tokens = segment_tokens[bisect.bisect_right(change_frames, done)]
                    batch[spec.feature] = tokens[:, spec.first_level : spec.first_level + spec.num_levels]
                else:  # a time-aligned stream: read over this window's span
                    array, array_rate = aligned[spec.stream]
                    lo, hi = math.floor(start * array_rate / rate + 1e-9), math.ceil(end * array_rate / rate - 1e-9)
                    batch[spec.feature] = array[:, lo:hi, ...] if array.ndim == 3 else array[:, lo:hi, None]
            if done > start:
                batch[TARGET_PREFIX_KEY] = generated[:, start:done]
            codes = self._run_stage(stage, batch, jax.random.fold_in(key, i), (end - start) * levels, settings)
            generated = np.concatenate([generated, codes.reshape(rows, end - start, levels)[:, done - start :]], axis=1)
        return generated

    def tune_tokens(self, audio: Optional[np.ndarray], sample_rate: Optional[int], seconds: Optional[float]):
        """A tune's melody tokens [1, windows, levels] covering `seconds` (None: only check that a
        tune can be followed); None without a tune."""
        if audio is None:
            return None
        if self.melody_spec is None:
            raise ValueError(
                "this semantic stage was trained without melody tokens: it cannot follow a tune (train one with a "
                "melody condition, e.g. the pipeline's melody step)"
            )
        if not sample_rate or sample_rate <= 0:
            raise ValueError(f"melody_audio needs a positive melody_sample_rate, got {sample_rate}")
        if seconds is None:
            seconds = len(np.asarray(audio)) / sample_rate  # checks the tune (silence, shape) cheaply
        return self.melody.tokens_for(audio, sample_rate, seconds)

    def _melody_stream(self, melody: Optional[np.ndarray], total: float, rows: int) -> Optional[dict]:
        """The semantic stage's time-aligned melody stream: {'melody': (tokens [rows, windows,
        levels], windows per second)}, NULL_CODE without a tune; None for a stage without one."""
        if self.melody_spec is None:
            return None
        rate = self.melody.windows_per_second
        windows = math.ceil(total * rate - 1e-9)
        if melody is None:
            melody = np.full((rows, windows, self.melody.num_levels), NULL_CODE, np.int32)
        melody = np.asarray(melody, np.int32)
        if melody.ndim != 3 or melody.shape[1] < windows:
            raise ValueError(f"melody tokens must be [rows, >= {windows}, levels] for {total:g} s, got {melody.shape}")
        if melody.shape[0] != rows:
            melody = np.repeat(melody[:1], rows, axis=0)
        return {"melody": (melody, float(rate))}

    def _encode_prompt(self, audio: Optional[np.ndarray], sample_rate: Optional[int], rows: int) -> "_Prompt":
        """A continuation prompt's tokens, cut to whole semantic tokens (empty without a prompt)."""
        levels = self.coarse_levels + self.fine_levels
        if audio is None:
            return _Prompt(0.0, np.zeros((rows, 0), np.int32), np.zeros((rows, 0, levels), np.int32))

        if self.semantic_tokenizer is None:
            raise ValueError("continuing an audio prompt needs the semantic tokenizer (w2v-BERT + k-means)")
        audio = np.asarray(audio, np.float32)
        if audio.ndim != 1 or not sample_rate or sample_rate <= 0:
            raise ValueError(
                f"prompt_audio must be one mono clip [samples] with a positive prompt_sample_rate, "
                f"got shape {audio.shape} at {sample_rate}"
            )
        semantic = self.semantic_tokenizer.tokenize(
            [resample(audio, sample_rate, self.semantic_tokenizer.sample_rate)]
        )[0]
        count = min(len(semantic), math.floor(len(audio) / sample_rate * self.semantic_rate + 1e-9))
        if count < 1:
            raise ValueError(f"prompt_audio ({len(audio) / sample_rate:.3f} s) is shorter than one semantic token")
        seconds = count / self.semantic_rate
        frames = math.floor(seconds * self.acoustic_rate + 1e-9)
        acoustic = self.codec.encode(resample(audio, sample_rate, self.codec.sample_rate)[None])[0, :frames, :levels]
        return _Prompt(
            seconds,
            np.repeat(semantic[None, :count], rows, axis=0).astype(np.int32),
            np.repeat(acoustic[None], rows, axis=0).astype(np.int32),
        )

    def _schedule_scores(self, schedule: list, starts: Sequence[float], audio: np.ndarray) -> np.ndarray:
        """Each row's MuLan text-audio cosine, averaged over the story's segments by duration
        (a continuation prompt's own audio is not scored)."""
        sr = self.codec.sample_rate
        ends = [*starts[1:], audio.shape[1] / sr]
        total = 0.0
        scores = np.zeros(audio.shape[0])
        for (texts, _), start, end in zip(schedule, starts, ends):
            scores += (end - start) * self.mulan_scores(texts, audio[:, round(start * sr) : round(end * sr)])
            total += end - start
        return scores / total

    def mulan_scores(self, texts: Sequence[str], audio: np.ndarray) -> np.ndarray:
        """MuLan cosine of each clip with its text (clips grouped per text in order): [len(audio)]."""
        if self.codec.sample_rate != self.mulan.sample_rate:
            audio = [resample(a, self.codec.sample_rate, self.mulan.sample_rate) for a in audio]
        a = self.mulan.embed_audio(list(audio))
        t = np.repeat(self.mulan.embed_text(list(texts)), len(a) // len(texts), axis=0)
        return np.sum(a * t, axis=1)
