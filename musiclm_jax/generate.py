"""`musiclm generate`: prompts -> WAV files, from the trained models' directories.

Each prompt's best candidate is written as NNN_<prompt>.wav with a JSON sidecar (prompt, seed,
seconds, per-stage settings, MuLan score, the model directories) and a PNG spectrogram. Bad
input (no prompt, an empty prompt, a length of zero or beyond `max_seconds`, a missing or
mismatched model directory) raises before anything is written.
"""
from __future__ import annotations

import json
import os
import re
import time
from typing import Mapping, Optional, Sequence

from musiclm_jax.models.musiclm import PAPER_SETTINGS, STAGES, MusicLM, SamplingSettings
from musiclm_jax.models.stages import StageConfig, StageModel


def load_stage(model_dir: str, step: Optional[int] = None) -> tuple[StageModel, dict]:
    """(StageModel, params) of a stage's `musiclm train` directory (model.json + checkpoint)."""
    from musiclm_jax.tokenizers.loading import load_model_dir

    def shapes(model: StageModel):  # parameter shapes do not depend on the sequence length
        return {s.feature: (1, 1) for s in (*model.config.conditions, model.config.target)}

    return load_model_dir(model_dir, "StageModel", lambda c: StageModel(StageConfig.from_dict(c)), shapes, step)


def load_musiclm(*, mulan_dir: str, semantic_stage_dir: str, coarse_stage_dir: str, fine_stage_dir: str,
                 soundstream_dir: str, semantic_rate: float = 25.0) -> MusicLM:
    """The whole model from its five training directories (MuLan with its RVQ in mulan_rvq/)."""
    from musiclm_jax.tokenizers.acoustic import AcousticTokenizer
    from musiclm_jax.tokenizers.mulan import MuLanTokenizer

    dirs = {"mulan_dir": mulan_dir, "semantic_stage_dir": semantic_stage_dir, "coarse_stage_dir": coarse_stage_dir,
            "fine_stage_dir": fine_stage_dir, "soundstream_dir": soundstream_dir}
    for name, d in dirs.items():
        if not d or not os.path.isdir(d):
            raise FileNotFoundError(f"{name}={d!r} is not a directory (a `musiclm train` MODEL_DIR)")
    stages = {"semantic": load_stage(semantic_stage_dir), "coarse": load_stage(coarse_stage_dir),
              "fine": load_stage(fine_stage_dir)}
    return MusicLM(MuLanTokenizer.from_model_dir(mulan_dir), stages, AcousticTokenizer.from_model_dir(soundstream_dir),
                   semantic_rate=semantic_rate)


def read_prompts(prompts: Sequence[str] = (), prompt_file: Optional[str] = None) -> list[str]:
    """--prompt values, then the non-empty lines of `prompt_file`; an empty prompt is an error."""
    out = list(prompts or ())
    if prompt_file:
        with open(prompt_file) as f:
            out += [line.strip() for line in f if line.strip()]
    if not out:
        raise ValueError("no prompt: give --prompt (repeatable) or a prompt file")
    for i, p in enumerate(out):
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"prompt {i} is empty")
    return out


def generate(*, output_dir: str, seconds: float, prompts: Sequence[str] = (), prompt_file: Optional[str] = None,
             mulan_dir: str, semantic_stage_dir: str, coarse_stage_dir: str, fine_stage_dir: str, soundstream_dir: str,
             semantic_rate: float = 25.0, max_seconds: float = 30.0, seed: int = 0, num_candidates: int = 1,
             settings: Optional[Mapping[str, SamplingSettings]] = None, model: Optional[MusicLM] = None) -> list[dict]:
    """Generates every prompt; returns the sidecars written (one per prompt)."""
    from musiclm_jax.audio.io import write_wav
    from musiclm_jax.audio.plots import spectrogram_sheet
    from musiclm_jax.training.summaries import log

    texts = read_prompts(prompts, prompt_file)
    if not 0 < seconds <= max_seconds:
        raise ValueError(f"seconds must be in (0, max_seconds={max_seconds}], got {seconds}")
    settings = {**PAPER_SETTINGS, **(settings or {})}
    dirs = dict(mulan_dir=mulan_dir, semantic_stage_dir=semantic_stage_dir, coarse_stage_dir=coarse_stage_dir,
                fine_stage_dir=fine_stage_dir, soundstream_dir=soundstream_dir)
    model = model or load_musiclm(**dirs, semantic_rate=semantic_rate)
    t0 = time.perf_counter()
    result = model.generate(texts, seconds, seed=seed, settings=settings, num_candidates=num_candidates,
                            progress=lambda stage: log("generate: %s stage (%d prompts x %d candidates)", stage,
                                                       len(texts), num_candidates))
    elapsed = time.perf_counter() - t0
    os.makedirs(output_dir, exist_ok=True)
    sidecars = []
    for i, text in enumerate(texts):
        stem = os.path.join(output_dir, f"{i:03d}_{re.sub(r'[^A-Za-z0-9]+', '_', text).strip('_')[:50]}")
        write_wav(stem + ".wav", result.audio[i], result.sample_rate)
        spectrogram_sheet([(text, result.audio[i], result.sample_rate)], path=stem + ".png")
        sidecar = {"prompt": text, "seed": seed, "seconds": seconds, "sample_rate": result.sample_rate,
                   "num_candidates": num_candidates,
                   "mulan_score": None if result.mulan_score is None else float(result.mulan_score[i]),
                   "settings": {s: vars(settings[s]) for s in STAGES}, "models": dirs,
                   "generation_seconds_all_prompts": elapsed, "file": stem + ".wav"}
        with open(stem + ".json", "w") as f:
            json.dump(sidecar, f, indent=1)
        sidecars.append(sidecar)
    log("generate: %d prompts x %.1f s in %.1f s (%.2fx real time); written to %s", len(texts), seconds, elapsed,
        len(texts) * seconds / elapsed, output_dir)
    return sidecars
