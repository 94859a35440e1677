"""`musiclm precompute`: tokenise a raw-audio task once with the three frozen tokenizers.

    precompute_tokens(task='my_music', splits=('train', 'validation'), output_dir='/data/cache/music',
                      mulan_dir='/runs/mulan', w2v_bert_dir='/runs/w2v_bert',
                      soundstream_dir='/runs/soundstream', num_shards=64)

Each clip of the task's source, whole (a cropping task's crop is not applied), becomes
`mulan_tokens` [levels] (10 s windows at 1 s hop in the paper config, averaged, then the
RVQ), `mulan_window_tokens` [windows, levels] (each window's own tokens: the condition of a
crop of a long track), `semantic_tokens` [T*25] and `acoustic_tokens` [T*50, levels] (paper rates), plus its
`caption` and `id`; with a melody model (`melody_dir`) also `melody_tokens` [T / hop, levels] (a
window every hop_seconds, tokenizers/melody.py). Every tokenizer gets the clip resampled to its own model's rate. The
layout of the cache (seqio's offline-cache format) is described in data/token_cache_tasks.py,
which registers token tasks that crop it.

Runs on Apache Beam: input shard i (the clips whose index in the split is i mod num_shards)
is one unit of work that writes <split>.tfrecord-0000i-of-N. Locally the DirectRunner runs in
this process; for large collections pass Dataflow options, e.g.

    beam_args=['--runner=DataflowRunner', '--project=P', '--region=us-central1',
               '--temp_location=gs://B/tmp', '--requirements_file=requirements.txt']

(an output_dir and model dirs the workers can read, i.e. on GCS; the task's source object is
shipped to the workers, so tasks registered from gin need no module import there).

Idempotent at the granularity of one (split, input shard): a shard is finished once its
TFRecord exists, and a second run skips it; a split whose info/stats files exist is skipped
without reading its source at all. The output dir may be local or a gs:// URL: every file goes
through musiclm_jax.fileio and appears whole. A shard's TFRecord is written to a local
temporary file by tf.io.TFRecordWriter and then moved into place (renamed locally, uploaded as
one object to a bucket) after its shards/ counts, so an existing TFRecord always has its counts;
COMPLETED is written last. A cache made from another task, other model dirs or another shard
count is refused, not mixed.

Bad input never stops the run: the source counts what it cannot decode (data/bad_input.py),
and a clip the tokenizers reject (empty, non-finite) is counted as `tokenizer_rejected`.
summary.json (clips, seconds of audio, tokens per stream, skipped inputs) is written next to
the cache and logged. A split without one usable clip raises NoUsableExamplesError.
"""

from __future__ import annotations

import collections
import functools
import logging
import time
from typing import Iterator, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from musiclm_jax import fileio
from musiclm_jax.audio.io import resample
from musiclm_jax.data import token_cache_tasks as layout
from musiclm_jax.data.bad_input import BadInputReport, NoUsableExamplesError
from musiclm_jax.tokenizers.acoustic import AcousticTokenizer
from musiclm_jax.tokenizers.melody import MelodyTokenizer
from musiclm_jax.tokenizers.mulan import MuLanTokenizer
from musiclm_jax.tokenizers.semantic import SemanticTokenizer

logger = logging.getLogger(__name__)

TOKENIZER_REJECTED = "tokenizer_rejected"
LOG_EVERY_S = 30.0
MULAN_CHUNK = 16  # clips per MuLan call: its windows run in fixed-size batches
# What each model dir must hold (the tokenizers' own loaders say the same, but inside a Beam
# worker; checked up front so a typo fails in a second with the path in the message).
_REQUIRED_FILES = {
    "mulan_dir": ("model.json", "mulan_rvq/codebooks.npz"),
    "w2v_bert_dir": ("model.json", "kmeans/kmeans.npz"),
    "soundstream_dir": ("model.json",),
    "melody_dir": ("model.json", "melody_rvq/codebooks.npz"),
}


# ---- tokenising one shard (runs on the workers) ----------------------------------------------


class _Tokenizers:
    """The three frozen tokenizers (four with the melody model), loaded once per worker."""

    def __init__(self, mulan_dir: str, w2v_bert_dir: str, soundstream_dir: str, melody_dir: Optional[str] = None):
        self.mulan = MuLanTokenizer.from_model_dir(mulan_dir)
        self.semantic = SemanticTokenizer.from_model_dir(w2v_bert_dir)
        self.acoustic = AcousticTokenizer.from_model_dir(soundstream_dir)
        self.melody = MelodyTokenizer.from_model_dir(melody_dir) if melody_dir else None

    def meta(self) -> dict:
        """What a reader of the cache needs: token rates, levels, codebook sizes, model rates."""
        s, a = self.semantic, self.acoustic
        meta = {
            "rates": {"semantic": s.sample_rate / s.samples_per_frame, "acoustic": a.sample_rate / a.hop_length},
            "levels": {"mulan": self.mulan.num_levels, "acoustic": a.num_levels},
            "codebook_sizes": {
                "mulan": int(self.mulan.codebooks["embed"].shape[1]),
                "semantic": s.codebook_size,
                "acoustic": a.model.config.codebook_size,
            },
            "sample_rates": {"mulan": self.mulan.sample_rate, "semantic": s.sample_rate, "acoustic": a.sample_rate},
            "mulan_windows": {
                "window_seconds": self.mulan.model.config.window_seconds,
                "hop_seconds": self.mulan.model.config.hop_seconds,
            },
        }
        if self.melody is not None:  # a time-aligned stream: windows per second
            m = self.melody
            meta["rates"]["melody"] = float(m.windows_per_second)
            meta["levels"]["melody"] = m.num_levels
            meta["codebook_sizes"]["melody"] = int(m.codebooks["embed"].shape[1])
            meta["sample_rates"]["melody"] = m.sample_rate
        return meta

    def tokenize(self, clips: Sequence[np.ndarray], sample_rate: int) -> list[Optional[dict]]:
        """Tokens of each clip, or None where a tokenizer rejects it (ValueError)."""
        rates = {self.mulan.sample_rate, self.semantic.sample_rate, self.acoustic.sample_rate}
        if self.melody is not None:
            rates.add(self.melody.sample_rate)
        at = {sr: [resample(c, sample_rate, sr) for c in clips] for sr in rates}
        try:
            clip_tokens, window_tokens = self.mulan.audio_tokens_with_windows(at[self.mulan.sample_rate])
            mulan = list(zip(clip_tokens, window_tokens))
        except ValueError:  # one bad clip: find it clip by clip
            mulan = [self._or_none(self.mulan.audio_tokens_with_windows, [c]) for c in at[self.mulan.sample_rate]]
            mulan = [None if m is None else (m[0][0], m[1][0]) for m in mulan]
        melody = [None] * len(clips)
        if self.melody is not None:
            try:
                melody = self.melody.tokens(at[self.melody.sample_rate])
            except ValueError:  # one bad clip: find it clip by clip
                melody = [self._or_none(self.melody.tokens, [c]) for c in at[self.melody.sample_rate]]
                melody = [None if t is None else t[0] for t in melody]
        out = []
        for i, m in enumerate(mulan):
            sem = None if m is None else self._or_none(self.semantic.tokenize, [at[self.semantic.sample_rate][i]])
            ac = None if sem is None else self._or_none(self.acoustic.encode, at[self.acoustic.sample_rate][i][None])
            mel = melody[i]
            if ac is None or (self.melody is not None and mel is None):
                out.append(None)
                continue
            tokens = {
                "mulan_tokens": np.asarray(m[0], np.int32),
                "mulan_window_tokens": np.asarray(m[1], np.int32),
                "semantic_tokens": np.asarray(sem[0], np.int32),
                "acoustic_tokens": np.asarray(ac[0], np.int32),
            }
            if mel is not None:
                tokens["melody_tokens"] = np.asarray(mel, np.int32)
            out.append(tokens)
        return out

    @staticmethod
    def _or_none(fn, x):
        try:
            return fn(x)
        except ValueError as e:
            logger.warning("tokenizer rejected a clip: %s", e)
            return None


@functools.lru_cache(maxsize=2)
def load_tokenizers(
    mulan_dir: str, w2v_bert_dir: str, soundstream_dir: str, melody_dir: Optional[str] = None
) -> _Tokenizers:
    """Kept per process: the DirectRunner (and a worker that runs many bundles) loads them once."""
    return _Tokenizers(mulan_dir, w2v_bert_dir, soundstream_dir, melody_dir)


def _merge_skipped(counts: collections.Counter, report: Optional[BadInputReport]) -> None:
    if report is not None:
        counts.update(report.skipped())


def _shard_clips(
    task: str, source, split: str, shard: int, num_shards: int, bad: collections.Counter
) -> Iterator[tuple[str, str, np.ndarray, int]]:
    """(id, caption, audio, sample_rate) of the clips of input shard `shard`, whole.

    File-backed sources (data/sources.py) are sharded by listing entry, so each worker decodes
    only its own files; other sources by example. Bad inputs found while listing (or by a
    source that must be iterated whole) are counted by shard 0 only, so that no input is
    counted once per shard."""
    if source is not None and hasattr(source, "_entries") and hasattr(source, "_load"):
        listing, loading = BadInputReport(f"{source.name}:{split}"), BadInputReport(f"{source.name}:{split}")
        for k, entry in enumerate(source._entries(split, listing)):
            if k % num_shards == shard:
                ex = source._load(entry, loading)
                if ex is not None:
                    yield ex.id, ex.caption, ex.audio, ex.sample_rate
        _merge_skipped(bad, loading)
        if shard == 0:
            _merge_skipped(bad, listing)
    elif source is not None and hasattr(source, "examples"):
        try:
            for k, ex in enumerate(source.examples(split)):
                if k % num_shards == shard:
                    yield ex.id, ex.caption, ex.audio, ex.sample_rate
        except NoUsableExamplesError:
            pass  # the counts say why; the driver raises when the whole split is empty
        if shard == 0:
            _merge_skipped(bad, getattr(source, "reports", {}).get(split, getattr(source, "report", None)))
    else:  # e.g. a TFDS audio task: seqio shards its examples
        ds = seqio.get_mixture_or_task(task).get_dataset(
            sequence_length=None, split=split, shuffle=False, shard_info=seqio.ShardInfo(shard, num_shards)
        )
        for ex in ds.as_numpy_iterator():
            audio = ex["audio"][: int(ex["audio_length"])] if "audio_length" in ex else ex["audio"]
            yield ex["id"].decode(), ex["caption"].decode(), audio, int(ex["sample_rate"])


def _to_example(clip_id: str, caption: str, tokens: dict) -> bytes:
    feature = {
        k: tf.train.Feature(int64_list=tf.train.Int64List(value=v.reshape(-1).tolist())) for k, v in tokens.items()
    }
    for k, text in (("caption", caption), ("id", clip_id)):
        feature[k] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode("utf-8")]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _valid_clip(audio: np.ndarray) -> Optional[str]:
    """Why the tokenizers cannot take this clip (checked before paying for resampling)."""
    if audio.ndim != 1 or audio.size == 0:
        return f"expected a non-empty 1-D waveform, got shape {audio.shape}"
    if not np.all(np.isfinite(audio)):
        return "non-finite samples"
    return None


def tokenize_shard(
    *, task: str, source, split: str, shard: int, num_shards: int, output_dir: str, tokenizers: "_Tokenizers"
) -> dict:
    """Writes input shard `shard` of `split` to its TFRecord and its counts to shards/; returns the counts."""
    stats = {
        "split": split,
        "shard": shard,
        "clips": 0,
        "seconds": 0.0,
        "tokens": collections.Counter(),
        "max_tokens": collections.Counter(),
        "skipped": collections.Counter(),
        **tokenizers.meta(),
    }
    path = layout.shard_path(output_dir, split, shard, num_shards)
    t0 = last_log = time.perf_counter()

    def flush(chunk, writer):
        for (clip_id, caption, audio, sr), tokens in zip(
            chunk, tokenizers.tokenize([c[2] for c in chunk], chunk[0][3])
        ):
            if tokens is None:
                stats["skipped"][TOKENIZER_REJECTED] += 1
                continue
            writer.write(_to_example(clip_id, caption, tokens))
            stats["clips"] += 1
            stats["seconds"] += audio.size / sr
            for k, v in tokens.items():
                stats["tokens"][k] += int(v.size)
                stats["max_tokens"][k] = max(stats["max_tokens"][k], int(v.size))

    # TensorFlow's writer writes a local file (its own GCS client cannot be pointed at a test
    # server); fileio moves it to `path` whole when the block ends: after the counts, last.
    with fileio.local_output(path) as local:
        with tf.io.TFRecordWriter(local) as writer:
            chunk = []
            for clip_id, caption, audio, sr in _shard_clips(task, source, split, shard, num_shards, stats["skipped"]):
                audio = np.asarray(audio, np.float32)
                why = _valid_clip(audio)
                if why:
                    logger.warning("[%s] %s rejected: %s", split, clip_id, why)
                    stats["skipped"][TOKENIZER_REJECTED] += 1
                    continue
                if chunk and chunk[0][3] != sr:
                    flush(chunk, writer)
                    chunk = []
                chunk.append((clip_id, caption, audio, sr))
                if len(chunk) == MULAN_CHUNK:
                    flush(chunk, writer)
                    chunk = []
                if time.perf_counter() - last_log > LOG_EVERY_S:
                    last_log = time.perf_counter()
                    logger.info(
                        "precompute %s shard %d/%d: %d clips (%.1f clips/s)",
                        split,
                        shard + 1,
                        num_shards,
                        stats["clips"],
                        stats["clips"] / (last_log - t0),
                    )
            if chunk:
                flush(chunk, writer)
        stats = {k: dict(v) if isinstance(v, collections.Counter) else v for k, v in stats.items()}
        layout.write_json(layout.shard_stats_path(output_dir, split, shard, num_shards), stats)
    # Here the TFRecord is in place: its presence means "done" (its counts exist already).
    logger.info(
        "precompute %s shard %d/%d done: %d clips, %.0f s of audio, skipped %s",
        split,
        shard + 1,
        num_shards,
        stats["clips"],
        stats["seconds"],
        stats["skipped"] or "none",
    )
    return stats


class _TokenizeShards:
    """The Beam DoFn (built lazily: apache_beam is imported only when a pipeline runs)."""

    @staticmethod
    def make(**kwargs):
        import apache_beam as beam

        class TokenizeShardFn(beam.DoFn):
            def __init__(self, *, task, source, output_dir, model_dirs):
                self.task, self.source, self.output_dir, self.model_dirs = task, source, output_dir, model_dirs

            def setup(self):
                self.tokenizers = load_tokenizers(**self.model_dirs)

            def process(self, item):
                split, shard, num_shards = item
                yield tokenize_shard(
                    task=self.task,
                    source=self.source,
                    split=split,
                    shard=shard,
                    num_shards=num_shards,
                    output_dir=self.output_dir,
                    tokenizers=self.tokenizers,
                )

        return TokenizeShardFn(**kwargs)


# ---- the driver ------------------------------------------------------------------------------


def _check_model_dirs(model_dirs: dict) -> None:
    for arg, files in _REQUIRED_FILES.items():
        if arg not in model_dirs:  # the optional melody model
            continue
        for name in files:
            path = fileio.join(model_dirs[arg], name)
            if not fileio.exists(path):
                raise FileNotFoundError(f"precompute: {arg}={model_dirs[arg]!r} has no {name} ({path})")


def _check_or_write_meta(output_dir: str, fingerprint: dict) -> dict:
    """Refuses to add to a cache made from another task, other models or another shard count."""
    path = fileio.join(output_dir, layout.META_FILE)
    meta = layout.read_json(path) if fileio.exists(path) else {}
    for key, value in fingerprint.items():
        if key == "num_shards":
            clash = {s: n for s, n in meta.get(key, {}).items() if s in value and n != value[s]}
        else:
            clash = meta[key] if key in meta and meta[key] != value else None
        if clash:
            raise ValueError(
                f"{path}: the cache was made with {key}={meta[key]!r}, this run has {value!r}; "
                "use another output_dir or delete this one"
            )
    meta = {**meta, **fingerprint, "num_shards": {**meta.get("num_shards", {}), **fingerprint["num_shards"]}}
    layout.write_json(path, meta)
    return meta


def _split_done(output_dir: str, split: str) -> bool:
    return fileio.exists(seqio.utils.get_cached_info_path(output_dir, split)) and fileio.exists(
        seqio.utils.get_cached_stats_path(output_dir, split)
    )


def _finish_split(output_dir: str, split: str, num_shards: int) -> dict:
    """seqio's info/stats files from the shards' counts; returns the split's summary."""
    shards = [layout.read_json(layout.shard_stats_path(output_dir, split, i, num_shards)) for i in range(num_shards)]
    total = {
        "clips": sum(s["clips"] for s in shards),
        "seconds": sum(s["seconds"] for s in shards),
        "tokens": dict(sum((collections.Counter(s["tokens"]) for s in shards), collections.Counter())),
        "skipped": dict(sum((collections.Counter(s["skipped"]) for s in shards), collections.Counter())),
    }
    for key in layout.META_KEYS:
        if any(s[key] != shards[0][key] for s in shards):
            raise ValueError(f"{output_dir}: shards of {split!r} disagree on {key}: the models changed between runs")
        total[key] = shards[0][key]
    if total["clips"] == 0:
        reason = ", ".join(f"{k}={v}" for k, v in total["skipped"].items()) or "no input"
        raise NoUsableExamplesError(f"precompute: split {split!r} has no usable clip: {reason}")
    stats = {"examples": total["clips"]}
    for k in layout.TOKEN_FEATURES:
        stats[f"{k}_tokens"] = total["tokens"].get(k, 0)
        stats[f"{k}_max_tokens"] = max(s["max_tokens"].get(k, 0) for s in shards)
    layout.write_json(seqio.utils.get_cached_stats_path(output_dir, split), stats)
    layout.write_json(
        seqio.utils.get_cached_info_path(output_dir, split),
        layout.info_dict(
            num_shards, total["levels"]["acoustic"], total["levels"]["mulan"], total["levels"].get("melody")
        ),
    )
    return total


def _run_beam(work: list, fn, beam_args: Sequence[str]) -> None:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    options = PipelineOptions(list(beam_args) or ["--runner=DirectRunner"])
    with beam.Pipeline(options=options) as p:
        # Reshuffle: on a distributed runner each shard may go to another worker.
        _ = p | "shards" >> beam.Create(work) | beam.Reshuffle() | "tokenize" >> beam.ParDo(fn)


def precompute_tokens(
    *,
    task: str,
    splits: Sequence[str] = ("train", "validation"),
    output_dir: str,
    mulan_dir: str,
    w2v_bert_dir: str,
    soundstream_dir: str,
    melody_dir: Optional[str] = None,
    num_shards: int = 8,
    beam_args: Sequence[str] = (),
) -> dict:
    """Tokenises the clips of `task` (a raw-audio seqio task) into the cache at `output_dir`
    and returns the summary (also written to output_dir/summary.json).

    Args:
      task: a registered raw-audio seqio task or mixture; its clips are tokenised whole.
      splits: the task's splits to tokenise; a split already finished in `output_dir` is skipped.
      output_dir: the cache (local or GCS): per split <split>.tfrecord-NNNNN-of-NNNNN shards and
        seqio's info/stats files, per-shard counts in shards/, precompute.json (models, rates,
        levels, shard counts), COMPLETED and summary.json.
      mulan_dir: MuLan's directory (model.json, mulan_rvq/codebooks.npz).
      w2v_bert_dir: w2v-BERT's directory (model.json, kmeans/kmeans.npz).
      soundstream_dir: SoundStream's directory (model.json).
      melody_dir: the melody model's directory (model.json, melody_rvq/codebooks.npz); None for a
        cache without `melody_tokens`.
      num_shards: input shards per split, the units of work and of resumption (shard i: the clips
        whose index is i mod num_shards); a split must keep the count it was started with.
      beam_args: Beam pipeline options (default the in-process DirectRunner).
    Returns:
      The summary: task, output_dir, splits ({split: clips, seconds, tokens per feature, skipped
      inputs by reason, and the rates, levels, codebook_sizes, sample_rates and mulan_windows of
      the models}), shards_run, shards_skipped, splits_skipped and wall_s.
    Raises:
      ValueError: `num_shards` <= 0, an unknown task, a split the task lacks, a cache made from
        another task, other model dirs or another shard count, or shards that disagree on the models.
      FileNotFoundError: a model dir lacks one of the files above.
      NoUsableExamplesError: a split has no usable clip.
    """
    from musiclm_jax.data import audio_tasks, tasks

    if num_shards <= 0:
        raise ValueError(f"num_shards must be positive, got {num_shards}")
    tasks.validate_name(task)
    known = seqio.get_mixture_or_task(task).splits
    if not splits or any(s not in known for s in splits):
        raise ValueError(f"precompute: splits {list(splits)} must be some of task {task!r}'s {list(known)}")
    model_dirs = {
        "mulan_dir": fileio.resolve(mulan_dir),
        "w2v_bert_dir": fileio.resolve(w2v_bert_dir),
        "soundstream_dir": fileio.resolve(soundstream_dir),
    }
    if melody_dir:
        model_dirs["melody_dir"] = fileio.resolve(melody_dir)
    _check_model_dirs(model_dirs)
    fileio.makedirs(fileio.join(output_dir, layout.SHARD_STATS_DIR))
    todo = [s for s in splits if not _split_done(output_dir, s)]
    meta = _check_or_write_meta(
        output_dir, {"task": task, "model_dirs": model_dirs, "num_shards": {s: num_shards for s in todo}}
    )
    work = [
        (s, i, num_shards)
        for s in todo
        for i in range(num_shards)
        if not fileio.exists(layout.shard_path(output_dir, s, i, num_shards))
    ]
    t0 = time.perf_counter()
    logger.info(
        "precompute %s -> %s: splits %s; %d of %d shards to do (%s already finished)",
        task,
        output_dir,
        list(splits),
        len(work),
        len(todo) * num_shards,
        [s for s in splits if s not in todo] or "none",
    )
    if work:
        try:
            source = audio_tasks.source_of(task)
        except KeyError:
            source = None  # not an audio_tasks task: workers read it through seqio
        _run_beam(
            work,
            _TokenizeShards.make(task=task, source=source, output_dir=output_dir, model_dirs=model_dirs),
            beam_args,
        )
    summary = {
        "task": task,
        "output_dir": output_dir,
        "splits": {},
        "shards_run": len(work),
        "shards_skipped": len(splits) * num_shards - len(work),
        "splits_skipped": [s for s in splits if s not in todo],
        "wall_s": time.perf_counter() - t0,
    }
    for split in splits:
        n = meta["num_shards"][split]
        summary["splits"][split] = _finish_split(output_dir, split, n)
    first = summary["splits"][splits[0]]
    meta.update({k: first[k] for k in layout.META_KEYS}, splits=sorted(set(meta.get("splits", [])) | set(splits)))
    layout.write_json(fileio.join(output_dir, layout.META_FILE), meta)
    layout.write_json(fileio.join(output_dir, layout.SUMMARY_FILE), summary)
    fileio.write_text(fileio.join(output_dir, layout.COMPLETED_FILE), "")  # last
    for split, s in summary["splits"].items():
        logger.info(
            "precompute %s/%s: %d clips, %.1f s of audio, tokens %s, skipped %s",
            task,
            split,
            s["clips"],
            s["seconds"],
            s["tokens"],
            s["skipped"] or "none",
        )
    return summary
