"""Text-to-music evaluation (MusicLM section 5.1): generate for each caption, then measure.

    results = generate_and_score(output_dir, items, model=musiclm, seconds=4.0)

Metrics, in results.json, TensorBoard (output_dir/tensorboard) and report.html:
- `distances/<embedder>`: FAD, FAD-inf and KAD between the references' and the generations'
  embeddings (any registered embedder: MuLan's audio tower, musicnn, a VGGish-compatible
  network...), each None with its reason under `too_few_clips` where that many points make it
  meaningless (FAD needs more points than embedding dimensions; metrics.audio_distances);
  `distances_codec/<embedder>`: the same for the references' codec reconstructions (the floor
  any generation through this codec starts from);
- `kld` (mean over attributes) and `kld/<attribute>`: KL between the attribute classifier's label
  distributions of each reference and of the music generated from its caption;
- `mcc`: MuLan cycle consistency (caption text vs generated audio); `mcc_reference` for the
  references themselves (what a perfect generator would score);
- `adherence/<attribute>`: the detectors agree with the caption (synthetic source: labels known),
  beside the same on the references and on their codec reconstructions; each with its n, its
  one-sided binomial p against chance and `above_chance` = p < metrics.SIGNIFICANCE_LEVEL;
- `codec/*`: mel distance, SI-SDR and bitrate of the references through the codec.

`generated` lets a caller that already generated (the pipeline) skip generation.

The output directory may be local or a gs:// URL (musiclm_jax.fileio): every file appears whole,
and report.html is written last, so an eval whose report.html exists is complete (results.json,
audio/, tensorboard/, plots/).
Library code without gin: `musiclm eval --gin_file=runs/eval_text_to_music.gin` wraps it.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from musiclm_jax import fileio
from musiclm_jax.audio.io import resample, write_wav
from musiclm_jax.evaluation import attributes, eval_sets, metrics, report
from musiclm_jax.evaluation.attributes import predict_label_distributions
from musiclm_jax.evaluation.eval_sets import EvalItem, detect
from musiclm_jax.evaluation.report import REPORT_FILE
from musiclm_jax.models.codec_losses import mel_distance, si_sdr
from musiclm_jax.training import summaries
from musiclm_jax.training.summaries import log

RESULTS_FILE = "results.json"


def _resample_all(clips: Sequence[np.ndarray], rate: int, target: int) -> list[np.ndarray]:
    return [resample(np.asarray(c, np.float32), rate, target) for c in clips]


def _fit_length(clips: Sequence[np.ndarray], samples: int) -> np.ndarray:
    return np.stack([np.pad(c[:samples], (0, max(0, samples - len(c)))) for c in clips]).astype(np.float32)


def generate_for_items(
    model,
    items: Sequence[EvalItem],
    seconds: float,
    *,
    seed: int = 0,
    settings=None,
    num_candidates: int = 1,
    batch_size: int = 8,
) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """(audio [items, samples] at the model's codec rate, MuLan scores [items] or None), in
    batches of captions with a progress bar. Batch b uses seed + b, so results do not depend on
    anything but the items, the seed and the batch size."""
    from tqdm import tqdm

    audio, scores = [], []
    batches = range(0, len(items), batch_size)
    for b, start in enumerate(tqdm(batches, desc="eval: generate", unit="batch")):
        captions = [i.caption for i in items[start : start + batch_size]]
        g = model.generate(captions, seconds, seed=seed + b, settings=settings, num_candidates=num_candidates)
        audio.append(g.audio)
        scores.append(g.mulan_score)
    return np.concatenate(audio), (None if any(s is None for s in scores) else np.concatenate(scores))


def codec_metrics(codec, clips: np.ndarray) -> tuple[dict, np.ndarray]:
    """Mel distance, SI-SDR and bitrate of `clips` [n, samples] (at the codec's rate) through
    `codec` (an AcousticTokenizer) at all its levels; returns (metrics, reconstructions)."""
    import jax.numpy as jnp

    coded = codec.decode(codec.encode(clips), num_samples=clips.shape[1])
    x, y = jnp.asarray(clips), jnp.asarray(coded)
    config = codec.model.config
    return {
        "mel_distance": float(jnp.mean(mel_distance(x, y, codec.sample_rate))),
        "si_sdr": float(jnp.mean(si_sdr(x, y))),
        "bitrate_kbps": config.bitrate(codec.num_levels) / 1000.0,
    }, coded


class SyntheticAttributeClassifier:
    """The learned attribute classifier (evaluation.attributes) as a KLD classifier: label
    distributions {attribute: [clips, classes]}. Loaded from `directory`; trained on the
    synthetic training split (and saved there) when the directory holds none."""

    def __init__(
        self, directory: Optional[str] = None, *, steps: int = 300, num_examples: int = 256, seconds: float = 4.0
    ):
        if directory and fileio.exists(fileio.join(directory, attributes.CONFIG_FILE)):
            self.params, self.config = attributes.load_classifier(directory)
            return
        log(
            "eval: training the synthetic attribute classifier (%d steps on %d clips) into %s",
            steps,
            num_examples,
            directory,
        )
        self.params, self.config = attributes.train_attribute_classifier(
            num_examples=num_examples, steps=steps, duration_s=seconds, progress=True
        )
        if directory:
            attributes.save_classifier(directory, self.params, self.config)

    def label_distributions(self, clips: np.ndarray, sample_rate: int) -> dict[str, np.ndarray]:
        return predict_label_distributions(self.params, self.config, clips, sample_rate)


class MusicnnTagClassifier:
    """musicnn's MagnaTagATune tagger (evaluation.embedders; weights from its pip package) as a
    KLD classifier for real music: 'tags', the 50 tag probabilities normalised to sum to 1 (as
    AudioLDM's KL treats a multi-label tagger), and per tag in `tags` ('drums', 'piano', 'guitar',
    'slow', 'fast', ... : MTT_ATTRIBUTE_TAGS by default) its Bernoulli distribution [p, 1 - p]."""

    MTT_ATTRIBUTE_TAGS = ("drums", "piano", "guitar", "strings", "vocal", "slow", "fast", "loud", "quiet")

    def __init__(self, model: str = "MTT_musicnn", *, model_dir: Optional[str] = None, tags=MTT_ATTRIBUTE_TAGS):
        from musiclm_jax.evaluation.embedders import MusicnnEmbedder

        self.tagger = MusicnnEmbedder(model, model_dir=model_dir)
        unknown = [t for t in tags if t not in self.tagger.labels]
        if unknown:
            raise ValueError(f"{model} has no tags {unknown}; its tags: {self.tagger.labels}")
        self.tag_names = tuple(tags)

    def label_distributions(self, clips: np.ndarray, sample_rate: int) -> dict[str, np.ndarray]:
        probs = np.clip(self.tagger.tags(list(clips), sample_rate).astype(np.float64), 1e-6, 1 - 1e-6)
        out = {"tags": probs / probs.sum(1, keepdims=True)}
        for tag in self.tag_names:
            p = probs[:, self.tagger.labels.index(tag)]
            out[tag] = np.stack([p, 1 - p], axis=1)
        return out


_CLASSIFIERS: dict[str, Callable[..., object]] = {
    "synthetic_attributes": SyntheticAttributeClassifier,
    "musicnn_tags": MusicnnTagClassifier,
}


def register_classifier(name: str, factory: Callable[..., object]) -> None:
    """Adds a KLD classifier: `factory(**kwargs)` returns an object with
    `label_distributions(clips [n, samples], sample_rate) -> {label set: probabilities [n, classes]}`."""
    _CLASSIFIERS[name] = factory


def get_classifier(name: str, **kwargs):
    if name not in _CLASSIFIERS:
        raise ValueError(f"unknown classifier {name!r}; registered: {', '.join(sorted(_CLASSIFIERS))}")
    return _CLASSIFIERS[name](**kwargs)


def kld_by_label_set(classifier, reference: np.ndarray, generated: np.ndarray, sample_rate: int) -> dict:
    """{label set: KLD} of a classifier's distributions on references vs generations, and their
    mean under 'mean'."""
    p = classifier.label_distributions(reference, sample_rate)
    q = classifier.label_distributions(generated, sample_rate)
    out = {a: metrics.kld(p[a], q[a]) for a in p}
    out["mean"] = float(np.mean(list(out.values())))
    return out


def generate_and_score(
    output_dir: str,
    items: Sequence[EvalItem],
    *,
    model=None,
    seconds: Optional[float] = None,
    generated: Optional[np.ndarray] = None,
    generated_sample_rate: Optional[int] = None,
    mulan=None,
    codec=None,
    embedders: Optional[Mapping[str, object]] = None,
    classifier=None,
    seed: int = 0,
    settings=None,
    num_candidates: int = 1,
    batch_size: int = 8,
    num_report_samples: int = 8,
    title: str = "text-to-music eval",
    extra: Optional[dict] = None,
) -> dict:
    """Generates (unless `generated` [items, samples] is given) and measures; writes results.json,
    WAVs, plots, TensorBoard summaries and report.html to `output_dir`. Returns the results.

    `model`: a MusicLM (its MuLan and codec serve MCC and the codec metrics unless `mulan` /
    `codec` are given); `embedders`: {name: object with fad_points(clips, sample_rate)};
    `classifier`: an object with `label_distributions` (see register_classifier) for KLD, or None."""
    items = list(items)
    if len(items) < 2:
        raise ValueError(f"an eval needs at least 2 captioned clips (KAD compares pairs), got {len(items)}")
    if generated is None and model is None:
        raise ValueError("give a model to generate with, or the generated audio")
    if len({i.sample_rate for i in items}) != 1:
        raise ValueError("every reference clip must have the same sample rate")
    mulan = mulan if mulan is not None else getattr(model, "mulan", None)
    codec = codec if codec is not None else getattr(model, "codec", None)
    ref_rate = items[0].sample_rate
    seconds = float(seconds if seconds is not None else len(items[0].reference) / ref_rate)
    fileio.makedirs(output_dir)
    results: dict = {
        "title": title,
        "output_dir": output_dir,
        "num_items": len(items),
        "seconds": seconds,
        "seed": seed,
        **(extra or {}),
    }

    t0 = time.perf_counter()
    scores = None
    if generated is None:
        generated, scores = generate_for_items(
            model, items, seconds, seed=seed, settings=settings, num_candidates=num_candidates, batch_size=batch_size
        )
        rate = model.codec.sample_rate
        elapsed = time.perf_counter() - t0
        results["generation"] = {
            "wall_s": elapsed,
            "realtime_factor": len(items) * seconds / elapsed,
            "batch_size": batch_size,
            "num_candidates": num_candidates,
        }
    else:
        rate = int(generated_sample_rate or ref_rate)
    generated = np.asarray(generated, np.float32)
    if generated.ndim != 2 or len(generated) != len(items):
        raise ValueError(f"generated audio must be [{len(items)}, samples], got {generated.shape}")
    # Everything below compares clips at one rate (the generations'), cut to one length.
    references = _fit_length(_resample_all([i.reference for i in items], ref_rate, rate), generated.shape[1])

    coded = None
    if codec is not None:
        log("eval: codec metrics on %d references", len(items))
        if codec.sample_rate != rate:
            raise ValueError(f"the codec runs at {codec.sample_rate} Hz, the generations are at {rate} Hz")
        results["codec"], coded = codec_metrics(codec, references)
    points = _fad(results, embedders or {}, references, generated, coded, rate)
    if classifier is not None:
        log("eval: KLD of the attribute classifier's label distributions")
        results["kld"] = kld_by_label_set(classifier, references, generated, rate)
    if mulan is not None:
        log("eval: MuLan cycle consistency")
        scores = _mcc(results, mulan, [i.caption for i in items], references, generated, rate)
    detected = [detect(a, rate) for a in generated]
    _adherence(results, items, detected, references, coded, rate)
    results["items"] = _write_items(
        output_dir, items, generated, references, rate, detected, scores, num_report_samples
    )
    results["eval_wall_s"] = time.perf_counter() - t0

    fileio.write_json(fileio.join(output_dir, RESULTS_FILE), results)
    with fileio.local_dir(fileio.join(output_dir, "tensorboard")) as logdir:
        _write_tensorboard(logdir, results, generated[:num_report_samples], rate)
    report.write_report(
        output_dir,
        results,
        references=references,
        generated=generated,
        sample_rate=rate,
        points=points,
        num_samples=num_report_samples,
    )
    headline = {k: v for k, v in scalar_metrics(results).items() if k.count("/") == 0 or k.startswith(("fad", "kad"))}
    log(
        "eval: %s; report in %s",
        ", ".join(f"{k} {v:.4g}" for k, v in headline.items()),
        fileio.join(output_dir, REPORT_FILE),
    )
    return results


def _fad(
    results: dict,
    embedders: Mapping[str, object],
    references: np.ndarray,
    generated: np.ndarray,
    coded: Optional[np.ndarray],
    rate: int,
) -> dict:
    """FAD, FAD-inf and KAD (and the same for the codec reconstructions) per embedder into
    results['distances'] / ['distances_codec'] (metrics.audio_distances: None and a reason where
    too few points); returns the embedders' points {name: (references, generated)} for the
    report's picture."""
    results["distances"], results["distances_codec"], points = {}, {}, {}
    for name, embedder in embedders.items():
        log("eval: FAD / KAD with the %s embedder", name)
        points[name] = (embedder.fad_points(list(references), rate), embedder.fad_points(list(generated), rate))
        results["distances"][name] = d = metrics.audio_distances(*points[name], seed=results["seed"])
        for reason in d["too_few_clips"].values():
            log("eval: %s: %s", name, reason)
        if coded is not None:
            results["distances_codec"][name] = metrics.audio_distances(
                points[name][0], embedder.fad_points(list(coded), rate), seed=results["seed"]
            )
    return points


def _mcc(
    results: dict, mulan, captions: Sequence[str], references: np.ndarray, generated: np.ndarray, rate: int
) -> np.ndarray:
    """MCC of the generations and of the references into results; returns each generation's
    MuLan score (its cosine with its caption)."""
    text = mulan.embed_text(list(captions))
    gen_audio = mulan.embed_audio(_resample_all(generated, rate, mulan.sample_rate))
    ref_audio = mulan.embed_audio(_resample_all(references, rate, mulan.sample_rate))
    results["mcc"] = metrics.mcc(text, gen_audio)
    results["mcc_reference"] = metrics.mcc(text, ref_audio)
    return metrics.pair_cosines(text, gen_audio)


def _adherence(
    results: dict,
    items: Sequence[EvalItem],
    detected: Sequence[dict],
    references: np.ndarray,
    coded: Optional[np.ndarray],
    rate: int,
) -> None:
    """Adherence of the generations, the references and their codec reconstructions, over the
    items whose labels are known."""
    keep = [k for k, i in enumerate(items) if i.labels]
    if not keep:
        return
    log("eval: attribute adherence on %d labelled captions", len(keep))
    labelled = [items[k] for k in keep]
    results["adherence"] = eval_sets.adherence(labelled, [detected[k] for k in keep])
    results["adherence_reference"] = eval_sets.adherence(labelled, [detect(references[k], rate) for k in keep])
    if coded is not None:
        results["adherence_codec_ceiling"] = eval_sets.adherence(labelled, [detect(coded[k], rate) for k in keep])
    for attr, a in results["adherence"].items():
        log("eval: adherence %s", metrics.adherence_line(attr, a))


def _write_items(
    output_dir: str,
    items: Sequence[EvalItem],
    generated: np.ndarray,
    references: np.ndarray,
    rate: int,
    detected: Sequence[dict],
    scores: Optional[np.ndarray],
    num_samples: int,
) -> list[dict]:
    """Every generation's WAV (and the first `num_samples` references') under output_dir/audio;
    returns the per-item rows of results.json (paths relative to output_dir)."""
    with fileio.local_dir(fileio.join(output_dir, "audio")) as audio_dir:
        rows = []
        for k, item in enumerate(items):
            row = {
                "id": item.id,
                "caption": item.caption,
                "labels": item.labels,
                "mentioned": item.mentioned,
                "detected": detected[k],
                "generated_wav": f"audio/{k:03d}_generated.wav",
            }
            write_wav(fileio.join(audio_dir, f"{k:03d}_generated.wav"), generated[k], rate)
            if k < num_samples:
                row["reference_wav"] = f"audio/{k:03d}_reference.wav"
                write_wav(fileio.join(audio_dir, f"{k:03d}_reference.wav"), references[k], rate)
            if scores is not None:
                row["mulan_score"] = float(scores[k])
            rows.append(row)
        return rows


def scalar_metrics(results: Mapping) -> dict[str, float]:
    """The headline numbers of results.json, flat: fad/<embedder>, fad_inf/<embedder>,
    kad/<embedder> (and *_codec/<embedder>) where they are numbers, kld, mcc,
    adherence/<attr> with adherence_p/<attr> (its binomial p), codec/*."""
    out = {}
    for group, suffix in (("distances", ""), ("distances_codec", "_codec")):
        for name, d in results.get(group, {}).items():
            out.update({f"{m}{suffix}/{name}": d[m] for m in ("fad", "fad_inf", "kad") if d.get(m) is not None})
    if "kld" in results:
        out["kld"] = results["kld"]["mean"]
        out.update({f"kld/{k}": v for k, v in results["kld"].items() if k != "mean"})
    for key in ("mcc", "mcc_reference"):
        if key in results:
            out[key] = results[key]
    for group in ("adherence", "adherence_reference", "adherence_codec_ceiling"):
        for a, v in results.get(group, {}).items():
            out[f"{group}/{a}"] = v["accuracy"]
            if "p" in v:
                out[f"{group.replace('adherence', 'adherence_p')}/{a}"] = v["p"]
    out.update({f"codec/{k}": v for k, v in results.get("codec", {}).items()})
    if "generation" in results:
        out["generation/realtime_factor"] = results["generation"]["realtime_factor"]
    return out


def _write_tensorboard(logdir: str, results: Mapping, samples: np.ndarray, sample_rate: int) -> None:
    writer = summaries.create_writer(logdir)
    writer.write_scalars(0, scalar_metrics(results))
    if len(samples):
        writer.write_audios(0, {"audio/generated": np.clip(samples, -1, 1)[..., None]}, sample_rate=sample_rate)
    writer.flush()
    writer.close()
