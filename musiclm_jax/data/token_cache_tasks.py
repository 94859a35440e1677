"""Token tasks read from a `musiclm precompute` cache, cropped at whole seconds.

The cache (written by precompute.py) holds each clip tokenised once, whole:
`mulan_tokens` [levels], `mulan_window_tokens` [windows, levels], `semantic_tokens` [frames],
`acoustic_tokens` [frames, levels], `caption`, `id`, and with a melody model `melody_tokens`
[windows, levels] (one window per 1 / rate seconds). A token task crops it at a whole-second
start s for L seconds in every stream at once (semantic [s*r_s : (s+L)*r_s], acoustic
[s*r_a : (s+L)*r_a], rates read from the cache's precompute.json), so one tokenisation serves
every stage and crop length:

    register_token_task('music_tokens_30s', '/data/cache/music', crop_seconds=30)

Train crops are random (seqio's stateless seeds: deterministic for a seed, new crops each
epoch); other splits are cropped at a fixed start ('center' or 'start') when they are read.
`mulan_tokens` describe the whole clip; with `mulan_per_window=True` a crop's `mulan_tokens`
are instead those of the MuLan window centred nearest the crop's centre (for long tracks,
where one average over minutes says little about a 10 s crop).

Cache layout (one directory; seqio's offline-cache layout, so it is also readable by a seqio
Task with a CacheDatasetPlaceholder through `use_cached=True` when it sits at
<global cache dir>/<that task's name>):

    COMPLETED                              seqio's marker, written last: every requested split is finished
    info.<split>.json                      seqio: feature shapes/dtypes, num_shards
    stats.<split>.json                     seqio: examples, <feature>_tokens, <feature>_max_tokens
    <split>.tfrecord-00003-of-00008        tf.Example records of input shard 3 (int32 stored as int64)
    shards/<split>-00003-of-00008.json     that shard's counts (clips, seconds, tokens, bad inputs)
    precompute.json                        task, model dirs, token rates, levels, codebook sizes
    summary.json                           totals of the last run (also logged)

The directory may be local or an object-store URL (gs://...): precompute writes every file
through musiclm_jax.fileio, each whole (a local rename, or one object upload); a shard's
TFRecord appears after its shards/ counts, and COMPLETED after everything else. The JSON
files here are read through fileio too; the TFRecords are read by tf.data (TensorFlow's own
GCS client for gs://).
"""

from __future__ import annotations

import collections
import functools
from typing import Optional, Sequence

import seqio
import tensorflow as tf

from musiclm_jax import fileio

META_FILE = "precompute.json"
COMPLETED_FILE = "COMPLETED"  # seqio's marker, written last
SUMMARY_FILE = "summary.json"
SHARD_STATS_DIR = "shards"
TOKEN_FEATURES = ("mulan_tokens", "mulan_window_tokens", "semantic_tokens", "acoustic_tokens", "melody_tokens")
# What every shard reports and precompute.json keeps (shards must agree on all of them).
META_KEYS = ("rates", "levels", "codebook_sizes", "sample_rates", "mulan_windows")
CROP_MODES = ("center", "start")
PAD_RULES = ("keep", "drop")
_registered: set[str] = set()


def shard_path(cache_dir: str, split: str, shard: int, num_shards: int) -> str:
    """The TFRecord of one input shard, named as seqio's cache reader expects."""
    return f"{seqio.utils.get_cached_tfrecord_prefix(cache_dir, split)}-{shard:05d}-of-{num_shards:05d}"


def shard_stats_path(cache_dir: str, split: str, shard: int, num_shards: int) -> str:
    return fileio.join(cache_dir, SHARD_STATS_DIR, f"{split}-{shard:05d}-of-{num_shards:05d}.json")


def info_dict(num_shards: int, acoustic_levels: int, mulan_levels: int, melody_levels: Optional[int] = None) -> dict:
    """seqio's info.<split>.json (what beam_utils.GetInfo writes for these features)."""
    token = lambda shape: {"shape": shape, "dtype": "int32"}  # noqa: E731
    info = {
        "num_shards": int(num_shards),
        "seqio_version": seqio.__version__,
        "features": {
            "mulan_tokens": token([None]),
            "mulan_window_tokens": token([None, int(mulan_levels)]),
            "semantic_tokens": token([None]),
            "acoustic_tokens": token([None, int(acoustic_levels)]),
            "caption": {"shape": [], "dtype": "string"},
            "id": {"shape": [], "dtype": "string"},
        },
    }
    if melody_levels is not None:
        info["features"]["melody_tokens"] = token([None, int(melody_levels)])
    return info


def read_json(path: str) -> dict:
    return fileio.read_json(path)


def write_json(path: str, data: dict) -> None:
    """Whole or absent (fileio: a local temporary file renamed, or one object upload)."""
    fileio.write_json(path, data)


def load_cache_meta(cache_dir: str) -> dict:
    """precompute.json of a finished cache, with a clear error when the cache is not there."""
    meta_path = fileio.join(cache_dir, META_FILE)
    if not fileio.exists(meta_path) or not fileio.exists(fileio.join(cache_dir, COMPLETED_FILE)):
        raise FileNotFoundError(
            f"{cache_dir} is not a finished token cache (no {META_FILE} or COMPLETED): "
            "run `musiclm precompute` into it first"
        )
    meta = read_json(meta_path)
    missing = [k for k in ("rates", "levels", "codebook_sizes", "splits") if k not in meta]
    if missing:
        raise ValueError(f"{meta_path} lacks {missing}: not written by musiclm precompute")
    return meta


def tokens_per_second(meta: dict, stream: str) -> int:
    """Whole-second crops need a whole number of frames per second."""
    rate = float(meta["rates"][stream])
    if abs(rate - round(rate)) > 1e-6 or rate <= 0:
        raise ValueError(f"{stream} tokens come at {rate} Hz: whole-second crops need an integer rate")
    return int(round(rate))


def _parse_fn(cache_dir: str, split: str):
    """tf.Example -> int32/string features, as seqio's own cache reader parses them."""
    info = read_json(seqio.utils.get_cached_info_path(cache_dir, split))
    description = {}
    for key, spec in info["features"].items():
        if spec["dtype"] == "string":
            description[key] = tf.io.FixedLenFeature([], tf.string)
        else:
            description[key] = tf.io.FixedLenSequenceFeature(spec["shape"][1:], tf.int64, allow_missing=True)

    def parse(record):
        ex = tf.io.parse_single_example(record, description)
        return {k: tf.cast(v, tf.int32) if v.dtype == tf.int64 else v for k, v in ex.items()}

    return parse, info["num_shards"]


def read_cache(cache_dir: str, split: str):
    """Every cached clip of `split`, whole and uncropped, as dicts of numpy arrays (captions and
    ids as str), in shard order: for analyses of the tokens outside a seqio task."""
    parse, num_shards = _parse_fn(cache_dir, split)
    files = [shard_path(cache_dir, split, i, num_shards) for i in range(num_shards)]
    for ex in tf.data.TFRecordDataset(files).map(parse).as_numpy_iterator():
        yield {k: v.decode() if isinstance(v, bytes) else v for k, v in ex.items()}


def unigram_accuracy(cache_dir: str, split: str, stream: str, first_level: int = 0, num_levels: int = 1) -> float:
    """The accuracy of the best context-free guess of `stream`'s codes at levels
    [first_level, first_level + num_levels): per level, the frequency of its most common code in
    `split`, averaged over levels (each level holds equally many codes). A stage whose next-token
    accuracy does not beat this has learnt nothing beyond the code histogram. `stream` is
    'semantic' or 'acoustic'."""
    feature = {"semantic": "semantic_tokens", "acoustic": "acoustic_tokens"}[stream]
    counts: list = []
    for ex in read_cache(cache_dir, split):
        codes = ex[feature].reshape(len(ex[feature]), -1)[:, first_level : first_level + num_levels]
        while len(counts) < codes.shape[1]:
            counts.append(collections.Counter())
        for level in range(codes.shape[1]):
            counts[level].update(codes[:, level].tolist())
    if not counts:
        raise ValueError(f"{cache_dir} has no {split} clips with {stream} levels {first_level}+{num_levels}")
    return float(sum(max(c.values()) / sum(c.values()) for c in counts) / len(counts))


def _crop_at(ex: dict, start, seconds: int, rates: dict, mulan_windows: Optional[dict] = None) -> dict:
    out = dict(ex)
    for key, rate in rates.items():
        out[key] = ex[key][start * rate : (start + seconds) * rate]
    out["crop_start_s"] = start + ex.get("crop_start_s", 0)
    if mulan_windows is not None:
        out["mulan_tokens"] = ex["mulan_window_tokens"][
            window_for_crop(start, seconds, mulan_windows, tf.shape(ex["mulan_window_tokens"])[0])
        ]
    return out


def window_for_crop(start, seconds, mulan_windows: dict, num_windows):
    """Index of the MuLan window (starts 0, hop, 2 hop, ...) whose centre is nearest the centre
    of the crop [start, start + seconds), clipped to the clip's windows."""
    window, hop = float(mulan_windows["window_seconds"]), float(mulan_windows["hop_seconds"])
    centre = tf.cast(start, tf.float32) + seconds / 2
    index = tf.cast(tf.round((centre - window / 2) / hop), tf.int32)
    return tf.clip_by_value(index, 0, num_windows - 1)


def _whole_seconds(ex: dict, rates: dict):
    return tf.reduce_min(tf.stack([tf.shape(ex[k])[0] // r for k, r in rates.items()]))


def fixed_crop(
    dataset: tf.data.Dataset,
    *,
    seconds: int,
    rates: dict,
    mode: str = "center",
    pad: str = "keep",
    mulan_windows: Optional[dict] = None,
) -> tf.data.Dataset:
    """Crops every stream in `rates` ({feature: tokens per second}) to `seconds` from a fixed
    whole-second start: 0 ('start') or the centre ('center'). Shorter clips stay whole
    ('keep'; the batch pipeline pads them) or are dropped ('drop'). With `mulan_windows`
    (precompute.json's window and hop), `mulan_tokens` become the crop's window's tokens."""
    if pad == "drop":
        dataset = dataset.filter(lambda ex: _whole_seconds(ex, rates) >= seconds)

    def crop(ex):
        last_start = tf.maximum(_whole_seconds(ex, rates) - seconds, 0)
        start = last_start // 2 if mode == "center" else tf.constant(0, tf.int32)
        return _crop_at(ex, start, seconds, rates, mulan_windows)

    return dataset.map(crop, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def random_crop(
    dataset: tf.data.Dataset, *, seconds: int, rates: dict, pad: str = "keep", mulan_windows: Optional[dict] = None
) -> tf.data.Dataset:
    """Like `fixed_crop`, from a random whole-second start (seqio gives each example its seed)."""
    if pad == "drop":
        dataset = dataset.filter(lambda ex: _whole_seconds(ex, rates) >= seconds)

    @seqio.map_over_dataset(num_seeds=1)
    def crop(ex, seed):
        last_start = tf.maximum(_whole_seconds(ex, rates) - seconds, 0)
        start = tf.random.stateless_uniform([], seed, minval=0, maxval=last_start + 1, dtype=tf.int32)
        return _crop_at(ex, start, seconds, rates, mulan_windows)

    return crop(dataset)


def _dataset_fn(split, shuffle_files, seed=None, *, cache_dir, random_splits, crop):
    parse, num_shards = _parse_fn(cache_dir, split)
    files = [shard_path(cache_dir, split, i, num_shards) for i in range(num_shards)]
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_files:
        ds = ds.shuffle(len(files), seed=seed)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(16, len(files)))
    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # Held-out splits get their fixed crop here; the random crop preprocessor then has one choice.
    return ds if crop is None or split in random_splits else crop(ds)


def register_token_task(
    name: str,
    cache_dir: str,
    *,
    crop_seconds: Optional[int] = None,
    validation_crop: str = "center",
    pad: str = "keep",
    random_crop_splits: Sequence[str] = ("train",),
    shuffle_buffer_size: int = 1024,
    mulan_per_window: bool = False,
) -> str:
    """Registers (or re-registers) the token cache at `cache_dir` as the seqio task `name`.

    `crop_seconds=None` gives whole tracks. Splits in `random_crop_splits` get random crops;
    the others a fixed one (`validation_crop`: 'center' or 'start'). `mulan_per_window`: a
    crop is conditioned on its own MuLan window's tokens instead of the whole clip's."""
    if crop_seconds is not None and int(crop_seconds) <= 0:
        raise ValueError(f"crop_seconds must be positive, got {crop_seconds}")
    if validation_crop not in CROP_MODES or pad not in PAD_RULES:
        raise ValueError(
            f"validation_crop must be in {CROP_MODES} and pad in {PAD_RULES}; got {validation_crop!r}, {pad!r}"
        )
    meta = load_cache_meta(cache_dir)
    rates = {
        "semantic_tokens": tokens_per_second(meta, "semantic"),
        "acoustic_tokens": tokens_per_second(meta, "acoustic"),
    }
    if "melody" in meta["rates"]:  # time-aligned like the others: cropped over the same seconds
        rates["melody_tokens"] = tokens_per_second(meta, "melody")
    splits = tuple(meta["splits"])
    for split in splits:
        if not fileio.exists(seqio.utils.get_cached_info_path(cache_dir, split)):
            raise FileNotFoundError(f"{cache_dir}: split {split!r} is listed in {META_FILE} but has no info file")
    if name in seqio.TaskRegistry.names():
        if name not in _registered:
            raise ValueError(f"task {name!r} already exists and is not a token-cache task")
        seqio.TaskRegistry.remove(name)

    windows = None
    if mulan_per_window:
        if crop_seconds is None or "mulan_windows" not in meta:
            raise ValueError(
                f"mulan_per_window needs crop_seconds and a cache with per-window MuLan tokens "
                f"({cache_dir} lacks them: precompute it again)"
                if crop_seconds is not None
                else "mulan_per_window needs crop_seconds"
            )
        windows = meta["mulan_windows"]
    fixed = random = None
    if crop_seconds is not None:
        fixed = functools.partial(
            fixed_crop, seconds=int(crop_seconds), rates=rates, mode=validation_crop, pad=pad, mulan_windows=windows
        )
        random = functools.partial(random_crop, seconds=int(crop_seconds), rates=rates, pad=pad, mulan_windows=windows)
    source = seqio.FunctionDataSource(
        functools.partial(_dataset_fn, cache_dir=cache_dir, random_splits=tuple(random_crop_splits), crop=fixed),
        splits=splits,
    )

    def codes(stream: str, rank: int) -> seqio.Feature:
        vocab = seqio.PassThroughVocabulary(int(meta["codebook_sizes"][stream]))
        return seqio.Feature(vocab, add_eos=False, dtype=tf.int32, rank=rank)

    text = seqio.Feature(seqio.PassThroughVocabulary(0), add_eos=False, dtype=tf.string, rank=0)
    features = {
        "mulan_tokens": codes("mulan", 1),
        "semantic_tokens": codes("semantic", 1),
        "acoustic_tokens": codes("acoustic", 2),
        "caption": text,
        "id": text,
    }
    if "mulan_windows" in meta:  # caches from before per-window tokens lack the feature
        features["mulan_window_tokens"] = codes("mulan", 2)
    if "melody" in meta["rates"]:
        features["melody_tokens"] = codes("melody", 2)
    seqio.TaskRegistry.add(
        name,
        source=source,
        preprocessors=[random] if random else [],
        output_features=features,
        shuffle_buffer_size=shuffle_buffer_size,
    )
    _registered.add(name)
    return name
