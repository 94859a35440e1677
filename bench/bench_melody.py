"""Melody conditioning, measured: does the melody model find a held-out tune's other renditions,
and does music generated to follow a hummed tune follow it?

    python bench/bench_melody.py --pipeline_dir=/tmp/musiclm_small --num_tunes=24

1. Retrieval (the melody model of PIPELINE_DIR/melody): for held-out synthetic tunes, one rendition
   of each kind pair (hum -> instrument, whistle -> band, ...) finds the other among all tunes'
   renditions: recall@1 / @10 against chance (k / tunes).
2. Reliance: the semantic stage's eval cross-entropy with its true melody tokens, another clip's,
   its windows shuffled, and none (NULL): a stage that uses the tune loses when it is swapped.
3. Following (the pipeline's MusicLM, run with `--gin.run_pipeline.melody=True`): each held-out
   tune hummed, music generated under its own piece's caption
     with the tune       MusicLM.generate(melody_audio=hum)
     text only           the same caption, seed and model without a tune (chance)
     the tune played     an instrument rendition of the same tune (ceiling)
   scored against the hum by evaluation.pitch.melody_adherence (librosa's chroma and pyin, not
   ours): chroma cosine (MusicGen's melody measure) and pitch-class agreement; a paired sign test
   (with tune > text only) gives p.

Prints the tables, writes bench/results/melody.json and melody_curves.png (the first tune's
pitch curve over the music that followed it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

RESULTS = os.path.join(os.path.dirname(__file__), "results")
KIND_PAIRS = (("hum", "instrument"), ("hum", "band"), ("whistle", "instrument"), ("instrument", "band"))


def retrieval(melody_dir: str, num_tunes: int, seconds: float) -> dict:
    import jax

    from musiclm_jax import model_io
    from musiclm_jax.data import melody, synthetic
    from musiclm_jax.models.mulan import recall_at_k

    model, params = model_io.load(melody_dir, kind="MelodyModel")
    sr, window = model.config.sample_rate, model.config.window_seconds
    seconds = min(seconds, window)
    embed = jax.jit(model.embed_audio)
    seed = synthetic.SPLIT_SEEDS["validation"]
    out = {}
    for a, b in KIND_PAIRS:
        clips = {a: [], b: []}
        for i in range(num_tunes):
            group = melody.melody_group(seed, i, kinds=(a, b), sample_rate=sr, duration_s=seconds)
            for kind, (audio, _) in zip((a, b), group):
                clips[kind].append(np.pad(audio, (0, model.config.window_samples - len(audio))))
        emb = {
            k: np.concatenate([np.asarray(embed(params, np.stack(v[j : j + 16]))) for j in range(0, len(v), 16)])
            for k, v in clips.items()
        }
        recall = recall_at_k(emb[a], emb[b], ks=(1, 10))
        out[f"{a}->{b}"] = {"recall@1": recall[1], "recall@10": recall[10]}
    out["chance"] = {"recall@1": 1.0 / num_tunes, "recall@10": min(1.0, 10.0 / num_tunes)}
    return out


def tokens_carry_pitch(cache_dir: str) -> dict:
    """Do the cached token streams carry the melody? Per frame of the synthetic clips (their
    scores give the sounding melody pitch), the melody's pitch class guessed from that frame's
    token alone (each code's most frequent pitch class on the training clips), on validation
    clips: accuracy against the best guess without a token (the most frequent class)."""
    from musiclm_jax.data import synthetic, token_cache_tasks

    meta = token_cache_tasks.load_cache_meta(cache_dir)
    out = {}
    streams = {"semantic": ("semantic_tokens", None), "acoustic level 0": ("acoustic_tokens", 0)}
    for name, (feature, level) in streams.items():
        rate = meta["rates"][feature.split("_")[0]]
        pairs = {}
        for split in ("train", "validation"):
            codes, classes = [], []
            for clip in token_cache_tasks.read_cache(cache_dir, split):
                match = clip["id"].split("-")
                if len(match) != 3 or match[0] != "synthetic":
                    continue
                tokens = clip[feature] if level is None else clip[feature][:, level]
                score = synthetic.sample_score(int(match[1]), int(match[2]), len(tokens) / rate)
                pitch = score.melody_pitch_at((np.arange(len(tokens)) + 0.5) / rate)
                voiced = ~np.isnan(pitch)
                codes.append(tokens[voiced])
                classes.append(np.round(pitch[voiced]).astype(int) % 12)
            pairs[split] = (np.concatenate(codes), np.concatenate(classes))
        (tr_codes, tr_classes), (va_codes, va_classes) = pairs["train"], pairs["validation"]
        table = np.zeros((int(max(tr_codes.max(), va_codes.max())) + 1, 12))
        np.add.at(table, (tr_codes, tr_classes), 1)
        guess = table.argmax(1)
        out[name] = {
            "accuracy": float(np.mean(guess[va_codes] == va_classes)),
            "no_token": float(np.mean(np.bincount(tr_classes, minlength=12).argmax() == va_classes)),
            "frames": int(len(va_codes)),
        }
    return out


def following(pipeline_dir: str, num_tunes: int, seconds: float, seed: int) -> dict:
    from scipy.stats import binomtest

    from musiclm_jax import generate as generate_lib
    from musiclm_jax.data import melody, synthetic
    from musiclm_jax.evaluation.pitch import melody_adherence

    dirs = {
        k: os.path.join(pipeline_dir, "codec" if k == "soundstream_dir" else k.removesuffix("_dir"))
        for k in generate_lib.MODEL_DIRS
    }
    dirs["melody_dir"] = os.path.join(pipeline_dir, "melody")
    model = generate_lib.load_musiclm(dirs)
    sr = model.codec.sample_rate
    split_seed = synthetic.SPLIT_SEEDS["validation"]
    rows, curves = [], None
    for i in range(num_tunes):
        (hum, _), (played, _) = melody.melody_group(
            split_seed, i, kinds=("hum", "instrument"), sample_rate=sr, duration_s=seconds
        )
        caption = synthetic.caption_of(split_seed, i)
        t0 = time.perf_counter()
        with_tune = model.generate([caption], seconds, seed=seed, melody_audio=hum, melody_sample_rate=sr).audio[0]
        text_only = model.generate([caption], seconds, seed=seed).audio[0]
        rows.append(
            {
                "caption": caption,
                "with_tune": melody_adherence(hum, with_tune, sr),
                "text_only": melody_adherence(hum, text_only, sr),
                "played_tune": melody_adherence(hum, played, sr),
                "generate_s": time.perf_counter() - t0,
            }
        )
        if curves is None:
            curves = (hum, with_tune, caption)
        print(
            f"tune {i + 1}/{num_tunes}: chroma cosine with tune {rows[-1]['with_tune']['chroma_cosine']:.3f}, "
            f"text only {rows[-1]['text_only']['chroma_cosine']:.3f}",
            flush=True,
        )
    summary = {}
    for metric in ("chroma_cosine", "pitch_class_agreement"):
        w = np.array([r["with_tune"][metric] for r in rows])
        t = np.array([r["text_only"][metric] for r in rows])
        p = np.array([r["played_tune"][metric] for r in rows])
        ok = ~(np.isnan(w) | np.isnan(t))
        wins, n = int(np.sum(w[ok] > t[ok])), int(ok.sum())
        p_value = float(binomtest(wins, n, 0.5, alternative="greater").pvalue) if n else None
        summary[metric] = {
            "with_tune": float(np.nanmean(w)),
            "text_only": float(np.nanmean(t)),
            "played_tune": float(np.nanmean(p)),
            "wins": wins,
            "n": n,
            "p_sign_test": p_value,
        }
    return {"rows": rows, "summary": summary, "sample_rate": sr, "curves": curves}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pipeline_dir", required=True, help="a `musiclm pipeline` directory run with melody=True")
    ap.add_argument("--num_tunes", type=int, default=24)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip_following", action="store_true", help="retrieval only")
    args = ap.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    t0 = time.perf_counter()
    result = {"machine": machine, "pipeline_dir": args.pipeline_dir, "num_tunes": args.num_tunes}
    result["retrieval"] = retrieval(os.path.join(args.pipeline_dir, "melody"), args.num_tunes, args.seconds)
    print(f"\nmelody model retrieval, {args.num_tunes} held-out tunes ({machine})")
    print(f"{'renditions':<22}{'recall@1':>10}{'recall@10':>11}")
    for name, r in result["retrieval"].items():
        print(f"{name:<22}{r['recall@1']:>10.3f}{r['recall@10']:>11.3f}")
    from bench_adherence import condition_reliance

    reliance = condition_reliance(
        {"semantic": os.path.join(args.pipeline_dir, "semantic_stage")}, os.path.join(args.pipeline_dir, "tokens")
    )["semantic"]
    result["semantic_stage_reliance"] = reliance
    print("\nthe semantic stage's eval cross-entropy on the token cache's validation clips, conditions swapped")
    for name, value in reliance.items():
        print(f"{name:<40}{value:>8.4f}")
    result["tokens_carry_pitch"] = tokens_carry_pitch(os.path.join(args.pipeline_dir, "tokens"))
    print("\nthe melody's pitch class per frame, guessed from that frame's token (validation clips)")
    for name, r in result["tokens_carry_pitch"].items():
        print(f"{name:<20} accuracy {r['accuracy']:.3f}, without the token {r['no_token']:.3f} ({r['frames']} frames)")
    if not args.skip_following:
        f = following(args.pipeline_dir, args.num_tunes, args.seconds, args.seed)
        curves = f.pop("curves")
        result["following"] = f
        print(f"\nmusic following hummed tunes, {args.num_tunes} held-out tunes x {args.seconds:g} s")
        print(f"{'measure':<24}{'with tune':>10}{'text only':>10}{'played':>8}{'wins':>7}{'p':>9}")
        for metric, s in f["summary"].items():
            print(
                f"{metric:<24}{s['with_tune']:>10.3f}{s['text_only']:>10.3f}{s['played_tune']:>8.3f}"
                f"{s['wins']:>4}/{s['n']:<3}{s['p_sign_test']:>8.2g}"
            )
        from musiclm_jax.audio.plots import pitch_curves_over_spectrogram
        from musiclm_jax.evaluation.pitch import CHROMA_HOP, track_f0

        hum, made, caption = curves
        sr = f["sample_rate"]
        pitch_curves_over_spectrogram(
            made,
            sr,
            [
                ("hummed tune", track_f0(hum, sr, 4 * CHROMA_HOP), sr / CHROMA_HOP),
                ("generated", track_f0(made, sr, 4 * CHROMA_HOP), sr / CHROMA_HOP),
            ],
            os.path.join(RESULTS, "melody_curves.png"),
            title=f"{caption!r} following a held-out hummed tune",
        )
    result["wall_s"] = time.perf_counter() - t0
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "melody.json"), "w") as fh:
        json.dump(result, fh, indent=1)
    print(f"\nwritten to {RESULTS}/melody.json ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
