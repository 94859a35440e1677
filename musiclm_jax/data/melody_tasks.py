"""The melody model's seqio task: pairs of renditions of one synthetic tune (data/melody.py).

    TASK = @register_melody_pair_task()
    register_melody_pair_task.name = 'melody_pairs_16k_2s'
    register_melody_pair_task.sample_rate = 16000
    register_melody_pair_task.seconds = 2.0

Examples: `audio` and `paired_audio` (float32 [seconds * sample_rate], the same tune in two
renditions: instrument, band, hum or whistle; octave and tempo differ), `id` ('<seed>-<index>').
Training and validation tunes come from the synthetic source's split seeds, so no validation
tune is ever trained on. `control=True` pairs each rendition with the next example's tune
instead: nothing to learn, the chance baseline of the retrieval eval.
"""

from __future__ import annotations

import functools

import numpy as np
import seqio
import tensorflow as tf

from musiclm_jax.data import melody, synthetic

_registered: set[str] = set()
CACHE_BYTES = 2 << 30  # a split's rendered pairs up to this size stay in memory after the first pass


def _pairs_dataset_fn(
    split: str, shuffle_files: bool, seed=None, *, sample_rate: int, seconds: float, sizes: dict, control: bool
) -> tf.data.Dataset:
    del shuffle_files, seed
    samples = int(round(seconds * sample_rate))

    def generate():
        pairs = melody.melody_pairs(
            synthetic.SPLIT_SEEDS[split], 0, sizes[split] + int(control), sample_rate=sample_rate, duration_s=seconds
        )
        previous = None
        for a, b, a_labels, _ in pairs:
            if control:  # a's tune with the previous example's partner: no pair shares a tune
                if previous is not None:
                    yield {"audio": previous[0], "paired_audio": b, "id": previous[1]}
                previous = (a, a_labels["melody_id"])
                continue
            yield {"audio": a, "paired_audio": b, "id": a_labels["melody_id"]}

    signature = {
        "audio": tf.TensorSpec([samples], tf.float32),
        "paired_audio": tf.TensorSpec([samples], tf.float32),
        "id": tf.TensorSpec([], tf.string),
    }
    ds = tf.data.Dataset.from_generator(generate, output_signature=signature)
    # Rendered once, then read from memory: the trainer repeats the split, and rendering a pair
    # costs tens of milliseconds on one thread (a batch of 32 would wait over a second).
    return ds.cache() if sizes[split] * 2 * samples * 4 <= CACHE_BYTES else ds


def register_melody_pair_task(
    name: str,
    *,
    sample_rate: int = 16000,
    seconds: float = 2.0,
    num_examples: int = 2000,
    num_validation_examples: int = 128,
    control: bool = False,
    shuffle_buffer_size: int = 64,
) -> str:
    """Registers (or re-registers) the pair task `name` and returns the name. The first pass over a
    split renders its pairs; later epochs read them from memory (up to CACHE_BYTES per split)."""
    if seconds <= 0 or num_examples <= 0 or num_validation_examples <= 0:
        raise ValueError(
            f"register_melody_pair_task: seconds, num_examples and num_validation_examples must be positive, got "
            f"{seconds}, {num_examples}, {num_validation_examples}"
        )
    if name in seqio.TaskRegistry.names():
        if name not in _registered:
            raise ValueError(f"task {name!r} already exists and is not a melody pair task")
        seqio.TaskRegistry.remove(name)
    sizes = {"train": int(num_examples), "validation": int(num_validation_examples)}
    source = seqio.FunctionDataSource(
        functools.partial(
            _pairs_dataset_fn, sample_rate=int(sample_rate), seconds=float(seconds), sizes=sizes, control=control
        ),
        splits=("train", "validation"),
        num_input_examples=sizes,
    )
    features = {
        "audio": seqio.ContinuousFeature(dtype=tf.float32, rank=1),
        "paired_audio": seqio.ContinuousFeature(dtype=tf.float32, rank=1),
        "id": seqio.Feature(seqio.PassThroughVocabulary(0), add_eos=False, dtype=tf.string, rank=0),
    }
    seqio.TaskRegistry.add(
        name, source=source, preprocessors=[], output_features=features, shuffle_buffer_size=shuffle_buffer_size
    )
    _registered.add(name)
    return name


def pairs_as_arrays(split: str, count: int, *, sample_rate: int, seconds: float) -> dict[str, np.ndarray]:
    """`count` pairs of `split` as {'audio', 'paired_audio'} float32 [count, samples] (tests, benches)."""
    out = {"audio": [], "paired_audio": []}
    for a, b, _, _ in melody.melody_pairs(
        synthetic.SPLIT_SEEDS[split], 0, count, sample_rate=sample_rate, duration_s=seconds
    ):
        out["audio"].append(a)
        out["paired_audio"].append(b)
    return {k: np.stack(v) for k, v in out.items()}
