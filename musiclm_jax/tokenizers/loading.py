"""Shared by the frozen-model tokenizers: a trained model from its directory, a task's clips."""
from __future__ import annotations

import json
import os
from typing import Callable, Iterable, Mapping, Optional, Sequence

import jax
import numpy as np

from musiclm_jax.training import checkpoints


def load_model_dir(model_dir: str, expected: str, build: Callable[[dict], object],
                   init_shapes: Callable[[object], Mapping[str, Sequence[int]]], step: Optional[int] = None):
    """(model, params) of a `musiclm train` directory: model.json names the model (`expected`),
    `build(config_dict)` rebuilds it, and the checkpoint's params are restored onto one device
    (their shapes come from `init_shapes(model)`, traced with eval_shape: nothing is allocated)."""
    from musiclm_jax.export import check_export

    config_path = os.path.join(model_dir, "model.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{config_path} not found: is {model_dir!r} a {expected} training directory?")
    check_export(model_dir)  # an export (`musiclm export`) must be intact
    with open(config_path) as f:
        spec = json.load(f)
    if spec.get("model") != expected:
        raise ValueError(f"{config_path} describes a {spec.get('model')!r} model, not {expected}")
    model = build(spec["config"])
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def init():
        from musiclm_jax.training.partitioning import unbox

        return unbox(model.get_initial_variables(jax.random.PRNGKey(0), init_shapes(model))["params"])

    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), jax.eval_shape(init))
    source = os.path.join(model_dir, "checkpoints")
    if step is not None:
        source = os.path.join(source, str(step))
    params, _ = checkpoints.restore_params(source, abstract)
    return model, params


def task_clips(task: str, split: str, limit: Optional[int]) -> Iterable[np.ndarray]:
    """Full clips of a raw-audio seqio task (uncropped unless the task crops), in order."""
    import seqio

    from musiclm_jax.data import audio_tasks, tasks

    tasks.validate_name(task)
    ds = seqio.get_mixture_or_task(task).get_dataset(sequence_length=None, split=split, shuffle=False)
    with audio_tasks.source_errors():
        for i, ex in enumerate(ds.as_numpy_iterator()):
            if limit is not None and i >= limit:
                return
            audio = ex["audio"]
            yield audio[: int(ex["audio_length"])] if "audio_length" in ex else audio
