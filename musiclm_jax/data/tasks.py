"""seqio task registry: token tasks known by name (gin's MIXTURE_OR_TASK_NAME)."""

from __future__ import annotations

import functools

import seqio
import tensorflow as tf

from musiclm_jax.data import audio_tasks, token_tasks

CODEBOOK_SIZE = 1024


def _token_feature() -> seqio.Feature:
    # Raw codes (0..1023); the models map streams into their shared vocabulary themselves.
    return seqio.Feature(seqio.PassThroughVocabulary(CODEBOOK_SIZE), add_eos=False, dtype=tf.int32)


def _permuted_copy_dataset_fn(split, shuffle_files, seed=None, *, num_values, num_examples, max_targets):
    """The permuted-copy task of token_tasks in TF ops (a numpy_function would tie tf.data's
    threads to the GIL and can hang the interpreter at exit)."""
    del shuffle_files, seed  # generated in index order; seqio shuffles downstream
    stream = 0 if split == "train" else token_tasks.EVAL_SEED_OFFSET
    perm = tf.constant(token_tasks.task_permutation(0, CODEBOOK_SIZE))
    positions = tf.range(max_targets) % 12

    def to_features(index):
        cond = tf.random.stateless_uniform(
            [12], seed=tf.stack([tf.constant(stream, tf.int64), index]), minval=0, maxval=num_values, dtype=tf.int32
        )
        return {"mulan_tokens": cond, "semantic_tokens": tf.gather(perm, tf.gather(cond, positions))}

    n = num_examples if split == "train" else max(num_examples // 20, 256)
    return tf.data.Dataset.range(n).map(to_features, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def register_permuted_copy(name: str, *, num_values: int, num_examples: int = 200_000, max_targets: int = 1024) -> str:
    """Registers the generated permuted-copy task (see token_tasks) under `name`."""
    if name not in seqio.TaskRegistry.names():
        seqio.TaskRegistry.add(
            name,
            source=seqio.FunctionDataSource(
                functools.partial(
                    _permuted_copy_dataset_fn, num_values=num_values, num_examples=num_examples, max_targets=max_targets
                ),
                splits=("train", "validation"),
            ),
            output_features={"mulan_tokens": _token_feature(), "semantic_tokens": _token_feature()},
            shuffle_buffer_size=10_000,
        )
    return name


register_permuted_copy("permuted_copy_32", num_values=32)
register_permuted_copy("permuted_copy_1024", num_values=1024)


del audio_tasks  # imported for its registrations (the raw-audio tasks)


def known_task_names() -> list[str]:
    return sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))


def validate_name(name: str) -> None:
    if name not in seqio.TaskRegistry.names() and name not in seqio.MixtureRegistry.names():
        close = [n for n in known_task_names() if name.split("_")[0] in n][:5]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown seqio task or mixture {name!r}{hint}; known: {', '.join(known_task_names())}")
