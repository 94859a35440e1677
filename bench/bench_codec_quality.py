"""How well a trained codec keeps music: per bitrate, mel distance, SI-SDR and pitch agreement
(librosa's pyin on the original and the reconstruction: the fraction of the original's voiced
frames whose f0 the copy keeps within 50 cents), on held-out synthetic pieces and, when given,
on real recordings (any folder of audio files, e.g. what Debian's fb-music-high, hyperrogue-music
or asc-music packages install under /usr/share/games).

    python bench/bench_codec_quality.py --codec_dir=D/codec [--num_clips 16] [--seconds 4]
        [--real_dir /usr/share/games/hyperrogue] [--plot out.png]

Prints a table and writes `--json`; `--plot` draws an original's spectrogram beside its
reconstruction at the full bitrate.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import machine  # noqa: E402

from musiclm_jax import model_io  # noqa: E402
from musiclm_jax.audio.io import AUDIO_EXTENSIONS, AudioDecodeError, load_audio  # noqa: E402
from musiclm_jax.data import synthetic  # noqa: E402
from musiclm_jax.evaluation import pitch  # noqa: E402
from musiclm_jax.models import codec_losses, soundstream  # noqa: E402


def synthetic_clips(num: int, seconds: float, sample_rate: int, **source_kwargs) -> list[np.ndarray]:
    """Held-out synthetic pieces (the validation stream: never seen in training)."""
    seed = synthetic.SPLIT_SEEDS["validation"]
    return [
        synthetic.render(seed, i, sample_rate=sample_rate, duration_s=seconds, **source_kwargs).audio
        for i in range(num)
    ]


def real_clips(folder: str, num: int, seconds: float, sample_rate: int) -> list[np.ndarray]:
    """`num` crops of `seconds` from the middle of the audio files under `folder` (sorted)."""
    paths = sorted(
        os.path.join(root, f)
        for root, _, files in os.walk(folder)
        for f in files
        if os.path.splitext(f)[1].lower() in AUDIO_EXTENSIONS
    )
    out = []
    for path in paths:
        try:  # the first 30 s: enough for a crop, and a file's damaged tail does not matter
            audio, _ = load_audio(path, sample_rate=sample_rate, end_s=30.0)
        except AudioDecodeError as e:
            print(f"skipped {path}: {e}")
            continue
        n = int(seconds * sample_rate)
        if len(audio) < n:
            continue
        start = (len(audio) - n) // 2
        crop = audio[start : start + n]
        if np.sqrt(np.mean(crop**2)) > 1e-3:
            out.append(crop.astype(np.float32))
        if len(out) == num:
            break
    if not out:
        raise SystemExit(f"no audio of at least {seconds} s under {folder}")
    return out


def measure(model, params, clips: list[np.ndarray]) -> list[dict]:
    """One row per bitrate (levels 1, 2, 4, ..., all)."""
    cfg = model.config
    hop = cfg.hop_length
    audio = np.stack([c[: len(c) // hop * hop] for c in clips])
    encode = jax.jit(lambda p, x: model.encode(p, x))
    decode = jax.jit(lambda p, c: model.decode(p, c))
    codes = encode(params, jnp.asarray(audio))
    rows = []
    for levels in soundstream.eval_levels(cfg.num_levels):
        recon = np.asarray(decode(params, codes[..., :levels]))[:, : audio.shape[1]]
        agreement = pitch.total_agreement(list(audio), list(recon), cfg.sample_rate)
        rows.append(
            {
                "levels": levels,
                "kbps": cfg.bitrate(levels) / 1000,
                "mel_distance": float(jnp.mean(codec_losses.mel_distance(audio, recon, cfg.sample_rate))),
                "si_sdr_db": float(jnp.mean(codec_losses.si_sdr(audio, recon))),
                "pitch_agreement": agreement.fraction,
                "voiced_frames": agreement.voiced,
                "recon": recon,
            }
        )
    return rows


def plot(original: np.ndarray, recon: np.ndarray, sample_rate: int, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import librosa
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    for ax, x, name in zip(axes, (original, recon), ("original", "codec reconstruction")):
        s = librosa.amplitude_to_db(np.abs(librosa.stft(x, n_fft=2048, hop_length=256)), ref=np.max)
        librosa.display.specshow(s, sr=sample_rate, hop_length=256, x_axis="time", y_axis="log", ax=ax, vmin=-70)
        ax.set_title(name)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codec_dir", required=True)
    parser.add_argument("--num_clips", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--real_dir", default=None, help="a folder of real recordings to measure on too")
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", default=None, help="PNG: an original and its reconstruction")
    parser.add_argument(
        "--without_correction",
        action="store_true",
        help="a spectral VQ codec ('spectrum' encoder) measured also with its decoder's learned correction off",
    )
    args = parser.parse_args(argv)

    model, params = model_io.load(args.codec_dir, kind="SoundStream")
    sr = model.config.sample_rate
    sets = {"synthetic (held out)": synthetic_clips(args.num_clips, args.seconds, sr)}
    if args.real_dir:
        sets[f"real ({args.real_dir})"] = real_clips(args.real_dir, args.num_clips, args.seconds, sr)
    t0 = time.time()
    results = {name: measure(model, params, clips) for name, clips in sets.items()}
    if args.without_correction:
        decoder = params["generator"]["decoder"]
        if "residual_gate" not in decoder:
            raise SystemExit("--without_correction: this codec's decoder has no learned correction (residual_gate)")
        off = {
            **params,
            "generator": {
                **params["generator"],
                "decoder": {**decoder, "residual_gate": 0.0 * decoder["residual_gate"]},
            },
        }
        results.update({f"{name}, correction off": measure(model, off, clips) for name, clips in sets.items()})
    print(
        f"# {machine()}; codec {args.codec_dir} ({sr} Hz, {model.config.frame_rate:g} Hz frames), "
        f"{args.num_clips} clips x {args.seconds:g} s; {time.time() - t0:.0f} s"
    )
    print("| clips | levels | kbps | mel distance | SI-SDR dB | pitch within 50 cents | voiced frames |")
    print("|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        for r in rows:
            print(
                f"| {name} | {r['levels']} | {r['kbps']:.1f} | {r['mel_distance']:.3f} | {r['si_sdr_db']:.1f} "
                f"| {r['pitch_agreement']:.2f} | {r['voiced_frames']} |"
            )
    if args.plot:
        first = next(iter(sets))
        plot(sets[first][0], results[first][-1]["recon"][0], sr, args.plot, f"{args.codec_dir}: {first}")
    if args.json:
        clean = {k: [{f: v for f, v in r.items() if f != "recon"} for r in rows] for k, rows in results.items()}
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "codec_dir": args.codec_dir, "results": clean}, f, indent=1)


if __name__ == "__main__":
    main()
