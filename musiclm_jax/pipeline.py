"""`musiclm pipeline`: the whole MusicLM recipe on the embedded synthetic source, resumable.

    run_pipeline(model_dir='/tmp/musiclm', size='small')

Steps, in order (each one `musiclm` run configured by gin/pipeline/<size>/<gin>.gin, which
also runs on its own, e.g. `musiclm train --gin_file=pipeline/small/codec.gin
--gin.MODEL_DIR="'/tmp/codec'"`):

    codec            train SoundStream                                  D/codec
    w2v_bert         train w2v-BERT                                     D/w2v_bert
    semantic_kmeans  fit the semantic k-means on its embeddings        D/w2v_bert/kmeans
    mulan            train MuLan                                        D/mulan
    mulan_rvq        fit the MuLan-token RVQ                            D/mulan/mulan_rvq
    precompute       tokenize synthetic clips with the three models     D/tokens
    semantic_stage   MuLan -> semantic tokens                           D/semantic_stage
    coarse_stage     MuLan + semantic -> coarse acoustic tokens         D/coarse_stage
    fine_stage       MuLan + coarse -> fine acoustic tokens             D/fine_stage
    generate         music for prompts held out from training           D/generated
    evaluate         attribute detectors on the music vs the prompts    D/adherence.json

A step is done once D/steps/<step>.json exists (written atomically at its end, with its wall
time and metrics): a rerun skips done steps, an interrupted training resumes from its orbax
checkpoints and an interrupted precompute from its finished shards. D/pipeline_summary.json
gathers every step's time and metrics at the end.

The library takes plain values; gin is only how each step reads its model configuration
(the same files the CLI modes use), in a configuration of its own that is cleared after it.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import time
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from musiclm_jax.data import synthetic
from musiclm_jax.training.summaries import format_duration, log

SIZES = ("tiny", "small")
STEPS = ("codec", "w2v_bert", "semantic_kmeans", "mulan", "mulan_rvq", "precompute", "semantic_stage",
         "coarse_stage", "fine_stage", "generate", "evaluate")
# Where each model lives under the pipeline's directory.
DIRS = {"codec": "codec", "w2v_bert": "w2v_bert", "mulan": "mulan", "tokens": "tokens", "semantic_stage": "semantic_stage",
        "coarse_stage": "coarse_stage", "fine_stage": "fine_stage", "generated": "generated"}
# Attributes whose adherence is measured, and the detectors' names for them.
ATTRIBUTES = ("register", "drums", "tempo_class", "loudness", "mode")
SUMMARY_FILE = "pipeline_summary.json"
# Throughput scalars say nothing about the model; kept out of the summary.
_NOISE = ("steps_per_sec", "examples_per_sec", "tokens_per_sec", "mfu", "learning_rate")


def step_gin(size: str, name: str) -> str:
    """The gin file of a step (searched in the packaged gin/ folder)."""
    return f"pipeline/{size}/{name}.gin"


# ---- small helpers -------------------------------------------------------------------------------


def _write_json(path: str, data) -> None:
    """Atomic: a temporary file renamed over the target, so a marker is whole or absent."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True, default=_json_default)
    os.replace(tmp, path)


def _json_default(x):
    if isinstance(x, (np.integer, np.floating, np.bool_)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


@contextlib.contextmanager
def _gin_config(gin_files: Sequence[str], bindings: Sequence[str]):
    """A fresh gin configuration for one step (cleared after it, also on error); yields the
    registered configurables. Clearing is safe inside a gin-configured run_pipeline: its own
    arguments were bound when it was called."""
    import gin

    from musiclm_jax import configurables, gin_utils

    gin.clear_config()
    try:
        gin_utils.parse(list(gin_files), list(bindings))
        yield configurables
    finally:
        gin.clear_config()


def last_scalars(logdir: str) -> dict[str, float]:
    """The last value of every scalar in a TensorBoard directory (the trainer's summaries)."""
    import tensorflow as tf

    out: dict[str, tuple[int, float]] = {}
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
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


# ---- prompts held out from training and their attributes ------------------------------------------


def mentioned_attributes(labels: dict, caption_rng_seed: tuple) -> list[str]:
    """The attributes a caption states: changing the label changes the caption drawn with the
    same random stream (templates leave some slots out)."""
    base = synthetic.caption_for(labels, np.random.default_rng(list(caption_rng_seed)))
    out = []
    for attr in ATTRIBUTES:
        for value in synthetic.LABEL_VALUES[attr]:
            if value != labels[attr] and synthetic.caption_for(
                    {**labels, attr: value}, np.random.default_rng(list(caption_rng_seed))) != base:
                out.append(attr)
                break
    return out


def held_out_prompts(num_prompts: int, *, train_examples: int = 0, search: int = 2000) -> list[dict]:
    """Captions of validation-split pieces (never rendered for training) that state register and
    drums, spread evenly over the (register, drums) combinations; captions equal to one of the
    first `train_examples` training captions are skipped. Each: caption, labels, mentioned."""
    seed = synthetic.SPLIT_SEEDS["validation"]
    train = set(synthetic.caption_of(synthetic.SPLIT_SEEDS["train"], i) for i in range(train_examples))
    # Interleaved so that any prefix of the list varies both register and drums.
    combos = [("low", True), ("mid", False), ("high", True), ("low", False), ("mid", True), ("high", False)]
    by_combo: dict = {c: [] for c in combos}
    for index in range(search):
        labels = synthetic.sample_labels(np.random.default_rng([seed, index, 0]))
        caption = synthetic.caption_of(seed, index)
        mentioned = mentioned_attributes(labels, (seed, index, 1))
        if {"register", "drums"} <= set(mentioned) and caption not in train:
            by_combo[(labels["register"], labels["drums"])].append(
                {"caption": caption, "labels": labels, "mentioned": mentioned, "index": index})
        if all(len(v) * len(combos) >= num_prompts for v in by_combo.values()):
            break
    prompts = [by_combo[combos[i % len(combos)]][i // len(combos)] for i in range(num_prompts)]
    return prompts


def adherence(prompts: Sequence[dict], detected: Sequence[dict]) -> dict:
    """Per attribute, over the prompts that state it: accuracy of the detected label against the
    prompt's, uniform chance (1 / classes), and the shuffled chance (the accuracy expected if the
    music were paired with prompts at random: sum over classes of P(prompt) x P(detected))."""
    out = {}
    for attr in ATTRIBUTES:
        pairs = [(p["labels"][attr], d[attr]) for p, d in zip(prompts, detected) if attr in p["mentioned"]]
        if not pairs:
            continue
        want, got = zip(*pairs)
        values = synthetic.LABEL_VALUES[attr]
        p_want = np.array([want.count(v) for v in values]) / len(want)
        p_got = np.array([got.count(v) for v in values]) / len(got)
        out[attr] = {"n": len(pairs), "accuracy": float(np.mean([w == g for w, g in pairs])),
                     "chance": 1.0 / len(values), "shuffled_chance": float(p_want @ p_got)}
        out[attr]["above_chance"] = out[attr]["accuracy"] > max(out[attr]["chance"], out[attr]["shuffled_chance"])
    return out


# ---- the steps ----------------------------------------------------------------------------------


class _Context:
    """What the steps share: sizes, directories, extra gin bindings per step, options."""

    def __init__(self, model_dir: str, size: str, step_bindings: Mapping[str, Sequence[str]], options: dict):
        self.model_dir, self.size, self.options = model_dir, size, options
        self.step_bindings = {k: list(v) for k, v in (step_bindings or {}).items()}
        self.dirs = {k: os.path.join(model_dir, v) for k, v in DIRS.items()}

    def bindings(self, step: str, **macros) -> list[str]:
        return [f"{k} = {v!r}" for k, v in macros.items()] + self.step_bindings.get(step, [])

    def run(self, step: str, gin_name: str, fn: Callable, **macros):
        with _gin_config([step_gin(self.size, gin_name)], self.bindings(step, **macros)) as configurables:
            return fn(configurables)


def _train(ctx: _Context, step: str) -> dict:
    from musiclm_jax import gin_utils

    model_dir = ctx.dirs[step]
    macros = {"MODEL_DIR": model_dir}
    if step.endswith("_stage"):
        macros["TOKEN_CACHE_DIR"] = ctx.dirs["tokens"]
    ctx.run(step, step, lambda c: c.train(on_start=gin_utils.write_config), **macros)
    return {"model_dir": model_dir, "train": last_scalars(os.path.join(model_dir, "train")),
            "eval": last_scalars(os.path.join(model_dir, "eval"))}


def _semantic_kmeans(ctx: _Context, step: str) -> dict:
    info = ctx.run(step, "w2v_bert", lambda c: c.fit_semantic_kmeans(), MODEL_DIR=ctx.dirs["w2v_bert"])
    return {k: v for k, v in info.items() if isinstance(v, (int, float, str))}


def _mulan_rvq(ctx: _Context, step: str) -> dict:
    info = ctx.run(step, "mulan", lambda c: c.fit_mulan_rvq(), MODEL_DIR=ctx.dirs["mulan"])
    return {k: v for k, v in info.items() if k in ("levels", "codebook_size", "num_examples", "reconstruction_cosine",
                                                   "eval_reconstruction_cosine")}


def _precompute(ctx: _Context, step: str) -> dict:
    summary = ctx.run(step, "precompute", lambda c: c.precompute_tokens(), MULAN_DIR=ctx.dirs["mulan"],
                      W2V_BERT_DIR=ctx.dirs["w2v_bert"], SOUNDSTREAM_DIR=ctx.dirs["codec"],
                      TOKEN_CACHE_DIR=ctx.dirs["tokens"])
    return {"cache_dir": ctx.dirs["tokens"],
            "splits": {s: {k: v[k] for k in ("clips", "seconds", "tokens")} for s, v in summary["splits"].items()}}


def _crop_seconds(stage_dir: str) -> Optional[float]:
    """The crop a stage was trained on (its config.gin), its generation window."""
    import re

    path = os.path.join(stage_dir, "config.gin")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        match = re.search(r"register_token_task\.crop_seconds = (\d+)", f.read())
    return float(match.group(1)) if match else None


def _generate(ctx: _Context, step: str) -> dict:
    from musiclm_jax import generate as generate_lib
    from musiclm_jax.models.musiclm import MusicLM, Window
    from musiclm_jax.tokenizers.acoustic import AcousticTokenizer
    from musiclm_jax.tokenizers.mulan import MuLanTokenizer

    o = ctx.options
    prompts = held_out_prompts(o["num_prompts"], train_examples=o["train_captions_checked"])
    texts = o["prompts"] or [p["caption"] for p in prompts]
    if o["prompts"]:  # the user's own prompts: nothing known about their attributes
        prompts = [{"caption": t, "labels": {}, "mentioned": []} for t in texts]
    dirs = dict(mulan_dir=ctx.dirs["mulan"], semantic_stage_dir=ctx.dirs["semantic_stage"],
                coarse_stage_dir=ctx.dirs["coarse_stage"], fine_stage_dir=ctx.dirs["fine_stage"],
                soundstream_dir=ctx.dirs["codec"])
    # Each stage slides a window as long as its training crops, at a stride of about half a window
    # (whole frames at the stage's rate), so that every window continues the previous one.
    codec = AcousticTokenizer.from_model_dir(dirs["soundstream_dir"])
    rates = {"semantic": 25.0, "coarse": codec.sample_rate / codec.hop_length}
    rates["fine"] = rates["coarse"]
    windows = {}
    for stage in ("semantic", "coarse", "fine"):
        crop = _crop_seconds(ctx.dirs[f"{stage}_stage"])
        if crop:
            windows[stage] = Window(crop, max(1, int(crop * rates[stage] / 2)) / rates[stage])
    stages = {s: generate_lib.load_stage(ctx.dirs[f"{s}_stage"]) for s in ("semantic", "coarse", "fine")}
    model = MusicLM(MuLanTokenizer.from_model_dir(dirs["mulan_dir"]), stages, codec, windows=windows)
    sidecars = generate_lib.generate(output_dir=ctx.dirs["generated"], seconds=o["seconds"], prompts=texts,
                                     **dirs, max_seconds=max(o["seconds"], 30.0), seed=o["seed"],
                                     num_candidates=o["num_candidates"], settings=o["settings"], model=model)
    for p, s in zip(prompts, sidecars):
        p["wav"], p["png"], p["mulan_score"] = s["file"], s["file"][:-4] + ".png", s["mulan_score"]
    return {"output_dir": ctx.dirs["generated"], "prompts": prompts,
            "windows": {k: vars(w) for k, w in windows.items()},
            "generation_seconds": sidecars[0]["generation_seconds_all_prompts"]}


def _detect(audio: np.ndarray, sample_rate: int) -> dict:
    from musiclm_jax.evaluation import attributes

    d = attributes.detect_all(audio, sample_rate)
    return {k: (bool(v) if isinstance(v, (bool, np.bool_)) else v) for k, v in d.items()}


def _evaluate(ctx: _Context, step: str, done: dict) -> dict:
    """Adherence of the generated music, and two references on the held-out pieces the prompts
    describe: the detectors on the pieces themselves and on their codec reconstructions (what
    the codec lets any generation reach)."""
    from musiclm_jax.tokenizers.acoustic import AcousticTokenizer

    prompts = done["generate"]["metrics"]["prompts"]
    for p in prompts:
        p["detected"] = _detect(*_read_wav(p["wav"]))
    result = {"attributes": adherence(prompts, [p["detected"] for p in prompts]), "prompts": prompts}
    pieces = [p for p in prompts if "index" in p]
    if pieces:
        codec = AcousticTokenizer.from_model_dir(ctx.dirs["codec"])
        sr, seconds = codec.sample_rate, ctx.options["seconds"]
        originals = [synthetic.render(synthetic.SPLIT_SEEDS["validation"], p["index"], sample_rate=sr,
                                      duration_s=seconds).audio for p in pieces]
        coded = codec.decode(codec.encode(np.stack(originals)), num_samples=len(originals[0]))
        result["reference"] = adherence(pieces, [_detect(a, sr) for a in originals])
        result["codec_ceiling"] = adherence(pieces, [_detect(a, sr) for a in coded])
    _write_json(os.path.join(ctx.model_dir, "adherence.json"), result)
    return result


def _read_wav(path: str) -> tuple[np.ndarray, int]:
    import soundfile

    audio, sr = soundfile.read(path, dtype="float32")
    return (audio if audio.ndim == 1 else audio.mean(axis=1)), int(sr)


_STEP_FNS: dict[str, Callable] = {
    "codec": _train, "w2v_bert": _train, "semantic_kmeans": _semantic_kmeans, "mulan": _train,
    "mulan_rvq": _mulan_rvq, "precompute": _precompute, "semantic_stage": _train, "coarse_stage": _train,
    "fine_stage": _train, "generate": _generate,
}


# ---- the driver ---------------------------------------------------------------------------------


def marker_path(model_dir: str, step: str) -> str:
    return os.path.join(model_dir, "steps", f"{step}.json")


def read_marker(model_dir: str, step: str) -> Optional[dict]:
    path = marker_path(model_dir, step)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def run_pipeline(*, model_dir: str, size: str = "small", seconds: float = 4.0, num_prompts: int = 6,
                 prompts: Sequence[str] = (), seed: int = 0, num_candidates: int = 1,
                 settings: Optional[Mapping] = None, step_bindings: Optional[Mapping[str, Sequence[str]]] = None,
                 train_captions_checked: int = 2000, on_start: Optional[Callable[[str], None]] = None) -> dict:
    """Runs (or resumes) every step into `model_dir` and returns the summary written to
    model_dir/pipeline_summary.json.

    `size`: 'tiny' (the test suite's, ~a minute) or 'small' (the CPU demo, ~20 minutes on 2 cores).
    `seconds`, `num_prompts`: length and number of the generated pieces; the prompts are
    captions of held-out pieces unless `prompts` are given (then adherence is not measured).
    `step_bindings`: extra gin bindings per step, e.g. {'codec': ['TRAIN_STEPS = 100']}.
    `settings`: per-stage SamplingSettings (default the paper's temperatures)."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    unknown = sorted(set(step_bindings or {}) - set(STEPS))
    if unknown:
        raise ValueError(f"step_bindings names unknown steps {unknown}; steps: {list(STEPS)}")
    if not seconds > 0 or num_prompts < 1:
        raise ValueError(f"seconds must be > 0 and num_prompts >= 1, got {seconds}, {num_prompts}")
    model_dir = os.path.abspath(model_dir)
    os.makedirs(os.path.join(model_dir, "steps"), exist_ok=True)
    if on_start:
        on_start(model_dir)
    options = dict(seconds=float(seconds), num_prompts=int(num_prompts), prompts=list(prompts), seed=int(seed),
                   num_candidates=int(num_candidates), settings=dict(settings or {}),
                   train_captions_checked=int(train_captions_checked))
    ctx = _Context(model_dir, size, step_bindings or {}, options)
    t_start = time.perf_counter()
    done: dict[str, dict] = {}
    log("pipeline (%s) in %s: %d steps", size, model_dir, len(STEPS))
    for i, step in enumerate(STEPS, 1):
        marker = read_marker(model_dir, step)
        if marker is not None:
            done[step] = marker
            log("pipeline step %d/%d %s: already done (%s), skipped", i, len(STEPS), step,
                format_duration(marker["wall_s"]))
            continue
        log("pipeline step %d/%d %s: starting (pipeline time so far %s)", i, len(STEPS), step,
            format_duration(time.perf_counter() - t_start))
        t0 = time.perf_counter()
        metrics = _evaluate(ctx, step, done) if step == "evaluate" else _STEP_FNS[step](ctx, step)
        done[step] = {"step": step, "wall_s": time.perf_counter() - t0, "metrics": metrics}
        _write_json(marker_path(model_dir, step), done[step])
        log("pipeline step %d/%d %s: done in %s (pipeline time so far %s)", i, len(STEPS), step,
            format_duration(done[step]["wall_s"]), format_duration(time.perf_counter() - t_start))
    summary = _summary(model_dir, size, done)
    _write_json(os.path.join(model_dir, SUMMARY_FILE), summary)
    _log_summary(summary)
    return summary


def _pick(scalars: Mapping[str, float], *names: str) -> dict:
    return {n: scalars[n] for n in names if n in scalars}


def _summary(model_dir: str, size: str, done: Mapping[str, dict]) -> dict:
    m = {k: v["metrics"] for k, v in done.items()}
    prompts = m["evaluate"]["prompts"]
    codec_eval = m["codec"]["eval"]
    return {
        "model_dir": model_dir, "size": size,
        "wall_s": {k: round(v["wall_s"], 1) for k, v in done.items()},
        "total_wall_s": round(sum(v["wall_s"] for v in done.values()), 1),
        "metrics": {
            "codec": {**{k: v for k, v in codec_eval.items() if "mel" in k or "sdr" in k},
                      **_pick(m["codec"]["train"], "loss", "mel_loss", "reconstruction_loss")},
            "w2v_bert": {**_pick(m["w2v_bert"]["eval"], "mlm_accuracy", "contrastive_accuracy", "perplexity"),
                         **_pick(m["w2v_bert"]["train"], "loss", "mlm_accuracy")},
            "semantic_kmeans": m["semantic_kmeans"],
            "mulan": {**{k: v for k, v in m["mulan"]["eval"].items() if "recall" in k or k in ("loss", "mcc")},
                      **_pick(m["mulan"]["train"], "loss")},
            "mulan_rvq": m["mulan_rvq"],
            "precompute": m["precompute"]["splits"],
            **{s: {"train": _pick(m[s]["train"], "loss", "accuracy"), "eval": _pick(m[s]["eval"], "loss", "accuracy")}
               for s in ("semantic_stage", "coarse_stage", "fine_stage")},
            "adherence": m["evaluate"]["attributes"],
            # the detectors on the held-out pieces the prompts describe, and on their codec reconstructions
            "adherence_reference": m["evaluate"].get("reference", {}),
            "adherence_codec_ceiling": m["evaluate"].get("codec_ceiling", {}),
        },
        "wavs": [p["wav"] for p in prompts],
        "pngs": [p["png"] for p in prompts],
        "prompts": [{"caption": p["caption"], "labels": p["labels"], "detected": p.get("detected"),
                     "wav": p["wav"]} for p in prompts],
    }


def _log_summary(summary: dict) -> None:
    log("pipeline finished: %s of steps in all", format_duration(summary["total_wall_s"]))
    for step, s in summary["wall_s"].items():
        log("  %-16s %s", step, format_duration(s))
    reference = summary["metrics"]["adherence_reference"]
    ceiling = summary["metrics"]["adherence_codec_ceiling"]
    for attr, a in summary["metrics"]["adherence"].items():
        refs = (f"; the pieces themselves {reference[attr]['accuracy']:.2f}, their codec reconstructions "
                f"{ceiling[attr]['accuracy']:.2f}") if attr in reference and attr in ceiling else ""
        log("  adherence %-12s %.2f over %d prompts (chance %.2f, shuffled %.2f)%s", attr, a["accuracy"], a["n"],
            a["chance"], a["shuffled_chance"], refs)
    out = os.path.dirname(summary["wavs"][0]) if summary["wavs"] else ""
    log("generated music (WAV + PNG spectrogram + JSON per prompt) in %s; summary in %s", out,
        os.path.join(summary["model_dir"], SUMMARY_FILE))
