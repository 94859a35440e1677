"""`musiclm generate`: prompts -> WAV files, from the trained models' directories.

Each prompt's best candidate is written as NNN_<prompt>.wav with a JSON sidecar (prompt, seed,
seconds, per-stage settings and windows, MuLan score, the model directories) and a PNG
spectrogram. Lengths beyond a stage's training window slide its window (`windows`); a story
(`story`: [(text, seconds), ...]) is one piece whose text changes at those times; `continue_from`
continues an audio file (needs `w2v_bert_dir` for its semantic tokens). Bad input (no prompt,
an empty prompt, a length of zero or beyond `max_seconds`, a missing or mismatched model
directory, an unreadable audio prompt) raises before anything is written.

The model directories, the prompt file, the audio prompt and `output_dir` may be object-store
URLs (gs://bucket/samples). Each output's files are written whole (a local temporary file renamed
into place, or one object uploaded), WAV and PNG first and the JSON sidecar last: a reader that
sees NNN_<prompt>.json can rely on its WAV and PNG being complete.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from musiclm_jax import fileio, model_io
from musiclm_jax.audio.io import MISSING_FILE, AudioDecodeError, AudioInfo, load_audio, write_wav
from musiclm_jax.audio.plots import spectrogram_sheet
from musiclm_jax.models.musiclm import PAPER_SETTINGS, STAGES, MusicLM, SamplingSettings, Window
from musiclm_jax.tokenizers.acoustic import AcousticTokenizer
from musiclm_jax.tokenizers.melody import MelodyTokenizer
from musiclm_jax.tokenizers.mulan import MuLanTokenizer
from musiclm_jax.tokenizers.semantic import SemanticTokenizer
from musiclm_jax.training.summaries import log

# The five trained models' directories, the keys of `model_dirs` (w2v_bert_dir is optional: its
# semantic tokenizer only serves continuations of audio prompts; melody_dir too: the melody
# tokenizer, which a semantic stage trained with melody tokens needs).
MODEL_DIRS = ("mulan_dir", "semantic_stage_dir", "coarse_stage_dir", "fine_stage_dir", "soundstream_dir")
OPTIONAL_MODEL_DIRS = ("w2v_bert_dir", "melody_dir")


def check_model_dirs(model_dirs: Mapping[str, Optional[str]]) -> dict[str, str]:
    """The model directories that are given (an optional one may be None), checked.

    Args:
      model_dirs: {key in MODEL_DIRS or OPTIONAL_MODEL_DIRS: directory}.
    Returns:
      The same mapping without the optional directories that are None.
    Raises:
      ValueError: a directory of MODEL_DIRS is missing, or a key is unknown.
      FileNotFoundError: a given directory does not exist.
    """
    dirs = {k: v for k, v in model_dirs.items() if v is not None or k not in OPTIONAL_MODEL_DIRS}
    missing, unknown = [k for k in MODEL_DIRS if k not in dirs], sorted(set(dirs) - {*MODEL_DIRS, *OPTIONAL_MODEL_DIRS})
    if missing or unknown:
        raise ValueError(
            f"model_dirs needs {list(MODEL_DIRS)} (and may have {list(OPTIONAL_MODEL_DIRS)}); "
            f"missing {missing}, unknown {unknown}"
        )
    for name, d in dirs.items():
        if not d or not fileio.isdir(d):
            raise FileNotFoundError(f"{name}={d!r} is not a directory (a `musiclm train` MODEL_DIR)")
    return dirs


def load_musiclm(
    model_dirs: Mapping[str, Optional[str]],
    *,
    semantic_rate: float = 25.0,
    windows: Optional[Mapping[str, Window]] = None,
) -> MusicLM:
    """The whole model from its five training directories (MuLan with its RVQ in mulan_rvq/).

    Args:
      model_dirs: the `musiclm train` directories (or params-only exports) by key: mulan_dir (with
        its RVQ in mulan_rvq/, `musiclm fit_mulan_rvq`), semantic_stage_dir, coarse_stage_dir,
        fine_stage_dir (StageModels), soundstream_dir (the codec; its sample_rate / hop_length is
        the acoustic rate), and optionally w2v_bert_dir (with kmeans/), only to continue audio, and
        melody_dir (with melody_rvq/), for a semantic stage trained with melody tokens.
      semantic_rate: semantic tokens per second (w2v-BERT's frame rate; 25 at the paper config).
      windows: each stage's sliding Window or (seconds, stride); a stage left out (or None) slides its
        training crop (read from its config.gin; the paper's window when that is unknown).
    Returns:
      A MusicLM with every model at its latest checkpoint.
    Raises:
      FileNotFoundError: a directory is missing (or has no model.json, or the RVQ / k-means is not fitted).
      ValueError: a directory is not named, a model.json names another kind of model, or the parts do
        not fit together (e.g. a stage trained on another codec).
    """
    dirs = check_model_dirs(model_dirs)
    stage_dirs = {stage: dirs[f"{stage}_stage_dir"] for stage in STAGES}
    stages = {stage: model_io.load(d, kind="StageModel") for stage, d in stage_dirs.items()}
    semantic_tokenizer = SemanticTokenizer.from_model_dir(dirs["w2v_bert_dir"]) if "w2v_bert_dir" in dirs else None
    codec = AcousticTokenizer.from_model_dir(dirs["soundstream_dir"])
    rates = {"semantic": semantic_rate, "coarse": codec.sample_rate / codec.hop_length}
    rates["fine"] = rates["coarse"]
    chosen = {**crop_windows(stage_dirs, rates), **{k: w for k, w in (windows or {}).items() if w is not None}}
    return MusicLM(
        MuLanTokenizer.from_model_dir(dirs["mulan_dir"]),
        stages,
        codec,
        semantic_rate=semantic_rate,
        windows=chosen,
        semantic_tokenizer=semantic_tokenizer,
        melody=MelodyTokenizer.from_model_dir(dirs["melody_dir"]) if "melody_dir" in dirs else None,
    )


def training_crop_seconds(stage_dir: str) -> Optional[float]:
    """The crop a stage was trained on (from the config.gin `musiclm train` wrote), or None."""
    path = fileio.join(stage_dir, "config.gin")
    if not fileio.exists(path):
        return None
    match = re.search(r"register_token_task\.crop_seconds = (\d+)", fileio.read_text(path))
    return float(match.group(1)) if match else None


def crop_windows(stage_dirs: Mapping[str, str], rates: Mapping[str, float]) -> dict[str, Window]:
    """Each stage's default sliding window: as long as its training crops, at a stride of about
    half a window in whole frames at the stage's token rate (so every window continues the
    previous one). Stages whose crop is unknown are left out (MusicLM then uses the paper's)."""
    out = {}
    for stage, directory in stage_dirs.items():
        crop = training_crop_seconds(directory)
        if crop:
            out[stage] = Window(crop, max(1, int(crop * rates[stage] / 2)) / rates[stage])
    return out


def parse_story(segments: Sequence[str]) -> list[tuple[str, float]]:
    """'SECONDS:TEXT' strings (the --story flag) -> [(text, seconds), ...]."""
    story = []
    for segment in segments:
        seconds, sep, text = segment.partition(":")
        try:
            value = float(seconds)
        except ValueError:
            value = None
        if not sep or value is None or not text.strip():
            raise ValueError(f"a story segment is 'SECONDS:TEXT', e.g. '10:a calm piano intro'; got {segment!r}")
        story.append((text.strip(), value))
    return story


def read_prompts(prompts: Sequence[str] = (), prompt_file: Optional[str] = None) -> list[str]:
    """--prompt values, then the non-empty lines of `prompt_file`; an empty prompt is an error."""
    out = list(prompts or ())
    if prompt_file:
        out += [line.strip() for line in fileio.read_text(prompt_file).splitlines() if line.strip()]
    if not out:
        raise ValueError("no prompt: give --prompt (repeatable) or a prompt file")
    for i, p in enumerate(out):
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"prompt {i} is empty")
    return out


def _load_prompt_audio(path: str, sample_rate: int) -> tuple[np.ndarray, AudioInfo]:
    """`load_audio` of a local path or a URL (downloaded to a temporary file: soundfile reads local
    files); errors and the info name `path`, not the temporary file."""
    if not fileio.is_url(path):
        return load_audio(path, sample_rate=sample_rate)
    if not fileio.isfile(path):
        raise AudioDecodeError(MISSING_FILE, path, "no such file")
    with fileio.local_copy(path) as local:
        try:
            audio, info = load_audio(local, sample_rate=sample_rate)
        except AudioDecodeError as e:
            raise AudioDecodeError(e.category, path, e.detail) from None
    return audio, dataclasses.replace(info, path=path)


def generate(
    *,
    output_dir: str,
    seconds: float,
    prompts: Sequence[str] = (),
    prompt_file: Optional[str] = None,
    model_dirs: Mapping[str, Optional[str]],
    semantic_rate: float = 25.0,
    max_seconds: float = 300.0,
    seed: int = 0,
    num_candidates: int = 1,
    settings: Optional[Mapping[str, SamplingSettings]] = None,
    windows: Optional[Mapping[str, Window]] = None,
    story: Sequence[tuple[str, float]] = (),
    continue_from: Optional[str] = None,
    melody: Optional[str] = None,
    model: Optional[MusicLM] = None,
    progress: Optional[Callable[[str, int, int], None]] = None,
) -> list[dict]:
    """Generates every prompt (or the one story); returns the sidecars written (one per output).

    Args:
      output_dir: where each output's NNN_<prompt>.wav, .png spectrogram and, last, .json sidecar go
        (a local path, created if missing, or a URL; NNN is the prompt's index, <prompt> its text with
        each run of characters other than [A-Za-z0-9] as '_', at most 50 characters).
      seconds: length of the new music per prompt, in (0, max_seconds]; with a story, replaced by the
        segments' sum.
      prompts: the texts, one piece each.
      prompt_file: a file with one prompt per line (blank lines skipped), read after `prompts`.
      model_dirs: as `load_musiclm` (w2v_bert_dir is needed by `continue_from`); the five
        directories are also recorded in each sidecar.
      semantic_rate: semantic tokens per second, as `load_musiclm`.
      max_seconds: the longest `seconds` accepted.
      seed: the sampling seed: same seed, models and settings, same tokens.
      num_candidates: samples per prompt; the one with the best MuLan text-audio cosine is written.
      settings: per-stage SamplingSettings over PAPER_SETTINGS (the paper's temperatures).
      windows: per-stage sliding windows, as `load_musiclm`.
      story: [(text, seconds), ...] in order, instead of prompts: one piece whose text changes after
        each segment's seconds; its prompt (file name, sidecar) is the texts joined by " | ".
      continue_from: an audio file to continue; the written audio starts with its codec reconstruction
        (prompt_seconds long) before the `seconds` of new music.
      melody: an audio file of a tune (hummed, whistled, sung or played; any length: looped or cut to
        the music's) for every prompt to follow; needs a semantic stage trained with melody tokens and
        `melody_dir`.
      model: an already loaded MusicLM (e.g. `export.load_exported_musiclm`); the directories are then
        only recorded, and `semantic_rate` and `windows` are unused.
      progress: also called as MusicLM.generate's `progress(stage, window, num_windows)` (the
        terminal shows a bar per stage either way).
    Returns:
      The sidecars, one dict per output in prompt order (also written as NNN_<prompt>.json): prompt,
      seed, seconds, sample_rate, num_candidates, mulan_score (of the written candidate), per-stage
      settings and windows, models (the directories), generation_seconds_all_prompts, file (the WAV's
      path); with a story also story, with `continue_from` also continue_from and prompt_seconds.
    Raises:
      ValueError: prompts and a story both given, no prompt, an empty prompt or story segment,
        `seconds` outside (0, max_seconds], `continue_from` without `w2v_bert_dir`, or a model
        directory of the wrong kind.
      FileNotFoundError: a model directory is missing.
      AudioDecodeError: `continue_from` or `melody` cannot be read.
      UnusableMelodyError: `melody` is silent.
    """
    if story:
        if prompts or prompt_file:
            raise ValueError("give either prompts or a story, not both")
        story = [(str(t), float(s)) for t, s in story]
        for i, (text, length) in enumerate(story):
            if not text.strip() or not length > 0:
                raise ValueError(f"story segment {i} needs a non-empty text and seconds > 0, got {(text, length)}")
        texts, seconds = [" | ".join(t for t, _ in story)], sum(s for _, s in story)
    else:
        texts = read_prompts(prompts, prompt_file)
    if not 0 < seconds <= max_seconds:
        raise ValueError(f"seconds must be in (0, max_seconds={max_seconds}], got {seconds}")
    settings = {**PAPER_SETTINGS, **(settings or {})}
    if continue_from and not (model_dirs.get("w2v_bert_dir") or (model and model.semantic_tokenizer)):
        raise ValueError("continue_from needs w2v_bert_dir (the semantic tokenizer, with its kmeans/)")
    model = model or load_musiclm(model_dirs, semantic_rate=semantic_rate, windows=windows)
    prompt = {}
    if continue_from:
        audio, info = _load_prompt_audio(continue_from, model.codec.sample_rate)  # AudioDecodeError: clear
        prompt = {"prompt_audio": audio, "prompt_sample_rate": info.sample_rate}
    if melody:
        if model.melody is None:
            raise ValueError(
                "melody needs a semantic stage trained with melody tokens and melody_dir (the melody model)"
            )
        tune, info = _load_prompt_audio(melody, model.melody.sample_rate)
        prompt.update(melody_audio=tune, melody_sample_rate=info.sample_rate)
        model.tune_tokens(tune, info.sample_rate, None)  # a silent tune fails before any sampling

    t0 = time.perf_counter()
    with _StageBars(len(texts), num_candidates, also=progress) as bars:
        common = dict(seed=seed, settings=settings, num_candidates=num_candidates, progress=bars.update, **prompt)
        result = model.generate_story(story, **common) if story else model.generate(texts, seconds, **common)
    elapsed = time.perf_counter() - t0
    fileio.makedirs(output_dir)
    sidecars = []
    for i, text in enumerate(texts):
        stem = fileio.join(output_dir, f"{i:03d}_{re.sub(r'[^A-Za-z0-9]+', '_', text).strip('_')[:50]}")
        with fileio.local_output(stem + ".wav") as local:  # soundfile and matplotlib write local files
            write_wav(local, result.audio[i], result.sample_rate)
        with fileio.local_output(stem + ".png") as local:
            spectrogram_sheet([(text, result.audio[i], result.sample_rate)], path=local)
        sidecar = {
            "prompt": text,
            "seed": seed,
            "seconds": seconds,
            "sample_rate": result.sample_rate,
            "num_candidates": num_candidates,
            "mulan_score": None if result.mulan_score is None else float(result.mulan_score[i]),
            "settings": {s: vars(settings[s]) for s in STAGES},
            "windows": {s: vars(model.windows[s]) for s in STAGES},
            "models": {k: model_dirs.get(k) for k in MODEL_DIRS},
            "generation_seconds_all_prompts": elapsed,
            "file": stem + ".wav",
        }
        if story:
            sidecar["story"] = [{"text": t, "seconds": s} for t, s in story]
        if continue_from:
            sidecar.update(continue_from=continue_from, prompt_seconds=result.prompt_seconds)
        if melody:
            sidecar["melody"] = melody
        fileio.write_text(stem + ".json", json.dumps(sidecar, indent=1))  # last: WAV and PNG are whole
        sidecars.append(sidecar)
    log(
        "generate: %d prompts x %.1f s in %.1f s (%.2fx real time); written to %s",
        len(texts),
        seconds,
        elapsed,
        len(texts) * seconds / elapsed,
        output_dir,
    )
    return sidecars


class _StageBars:
    """One tqdm bar per stage, advanced per window (MusicLM.generate's progress callback), and
    the caller's own callback (`also`) beside it."""

    def __init__(self, num_prompts: int, num_candidates: int, also: Optional[Callable[[str, int, int], None]] = None):
        self.what = f"{num_prompts} prompt(s) x {num_candidates} candidate(s)"
        self.bar = None
        self.also = also

    def update(self, stage: str, window: int, num_windows: int) -> None:
        from tqdm import tqdm

        if self.also is not None:
            self.also(stage, window, num_windows)
        if window == 0:
            self.close()
            self.bar = tqdm(total=num_windows, desc=f"generate {stage} ({self.what})", unit="window")
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
