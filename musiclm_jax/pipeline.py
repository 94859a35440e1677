"""`musiclm pipeline`: the whole MusicLM recipe on the embedded synthetic source, resumable.

    run_pipeline(model_dir='/tmp/musiclm', size='small')      # or model_dir='gs://bucket/run'

Steps, in order (each one `musiclm` run configured by gin/pipeline/<size>/<gin>.gin, which
also runs on its own, e.g. `musiclm train --gin_file=pipeline/small/codec.gin
--gin.MODEL_DIR="'/tmp/codec'"`):

    codec            train SoundStream                                  D/codec
    w2v_bert         train w2v-BERT                                     D/w2v_bert
    semantic_kmeans  fit the semantic k-means on its embeddings        D/w2v_bert/kmeans
    mulan            train MuLan                                        D/mulan
    mulan_rvq        fit the MuLan-token RVQ                            D/mulan/mulan_rvq
    melody           train the melody model (only with melody=True)     D/melody
    melody_rvq       fit the melody-token RVQ (only with melody=True)   D/melody/melody_rvq
    precompute       tokenize synthetic clips with the three models     D/tokens
                     (four with melody: the cache gets melody tokens)
    semantic_stage   MuLan -> semantic tokens                           D/semantic_stage
    coarse_stage     MuLan + semantic -> coarse acoustic tokens         D/coarse_stage
    fine_stage       MuLan + coarse -> fine acoustic tokens             D/fine_stage
    generate         music for prompts held out from training           D/generated
                     (with melody: also pieces that follow held-out hummed tunes, D/generated/melody)
    evaluate         FAD, KLD, MCC, adherence of the music; report.html  D/eval

A step is done once D/steps/<step>.json exists (written last, whole, at its end, with its wall
time, metrics and configuration). The configuration is a text of what determines the step's
result: its gin files as parsed (`gin.config_str()`: every binding of every file they include,
after the size's macros and the step's `step_bindings`; D written as `D`, so a moved directory
keeps its steps), the run_pipeline options that reach it (generate: seconds, prompts, seed, ...;
evaluate: seconds, seed, the attribute classifier's size) and the configuration hashes of the
steps it reads (DEPENDS); the marker keeps the text's lines and their sha256.

A rerun skips a step whose marker holds the current hash. A step whose configuration changed
(a binding, an option, or a step it reads) is rerun from scratch, its outputs deleted first
(the old checkpoints belong to the old configuration), and so is every step that reads it; the
log names the first changed line. A step without a marker (interrupted) resumes: a training from
its orbax checkpoints, precompute from its finished shards. A marker written before
configurations were recorded counts as done (the log says so once). D/pipeline_summary.json
gathers every step's time and metrics at the end.

D may be a local directory or an object-store URL (gs://bucket/run): every file goes through
musiclm_jax.fileio.

The library takes plain values; gin is only how each step reads its model configuration
(the same files the CLI modes use), in a configuration of its own that is cleared after it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import json
import re
import time
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import soundfile

import gin
from musiclm_jax import fileio, gin_utils, model_io, pipeline_data
from musiclm_jax import generate as generate_lib
from musiclm_jax.audio.io import write_wav
from musiclm_jax.audio.plots import pitch_curves_over_spectrogram
from musiclm_jax.data import melody as melody_data
from musiclm_jax.data import synthetic, token_cache_tasks
from musiclm_jax.evaluation import eval_sets, text_to_music
from musiclm_jax.evaluation import metrics as eval_metrics
from musiclm_jax.evaluation.embedders import MuLanAudioEmbedder
from musiclm_jax.evaluation.eval_sets import PROMPT_FAMILIES, held_out_prompts
from musiclm_jax.evaluation.pitch import CHROMA_HOP, melody_adherence, track_f0
from musiclm_jax.tokenizers.acoustic import AcousticTokenizer
from musiclm_jax.tokenizers.mulan import MuLanEmbedder
from musiclm_jax.training.summaries import format_duration, log

SIZES = ("tiny", "small")
STEPS = (
    "codec",
    "w2v_bert",
    "semantic_kmeans",
    "mulan",
    "mulan_rvq",
    "precompute",
    "semantic_stage",
    "coarse_stage",
    "fine_stage",
    "generate",
    "evaluate",
)
# The steps whose results each step reads (directly; the rest follows): a step reruns when its
# own configuration or one of these steps' changed. The three stages train on the token cache
# alone, so changing one retrains neither of the others.
DEPENDS = {
    "codec": (),
    "w2v_bert": (),
    "semantic_kmeans": ("w2v_bert",),
    "mulan": (),
    "mulan_rvq": ("mulan",),
    "melody": (),
    "melody_rvq": ("melody",),
    "precompute": ("codec", "semantic_kmeans", "mulan_rvq", "melody_rvq"),
    "semantic_stage": ("precompute",),
    "coarse_stage": ("precompute",),
    "fine_stage": ("precompute",),
    "generate": ("mulan_rvq", "melody_rvq", "semantic_stage", "coarse_stage", "fine_stage", "codec"),
    "evaluate": ("generate", "mulan", "codec"),
}
# What each step writes under the pipeline's directory: deleted before a step reruns because its
# configuration changed.
OUTPUTS = {
    "codec": ("codec",),
    "w2v_bert": ("w2v_bert",),
    "semantic_kmeans": ("w2v_bert/kmeans",),
    "mulan": ("mulan",),
    "mulan_rvq": ("mulan/mulan_rvq",),
    "melody": ("melody",),
    "melody_rvq": ("melody/melody_rvq",),
    "precompute": ("tokens",),
    "semantic_stage": ("semantic_stage",),
    "coarse_stage": ("coarse_stage",),
    "fine_stage": ("fine_stage",),
    "generate": ("generated",),
    "evaluate": ("eval",),
}
# Reusing another pipeline directory's models (run_pipeline(from_dir=...)): per step, 'copy' its
# result as it is, 'finetune' (train from its parameters on this run's data, as the step's gin
# says) or 'train' from scratch. The defaults keep the tokenizers (so the stages' token layout
# still fits) and fine-tune the three stages.
REUSE_MODES = ("copy", "finetune", "train")
FROM_DEFAULTS = {
    "codec": "copy",
    "w2v_bert": "copy",
    "semantic_kmeans": "copy",
    "mulan": "copy",
    "mulan_rvq": "copy",
    "melody": "copy",
    "melody_rvq": "copy",
    "semantic_stage": "finetune",
    "coarse_stage": "finetune",
    "fine_stage": "finetune",
}
# Layered after a fine-tuned step's own gin file (step_bindings still come last).
FINETUNE_GIN = "runs/finetune.gin"
# A fitted step can be copied only with the model it was fitted on.
_COPY_NEEDS = {"semantic_kmeans": "w2v_bert", "mulan_rvq": "mulan", "melody_rvq": "melody"}
_TRAINED = ("codec", "w2v_bert", "mulan", "melody", "semantic_stage", "coarse_stage", "fine_stage")
# Steps that run only when asked (run_pipeline(melody=True)), after mulan_rvq.
MELODY_STEPS = ("melody", "melody_rvq")
ALL_STEPS = STEPS[: STEPS.index("mulan_rvq") + 1] + MELODY_STEPS + STEPS[STEPS.index("mulan_rvq") + 1 :]
# The evaluate step's attribute classifier (trained once, then loaded): deleted when its size changes.
CLASSIFIER_DIR = "attribute_classifier"
# Where each model lives under the pipeline's directory.
DIRS = {
    "codec": "codec",
    "w2v_bert": "w2v_bert",
    "mulan": "mulan",
    "melody": "melody",
    "tokens": "tokens",
    "semantic_stage": "semantic_stage",
    "coarse_stage": "coarse_stage",
    "fine_stage": "fine_stage",
    "generated": "generated",
    "eval": "eval",
}
# The synthetic attribute classifier behind the pipeline's KLD, per size.
CLASSIFIER = {
    "tiny": dict(steps=60, num_examples=32, seconds=1.0),
    "small": dict(steps=300, num_examples=256, seconds=4.0),
}
SUMMARY_FILE = "pipeline_summary.json"
PLAN_FILE = "pipeline_plan.json"  # what the run was going to do, written as it starts
# Throughput scalars say nothing about the model; kept out of the summary.
_NOISE = ("steps_per_sec", "examples_per_sec", "tokens_per_sec", "mfu", "learning_rate")


def step_gin(size: str, name: str) -> str:
    """The gin file of a step (searched in the packaged gin/ folder)."""
    return f"pipeline/{size}/{name}.gin"


# ---- small helpers -------------------------------------------------------------------------------


class _Configurables:
    """The entry functions a step's gin file registers (`import musiclm_jax.configurables`), by
    name (`c.train()`), looked up in gin's registry: this module never imports the gin layer,
    which registers this module's own entry function."""

    def __getattr__(self, name: str) -> Callable:
        return gin.get_configurable(name)


@contextlib.contextmanager
def _gin_config(gin_files: Sequence[str], bindings: Sequence[str], then: Optional[Callable[[], list[str]]] = None):
    """A fresh gin configuration for one step (cleared after it, also on error); yields the
    registered configurables. `then()`: bindings parsed after the files and `bindings` (it may
    read what they bound). Clearing is safe inside a gin-configured run_pipeline: its own
    arguments were bound when it was called."""
    gin.clear_config()
    try:
        gin_utils.parse(list(gin_files), list(bindings))
        if then is not None:
            with gin.unlock_config():
                gin.parse_config(then())
        yield _Configurables()
    finally:
        gin.clear_config()


def last_scalars(logdir: str) -> dict[str, float]:
    """The last value of every scalar in a TensorBoard directory (the trainer's summaries; local
    or an object-store URL)."""
    import tensorflow as tf

    out: dict[str, tuple[int, float]] = {}
    for path in fileio.glob(logdir, "events.out.tfevents.*"):
        with fileio.local_copy(path) as local:
            for event in tf.compat.v1.train.summary_iterator(local):
                for v in event.summary.value:
                    if v.HasField("tensor"):
                        if v.tensor.dtype == tf.string.as_datatype_enum or v.tensor.tensor_shape.dim:
                            continue
                        value = float(tf.make_ndarray(v.tensor))
                    elif v.HasField("simple_value"):
                        value = float(v.simple_value)
                    else:
                        continue
                    if v.tag not in out or event.step >= out[v.tag][0]:
                        out[v.tag] = (int(event.step), value)
    return {k: v for k, (_, v) in sorted(out.items()) if k not in _NOISE}


# ---- the steps ----------------------------------------------------------------------------------


class _Context:
    """What the steps share: sizes, directories, extra gin bindings per step, options."""

    def __init__(
        self,
        model_dir: str,
        size: str,
        step_bindings: Mapping[str, Sequence[str]],
        options: dict,
        data: Optional[pipeline_data.DataSpec] = None,
        from_dir: Optional[str] = None,
        reuse: Optional[Mapping[str, str]] = None,
    ):
        self.model_dir, self.size, self.options, self.data = model_dir, size, options, data
        self.from_dir, self.reuse = from_dir, dict(reuse or {})
        self.step_bindings = {k: list(v) for k, v in (step_bindings or {}).items()}
        self.dirs = {k: fileio.join(model_dir, v) for k, v in DIRS.items()}
        self.melody = bool(options.get("melody"))
        self.steps = ALL_STEPS if self.melody else STEPS

    def depends(self, step: str) -> tuple[str, ...]:
        """The steps of this run whose results `step` reads."""
        return tuple(d for d in DEPENDS[step] if d in self.steps)

    def gin(self, step: str) -> Optional[tuple[str, dict[str, str]]]:
        """(gin file, macros) of a step that parses one; None for generate and evaluate."""
        d = self.dirs
        if step in ("codec", "w2v_bert", "mulan", "melody"):
            return step, {"MODEL_DIR": d[step]}
        if step == "semantic_stage" and self.melody:
            return "semantic_stage_melody", {"MODEL_DIR": d[step], "TOKEN_CACHE_DIR": d["tokens"]}
        if step.endswith("_stage"):
            return step, {"MODEL_DIR": d[step], "TOKEN_CACHE_DIR": d["tokens"]}
        if step == "semantic_kmeans":
            return "w2v_bert", {"MODEL_DIR": d["w2v_bert"]}
        if step == "mulan_rvq":
            return "mulan", {"MODEL_DIR": d["mulan"]}
        if step == "melody_rvq":
            return "melody", {"MODEL_DIR": d["melody"]}
        if step == "precompute":
            dirs = {
                "MULAN_DIR": d["mulan"],
                "W2V_BERT_DIR": d["w2v_bert"],
                "SOUNDSTREAM_DIR": d["codec"],
                "TOKEN_CACHE_DIR": d["tokens"],
            }
            return "precompute", {**dirs, "MELODY_DIR": d["melody"]} if self.melody else dirs
        return None

    def mode(self, step: str) -> str:
        """'copy', 'finetune' or 'train' (without from_dir, always 'train')."""
        return self.reuse.get(step, "train") if self.from_dir else "train"

    def bindings(self, step: str, **macros) -> list[str]:
        extra = []
        if self.mode(step) == "finetune":  # t5x's order: this run's checkpoints first, else these parameters
            extra.append(f"train.restore_params_from = {fileio.join(self.from_dir, DIRS[step], 'checkpoints')!r}")
        return [f"{k} = {v!r}" for k, v in macros.items()] + extra + self.step_bindings.get(step, [])

    @contextlib.contextmanager
    def configured(self, step: str):
        """The step's gin configuration, parsed (yields the configurables)."""
        gin_name, macros = self.gin(step)
        files = [step_gin(self.size, gin_name)]
        if self.mode(step) == "finetune":
            files.append(FINETUNE_GIN)
        then = None
        if self.data is not None and step in pipeline_data.SCOPES:  # the user's collection, not the synthetic source
            then = lambda: pipeline_data.gin_bindings(self.data, step, gin.query_parameter)  # noqa: E731
        with _gin_config(files, self.bindings(step, **macros), then) as configurables:
            yield configurables

    def run(self, step: str, fn: Callable):
        with self.configured(step) as configurables:
            return fn(configurables)


def _copy(ctx: _Context, step: str) -> dict:
    """The other run's result of `step`, copied into this run (its outputs only: a nested output of
    another step, w2v_bert/kmeans or mulan/mulan_rvq, is that step's to copy)."""
    nested = {o for other in ctx.steps if other != step for o in OUTPUTS[other]}
    for out in OUTPUTS[step]:
        src, dst = fileio.join(ctx.from_dir, out), fileio.join(ctx.model_dir, out)
        fileio.makedirs(dst)
        for name in fileio.listdir(src):
            if f"{out}/{name}" in nested:
                continue
            child = fileio.join(src, name)
            if fileio.isdir(child):
                fileio.copytree(child, fileio.join(dst, name))
            else:
                fileio.copy(child, fileio.join(dst, name))

    def here(value):  # the other run's paths in the metrics (model_dir, cache_dir, ...), as this run's
        if isinstance(value, str) and value.startswith(ctx.from_dir + "/"):
            return ctx.model_dir + value[len(ctx.from_dir) :]
        return value

    return {k: here(v) for k, v in read_marker(ctx.from_dir, step)["metrics"].items()}


def _train(ctx: _Context, step: str) -> dict:
    model_dir = ctx.dirs[step]
    if step == "mulan" and ctx.mode(step) == "finetune":  # the parameters' token ids: keep their vocabulary
        src = fileio.join(ctx.from_dir, DIRS["mulan"], "text_vocab")
        if not fileio.exists(fileio.join(model_dir, "text_vocab")):
            fileio.copytree(src, fileio.join(model_dir, "text_vocab"))
    ctx.run(step, lambda c: c.train(on_start=gin_utils.write_config))
    return {
        "model_dir": model_dir,
        "train": last_scalars(fileio.join(model_dir, "train")),
        "eval": last_scalars(fileio.join(model_dir, "eval")),
    }


def _semantic_kmeans(ctx: _Context, step: str) -> dict:
    info = ctx.run(step, lambda c: c.fit_semantic_kmeans())
    return {k: v for k, v in info.items() if isinstance(v, (int, float, str))}


def _mulan_rvq(ctx: _Context, step: str) -> dict:
    info = ctx.run(step, lambda c: c.fit_mulan_rvq() if step == "mulan_rvq" else c.fit_melody_rvq())
    return {
        k: v
        for k, v in info.items()
        if k in ("levels", "codebook_size", "num_examples", "reconstruction_cosine", "eval_reconstruction_cosine")
    }


def _precompute(ctx: _Context, step: str) -> dict:
    summary = ctx.run(step, lambda c: c.precompute_tokens())
    return {
        "cache_dir": ctx.dirs["tokens"],
        "splits": {s: {k: v[k] for k in ("clips", "seconds", "tokens")} for s, v in summary["splits"].items()},
    }


def _collection_prompts(ctx: _Context) -> list[dict]:
    """The captions of the collection's validation clips (the first num_prompts that have one),
    each with its clip's id: what the user's own music is measured against."""
    out = []
    for ex in ctx.data.source(pipeline_data.SCAN_RATE).examples("validation"):
        if ex.caption.strip():
            out.append({"caption": ex.caption.strip(), "labels": {}, "mentioned": [], "clip_id": ex.id})
        if len(out) == ctx.options["num_prompts"]:
            break
    return out


def _generate(ctx: _Context, step: str) -> dict:
    o = ctx.options
    if o["prompts"]:  # the user's own prompts: nothing known about their attributes
        prompts = [{"caption": t, "labels": {}, "mentioned": []} for t in o["prompts"]]
    elif ctx.data is not None:
        prompts = _collection_prompts(ctx)
    else:
        prompts = held_out_prompts(
            o["num_prompts"], train_examples=o["train_captions_checked"], family=o["prompt_family"]
        )
    texts = [p["caption"] for p in prompts]
    dirs = generate_model_dirs(ctx.model_dir, melody=ctx.melody)
    model = generate_lib.load_musiclm(dirs)  # each stage slides its training crop
    windows = model.windows
    common = dict(
        seconds=o["seconds"],
        model_dirs=dirs,
        max_seconds=max(o["seconds"], 30.0),
        seed=o["seed"],
        num_candidates=o["num_candidates"],
        settings=o["settings"],
        model=model,
    )
    sidecars = generate_lib.generate(output_dir=ctx.dirs["generated"], prompts=texts, **common)
    for p, s in zip(prompts, sidecars):
        p["wav"], p["png"], p["mulan_score"] = s["file"], s["file"][:-4] + ".png", s["mulan_score"]
    out = {
        "output_dir": ctx.dirs["generated"],
        "prompts": prompts,
        "windows": {k: vars(w) for k, w in windows.items()},
        "generation_seconds": sidecars[0]["generation_seconds_all_prompts"],
    }
    if ctx.melody:
        out["melody"] = _generate_with_melody(ctx, prompts, common)
    return out


def _generate_with_melody(ctx: _Context, prompts: list[dict], common: dict) -> dict:
    """Music that follows held-out hummed tunes (synthetic validation melodies, data/melody.py),
    one per prompt up to num_melody_prompts, under that prompt's text; each scored against its
    tune (evaluation.pitch.melody_adherence) beside the prompt's text-only piece (same seed and
    model, no tune: chance) and an instrument rendition of the same tune (the ceiling)."""
    o, sr = ctx.options, common["model"].codec.sample_rate
    rows = []
    for k, p in enumerate(prompts[: o["num_melody_prompts"]]):
        (hum, _), (played, _) = melody_data.melody_group(
            synthetic.SPLIT_SEEDS["validation"], k, kinds=("hum", "instrument"), sample_rate=sr, duration_s=o["seconds"]
        )
        out_dir = fileio.join(ctx.dirs["generated"], "melody", f"tune_{k:03d}")
        fileio.makedirs(out_dir)
        tune_path = fileio.join(out_dir, "tune.wav")
        with fileio.local_output(tune_path) as local:
            write_wav(local, hum, sr)
        (sidecar,) = generate_lib.generate(output_dir=out_dir, prompts=[p["caption"]], melody=tune_path, **common)
        followed = _read_wav(sidecar["file"])[0]
        picture = fileio.join(out_dir, "pitch_curves.png")
        with fileio.local_output(picture) as local:
            rate = sr / CHROMA_HOP  # frames per second of track_f0 at melody_adherence's frame length
            pitch_curves_over_spectrogram(
                followed,
                sr,
                [
                    ("hummed tune", track_f0(hum, sr, 4 * CHROMA_HOP), rate),
                    ("generated", track_f0(followed, sr, 4 * CHROMA_HOP), rate),
                ],
                local,
                title=f"{p['caption']!r} following a held-out hummed tune (pitch curves: librosa pyin)",
            )
        rows.append(
            {
                "tune": tune_path,
                "prompt": p["caption"],
                "wav": sidecar["file"],
                "png": picture,
                "with_tune": melody_adherence(hum, followed, sr),
                "text_only": melody_adherence(hum, _read_wav(p["wav"])[0], sr),
                "played_tune": melody_adherence(hum, played, sr),
            }
        )
    means = {
        kind: {m: float(np.nanmean([r[kind][m] for r in rows])) for m in ("chroma_cosine", "pitch_class_agreement")}
        for kind in ("with_tune", "text_only", "played_tune")
    }
    log(
        "pipeline melody: %d hummed tunes; chroma cosine with the tune %.3f, text-only %.3f (chance), the tune played "
        "%.3f (ceiling)",
        len(rows),
        means["with_tune"]["chroma_cosine"],
        means["text_only"]["chroma_cosine"],
        means["played_tune"]["chroma_cosine"],
    )
    return {"tunes": rows, "mean": means}


def _evaluate(ctx: _Context, step: str, done: dict) -> dict:
    """The text-to-music eval of the generated music (evaluation.text_to_music, into D/eval with
    report.html): the held-out pieces the prompts describe are the references (FAD, KLD, MCC,
    adherence beside the pieces' own and their codec reconstructions'). The user's own prompts
    have no references: their music is only run through the detectors."""
    prompts = done["generate"]["metrics"]["prompts"]
    clips = [_read_wav(p["wav"]) for p in prompts]
    rate = clips[0][1]
    from_collection = all("clip_id" in p for p in prompts)
    if not (all("index" in p for p in prompts) or from_collection) or len(prompts) < 2:
        for p, (audio, sr) in zip(prompts, clips):
            p["detected"] = eval_sets.detect(audio, sr)
        return {"prompts": prompts}
    mulan = MuLanEmbedder.from_model_dir(ctx.dirs["mulan"])
    if from_collection:  # the clips the captions describe; no labels, so no adherence or KLD
        items = _collection_items(ctx, prompts, rate)
        classifier, title = None, f"musiclm pipeline ({ctx.size}) on {ctx.data.path}: music for validation captions"
    else:
        items = [eval_sets.synthetic_item(p, ctx.options["seconds"], rate) for p in prompts]
        classifier = text_to_music.SyntheticAttributeClassifier(
            fileio.join(ctx.model_dir, CLASSIFIER_DIR), **CLASSIFIER[ctx.size]
        )
        title = f"musiclm pipeline ({ctx.size}): music for held-out captions"
    results = text_to_music.generate_and_score(
        ctx.dirs["eval"],
        items,
        extra=_melody_for_report(ctx, done["generate"]["metrics"].get("melody")),
        generated=np.stack([a for a, _ in clips]),
        generated_sample_rate=rate,
        mulan=mulan,
        codec=AcousticTokenizer.from_model_dir(ctx.dirs["codec"]),
        embedders={"mulan": MuLanAudioEmbedder(mulan)},
        classifier=classifier,
        seed=ctx.options["seed"],
        num_report_samples=len(items),
        title=title,
    )
    for p, row in zip(prompts, results["items"]):
        p["detected"] = row["detected"]
    return {**results, "prompts": prompts}


def _melody_for_report(ctx: _Context, melody: Optional[dict]) -> Optional[dict]:
    """The generate step's melody results for report.html, their files copied beside it (D/eval/melody/)."""
    if not melody:
        return None
    tunes = []
    for k, t in enumerate(melody["tunes"]):
        folder = f"melody/tune_{k:03d}"
        fileio.makedirs(fileio.join(ctx.dirs["eval"], folder))
        files = {"tune": "tune.wav", "wav": "music.wav", "png": "pitch_curves.png"}
        for key, name in files.items():
            fileio.copy(t[key], fileio.join(ctx.dirs["eval"], folder, name))
        tunes.append({**t, **{key: f"{folder}/{name}" for key, name in files.items()}})
    return {"melody": {"mean": melody["mean"], "tunes": tunes}}


def _collection_items(ctx: _Context, prompts: list[dict], rate: int) -> list:
    """EvalItems of the validation clips the prompts came from, their first `seconds` (zero-padded
    when shorter) at `rate`."""
    wanted = {p["clip_id"] for p in prompts}
    n = int(round(ctx.options["seconds"] * rate))
    clips = {}
    for ex in ctx.data.source(rate).examples("validation"):
        if ex.id in wanted:
            clips[ex.id] = np.pad(ex.audio[:n], (0, max(0, n - len(ex.audio[:n]))))
        if len(clips) == len(wanted):
            break
    return [eval_sets.EvalItem(p["clip_id"], p["caption"], clips[p["clip_id"]], rate) for p in prompts]


def _read_wav(path: str) -> tuple[np.ndarray, int]:
    with fileio.local_copy(path) as local:
        audio, sr = soundfile.read(local, dtype="float32")
    return (audio if audio.ndim == 1 else audio.mean(axis=1)), int(sr)


_STEP_FNS: dict[str, Callable] = {
    "codec": _train,
    "w2v_bert": _train,
    "semantic_kmeans": _semantic_kmeans,
    "mulan": _train,
    "mulan_rvq": _mulan_rvq,
    "melody": _train,
    "melody_rvq": _mulan_rvq,
    "precompute": _precompute,
    "semantic_stage": _train,
    "coarse_stage": _train,
    "fine_stage": _train,
    "generate": _generate,
}


# ---- the driver ---------------------------------------------------------------------------------


def generate_model_dirs(model_dir: str, *, melody: bool = False, w2v_bert: bool = False) -> dict[str, str]:
    """The `generate.load_musiclm` directories of a pipeline run: the five models, plus the melody
    model (`melody`) and w2v-BERT with its k-means (`w2v_bert`, to continue audio)."""
    dirs = {
        k: fileio.join(model_dir, DIRS["codec" if k == "soundstream_dir" else k.removesuffix("_dir")])
        for k in generate_lib.MODEL_DIRS
    }
    if melody:
        dirs["melody_dir"] = fileio.join(model_dir, DIRS["melody"])
    if w2v_bert:
        dirs["w2v_bert_dir"] = fileio.join(model_dir, DIRS["w2v_bert"])
    return dirs


def marker_path(model_dir: str, step: str) -> str:
    return fileio.join(model_dir, "steps", f"{step}.json")


def read_marker(model_dir: str, step: str) -> Optional[dict]:
    path = marker_path(model_dir, step)
    return fileio.read_json(path) if fileio.exists(path) else None


def _canonical(value) -> str:
    """A value as canonical text: JSON with sorted keys (dataclasses by their fields)."""

    def default(o):
        if dataclasses.is_dataclass(o) and not isinstance(o, type):
            return dataclasses.asdict(o)
        return vars(o) if hasattr(o, "__dict__") else repr(o)

    return json.dumps(value, sort_keys=True, default=default)


def _upstream(step: str) -> set[str]:
    """Every step whose results `step` reads, directly or not."""
    out: set[str] = set()
    for d in DEPENDS[step]:
        out |= {d} | _upstream(d)
    return out


def step_config(ctx: _Context, step: str, hashes: Mapping[str, str]) -> list[str]:
    """The lines of a step's configuration (see the module docstring); `hashes` holds the
    configuration hashes of the steps before it."""
    lines = [f"step: {step}"]
    # The pipeline's directory as D, in the bindings themselves: gin wraps long lines, so the
    # text would depend on the directory's length if D were substituted afterwards.
    # The collection as DATA and its fingerprint: a moved collection keeps its steps, an edited one
    # (files added, captions changed) reruns them.
    data = ctx.data and dataclasses.replace(ctx.data, path="DATA")
    fingerprint = ctx.options.get("data_fingerprint")
    mode, from_dir = ctx.mode(step), ctx.from_dir
    # The other run as FROM, named by its step's configuration hash: a moved run keeps the steps.
    ctx = _Context("D", ctx.size, ctx.step_bindings, ctx.options, data, from_dir and "FROM", ctx.reuse)
    if mode != "train":
        lines.append(f"from: {mode} the step configured {read_marker(from_dir, step)['config_hash']}")
        if mode == "copy":  # nothing of this run's configuration reaches a copy but what it goes with
            return lines + [f"after {d}: {hashes[d]}" for d in ctx.depends(step)]
    if data is not None and (step in pipeline_data.SCOPES or step in ("generate", "evaluate")):
        lines.append(f"data: {data.kind} sha256:{fingerprint}, validation_fraction {data.validation_fraction}")
    if ctx.gin(step) is not None:
        lines.append(f"gin file: {step_gin(ctx.size, ctx.gin(step)[0])}")
        if mode == "finetune":
            lines.append(f"gin file: {FINETUNE_GIN}")
        with ctx.configured(step):
            lines += gin.config_str().splitlines()
    o = ctx.options
    if step == "generate":
        names = (
            "seconds",
            "num_prompts",
            "prompt_family",
            "prompts",
            "seed",
            "num_candidates",
            "settings",
            "train_captions_checked",
        )
        lines += [f"{k}: {_canonical(o[k])}" for k in names]
    elif step == "evaluate":
        lines += [f"{k}: {_canonical(o[k])}" for k in ("seconds", "seed")]
        lines.append(f"classifier: {_canonical(CLASSIFIER[ctx.size])}")
    if step == "generate" and ctx.melody:
        lines.append(f"melody prompts: {_canonical(o['num_melody_prompts'])}")
    lines += [f"after {d}: {hashes[d]}" for d in ctx.depends(step)]
    return [line.rstrip() for line in lines if line.strip()]


def config_hash(lines: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def first_difference(old: Sequence[str], new: Sequence[str], width: int = 120) -> str:
    """The first line where configuration `new` differs from `old`, for the log:
    'TRAIN_STEPS = 100 was 50', 'new: ...', 'gone: ...', 'fine_stage changed'."""

    def short(line: str) -> str:
        line = line.strip()
        return line if len(line) <= width else line[: width - 3] + "..."

    for tag, i1, _, j1, _ in difflib.SequenceMatcher(None, list(old), list(new), autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        if tag == "delete":
            return f"gone: {short(old[i1])}"
        if tag == "insert":
            return f"new: {short(new[j1])}"
        was, now = old[i1].strip(), new[j1].strip()
        key = re.match(r"(.+?)( = |: )", now)
        if key and now.startswith("after ") and was.startswith(key.group(0)):
            return f"{key.group(1).removeprefix('after ')} changed"
        if key and was.startswith(key.group(0)):
            return f"{short(now)} was {short(was[key.end() :])}"
        return f"{short(now)} was {short(was)}"
    return "the same lines"


def run_pipeline(
    *,
    model_dir: str,
    size: str = "small",
    seconds: float = 4.0,
    num_prompts: int = 6,
    prompt_family: str = "heldout",
    prompts: Sequence[str] = (),
    seed: int = 0,
    num_candidates: int = 1,
    settings: Optional[Mapping] = None,
    step_bindings: Optional[Mapping[str, Sequence[str]]] = None,
    train_captions_checked: int = 2000,
    data: Optional[str] = None,
    validation_fraction: float = 0.1,
    min_captioned_clips: int = 16,
    from_dir: Optional[str] = None,
    reuse: Optional[Mapping[str, str]] = None,
    melody: bool = False,
    num_melody_prompts: int = 2,
    plan: bool = False,
    on_start: Optional[Callable[[str], None]] = None,
) -> dict:
    """Runs (or resumes) every step into `model_dir` and returns the summary written to
    model_dir/pipeline_summary.json.

    Args:
      model_dir: the pipeline's directory D, local (made absolute) or an object-store URL
        (gs://bucket/run); the layout is in the module docstring. A step with a marker in D/steps/
        is skipped when its configuration (gin files as parsed, bindings, the options that reach
        it, the steps it reads) is the one recorded there; else it is rerun from scratch, and so
        is every step that reads it.
      size: 'tiny' (the test suite's, ~a minute) or 'small' (the CPU demo, ~24 minutes on 2 cores):
        the gin files gin/pipeline/<size>/ and the size of the eval's attribute classifier.
      seconds: length of each generated piece.
      num_prompts: number of generated pieces, when the prompts are captions of held-out pieces.
      prompt_family: their phrasing (eval_sets.PROMPT_FAMILIES): 'heldout' (words no training
        caption uses), 'train' (the caption generator's training phrasings) or 'plain' (hand-written
        everyday prompts).
      prompts: the user's own prompts instead of held-out captions (then adherence is not measured:
        their music has no references and only runs through the detectors).
      seed: seed of generation and of the eval.
      num_candidates: samples per prompt, the best by MuLan score kept (as `generate.generate`).
      settings: per-stage SamplingSettings (default the paper's temperatures).
      step_bindings: extra gin bindings per step, e.g. {'codec': ['TRAIN_STEPS = 100']} (not for
        generate and evaluate, which read no gin file: their options are the arguments here).
      train_captions_checked: held-out captions equal to one of the first this many training
        captions are not used as prompts.
      data: the user's own collection instead of the synthetic source (pipeline_data.py): a folder
        of audio files with optional <name>.txt / <name>.json caption sidecars, or a JSONL manifest.
        The prompts are then its validation clips' captions (unless `prompts`), and the eval
        compares the music with those clips (FAD, KAD, MCC, MuLan score; no adherence or KLD:
        real clips have no labels).
      validation_fraction: with `data`, the share of clips hashed to validation where the data
        names no split.
      min_captioned_clips: with `data`, the fewest captioned training clips MuLan trains on.
      from_dir: another pipeline directory whose finished steps this run reuses, per `reuse`.
      melody: also train the melody model and its RVQ (steps melody, melody_rvq), tokenize the clips
        melodies, condition the semantic stage on them (melody dropout: it still makes music without a
        tune), and generate pieces that follow held-out hummed tunes, scored against them.
      num_melody_prompts: with `melody`, how many of the prompts also get a hummed tune to follow.
      plan: resolve everything, log and return the plan (`plan_steps`) without running a step: what
        each step would do (skip, resume, rerun, train, fine-tune, copy), its model, parameters,
        steps and batch, and the data's clip counts. Nothing is written but D/steps/ (empty) and,
        with `data`, the scan.
      reuse: {step: 'copy' | 'finetune' | 'train'} over FROM_DEFAULTS (with `from_dir`): copy the
        step's result, train from its parameters (the step's gin decides steps and learning rate),
        or train from scratch. The mode is part of each step's configuration and its marker.
      on_start: called with the absolute `model_dir` once it exists, before the first step (the CLI
        writes its gin config there).
    Returns:
      The summary: model_dir, size, wall_s per step, total_wall_s, metrics (per model, adherence
      and its references, text_to_music: FAD, KLD, MCC), wavs, pngs, report (report.html's path,
      or None without references) and prompts (caption, labels, detected attributes, wav).
    Raises:
      ValueError: an unknown `size`, `step_bindings` naming unknown steps or generate/evaluate,
        `seconds` <= 0 or `num_prompts` < 1; gin_utils.ConfigError (a ValueError) for a bad
        binding; pipeline_data.DataError (a ValueError) for a collection that cannot feed a step
        (one line): all before any step runs.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    unknown = sorted(set(step_bindings or {}) - set(ALL_STEPS))
    if unknown:
        raise ValueError(f"step_bindings names unknown steps {unknown}; steps: {list(ALL_STEPS)}")
    no_gin = [s for s in ALL_STEPS if s in (step_bindings or {}) and s in ("generate", "evaluate")]
    if no_gin:
        raise ValueError(
            f"step_bindings names {no_gin}, which read no gin file: their options are run_pipeline's arguments"
        )
    if prompt_family not in PROMPT_FAMILIES:
        raise ValueError(f"prompt_family must be one of {PROMPT_FAMILIES}, got {prompt_family!r}")
    if not seconds > 0 or num_prompts < 1:
        raise ValueError(f"seconds must be > 0 and num_prompts >= 1, got {seconds}, {num_prompts}")
    spec = pipeline_data.resolve(data, validation_fraction) if data is not None else None
    reuse = _check_reuse(from_dir, reuse, melody)
    model_dir = fileio.resolve(model_dir)
    options = dict(
        seconds=float(seconds),
        num_prompts=int(num_prompts),
        prompt_family=str(prompt_family),
        prompts=list(prompts),
        seed=int(seed),
        num_candidates=int(num_candidates),
        settings=dict(settings or {}),
        train_captions_checked=int(train_captions_checked),
        melody=bool(melody),
        num_melody_prompts=int(num_melody_prompts),
    )
    if spec is not None:
        options["data_fingerprint"] = pipeline_data.fingerprint(spec)
    fileio.makedirs(fileio.join(model_dir, "steps"))
    if on_start:  # before any step's gin clears the caller's configuration
        on_start(model_dir)
    ctx = _Context(model_dir, size, step_bindings or {}, options, spec, from_dir and fileio.resolve(from_dir), reuse)
    configs: dict[str, list[str]] = {}
    hashes: dict[str, str] = {}
    for step in ctx.steps:  # parses every step's gin: a bad binding fails before any step runs
        configs[step] = step_config(ctx, step, hashes)
        hashes[step] = config_hash(configs[step])
    if spec is not None:
        _check_collection(ctx, min_captioned_clips)
    markers = {step: read_marker(model_dir, step) for step in ctx.steps}
    planned = _log_plan(ctx, plan_steps(ctx, markers, hashes), running=not plan)
    if plan:
        return planned
    fileio.write_json(fileio.join(model_dir, PLAN_FILE), planned)  # beside pipeline_config.gin
    t_start = time.perf_counter()
    done: dict[str, dict] = {}
    log("pipeline (%s) in %s: %d steps", size, model_dir, len(ctx.steps))
    unrecorded = [s for s, m in markers.items() if m is not None and "config_hash" not in m]
    if unrecorded:
        log(
            "pipeline: %s done by an earlier version that did not record configurations: kept as done "
            "(delete D/steps/<step>.json to rerun one)",
            ", ".join(unrecorded),
        )
    changed = _changed_steps(markers, hashes)
    for i, step in enumerate(ctx.steps, 1):
        marker = markers[step]
        if marker is not None and step not in changed:
            done[step] = marker
            log(
                "pipeline step %d/%d %s: already done (%s), skipped",
                i,
                len(ctx.steps),
                step,
                format_duration(marker["wall_s"]),
            )
            continue
        if step in changed:
            if not _upstream(step) & set(changed):  # else the step it reads said so
                after = [s for s in ctx.steps if step in _upstream(s)]
                log(
                    "pipeline step %d/%d %s: configuration changed (%s); rerunning it%s",
                    i,
                    len(ctx.steps),
                    step,
                    first_difference(marker.get("config", []), configs[step]),
                    f" and the {len(after)} {'step that reads' if len(after) == 1 else 'steps that read'} it"
                    f" ({', '.join(after)})"
                    if after
                    else "",
                )
            _remove_outputs(model_dir, step, marker.get("config", []), configs[step])
        log(
            "pipeline step %d/%d %s: starting (pipeline time so far %s)",
            i,
            len(ctx.steps),
            step,
            format_duration(time.perf_counter() - t_start),
        )
        t0 = time.perf_counter()
        if step == "evaluate":
            metrics = _evaluate(ctx, step, done)
        else:
            metrics = (_copy if ctx.mode(step) == "copy" else _STEP_FNS[step])(ctx, step)
        done[step] = {
            "step": step,
            "mode": {"copy": "copied", "finetune": "fine-tuned"}.get(ctx.mode(step), "run")
            + (f" from {ctx.from_dir}" if ctx.mode(step) != "train" else ""),
            "wall_s": time.perf_counter() - t0,
            "metrics": metrics,
            "config_hash": hashes[step],
            "config": configs[step],
        }
        fileio.write_json(marker_path(model_dir, step), done[step])  # last: the step is done
        log(
            "pipeline step %d/%d %s: done in %s (pipeline time so far %s)",
            i,
            len(ctx.steps),
            step,
            format_duration(done[step]["wall_s"]),
            format_duration(time.perf_counter() - t_start),
        )
    summary = _summary(model_dir, size, done)
    fileio.write_json(fileio.join(model_dir, SUMMARY_FILE), summary)
    _log_summary(summary)
    return summary


class ReuseError(ValueError):
    """`from_dir` / `reuse` cannot be honoured (one line naming the step)."""


def _check_reuse(from_dir: Optional[str], reuse: Optional[Mapping[str, str]], melody: bool = False) -> dict[str, str]:
    """FROM_DEFAULTS with `reuse` over them, checked against each other and against what
    `from_dir` has finished (ValueError naming the step). Without `melody`, the melody steps are
    not this run's."""
    if from_dir is None:
        if reuse:
            raise ReuseError("reuse needs from_dir (the pipeline directory to reuse)")
        return {}
    defaults = {k: v for k, v in FROM_DEFAULTS.items() if melody or k not in MELODY_STEPS}
    if melody and read_marker(fileio.resolve(from_dir), "melody") is None:
        # A run without melody: nothing to copy, and its semantic stage's vocabulary lacks the melody ids.
        defaults.update(melody="train", melody_rvq="train", semantic_stage="train")
    if not melody and set(reuse or {}) & set(MELODY_STEPS):
        raise ReuseError(f"reuse names {sorted(set(reuse) & set(MELODY_STEPS))}, steps of a melody run (melody=True)")
    modes = {**defaults, **(reuse or {})}
    for step, mode in modes.items():
        if step not in FROM_DEFAULTS:
            raise ReuseError(f"reuse names {step!r}; steps that can be reused: {list(FROM_DEFAULTS)}")
        if mode not in REUSE_MODES or (mode == "finetune" and step not in _TRAINED):
            allowed = REUSE_MODES if step in _TRAINED else ("copy", "train")
            raise ReuseError(f"reuse[{step!r}] = {mode!r}: one of {allowed}")
        if mode == "copy" and step in _COPY_NEEDS and modes[_COPY_NEEDS[step]] != "copy":
            raise ReuseError(
                f"reuse[{step!r}] = 'copy' needs reuse[{_COPY_NEEDS[step]!r}] = 'copy' (it was fitted on that model)"
            )
        if mode != "train" and read_marker(fileio.resolve(from_dir), step) is None:
            raise ReuseError(
                f"from_dir {from_dir}: step {step} has not finished there (no steps/{step}.json) to {mode}"
            )
    return modes


def _data_needs(ctx: _Context) -> dict[str, dict]:
    """What each step asks of the collection (pipeline_data.check), read from its gin files."""

    def query(name, default=None):
        try:
            return gin.query_parameter(name)
        except (ValueError, KeyError):
            return default

    needs = {}
    for step in ctx.steps:
        if ctx.gin(step) is None or step in ("semantic_kmeans", "mulan_rvq") or ctx.mode(step) == "copy":
            continue  # kmeans and RVQ read w2v_bert's and mulan's data; a copy reads none
        if step in MELODY_STEPS:  # synthetic same-tune pairs, whatever the collection
            continue
        with ctx.configured(step):
            scopes = [scope for scope, _ in pipeline_data.SCOPES.get(step, ())] or ["stage_tokens"]
            crops = [
                query(f"{scope}/register_{'token' if scope == 'stage_tokens' else 'audio'}_task.crop_seconds")
                for scope in scopes
            ]
            evals = (query("%EVAL_PERIOD", 0) or 0) > 0 and step != "precompute"
            needs[step] = {
                "eval_batch": int(query("%GLOBAL_BATCH_SIZE", 0) or 0) if evals else 0,
                "captions": step == "mulan",
                "crop_seconds": max((float(c) for c in crops if c), default=None),
            }
    return needs


def _check_collection(ctx: _Context, min_captioned: int) -> None:
    """Scans the collection (or reads back its scan), logs its clip counts and stops before any
    step when it cannot feed one."""
    summary = pipeline_data.scan(ctx.data, ctx.model_dir)
    for split, s in summary["splits"].items():
        problems = [f"{k} {v} skipped" for k, v in s["skipped"].items()]
        problems += [f"{k} {v} repaired" for k, v in s["repaired"].items()]
        log(
            "pipeline data %s, %s: %d clips (%d captioned), %s of audio; %s",
            summary["path"],
            split,
            s["clips"],
            s["captioned"],
            format_duration(s["seconds"]),
            ", ".join(problems) or "nothing skipped or repaired",
        )
    min_captioned = 0 if ctx.mode("mulan") == "copy" else min_captioned  # a copied MuLan needs no captions
    notes = pipeline_data.check(summary, _data_needs(ctx), min_captioned)
    val = summary["splits"]["validation"]
    if not ctx.options["prompts"] and val["captioned"] < 2:
        raise pipeline_data.DataError(
            f"{val['captioned']} validation clips have a caption: the generate step prompts with them and needs 2 "
            "(or give run_pipeline.prompts)"
        )
    for note in notes:
        log("pipeline data: %s", note)


def _changed_steps(markers: Mapping[str, Optional[dict]], hashes: Mapping[str, str]) -> list[str]:
    """The finished steps whose recorded configuration is not the current one."""
    return [s for s, m in markers.items() if m is not None and m.get("config_hash", hashes[s]) != hashes[s]]


def plan_steps(ctx: _Context, markers: Mapping[str, Optional[dict]], hashes: Mapping[str, str]) -> list[dict]:
    """What a run would do, step by step: {'step', 'action', 'model', 'parameters', 'train_steps',
    'batch'}; action is 'skip' (done with this configuration), 'rerun' (done with another, or after
    a step it reads reruns), 'resume' (checkpoints, no marker), 'copy', 'fine-tune' or 'run'."""
    rerun = _changed_steps(markers, hashes)  # a step's hash holds those of the steps it reads
    rows = []
    for step in ctx.steps:
        if step in rerun:
            action = "rerun"
        elif markers[step] is not None:
            action = "skip"
        elif ctx.mode(step) != "train":
            action = {"copy": "copy", "finetune": "fine-tune"}[ctx.mode(step)]
        elif step in DIRS and fileio.exists(fileio.join(ctx.dirs[step], "checkpoints")):
            action = "resume"
        else:
            action = "run"
        row = {"step": step, "action": action, **_step_model(ctx, step)}
        if markers[step] is not None:
            row["last_wall_s"] = round(markers[step]["wall_s"], 1)
        rows.append(row)
    return rows


def _step_model(ctx: _Context, step: str) -> dict:
    """The model a training step builds, its parameter count, steps and global batch (from its gin)."""
    if step not in _TRAINED or ctx.mode(step) == "copy":
        return {}
    with ctx.configured(step):
        model = gin.query_parameter("%MODEL").scoped_configurable_fn()
        out = {"model": type(model).__name__}
        kind = model_io.KINDS.get(out["model"])
        if kind is not None:
            shapes = kind.init_shapes(model)
            out["parameters"] = _param_count(model, shapes)
        out["train_steps"] = gin.query_parameter("%TRAIN_STEPS")
        batch = gin.query_parameter("%GLOBAL_BATCH_SIZE")
        out["batch"] = batch if batch else f"{gin.query_parameter('%BATCH_SIZE_PER_DEVICE')} per device"
        fsdp, model_parallel = gin.query_parameter("%FSDP_PARALLELISM"), gin.query_parameter("%MODEL_PARALLELISM")
        out["mesh"] = f"fsdp {fsdp} x model {model_parallel}, data over the rest"
    return out


def _param_count(model, shapes) -> int:
    """Parameter count from shapes alone (nothing is allocated)."""
    import jax

    abstract = jax.eval_shape(lambda: model.get_initial_variables(jax.random.key(0), shapes)["params"])
    return int(sum(x.size for x in jax.tree.leaves(abstract)))


def _log_plan(ctx: _Context, rows: list[dict], running: bool) -> dict:
    """Logs what each step will do (the opening of a run's log, or all of `--plan`) and returns it."""
    from musiclm_jax.run_setup import describe_devices
    from musiclm_jax.training.partitioning import maybe_initialize_distributed

    maybe_initialize_distributed()  # before jax.devices(): a multi-host launch starts here
    out = {
        "model_dir": ctx.model_dir,
        "storage": "object store" if fileio.is_url(ctx.model_dir) else "local",
        "size": ctx.size,
        "data": f"{ctx.data.kind} {ctx.data.path}" if ctx.data is not None else "the embedded synthetic source",
        "from": ctx.from_dir,
        "devices": describe_devices(),
        "plan": rows,
    }
    log(
        "pipeline plan (%s) for %s (%s)%s", ctx.size, ctx.model_dir, out["storage"], "" if running else ": nothing runs"
    )
    log("  data: %s%s", out["data"], " (clip counts above)" if ctx.data is not None else "")
    log("  devices: %s", out["devices"])
    if ctx.from_dir:
        log("  from: %s", ctx.from_dir)
    for r in rows:
        what = ""
        if "model" in r:
            what = (
                f"{r['model']}, {r.get('parameters', 0):,} parameters, {r['train_steps']} steps, batch {r['batch']}, "
                f"mesh {r['mesh']}"
            )
        if "last_wall_s" in r:
            what += f"{'; ' if what else ''}took {format_duration(r['last_wall_s'])} last time"
        log("  %-16s %-9s %s", r["step"], r["action"], what)
    return out


def _remove_outputs(model_dir: str, step: str, old: Sequence[str], new: Sequence[str]) -> None:
    """Deletes what a step wrote under an older configuration, then its marker (last: until then
    the old marker still says the outputs are stale). The attribute classifier goes only when
    its own size changed."""
    paths = [fileio.join(model_dir, p) for p in OUTPUTS[step]]
    if step == "evaluate" and [x for x in old if x.startswith("classifier:")] != [
        x for x in new if x.startswith("classifier:")
    ]:
        paths.append(fileio.join(model_dir, CLASSIFIER_DIR))
    for path in paths:
        fileio.remove(path)
    fileio.remove(marker_path(model_dir, step))


def _pick(scalars: Mapping[str, float], *names: str) -> dict:
    return {n: scalars[n] for n in names if n in scalars}


def _unigram_accuracy(cache_dir: str, stage_dir: str) -> float:
    """The unigram baseline of a stage's target codes on the validation split of the cache."""
    _, stream, first_level, num_levels = model_io.read_spec(stage_dir)["config"]["target"]  # a StreamSpec
    return token_cache_tasks.unigram_accuracy(cache_dir, "validation", stream, first_level, num_levels)


def _summary(model_dir: str, size: str, done: Mapping[str, dict]) -> dict:
    m = {k: v["metrics"] for k, v in done.items()}
    prompts = m["evaluate"]["prompts"]
    codec_eval = m["codec"]["eval"]
    return {
        "model_dir": model_dir,
        "size": size,
        "wall_s": {k: round(v["wall_s"], 1) for k, v in done.items()},
        "total_wall_s": round(sum(v["wall_s"] for v in done.values()), 1),
        "metrics": {
            "codec": {
                **{k: v for k, v in codec_eval.items() if "mel" in k or "sdr" in k},
                **_pick(m["codec"]["train"], "loss", "mel_loss", "reconstruction_loss"),
            },
            "w2v_bert": {
                **_pick(m["w2v_bert"]["eval"], "mlm_accuracy", "contrastive_accuracy", "perplexity"),
                **_pick(m["w2v_bert"]["train"], "loss", "mlm_accuracy"),
            },
            "semantic_kmeans": m["semantic_kmeans"],
            "mulan": {
                **{k: v for k, v in m["mulan"]["eval"].items() if "recall" in k or k in ("loss", "mcc")},
                **_pick(m["mulan"]["train"], "loss"),
            },
            "mulan_rvq": m["mulan_rvq"],
            "precompute": m["precompute"]["splits"],
            **{
                s: {
                    "train": _pick(m[s]["train"], "loss", "accuracy"),
                    "eval": _pick(m[s]["eval"], "loss", "accuracy"),
                    # what the eval accuracy must beat: the best guess from the code histogram alone
                    "unigram_accuracy": _unigram_accuracy(m["precompute"]["cache_dir"], m[s]["model_dir"]),
                }
                for s in ("semantic_stage", "coarse_stage", "fine_stage")
            },
            "adherence": m["evaluate"].get("adherence", {}),
            # the detectors on the held-out pieces the prompts describe, and on their codec reconstructions
            "adherence_reference": m["evaluate"].get("adherence_reference", {}),
            "adherence_codec_ceiling": m["evaluate"].get("adherence_codec_ceiling", {}),
            # FAD, KLD, MCC and codec metrics of the text-to-music eval (D/eval/results.json, report.html)
            "text_to_music": text_to_music.scalar_metrics(m["evaluate"]),
            **(
                {
                    "melody": {
                        **_pick(m["melody"]["eval"], "melody_recall@1", "melody_recall@10", "retrieval_pool"),
                        **_pick(m["melody"]["train"], "loss"),
                    },
                    "melody_rvq": m["melody_rvq"],
                    # music made to follow held-out hummed tunes, against text only and the tune played
                    "melody_following": m["generate"]["melody"]["mean"],
                }
                if "melody" in m
                else {}
            ),
        },
        "wavs": [p["wav"] for p in prompts],
        "pngs": [p["png"] for p in prompts],
        "report": m["evaluate"].get("output_dir")
        and fileio.join(m["evaluate"]["output_dir"], text_to_music.REPORT_FILE),
        "prompts": [
            {"caption": p["caption"], "labels": p["labels"], "detected": p.get("detected"), "wav": p["wav"]}
            for p in prompts
        ],
    }


def _log_summary(summary: dict) -> None:
    log("pipeline finished: %s of steps in all", format_duration(summary["total_wall_s"]))
    for step, s in summary["wall_s"].items():
        log("  %-16s %s", step, format_duration(s))
    reference = summary["metrics"]["adherence_reference"]
    ceiling = summary["metrics"]["adherence_codec_ceiling"]
    for attr, a in summary["metrics"]["adherence"].items():
        refs = (
            (
                f"; the pieces themselves {reference[attr]['accuracy']:.2f}, their codec reconstructions "
                f"{ceiling[attr]['accuracy']:.2f}"
            )
            if attr in reference and attr in ceiling
            else ""
        )
        log("  adherence %s%s", eval_metrics.adherence_line(attr, a), refs)
    t2m = summary["metrics"]["text_to_music"]
    if t2m:
        log(
            "  text-to-music eval: %s",
            ", ".join(f"{k} {v:.3g}" for k, v in t2m.items() if not k.startswith("adherence")),
        )
        log("  eval report (open in a browser): %s", summary["report"])
    out = fileio.dirname(summary["wavs"][0]) if summary["wavs"] else ""
    log(
        "generated music (WAV + PNG spectrogram + JSON per prompt) in %s; summary in %s",
        out,
        fileio.join(summary["model_dir"], SUMMARY_FILE),
    )
