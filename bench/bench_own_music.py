"""Your own music, worked on real recordings: the main job's models fine-tuned on the music that
Debian's hyperrogue-music package installs, with `musiclm pipeline --data --from`, and what the
fine-tuning changed.

    python bench/bench_own_music.py --from_dir=/tmp/musiclm --model_dir=/tmp/own [--install]

1. The collection: every track under --music_dirs, cut into --segment_seconds segments written as
   a JSONL manifest (D/collection.jsonl, start_s / end_s into the original files), each captioned
   with its file name ("hr3-icyland.ogg" -> "hr3 icyland"); the last quarter of each track is the
   validation split, so every track is in both splits and the held-out audio is unseen.
2. Before: the --from_dir run's codec (mel distance, SI-SDR at its full bitrate, on validation
   segments) and MuLan (audio -> caption retrieval among the tracks' captions: which file is this
   segment from?).
3. `run_pipeline(data=manifest, from_dir=..., reuse=...)`: the codec and MuLan fine-tuned on the
   training segments, w2v-BERT and its k-means copied, the MuLan RVQ refitted, the token cache
   rebuilt and the three stages fine-tuned, then music for validation captions and its eval.
4. After: the same measurements on the fine-tuned models. Prints a table, writes D/own_music.json.

--install runs `apt-get install -y hyperrogue-music` first (the music is never
part of the tests or the package).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import machine, table  # noqa: E402

# hyperrogue-music: 17 OGG tracks (orchestral and electronic game music, ~1 h). fb-music-high ships
# tracker modules (.xm), which no audio library here decodes.
MUSIC_DIRS = ("/usr/share/hyperrogue/music",)
PACKAGES = ("hyperrogue-music",)
# Fine-tuning steps per model (the main job's from-scratch steps: codec 600, MuLan 300, stages
# 200 / 300 / 60); the learning rates and warm-up are the steps' own gin files'.
STEPS = {"codec": 300, "mulan": 150, "semantic_stage": 100, "coarse_stage": 100, "fine_stage": 30}


def tracks(music_dirs) -> list[str]:
    from musiclm_jax.audio.io import AUDIO_EXTENSIONS

    return sorted(
        os.path.join(root, f)
        for d in music_dirs
        if os.path.isdir(d)
        for root, _, files in os.walk(d)
        for f in files
        if os.path.splitext(f)[1].lower() in AUDIO_EXTENSIONS
    )


def write_manifest(paths: list[str], out: str, segment_seconds: float) -> list[dict]:
    """Segments of every track (the last quarter of each to validation), captioned by file name."""
    import soundfile

    rows = []
    for path in paths:
        seconds = soundfile.info(path).duration
        n = int(seconds // segment_seconds)
        caption = os.path.splitext(os.path.basename(path))[0].replace("-", " ").replace("_", " ")
        for i in range(n):
            rows.append(
                {
                    "path": path,
                    "id": f"{os.path.basename(path)}@{i}",
                    "caption": caption,
                    "start_s": i * segment_seconds,
                    "end_s": (i + 1) * segment_seconds,
                    "split": "validation" if i >= 0.75 * n else "train",
                }
            )
    with open(out, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return rows


def validation_segments(manifest: str, sample_rate: int, limit: int) -> list:
    from musiclm_jax.data.sources import ManifestSource

    out = []
    for ex in ManifestSource(manifest, sample_rate=sample_rate).examples("validation"):
        if np.sqrt(np.mean(ex.audio**2)) > 1e-3:  # silent stretches say nothing about a codec
            out.append(ex)
    step = max(1, len(out) // limit)  # spread over the tracks
    return out[::step][:limit]


def codec_quality(codec_dir: str, manifest: str, limit: int) -> dict:
    """Mel distance, SI-SDR and pitch agreement of the codec at its full bitrate."""
    import jax
    import jax.numpy as jnp

    from musiclm_jax import model_io
    from musiclm_jax.evaluation import pitch
    from musiclm_jax.models import codec_losses

    model, params = model_io.load(codec_dir)
    cfg = model.config
    clips = [ex.audio for ex in validation_segments(manifest, cfg.sample_rate, limit)]
    audio = np.stack([c[: len(c) // cfg.hop_length * cfg.hop_length] for c in clips])
    codes = jax.jit(model.encode)(params, jnp.asarray(audio))
    recon = np.asarray(jax.jit(model.decode)(params, codes))[:, : audio.shape[1]]
    return {
        "clips": len(clips),
        "kbps": cfg.bitrate(cfg.num_levels) / 1000,
        "mel_distance": float(jnp.mean(codec_losses.mel_distance(audio, recon, cfg.sample_rate))),
        "si_sdr_db": float(jnp.mean(codec_losses.si_sdr(audio, recon))),
        "pitch_agreement": pitch.total_agreement(list(audio), list(recon), cfg.sample_rate).fraction,
    }


def mulan_retrieval(mulan_dir: str, manifest: str, limit: int) -> dict:
    """Audio -> caption: the rank of a validation segment's own caption among every track's."""
    from musiclm_jax.tokenizers.mulan import MuLanEmbedder

    embedder = MuLanEmbedder.from_model_dir(mulan_dir)
    segments = validation_segments(manifest, embedder.sample_rate, limit)
    captions = sorted({ex.caption for ex in segments})
    audio = embedder.embed_audio([ex.audio for ex in segments])
    text = embedder.embed_text(captions)
    ranks = np.argsort(-(audio @ text.T), axis=1)
    truth = np.array([captions.index(ex.caption) for ex in segments])
    hit = lambda k: float(np.mean([t in r[:k] for t, r in zip(truth, ranks)]))  # noqa: E731
    return {"segments": len(segments), "captions": len(captions), "a2t@1": hit(1), "a2t@3": hit(3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from_dir", required=True, help="a finished pipeline (the main job's directory)")
    p.add_argument("--model_dir", required=True, help="the fine-tuned pipeline's directory")
    p.add_argument("--music_dirs", nargs="+", default=list(MUSIC_DIRS))
    p.add_argument("--install", action="store_true", help=f"apt-get install {' '.join(PACKAGES)} first")
    p.add_argument("--segment_seconds", type=float, default=8.0)
    p.add_argument("--eval_segments", type=int, default=24)
    p.add_argument("--num_prompts", type=int, default=8)
    args = p.parse_args()
    if args.install:
        subprocess.run(["apt-get", "install", "-y", *PACKAGES], check=True)
    paths = tracks(args.music_dirs)
    if not paths:
        raise SystemExit(f"no audio under {args.music_dirs}: install {' '.join(PACKAGES)} (--install)")
    os.makedirs(args.model_dir, exist_ok=True)
    manifest = os.path.join(args.model_dir, "collection.jsonl")
    rows = write_manifest(paths, manifest, args.segment_seconds)
    print(f"{len(paths)} tracks, {len(rows)} segments of {args.segment_seconds:g} s -> {manifest}")

    from musiclm_jax import pipeline

    before = {
        "codec": codec_quality(os.path.join(args.from_dir, "codec"), manifest, args.eval_segments),
        "mulan": mulan_retrieval(os.path.join(args.from_dir, "mulan"), manifest, args.eval_segments),
    }
    t0 = time.perf_counter()
    summary = pipeline.run_pipeline(
        model_dir=args.model_dir,
        size="small",
        seconds=4.0,
        num_prompts=args.num_prompts,
        data=manifest,
        from_dir=args.from_dir,
        reuse={"codec": "finetune", "mulan": "finetune", "mulan_rvq": "train"},
        step_bindings={step: [f"TRAIN_STEPS = {n}"] for step, n in STEPS.items()},
    )
    wall = time.perf_counter() - t0
    after = {
        "codec": codec_quality(os.path.join(args.model_dir, "codec"), manifest, args.eval_segments),
        "mulan": mulan_retrieval(os.path.join(args.model_dir, "mulan"), manifest, args.eval_segments),
    }
    out = {
        "machine": machine(),
        "tracks": paths,
        "segments": len(rows),
        "steps": STEPS,
        "before": before,
        "after": after,
        "pipeline_wall_s": wall,
        "step_wall_s": summary["wall_s"],
        "text_to_music": summary["metrics"]["text_to_music"],
    }
    with open(os.path.join(args.model_dir, "own_music.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(f"\n{machine()}; {len(paths)} tracks; fine-tuning steps {STEPS}; pipeline {wall / 60:.1f} min")
    shown = []
    for when, r in (("main job's models", before), ("fine-tuned", after)):
        shown.append(
            {
                "models": when,
                "codec mel distance": f"{r['codec']['mel_distance']:.3f}",
                "codec SI-SDR dB": f"{r['codec']['si_sdr_db']:.1f}",
                "codec pitch kept": f"{r['codec']['pitch_agreement']:.2f}",
                "MuLan audio->file name @1": f"{r['mulan']['a2t@1']:.2f}",
                "@3": f"{r['mulan']['a2t@3']:.2f}",
                "chance @1": f"{1 / r['mulan']['captions']:.2f}",
            }
        )
    print(table(shown))
    print("step times: " + ", ".join(f"{k} {v:.0f} s" for k, v in summary["wall_s"].items()))
    print(
        "music for validation captions: "
        + ", ".join(f"{k} {v:.3g}" for k, v in summary["metrics"]["text_to_music"].items())
    )


if __name__ == "__main__":
    main()
