"""What every entry function does first: multi-host init, the partitioner, the model dir."""

from __future__ import annotations

from typing import Callable, Mapping, Optional

import jax
import numpy as np

from musiclm_jax import fileio
from musiclm_jax.training.partitioning import Partitioner, maybe_initialize_distributed


def start_run(
    model_dir: str, partitioner: Optional[Partitioner], on_start: Optional[Callable[[str], None]], create: bool = True
):
    """Returns (model_dir resolved: absolute, or the URL as given; partitioner) after creating
    the dir (unless not `create`) and calling on_start (which writes files: on process 0 only)."""
    maybe_initialize_distributed()
    partitioner = partitioner or Partitioner()
    model_dir = fileio.resolve(model_dir)
    if create:
        fileio.makedirs(model_dir)
    if on_start is not None and jax.process_index() == 0:
        on_start(model_dir)
    return model_dir, partitioner


def describe_devices() -> str:
    """e.g. '8 x TPU v5 lite (tpu), 2 process(es)': what a run's summary says it runs on."""
    devices = jax.devices()
    return f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform}), {jax.process_count()} process(es)"


def global_shapes(local_batch: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """Global input shapes from this host's share of a batch."""
    return {k: (v.shape[0] * jax.process_count(),) + tuple(v.shape[1:]) for k, v in local_batch.items()}
