"""Batches for training and eval: seqio task -> crop/pad -> per-host batches -> numpy.

Deterministic given the seed: a run resumed at batch N (`start_batch`) sees exactly the
batches an uninterrupted run would from N on. Each host reads its own shard.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Mapping, Optional

import jax
import numpy as np
import seqio
import tensorflow as tf

from musiclm_jax.data import audio_tasks, tasks

PAD_CODE = -1  # padding in raw code features; the models give it zero loss weight


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    mixture_or_task_name: str
    task_feature_lengths: Mapping[str, Any]  # int, or a tuple (frames, levels) for [frames, levels] codes
    batch_size: int  # global batch, over all hosts
    split: str = "train"
    shuffle: bool = True
    seed: Optional[int] = 0
    use_cached: bool = False

    def __post_init__(self):
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        for k, v in self.task_feature_lengths.items():
            if any(int(n) <= 0 for n in _dims(v)):
                raise ValueError(f"task_feature_lengths[{k!r}] must be positive, got {v}")


def _dims(length) -> tuple[int, ...]:
    """A task feature length as a shape: 250 -> (250,), (500, 12) -> (500, 12)."""
    return tuple(int(n) for n in length) if isinstance(length, (tuple, list)) else (int(length),)


def _crop_or_pad(lengths: Mapping[str, Any]):
    """Crops or pads the first dimension to the length; a tuple length also fixes the rest
    (e.g. (500, 12): 500 frames of 12 RVQ levels)."""

    def fn(ex):
        out = {}
        for k, length in lengths.items():
            dims = _dims(length)
            x = ex[k][: dims[0]]
            pad = [[0, dims[0] - tf.shape(x)[0]]] + [[0, 0]] * (len(x.shape) - 1)
            fill = PAD_CODE if x.dtype.is_integer else 0  # codes pad with PAD_CODE, audio with silence
            shape = list(dims) if len(dims) > 1 else [dims[0]] + x.shape[1:]
            out[k] = tf.ensure_shape(tf.pad(x, pad, constant_values=tf.cast(fill, x.dtype)), shape)
        return out

    return fn


def get_dataset(cfg: DatasetConfig, *, start_batch: int = 0, repeat: Optional[bool] = None) -> tf.data.Dataset:
    """This host's batches (batch_size / process_count examples each)."""
    tasks.validate_name(cfg.mixture_or_task_name)
    num_hosts, host = jax.process_count(), jax.process_index()
    if cfg.batch_size % num_hosts:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {num_hosts} hosts")
    repeat = cfg.split == "train" if repeat is None else repeat
    ds = seqio.get_dataset(
        cfg.mixture_or_task_name,
        task_feature_lengths=dict(cfg.task_feature_lengths),
        feature_converter=seqio.PassThroughFeatureConverter(),
        dataset_split=cfg.split,
        use_cached=cfg.use_cached,
        shuffle=cfg.shuffle,
        num_epochs=None if repeat else 1,
        shard_info=seqio.ShardInfo(index=host, num_shards=num_hosts),
        seed=cfg.seed,
        verbose=False,
        trim_output_features=False,
    )
    ds = ds.map(_crop_or_pad(cfg.task_feature_lengths), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(cfg.batch_size // num_hosts, drop_remainder=True)
    if start_batch:
        ds = ds.skip(start_batch)
    return ds.prefetch(2)


class BatchIterator:
    """Numpy batches with a position that a checkpoint can store and resume from."""

    def __init__(self, cfg: DatasetConfig, start_batch: int = 0, repeat: Optional[bool] = None):
        self.cfg = cfg
        self.position = int(start_batch)
        self._it = iter(get_dataset(cfg, start_batch=start_batch, repeat=repeat).as_numpy_iterator())

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        with audio_tasks.source_errors():
            batch = next(self._it)
        self.position += 1
        return batch

    def state(self) -> dict:
        return {"task": self.cfg.mixture_or_task_name, "split": self.cfg.split, "batches_consumed": self.position}


def input_shapes(task_feature_lengths: Mapping[str, int], batch_size: int) -> dict[str, tuple[int, ...]]:
    """Global input shapes {feature: (batch, length...)}; a length may be a tuple (frames, levels)."""
    return {k: (batch_size,) + _dims(v) for k, v in task_feature_lengths.items()}
