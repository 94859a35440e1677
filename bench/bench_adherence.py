"""Does the small pipeline's music follow the prompt? Adherence link by link, with p-values.

For --num_prompts captions of held-out synthetic pieces that state register, drums and tempo
(balanced over the 18 combinations), in each prompt family ('train', the caption phrasings MuLan
trained on; 'heldout', paraphrases whose words and frames no training caption uses (both
data/captions.py); 'plain', hand-written everyday prompts, evaluation/plain_prompts.py), the
pipeline's models generate --seconds of music, and each attribute is checked at every
link of the chain:

  mulan     the prompt's MuLan text tokens        probe fit on cached audio MuLan tokens
  semantic  the semantic stage's tokens           probe fit on cached semantic tokens
  coarse    the coarse stage's acoustic tokens    probe fit on cached coarse acoustic tokens
  audio     the decoded music                     the DSP attribute detectors (the pipeline's
                                                  adherence) and the learned attribute classifier

and, to tell the stages' losses from the text's, the music the stages make from each held-out piece's
own audio MuLan tokens (all stages), and from its MuLan and semantic tokens (coarse + fine stages
only; MusicLM.generate_from_tokens), read by the detectors; and each stage's eval cross-entropy
on the token cache's validation clips with each condition swapped for another clip's (or its
frames shuffled): a stage that ignores a condition loses nothing

(probes: evaluation/token_probes.py, logistic regressions on token statistics of the labelled
training clips in the pipeline's token cache). Beside each link, the same measurement on the
held-out pieces themselves (their real tokens; their audio; their codec reconstruction) is that
link's ceiling. Every accuracy has its n and a one-sided binomial p-value against chance (the
larger of uniform and shuffled chance: evaluation/metrics.with_significance).

    python bench/bench_adherence.py --pipeline_dir=/tmp/musiclm           # a finished pipeline
    python bench/bench_adherence.py --pipeline_dir=/tmp/adherence --train  # trains it first

--train first runs (or resumes) `musiclm pipeline` with the longer stage training of
ADHERENCE_BINDINGS, which the main job has no time for. The music is decoded with D/codec
(--codec_dir: another codec with the same tokens, e.g. one whose decoder was fine-tuned with
SoundStreamConfig.frozen_tokens). Writes adherence.json, adherence_links.png and
generated_examples.png (a low and a high prompt's music beside the pieces they describe) into
D/adherence_bench (--out_name). --guidance STAGE=SCALE and --num_candidates sample as the
pipeline's generate step can (the main job, gin/pipeline/small.gin: --guidance semantic=2
coarse=3 --num_candidates 4).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from machine import machine, table  # noqa: E402  (bench/machine.py)
from tqdm import tqdm  # noqa: E402

ATTRIBUTES = ("register", "drums", "tempo_class")
# The prompt families: as MuLan trained on them, paraphrases in words it never saw, hand-written
# everyday prompts (evaluation/plain_prompts.py).
FAMILIES = ("train", "heldout", "plain")
# Longer stage training than the main job's (pipeline/small/*.gin: semantic 200, coarse 300 steps): the stages
# need it to carry the MuLan condition.
ADHERENCE_BINDINGS = {"semantic_stage": ["TRAIN_STEPS = 1000"], "coarse_stage": ["TRAIN_STEPS = 800"]}


def score(prompts: list[dict], predicted: list[dict]) -> dict:
    """eval_sets.adherence of predicted labels for the ATTRIBUTES they hold (accuracy, n, chance,
    shuffled chance, successes, the one-sided binomial p, above_chance = significant)."""
    from musiclm_jax.evaluation import eval_sets

    attrs = [a for a in ATTRIBUTES if all(a in pred for pred in predicted)]
    items = [{"labels": p["labels"], "mentioned": [a for a in attrs if a in p["mentioned"]]} for p in prompts]
    typed = [{a: {"True": True, "False": False}.get(pred[a], pred[a]) for a in attrs} for pred in predicted]
    return eval_sets.adherence(items, typed)


def training_tokens(cache_dir: str) -> tuple[dict, list[dict], dict]:
    """The token cache's train split: ({stream: tokens}, labels per clip, codebook sizes)."""
    from musiclm_jax.data import synthetic, token_cache_tasks

    clips = list(token_cache_tasks.read_cache(cache_dir, "train"))
    meta = token_cache_tasks.load_cache_meta(cache_dir)
    frames = {k: min(len(c[f"{k}_tokens"]) for c in clips) for k in ("semantic", "acoustic")}
    tokens = {
        "mulan": np.stack([c["mulan_tokens"] for c in clips]),
        "semantic": np.stack([c["semantic_tokens"][: frames["semantic"]] for c in clips]),
        "acoustic": np.stack([c["acoustic_tokens"][: frames["acoustic"]] for c in clips]),
    }
    return tokens, [synthetic.labels_of_id(c["id"]) for c in clips], meta["codebook_sizes"]


def reference_tokens(model, semantic_tokenizer, audio: np.ndarray, sample_rate: int) -> dict:
    """The held-out pieces' own tokens from the pipeline's three tokenizers (each at its rate)."""
    from musiclm_jax.audio.io import resample

    def at(rate):
        return np.stack([resample(a, sample_rate, rate) for a in audio])

    return {
        "mulan": np.asarray(model.mulan.audio_tokens(at(model.mulan.sample_rate))),
        "semantic": np.asarray(semantic_tokenizer.tokenize(at(semantic_tokenizer.sample_rate))),
        "acoustic": np.asarray(model.codec.encode(at(model.codec.sample_rate))),
    }


def sampling_settings(guidance: list[str]) -> dict:
    """'STAGE=SCALE' items -> per-stage SamplingSettings: the paper's temperatures with that
    classifier-free guidance scale."""
    from musiclm_jax.models.musiclm import PAPER_SETTINGS

    settings = dict(PAPER_SETTINGS)
    for item in guidance:
        stage, _, scale = item.partition("=")
        if stage not in settings or not scale:
            raise SystemExit(f"--guidance takes STAGE=SCALE with STAGE in {sorted(settings)}, got {item!r}")
        settings[stage] = dataclasses.replace(settings[stage], guidance_scale=float(scale))
    return settings


def generate(model, prompts: list[dict], seconds: float, batch: int, seed: int, **kwargs) -> dict:
    """Generated tokens and audio for the prompts, in batches (kwargs: MusicLM.generate's settings,
    num_candidates)."""
    parts = []
    for i in tqdm(range(0, len(prompts), batch), desc="generate", unit="batch"):
        g = model.generate([p["caption"] for p in prompts[i : i + batch]], seconds, seed=seed + i, **kwargs)
        parts.append(
            {"mulan": g.mulan_tokens, "semantic": g.semantic_tokens, "acoustic": g.acoustic_tokens, "audio": g.audio}
        )
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def generate_from_tokens(model, tokens: dict, seconds: float, batch: int, seed: int, **kwargs) -> np.ndarray:
    """Audio from the pieces' own tokens (MusicLM.generate_from_tokens): tokens['mulan'] and, when
    given, tokens['semantic'], in batches."""
    rows = len(tokens["mulan"])
    parts = []
    for i in tqdm(range(0, rows, batch), desc="generate from tokens", unit="batch"):
        part = {k: v[i : i + batch] for k, v in tokens.items()}
        g = model.generate_from_tokens(
            part["mulan"], seconds, semantic_tokens=part.get("semantic"), seed=seed + i, **kwargs
        )
        parts.append(g.audio)
    return np.concatenate(parts)


def condition_reliance(stage_dirs: dict, cache_dir: str, seed: int = 0) -> dict:
    """{stage: {variant: eval cross-entropy}} on the token cache's validation clips (each clip's
    first training crop): with the true conditions, with one condition stream taken from another
    clip ('<feature> from another clip'), and for time-aligned streams with its frames shuffled
    ('<feature> frames shuffled'). A stage that uses a condition loses when it is swapped."""
    from musiclm_jax import model_io
    from musiclm_jax.data import token_cache_tasks
    from musiclm_jax.generate import training_crop_seconds
    from musiclm_jax.models.token_layout import NULL_CODE

    meta = token_cache_tasks.load_cache_meta(cache_dir)
    clips = list(token_cache_tasks.read_cache(cache_dir, "validation"))
    rng = np.random.default_rng(seed)
    out = {}
    for stage, stage_dir in stage_dirs.items():
        model, params = model_io.load(stage_dir)
        crop = training_crop_seconds(stage_dir)
        batch = {}
        for name, rate in meta["rates"].items():  # semantic, acoustic (and melody: windows per second)
            frames = min(len(c[f"{name}_tokens"]) for c in clips)
            frames = min(frames, round(crop * rate)) if crop else frames
            batch[f"{name}_tokens"] = np.stack([c[f"{name}_tokens"][:frames] for c in clips])
        batch["mulan_tokens"] = np.stack([c["mulan_tokens"] for c in clips])
        ce = jax.jit(lambda b: model.eval_fn(params, b)["cross_entropy"])  # noqa: B023
        result = {"true conditions": float(ce(batch))}
        target = model.config.target.feature
        for spec in model.config.conditions:
            feature, levels = spec.feature, slice(spec.first_level, spec.first_level + spec.num_levels)
            x = batch[feature]

            def condition_replaced(new, x=x, feature=feature, levels=levels):
                if feature != target:
                    return {**batch, feature: new}
                kept = x.copy()  # the fine stage's coarse levels: replace only those
                kept[..., levels] = new[..., levels]
                return {**batch, feature: kept}

            result[f"{feature} from another clip"] = float(ce(condition_replaced(np.roll(x, 1, axis=0))))
            if spec.stream != "mulan":
                shuffled = x[:, rng.permutation(x.shape[1])]
                result[f"{feature} frames shuffled"] = float(ce(condition_replaced(shuffled)))
            if feature in dict(model.config.condition_dropout):  # trained to run without it
                result[f"{feature} absent (NULL)"] = float(ce(condition_replaced(np.full_like(x, NULL_CODE))))
        out[stage] = result
    return out


def plot(rows: list[dict], path: str) -> None:
    """One panel per (family, attribute): ceiling and generated accuracy per link, chance dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(dict.fromkeys(r["family"] for r in rows))
    fig, axes = plt.subplots(
        len(families), len(ATTRIBUTES), figsize=(5.0 * len(ATTRIBUTES), 3.4 * len(families)), squeeze=False
    )
    for i, family in enumerate(families):
        mine = [r for r in rows if r["family"] == family]
        for ax, attr in zip(axes[i], ATTRIBUTES):
            shown = [r for r in mine if f"{attr}_gen" in r]
            x = np.arange(len(shown))
            ax.bar(x - 0.2, [r[f"{attr}_ref"] for r in shown], 0.4, label="held-out pieces (ceiling)", color="#bbb")
            ax.bar(x + 0.2, [r[f"{attr}_gen"] for r in shown], 0.4, label="generated from the prompt", color="#2a6")
            if shown:
                ax.axhline(shown[0][f"{attr}_chance"], color="k", ls="--", lw=1, label="chance")
            ax.set_xticks(x, [r["link"] for r in shown], rotation=30, ha="right", fontsize=7)
            ax.set_title(f"{attr}: {family} captions", fontsize=9)
            ax.set_ylim(0, 1)
        axes[i][0].set_ylabel("accuracy")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--pipeline_dir", required=True)
    parser.add_argument(
        "--train",
        action="store_true",
        help="first run/resume the pipeline with ADHERENCE_BINDINGS",
    )
    parser.add_argument("--num_prompts", type=int, default=54, help="per caption family (18 combinations x 3)")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--guidance",
        nargs="*",
        default=[],
        metavar="STAGE=SCALE",
        help="classifier-free guidance per stage, e.g. coarse=3 (default none, the paper)",
    )
    parser.add_argument("--out_name", default="adherence_bench", help="output folder under --pipeline_dir")
    parser.add_argument(
        "--num_candidates", type=int, default=1, help="samples per prompt, the best by MuLan score kept"
    )
    parser.add_argument(
        "--codec_dir",
        help="decode with this codec (same tokens as D/codec, e.g. one with a fine-tuned decoder); default D/codec",
    )
    args = parser.parse_args()
    settings = sampling_settings(args.guidance)

    from musiclm_jax import pipeline
    from musiclm_jax.audio import plots
    from musiclm_jax.evaluation import eval_sets, text_to_music, token_probes
    from musiclm_jax.fileio import write_json
    from musiclm_jax.generate import load_musiclm
    from musiclm_jax.tokenizers.semantic import SemanticTokenizer

    d = os.path.abspath(args.pipeline_dir)
    t0 = time.perf_counter()
    if args.train:
        pipeline.run_pipeline(model_dir=d, size="small", num_prompts=24, step_bindings=ADHERENCE_BINDINGS)
    train_wall = time.perf_counter() - t0
    dirs = {k: os.path.join(d, v) for k, v in pipeline.DIRS.items()}
    codec_dir = args.codec_dir or dirs["codec"]
    model = load_musiclm(
        {
            "mulan_dir": dirs["mulan"],
            "semantic_stage_dir": dirs["semantic_stage"],
            "coarse_stage_dir": dirs["coarse_stage"],
            "fine_stage_dir": dirs["fine_stage"],
            "soundstream_dir": codec_dir,
        }
    )
    semantic_tokenizer = SemanticTokenizer.from_model_dir(dirs["w2v_bert"])
    coarse = model.coarse_levels

    # Probes on the training clips' cached tokens (coarse levels only: what the coarse stage makes).
    tokens, labels, sizes = training_tokens(dirs["tokens"])
    tokens["acoustic"] = tokens["acoustic"][..., :coarse]
    probes = token_probes.fit_probes(tokens, labels, codebook_sizes=sizes, attributes=ATTRIBUTES)

    detect = lambda clips: [eval_sets.detect(a, sr) for a in tqdm(clips, desc="detectors", unit="clip")]  # noqa: E731
    classifier = text_to_music.SyntheticAttributeClassifier(
        os.path.join(d, "attribute_classifier"), **pipeline.CLASSIFIER["small"]
    )

    def classify(clips):
        dists = classifier.label_distributions(clips, sr)
        known = [a for a in ATTRIBUTES if a in classifier.config.attributes]
        values = {a: classifier.config.classes[classifier.config.attributes.index(a)] for a in known}
        return [{a: values[a][int(dists[a][i].argmax())] for a in known} for i in range(len(clips))]

    rows, results, prompts_by_family, ceiling_pieces, gen_wall, examples = [], {}, {}, {}, 0.0, []
    sr = model.codec.sample_rate
    for family in args.families:
        prompts = eval_sets.held_out_prompts(args.num_prompts, train_examples=2000, family=family)
        prompts_by_family[family] = [p["caption"] for p in prompts]
        reference = np.stack([eval_sets.synthetic_item(p, args.seconds, sr).reference for p in prompts])
        t1 = time.perf_counter()
        gen = generate(
            model, prompts, args.seconds, args.batch, args.seed, settings=settings, num_candidates=args.num_candidates
        )
        gen_wall += time.perf_counter() - t1
        ref_tok = reference_tokens(model, semantic_tokenizer, reference, sr)
        ref_tok["acoustic"] = ref_tok["acoustic"][..., :coarse]
        gen["acoustic"] = gen["acoustic"][..., :coarse]
        if family == args.families[-1]:  # one low and one high prompt of the last family, to look at
            for register in ("low", "high"):
                i = next((i for i, p in enumerate(prompts) if p["labels"]["register"] == register), None)
                if i is None:  # too few prompts to have one of each register
                    continue
                examples += [
                    (f"generated for: {prompts[i]['caption']!r}", gen["audio"][i], sr),
                    ("the held-out piece that caption describes (its source)", reference[i], sr),
                ]
        codec_audio = np.asarray(model.codec.decode(model.codec.encode(reference), num_samples=reference.shape[1]))
        probe_gen = token_probes.predict(probes, gen)
        probe_ref = token_probes.predict(probes, ref_tok)
        # The stages given the pieces' true conditions: how much of a link's loss is the stages'.
        from_tokens = {
            "MuLan": generate_from_tokens(
                model, {"mulan": ref_tok["mulan"]}, args.seconds, args.batch, args.seed, settings=settings
            ),
            "semantic": generate_from_tokens(
                model,
                {k: ref_tok[k] for k in ("mulan", "semantic")},
                args.seconds,
                args.batch,
                args.seed,
                settings=settings,
            ),
        }
        codec_detected = detect(codec_audio)
        links = [
            ("MuLan tokens", "text tokens (probe)", probe_gen["mulan"], "audio tokens (probe)", probe_ref["mulan"]),
            ("semantic tokens", "generated (probe)", probe_gen["semantic"], "real (probe)", probe_ref["semantic"]),
            ("coarse tokens", "generated (probe)", probe_gen["acoustic"], "real (probe)", probe_ref["acoustic"]),
            ("audio: detectors", "generated", detect(gen["audio"]), "codec reconstruction", codec_detected),
            (
                "real MuLan tokens -> audio",
                "all stages (detectors)",
                detect(from_tokens["MuLan"]),
                "codec reconstruction",
                codec_detected,
            ),
            (
                "real semantic tokens -> audio",
                "coarse + fine (detectors)",
                detect(from_tokens["semantic"]),
                "codec reconstruction",
                codec_detected,
            ),
            ("audio: classifier", "generated", classify(gen["audio"]), "codec reconstruction", classify(codec_audio)),
        ]
        ceiling_pieces[family] = {
            "audio: detectors": score(prompts, detect(reference)),
            "audio: classifier": score(prompts, classify(reference)),
        }
        results[family] = {}
        for link, gen_name, gen_pred, ref_name, ref_pred in links:
            g, r = score(prompts, gen_pred), score(prompts, ref_pred)
            results[family][link] = {
                "generated": g,
                "reference": r,
                "generated_what": gen_name,
                "reference_what": ref_name,
                "pieces": ceiling_pieces[family].get(link),
            }
            row = {"family": family, "link": link}
            for attr in g:
                row[f"{attr}_gen"] = g[attr]["accuracy"]
                row[f"{attr}_p"] = g[attr]["p"]
                row[f"{attr}_n"] = g[attr]["n"]
                row[f"{attr}_ref"] = r[attr]["accuracy"]
                row[f"{attr}_chance"] = g[attr]["null_chance"]
            rows.append(row)

    reliance = condition_reliance(
        {s: dirs[s] for s in ("semantic_stage", "coarse_stage", "fine_stage")}, dirs["tokens"]
    )
    out_dir = os.path.join(d, args.out_name)
    os.makedirs(out_dir, exist_ok=True)
    plot(rows, os.path.join(out_dir, "adherence_links.png"))
    if examples:
        plots.spectrogram_sheet(examples, os.path.join(out_dir, "generated_examples.png"))
    write_json(
        os.path.join(out_dir, "adherence.json"),
        {
            "machine": machine(),
            "pipeline_dir": d,
            "codec_dir": codec_dir,
            "num_prompts": args.num_prompts,
            "seconds": args.seconds,
            "train_wall_s": train_wall,
            "generate_wall_s": gen_wall,
            "links": results,
            "condition_reliance": reliance,
            "prompts": prompts_by_family,
            "probe_train_accuracy": {f"{s}/{a}": p.train_accuracy for (s, a), p in probes.items()},
            "bindings": {"pipeline": ADHERENCE_BINDINGS} if args.train else None,
        },
    )
    print(
        f"\n{machine()}; {args.num_prompts} held-out prompts x {args.seconds:g} s per family; "
        f"pipeline {d}; codec {codec_dir}"
    )
    print(
        "gen = generated from the prompt (n prompts state the attribute), p = one-sided binomial p against "
        "chance (the larger of uniform and shuffled); ref = the held-out pieces' own tokens / codec "
        "reconstructions (the link's ceiling)"
    )
    shown = [
        {
            "captions": r["family"],
            "link": r["link"],
            **{
                f"{a} {k}": (
                    format(r[f"{a}_{k}"], ".2g" if k == "p" else "d" if k == "n" else ".2f") if f"{a}_{k}" in r else "-"
                )
                for a in ATTRIBUTES
                for k in ("gen", "n", "p", "ref")
            },
        }
        for r in rows
    ]
    print(table(shown))
    print("\nDoes each stage use its conditions? Eval cross-entropy on the token cache's validation clips")
    print(
        table(
            [
                {
                    "stage": stage,
                    "conditions": variant,
                    "cross-entropy": f"{ce:.3f}",
                    "vs true": f"{ce - r['true conditions']:+.3f}",
                }
                for stage, r in reliance.items()
                for variant, ce in r.items()
            ]
        )
    )
    for family in args.families:
        for link in ("audio: detectors", "audio: classifier"):
            print(
                f"{family} captions, the pieces themselves, {link}: "
                + ", ".join(f"{a} {v['accuracy']:.2f}" for a, v in ceiling_pieces[family][link].items())
            )
    print(f"\nwrote {out_dir}/adherence.json and adherence_links.png")


if __name__ == "__main__":
    main()
