"""What the text-to-music eval and export cost on this machine.

1. Metrics per --clips clips (default 100 x 10 s, held-out synthetic pieces): FAD, FAD-inf
   and KAD (embedding both sets, then each distance; "too few clips" where that many points
   make one meaningless), KLD (the attribute classifier's distributions of both sets, then KL;
   and musicnn's tags), MCC (MuLan text and audio embeddings, then the cosine). The distances
   are timed with the pipeline's MuLan audio tower, the VGGish-compatible network (random
   weights: the released architecture, so the same cost as the real weights) and musicnn (the
   published MagnaTagATune tagger, weights from its pip package, when installed).
2. Export and load of the pipeline's models: `export_checkpoint` per model (float32 and
   bfloat16), `export_musiclm` (the five models + StableHLO samplers for --export_seconds and
   the codec decoder), and loading for generation from the training directories against from
   the bundle, each with its first generation (compiles included).

Each timing is the median of --runs runs. MuLan (FAD, MCC) and section 2 need a finished
`musiclm pipeline` directory; without one section 1 times the rest:

    python bench/bench_eval.py --pipeline_dir=/tmp/musiclm
    python bench/bench_eval.py --pipeline_dir=/tmp/musiclm --clips 20 --runs 1 --sections 1
    python bench/bench_eval.py --clips 20 --runs 1 --sections 1
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
from machine import machine, table  # noqa: E402  (bench/machine.py)
from tqdm import tqdm  # noqa: E402

from musiclm_jax.data import synthetic  # noqa: E402
from musiclm_jax.evaluation import embedders, metrics, text_to_music  # noqa: E402

MODELS = {
    "mulan_dir": "mulan",
    "semantic_stage_dir": "semantic_stage",
    "coarse_stage_dir": "coarse_stage",
    "fine_stage_dir": "fine_stage",
    "soundstream_dir": "codec",
}


def timed(fn, runs: int):
    """(median seconds, last result) of `runs` calls."""
    times, out = [], None
    for _ in range(runs):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), out


def _row(metric: str, t_embed: float, t_math: float, value, per100: float) -> dict:
    return {
        "metric": metric,
        "embed / classify s": t_embed * per100,
        "maths s": t_math * per100,
        "total s per 100 clips": (t_embed + t_math) * per100,
        "value": value,
    }


def distance_rows(name: str, embedder, ref: np.ndarray, gen: np.ndarray, rate: int, runs: int, per100: float):
    """FAD, FAD-inf and KAD of one embedder's points of both sets: one row each."""
    embedder.fad_points(list(ref[:2]), rate)  # compile
    t_embed, points = timed(lambda: (embedder.fad_points(list(ref), rate), embedder.fad_points(list(gen), rate)), runs)
    (n_ref, dim), n_gen = points[0].shape, len(points[1])
    rows = []
    for metric, fn, too_few in (
        ("FAD", lambda: metrics.fad(*points), metrics.fad_too_few(n_ref, n_gen, dim)),
        ("FAD-inf", lambda: metrics.fad_inf(*points), metrics.fad_inf_too_few(n_ref, n_gen, dim)),
        ("KAD", lambda: metrics.kad(*points), metrics.kad_too_few(n_ref, n_gen)),
    ):
        t_math, value = (0.0, metrics.TOO_FEW_CLIPS) if too_few else timed(fn, runs)
        label = f"{metric} ({name}, {n_ref} + {n_gen} points, {dim}-d)"
        rows.append(_row(label, t_embed if metric == "FAD" else 0.0, t_math, value, per100))
    return rows


def metric_rows(pipeline_dir, clips: int, seconds: float, runs: int) -> list[dict]:
    from musiclm_jax.tokenizers.mulan import MuLanEmbedder

    mulan = MuLanEmbedder.from_model_dir(os.path.join(pipeline_dir, "mulan")) if pipeline_dir else None
    rate = mulan.sample_rate if mulan else 16000
    seed = synthetic.SPLIT_SEEDS["validation"]
    pieces = [
        synthetic.render(seed, i, sample_rate=rate, duration_s=seconds)
        for i in tqdm(range(2 * clips), desc="render clips")
    ]
    ref = np.stack([p.audio for p in pieces[:clips]])
    gen = np.stack([p.audio for p in pieces[clips:]])  # stands in for generated music: same cost
    captions = [p.caption for p in pieces[:clips]]
    per100 = 100.0 / clips
    rows = []

    config = embedders.VGGishConfig()
    named = [("vggish", embedders.VGGishEmbedder(embedders.VGGishEmbedder.init_params(config), config))]
    if mulan:
        named.insert(0, ("mulan", embedders.MuLanAudioEmbedder(mulan)))
    if importlib.util.find_spec("musicnn"):
        t_load, musicnn = timed(lambda: embedders.MusicnnEmbedder(), 1)
        print(f"musicnn: loaded in {t_load:.1f} s")
        named.append(("musicnn", musicnn))
    for name, embedder in named:
        rows += distance_rows(name, embedder, ref, gen, rate, runs, per100)

    classifiers = [
        (
            "attribute classifier",
            text_to_music.SyntheticAttributeClassifier(None, steps=300, num_examples=256, seconds=4.0),
        )
    ]
    if importlib.util.find_spec("musicnn"):
        classifiers.append(("musicnn tags", text_to_music.MusicnnTagClassifier()))
    for label, classifier in classifiers:
        classifier.label_distributions(ref[:2], rate)  # compile
        t_cls, (p, q) = timed(
            lambda: (classifier.label_distributions(ref, rate), classifier.label_distributions(gen, rate)), runs
        )
        t_math, kld = timed(lambda: np.mean([metrics.kld(p[a], q[a]) for a in p]), runs)
        rows.append(_row(f"KLD ({label}, {len(p)} label sets)", t_cls, t_math, kld, per100))

    if mulan:
        mulan.embed_text(captions[:2])
        mulan.embed_audio(list(gen[:2]))
        t_embed, (text, audio) = timed(lambda: (mulan.embed_text(captions), mulan.embed_audio(list(gen))), runs)
        t_math, mcc = timed(lambda: metrics.mcc(text, audio), runs)
        rows.append(_row("MCC (MuLan text + audio)", t_embed, t_math, mcc, per100))
    return rows


def export_rows(pipeline_dir: str, seconds: float, runs: int) -> list[dict]:
    from musiclm_jax import export
    from musiclm_jax.generate import load_musiclm

    dirs = {k: os.path.join(pipeline_dir, v) for k, v in MODELS.items()}
    rows = []
    work = tempfile.mkdtemp(prefix="bench_eval_")
    try:
        for name, d in MODELS.items():
            for dtype in (None, "bfloat16"):
                out = os.path.join(work, f"{d}_{dtype or 'f32'}")

                def run(out=out, model_dir=dirs[name], dtype=dtype):
                    shutil.rmtree(out, ignore_errors=True)
                    return export.export_checkpoint(model_dir, out, dtype=dtype)

                t, _ = timed(run, runs)
                size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(out) for f in fs)
                rows.append({"what": f"export_checkpoint {d} ({dtype or 'float32'})", "seconds": t, "MB": size / 1e6})
        bundle = os.path.join(work, "bundle")

        def run_bundle():
            shutil.rmtree(bundle, ignore_errors=True)
            return export.export_musiclm(bundle, model_dirs=dirs, seconds=seconds)

        t, manifest = timed(run_bundle, runs)
        size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(bundle) for f in fs)
        rows.append(
            {
                "what": f"export_musiclm bundle ({seconds:g} s, {len(manifest['samplers'])} samplers, "
                f"{'+'.join(manifest['platforms'])})",
                "seconds": t,
                "MB": size / 1e6,
            }
        )
        for label, load in (
            ("load_musiclm (training dirs)", lambda: load_musiclm(dirs)),
            ("load_exported_musiclm (bundle)", lambda: export.load_exported_musiclm(bundle)),
        ):
            t_load, model = timed(load, runs)
            t0 = time.perf_counter()
            model.generate(["a calm piano melody"], seconds)
            rows.append({"what": label, "seconds": t_load, "first generation s": time.perf_counter() - t0})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--pipeline_dir", help="a finished `musiclm pipeline` directory (MuLan, section 2)")
    parser.add_argument("--clips", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length for the metrics")
    parser.add_argument("--export_seconds", type=float, default=4.0, help="generation length of the bundle")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sections", default="1,2")
    args = parser.parse_args()
    sections = {int(s) for s in args.sections.split(",")}
    print(f"machine: {machine()}")
    if 1 in sections:
        rows = metric_rows(args.pipeline_dir, args.clips, args.seconds, args.runs)
        print(
            f"\n1. eval metrics, {args.clips} x {args.seconds:g} s clips, scaled to 100 clips "
            f"(median of {args.runs})\n{table(rows)}"
        )
    if 2 in sections:
        if not args.pipeline_dir:
            parser.error("section 2 (export and load) needs --pipeline_dir")
        rows = export_rows(args.pipeline_dir, args.export_seconds, args.runs)
        print(
            f"\n2. export and load, models of {args.pipeline_dir} (median of {args.runs})\n"
            f"{table(rows, ['what', 'seconds', 'MB', 'first generation s'])}"
        )


if __name__ == "__main__":
    main()
