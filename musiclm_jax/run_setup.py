"""What every entry function does first: multi-host init, the partitioner, the model dir."""

from __future__ import annotations

import os
from typing import Callable, Mapping, Optional

import jax
import numpy as np

from musiclm_jax.training.partitioning import Partitioner, maybe_initialize_distributed


def start_run(model_dir: str, partitioner: Optional[Partitioner], on_start: Optional[Callable[[str], None]]):
    """Returns (absolute model_dir, partitioner) after creating the dir and calling on_start."""
    maybe_initialize_distributed()
    partitioner = partitioner or Partitioner()
    model_dir = os.path.abspath(os.path.expanduser(model_dir))
    os.makedirs(model_dir, exist_ok=True)
    if on_start is not None:
        on_start(model_dir)
    return model_dir, partitioner


def global_shapes(local_batch: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """Global input shapes from this host's share of a batch."""
    return {k: (v.shape[0] * jax.process_count(),) + tuple(v.shape[1:]) for k, v in local_batch.items()}
