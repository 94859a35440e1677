"""The clips the tokenizers' fitting steps (k-means, RVQ) read from a raw-audio task."""

from __future__ import annotations

from typing import Iterable, Optional

import numpy as np


def task_clips(task: str, split: str, limit: Optional[int]) -> Iterable[np.ndarray]:
    """Full clips of a raw-audio seqio task (uncropped unless the task crops), in order."""
    import seqio  # the seqio/TensorFlow stack loads only when a task is read

    from musiclm_jax.data import audio_tasks, tasks

    tasks.validate_name(task)
    ds = seqio.get_mixture_or_task(task).get_dataset(sequence_length=None, split=split, shuffle=False)
    with audio_tasks.source_errors():
        for i, ex in enumerate(ds.as_numpy_iterator()):
            if limit is not None and i >= limit:
                return
            audio = ex["audio"]
            yield audio[: int(ex["audio_length"])] if "audio_length" in ex else audio
