"""`musiclm eval`: metrics of a checkpoint on an eval split (keyword-only entry function)."""
from __future__ import annotations

import json
import os
from typing import Optional

import jax
import numpy as np

from musiclm_jax.data.pipeline import BatchIterator, DatasetConfig
from musiclm_jax.models.base import BaseModel
from musiclm_jax.training import checkpoints, summaries
from musiclm_jax.training.optimizers import OptimizerConfig
from musiclm_jax.run_setup import global_shapes, start_run
from musiclm_jax.training.partitioning import Partitioner
from musiclm_jax.training.trainer import Trainer


def run_eval_batches(trainer: Trainer, params, cfg: DatasetConfig, num_batches: int) -> dict[str, float]:
    """Mean of the eval metrics over the first `num_batches` batches of `cfg`'s split
    (counts, named num_*, are summed), plus the model's metrics of its `eval_outputs` gathered
    over all those batches."""
    totals: dict[str, float] = {}
    outputs: dict[str, list] = {}
    n = 0
    for batch in BatchIterator(cfg, repeat=False):
        global_batch = trainer.partitioner.global_batch(batch)
        metrics = jax.device_get(trainer.eval_step(params, global_batch))
        for k, v in metrics.items():
            totals[k] = totals.get(k, 0.0) + float(v)
        for k, v in jax.device_get(trainer.outputs_step(params, global_batch)).items():
            outputs.setdefault(k, []).append(np.asarray(v))
        n += 1
        if n >= num_batches:
            break
    if n == 0:
        raise ValueError(f"split {cfg.split!r} of {cfg.mixture_or_task_name!r} yielded no full batch of {cfg.batch_size}")
    results = {k: v if k.startswith("num_") else v / n for k, v in totals.items()}
    if outputs:
        results.update(trainer.model.summarize_eval_outputs({k: np.concatenate(v) for k, v in outputs.items()}))
    return results


def eval_media(trainer: Trainer, params, local_batch) -> dict:
    """The model's eval waveforms for one batch, on the host."""
    return jax.device_get(trainer.media_step(params, trainer.partitioner.global_batch(local_batch)))


def evaluate(
    *,
    model: BaseModel,
    model_dir: str,
    eval_dataset_cfg: DatasetConfig,
    eval_steps: int = 50,
    checkpoint_path: Optional[str] = None,
    partitioner: Optional[Partitioner] = None,
    on_start=None,
) -> dict[str, float]:
    """Restores the parameters (checkpoint_path, else model_dir's latest checkpoint), runs
    `eval_steps` batches, writes eval summaries and `eval-<step>.json` to model_dir."""
    model_dir, partitioner = start_run(model_dir, partitioner, on_start)
    first = next(BatchIterator(eval_dataset_cfg, repeat=False))
    trainer = Trainer(model, partitioner, OptimizerConfig(), total_steps=1, input_shapes=global_shapes(first))
    source = checkpoint_path or os.path.join(model_dir, "checkpoints")
    params, step = checkpoints.restore_params(source, trainer.abstract_state.params)
    results = run_eval_batches(trainer, params, eval_dataset_cfg, eval_steps)
    writer = summaries.create_writer(os.path.join(model_dir, "eval"))
    writer.write_scalars(step, results)
    summaries.write_eval_media(writer, step, eval_media(trainer, params, first), model.media_sample_rate(),
                               out_dir=os.path.join(model_dir, f"eval-{step}-media"))
    writer.flush()
    if jax.process_index() == 0:
        with open(os.path.join(model_dir, f"eval-{step}.json"), "w") as f:
            json.dump({"step": step, "checkpoint": source, "task": eval_dataset_cfg.mixture_or_task_name,
                       "split": eval_dataset_cfg.split, "metrics": results}, f, indent=2)
        model.write_eval_report(results, model_dir, step)
    summaries.log("eval of step %d on %s/%s: %s", step, eval_dataset_cfg.mixture_or_task_name, eval_dataset_cfg.split,
                  ", ".join(f"{k} {v:.4f}" for k, v in sorted(results.items())))
    return results
