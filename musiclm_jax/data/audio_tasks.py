"""Raw-audio seqio tasks: a source's clips as {audio, caption, id, sample_rate} examples.

Any source with `name`, `sample_rate` and `examples(split)` (data/sources.py, data/synthetic.py)
becomes a seqio task with `register_audio_task`, which gin can call so that a task is
registered by the binding that names it:

    TASK = @my_music/register_audio_task()
    my_music/register_audio_task.name = 'my_music'
    my_music/register_audio_task.source = @ManifestSource()
    ManifestSource.manifest_path = '/data/music/manifest.jsonl'
    ManifestSource.sample_rate = 24000

Crops are taken at whole-second boundaries (random or centred) so that one tokenisation of a
track later serves every crop length; clips shorter than the crop are zero-padded (with
`audio_length` telling the valid samples) or dropped, as the task says.

Caption augmentation: a source whose examples carry `caption_variants` (the synthetic source:
`captions.NUM_VARIANTS` training-family captions per clip) gives its training examples all of them,
and `draw_caption` picks one per visit (a fresh draw each epoch); validation examples keep their
one `caption`. Synthetic tasks also carry `heldout_caption`: a held-out-family caption of the same
piece (words and frames never in a training caption, data/captions.py) for evaluation only.

With `text_vocabulary` (a SentencePiece .model, e.g. the one `text_vocab.caption_vocabulary`
keeps with the model) the task also has `text_tokens`: the caption's ids (int32, no EOS; the
string `caption` stays), and on synthetic tasks `heldout_text_tokens` (the held-out caption's; no
loss reads them: MuLan's eval reports retrieval with them beside the training-family one). The
batch pipeline pads them with -1 to their task feature length:

    mulan_task/register_audio_task.text_vocabulary = @caption_vocabulary()
    caption_vocabulary.model_dir = %MODEL_DIR
    caption_vocabulary.source = @mulan_task/SyntheticSource()
"""

from __future__ import annotations

import contextlib
import functools
import re
import zlib
from typing import Any, Optional

import numpy as np
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from musiclm_jax.data import captions, synthetic, text_vocab
from musiclm_jax.data.bad_input import NoUsableExamplesError

PAD_RULES = ("zeros", "drop")
CROP_MODES = ("random", "center")
SYNTHETIC_LABEL_KEYS = ("instrument", "tempo_class", "bpm", "key", "mode", "register", "drums", "loudness", "texture")
_registered: dict[str, Any] = {}  # audio tasks this module registered, by name


def _string_feature(required: bool = True) -> seqio.Feature:
    return seqio.Feature(seqio.PassThroughVocabulary(0), add_eos=False, dtype=tf.string, rank=0, required=required)


def _output_features(with_labels: bool) -> dict:
    features = {
        "audio": seqio.ContinuousFeature(dtype=tf.float32, rank=1),
        "caption": _string_feature(),
        "id": _string_feature(),
    }
    if with_labels:
        features["heldout_caption"] = _string_feature(required=False)
        for key in SYNTHETIC_LABEL_KEYS:
            features[key] = (
                seqio.ContinuousFeature(dtype=tf.int32, rank=0, required=False)
                if key in ("bpm", "drums")
                else _string_feature(required=False)
            )
    return features


def _signature(with_labels: bool) -> dict:
    sig = {
        "audio": tf.TensorSpec([None], tf.float32),
        "caption": tf.TensorSpec([], tf.string),
        "id": tf.TensorSpec([], tf.string),
        "sample_rate": tf.TensorSpec([], tf.int32),
    }
    if with_labels:
        sig["caption_variants"] = tf.TensorSpec([None], tf.string)
        sig["heldout_caption"] = tf.TensorSpec([], tf.string)
        for key in SYNTHETIC_LABEL_KEYS:
            sig[key] = tf.TensorSpec([], tf.int32 if key in ("bpm", "drums") else tf.string)
    return sig


def _heldout_caption(example_id: str, labels: dict) -> str:
    """A held-out-family caption of a labelled clip, fixed by its id."""
    rng = np.random.default_rng([zlib.crc32(example_id.encode("utf-8")), 101])
    return captions.caption_for(labels, rng, family="heldout")


def _source_dataset_fn(
    split: str, shuffle_files: bool, seed: Optional[int] = None, *, source, with_labels: bool
) -> tf.data.Dataset:
    """The source's examples in order (decoding happens in Python; seqio shuffles downstream)."""
    del shuffle_files, seed

    def generate():
        for ex in source.examples(split):
            out = {
                "audio": np.asarray(ex.audio, np.float32),
                "caption": ex.caption,
                "id": ex.id,
                "sample_rate": np.int32(ex.sample_rate),
            }
            if with_labels:
                # training visits draw among the variants (draw_caption); validation keeps `caption`
                variants = tuple(getattr(ex, "caption_variants", ())) if split == "train" else ()
                out["caption_variants"] = np.asarray(variants or (ex.caption,), object).astype(bytes)
                out["heldout_caption"] = _heldout_caption(ex.id, ex.labels)
                out.update(
                    {
                        k: (np.int32(ex.labels[k]) if k in ("bpm", "drums") else str(ex.labels[k]))
                        for k in SYNTHETIC_LABEL_KEYS
                    }
                )
            yield out

    return tf.data.Dataset.from_generator(generate, output_signature=_signature(with_labels))


def crop_audio(
    dataset: tf.data.Dataset, *, seconds: int, sample_rate: int, mode: str = "random", pad: str = "zeros"
) -> tf.data.Dataset:
    """Crops `audio` to `seconds` starting at a whole second (random or centred).

    Shorter clips are zero-padded (`pad='zeros'`) or dropped (`pad='drop'`); `audio_length`
    holds the number of real samples either way.
    """
    if seconds <= 0 or mode not in CROP_MODES or pad not in PAD_RULES:
        raise ValueError(
            f"crop_audio: need seconds > 0, mode in {CROP_MODES}, pad in {PAD_RULES}; got {seconds}, {mode!r}, {pad!r}"
        )
    length = seconds * sample_rate
    if pad == "drop":
        dataset = dataset.filter(lambda ex: tf.shape(ex["audio"])[0] >= length)

    @seqio.map_over_dataset(num_seeds=1)
    def crop(ex, seed):
        audio = ex["audio"]
        whole_seconds = tf.shape(audio)[0] // sample_rate
        last_start = tf.maximum(whole_seconds - seconds, 0)
        if mode == "random":
            start = tf.random.stateless_uniform([], seed, minval=0, maxval=last_start + 1, dtype=tf.int32)
        else:
            start = last_start // 2
        clip = audio[start * sample_rate : start * sample_rate + length]
        n = tf.shape(clip)[0]
        out = dict(ex)
        out["audio"] = tf.ensure_shape(tf.pad(clip, [[0, length - n]]), [length])
        out["audio_length"] = n
        out["crop_start_s"] = start
        return out

    return crop(dataset)


@seqio.map_over_dataset(num_seeds=1)
def draw_caption(ex, seed):
    """`caption` := one of `caption_variants`, uniformly at random (a fresh draw on every visit)."""
    out = dict(ex)
    variants = out.pop("caption_variants")
    i = tf.random.stateless_uniform([], seed, minval=0, maxval=tf.shape(variants)[0], dtype=tf.int32)
    out["caption"] = variants[i]
    return out


def tokenize_caption(
    dataset: tf.data.Dataset, *, vocabulary: seqio.Vocabulary, key: str = "text_tokens"
) -> tf.data.Dataset:
    """Adds `key`: the `caption` encoded with `vocabulary` (int32 [n], no EOS)."""

    @seqio.map_over_dataset
    def tokenize(ex):
        out = dict(ex)
        out[key] = tf.cast(vocabulary.encode_tf(ex["caption"]), tf.int32)
        if "heldout_caption" in ex:
            out["heldout_" + key] = tf.cast(vocabulary.encode_tf(ex["heldout_caption"]), tf.int32)
        return out

    return tokenize(dataset)


def register_audio_task(
    name: str,
    source,
    *,
    crop_seconds: Optional[int] = None,
    crop_mode: str = "random",
    pad: str = "zeros",
    shuffle_buffer_size: int = 256,
    text_vocabulary: Optional[str] = None,
) -> str:
    """Registers (or re-registers) `source` as the seqio task `name` and returns the name.

    `text_vocabulary`: a SentencePiece .model path; the task then has `text_tokens` (see above)."""
    with_labels = isinstance(source, synthetic.SyntheticSource)
    data_source = seqio.FunctionDataSource(
        functools.partial(_source_dataset_fn, source=source, with_labels=with_labels), splits=("train", "validation")
    )
    return _register(
        name,
        data_source,
        source,
        source.sample_rate,
        with_labels=with_labels,
        crop_seconds=crop_seconds,
        crop_mode=crop_mode,
        pad=pad,
        shuffle_buffer_size=shuffle_buffer_size,
        text_vocabulary=text_vocabulary,
    )


def register_tfds_audio_task(
    name: str,
    *,
    manifest_path: str,
    data_dir: str,
    sample_rate: int,
    crop_seconds: Optional[int] = None,
    crop_mode: str = "random",
    pad: str = "zeros",
    shuffle_buffer_size: int = 1024,
    text_vocabulary: Optional[str] = None,
) -> str:
    """Registers the TFDS dataset of a JSONL manifest (built offline under `data_dir` first if it
    is not there yet) as the seqio task `name`. Reading is pure TF: parallel and fast, for
    collections too large to decode on the fly."""
    from musiclm_jax.data import tfds_builder

    builder = tfds_builder.build_manifest_dataset(manifest_path, data_dir, sample_rate)

    def dataset_fn(split, shuffle_files, seed=None):
        ds = builder.as_dataset(
            split=split, shuffle_files=shuffle_files, read_config=tfds.ReadConfig(shuffle_seed=seed)
        )
        return ds.map(
            lambda ex: {
                "audio": ex["audio"],
                "caption": ex["caption"],
                "id": ex["id"],
                "sample_rate": tf.constant(sample_rate, tf.int32),
            },
            num_parallel_calls=tf.data.AUTOTUNE,
        )

    data_source = seqio.FunctionDataSource(dataset_fn, splits=tuple(builder.info.splits))
    return _register(
        name,
        data_source,
        builder,
        sample_rate,
        with_labels=False,
        crop_seconds=crop_seconds,
        crop_mode=crop_mode,
        pad=pad,
        shuffle_buffer_size=shuffle_buffer_size,
        text_vocabulary=text_vocabulary,
    )


def _register(
    name: str,
    data_source,
    origin,
    sample_rate: int,
    *,
    with_labels: bool,
    crop_seconds,
    crop_mode,
    pad,
    shuffle_buffer_size,
    text_vocabulary: Optional[str] = None,
) -> str:
    output_features = _output_features(with_labels)
    vocabulary = None
    if text_vocabulary is not None:  # loaded (and checked) before anything is registered
        vocabulary = text_vocab.load_caption_vocabulary(text_vocabulary)
        output_features["text_tokens"] = seqio.Feature(
            vocabulary, add_eos=False, dtype=tf.int32, rank=1, required=False
        )
        if with_labels:
            output_features["heldout_text_tokens"] = seqio.Feature(
                vocabulary, add_eos=False, dtype=tf.int32, rank=1, required=False
            )
    if name in seqio.TaskRegistry.names():
        if name not in _registered:
            raise ValueError(f"task {name!r} already exists and is not an audio task")
        seqio.TaskRegistry.remove(name)
    preprocessors = [draw_caption] if with_labels else []
    if crop_seconds is not None:
        preprocessors.append(
            functools.partial(crop_audio, seconds=int(crop_seconds), sample_rate=sample_rate, mode=crop_mode, pad=pad)
        )
    if vocabulary is not None:  # after the crop: clips it drops are never tokenized
        preprocessors.append(functools.partial(tokenize_caption, vocabulary=vocabulary))
    seqio.TaskRegistry.add(
        name,
        source=data_source,
        preprocessors=preprocessors,
        output_features=output_features,
        shuffle_buffer_size=shuffle_buffer_size,
    )
    _registered[name] = origin
    return name


@contextlib.contextmanager
def source_errors():
    """Re-raises a source's NoUsableExamplesError that tf.data wrapped in an op error."""
    try:
        yield
    except tf.errors.OpError as e:
        found = re.search(r"NoUsableExamplesError: (.*)", str(e))
        if found:
            raise NoUsableExamplesError(found.group(1).strip()) from None
        raise


def source_of(name: str):
    """The source (or TFDS builder) behind an audio task registered here."""
    if name not in _registered:
        raise KeyError(f"{name!r} is not a registered audio task; known: {', '.join(sorted(_registered))}")
    return _registered[name]


# Built-in: the synthetic source, 10 s clips, at the two model rates (w2v-BERT/MuLan 16 kHz,
# SoundStream 24 kHz).
register_audio_task("synthetic_music", synthetic.SyntheticSource(sample_rate=16000), shuffle_buffer_size=8)
register_audio_task("synthetic_music_24k", synthetic.SyntheticSource(sample_rate=24000), shuffle_buffer_size=8)
