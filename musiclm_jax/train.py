"""`musiclm train`: one loop for every model (keyword-only entry function; gin attaches at the CLI).

Restore order (t5x's): the latest checkpoint in model_dir (state and data position), else
parameters from `restore_params_from` (fine-tuning), else a fresh sharded init.
"""

from __future__ import annotations

import functools
import json
import signal
import threading
import time
from typing import Callable, Optional, Sequence

import jax
import numpy as np

from musiclm_jax import fileio
from musiclm_jax.data.input_pipeline import BatchIterator, DatasetConfig
from musiclm_jax.models.base import BaseModel
from musiclm_jax.run_setup import describe_devices, global_shapes, start_run
from musiclm_jax.training import checkpoints, mfu, summaries
from musiclm_jax.training.actions import (
    ActionMode,
    BaseAction,
    EvalMedia,
    EvalWarnings,
    PeriodicEval,
    StepContext,
    TerminateOnNaN,
    run_actions,
)
from musiclm_jax.training.optimizers import OptimizerConfig
from musiclm_jax.training.partitioning import Partitioner
from musiclm_jax.training.trainer import Trainer

RUN_SUMMARY_FILE = "run-summary.json"
PLAN_TIMING_MAX_PARAMS = 50_000_000  # `--plan` runs one step of models up to this size to time it


def run_summary(
    *,
    model: BaseModel,
    trainer: Trainer,
    model_dir: str,
    train_steps: int,
    data: DatasetConfig,
    input_shapes,
    latest: Optional[int],
    restore_params_from: Optional[str],
    microbatches: int,
) -> dict:
    """What a training run will do, before it does it (logged, saved, or printed by --plan)."""
    if latest is not None and latest >= train_steps:
        start = f"already trained: step {latest} of {train_steps} (nothing to do)"
    elif latest is not None:
        start = f"resume from step {latest}"
    elif restore_params_from:
        start = f"fine-tune from {restore_params_from}"
    else:
        start = "train from scratch"
    return {
        "model": type(model).__name__,
        "parameters": trainer.param_count(),
        "model_dir": model_dir,
        "storage": "object store" if fileio.is_url(model_dir) else "local",
        "start": start,
        "train_steps": train_steps,
        "remaining_steps": max(0, train_steps - (latest or 0)),
        "global_batch": next(iter(input_shapes.values()))[0],
        "microbatches": microbatches,
        "inputs": {k: list(v) for k, v in input_shapes.items()},
        "data": {"task": data.mixture_or_task_name, "split": data.split, "shuffle": data.shuffle},
        "devices": describe_devices(),
        "mesh": dict(trainer.partitioner.mesh.shape),
    }


def _step_time(trainer: Trainer, batch, seed: int, remaining: int, peak: Optional[float] = None) -> dict:
    """Seconds per step on this machine: one compiled step timed on `batch` (small models), else
    the roofline at the device's peak FLOP rate."""
    flops = trainer.flops_per_step_per_device
    out = {"flops_per_step_per_device": flops}
    if trainer.param_count() > PLAN_TIMING_MAX_PARAMS:
        if flops:
            seconds = flops / mfu.peak_flops_per_device(peak)
            out.update(seconds_per_step=seconds, estimated_by="roofline at the device's peak (a lower bound)")
            out["estimated_total_seconds"] = seconds * remaining
        return out
    t0 = time.perf_counter()
    step_fn = trainer.train_step
    out["compile_seconds"] = time.perf_counter() - t0
    state, rng = trainer.init_state(trainer.rng(seed)), trainer.rng(seed + 1)
    global_batch = trainer.partitioner.global_batch(batch)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        state, metrics = step_fn(state, global_batch, rng)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    seconds = float(np.median(times[1:]))
    out.update(seconds_per_step=seconds, estimated_by="one compiled step on the first batch, timed here")
    out["estimated_total_seconds"] = seconds * remaining
    return out


def format_summary(summary: dict) -> str:
    """The summary as aligned `key: value` lines."""
    width = max(map(len, summary))
    rows = []
    for key, value in summary.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, int) and not isinstance(value, bool):
            value = f"{value:,}"
        rows.append(f"  {key:<{width}}  {value}")
    return "\n".join(rows)


def train(
    *,
    model: BaseModel,
    model_dir: str,
    train_steps: int,
    train_dataset_cfg: DatasetConfig,
    optimizer: OptimizerConfig = OptimizerConfig(),
    partitioner: Optional[Partitioner] = None,
    eval_dataset_cfg: Optional[DatasetConfig] = None,
    eval_period: int = 0,
    eval_steps: int = 10,
    checkpoint_period: int = 1000,
    keep_checkpoints: Optional[int] = 3,
    async_checkpointing: bool = True,
    log_period: int = 10,
    microbatches: int = 1,
    seed: int = 0,
    restore_params_from: Optional[str] = None,
    peak_flops_per_device: Optional[float] = None,
    on_start: Optional[Callable[[str], None]] = None,
    actions: Sequence[BaseAction] = (),
    allow_config_change: bool = False,
    plan: bool = False,
):
    """Trains `model` for `train_steps` steps (resuming from model_dir) and returns the state.

    After each step the loop runs its actions (training/actions.py): the NaN/Inf stop, and with
    `eval_dataset_cfg` and `eval_period` the periodic eval with its media and the model's
    warnings; then `actions`, the caller's own. Raises NonFiniteError if the loss or gradients
    stop being finite; the last good checkpoint is then the latest one in model_dir.

    On SIGTERM it saves the step reached and raises StoppedBySignal (see _SigtermNotice).

    Before anything is written, the model configuration is compared with the one model_dir
    holds (model.json): a difference raises ModelDirMismatchError naming the first differing
    field, unless `allow_config_change`, which is then recorded in config-changes.json. Only
    process 0 writes files outside the checkpoints (config.gin through `on_start`, model.json,
    model-info.txt, TensorBoard events, eval media).

    The run's summary (`run_summary`: model, parameters, where it starts, steps, batch, data,
    devices, mesh) opens the log and is written to model_dir/run-summary.json. With `plan`,
    nothing is written: the summary is returned with a measured time per step (one compiled
    step run on the first batch, for models up to PLAN_TIMING_MAX_PARAMS parameters; else the
    roofline time at the device's peak), and no training happens.
    """
    if train_steps <= 0:
        raise ValueError(f"train_steps must be positive, got {train_steps}")
    model_dir, partitioner = start_run(model_dir, partitioner, on_start=None, create=not plan)
    frozen = model.frozen_params_source()  # (key, checkpoint dir): read at every start, never saved
    if frozen and restore_params_from:
        raise ValueError(
            f"{type(model).__name__} reads its {frozen[0]!r} parameters from {frozen[1]}: no restore_params_from"
        )
    if plan and not fileio.exists(fileio.join(model_dir, "checkpoints")):
        ckpt, latest = None, None  # a plan creates nothing
    else:
        ckpt = checkpoints.Checkpointer(
            fileio.join(model_dir, "checkpoints"),
            save_every=checkpoint_period,
            keep=keep_checkpoints,
            async_save=async_checkpointing,
            exclude=(frozen[0],) if frozen else (),
        )
        latest = ckpt.latest_step()
    change = check_model_config(model_dir, model.config_dict(), allow_change=allow_config_change, step=latest)
    needs_trained = model.requires_trained_params()
    if needs_trained and latest is None and not restore_params_from:
        raise ValueError(
            f"{needs_trained}, but {model_dir} has no checkpoint to resume and restore_params_from is not set"
        )
    start_batch = latest or 0  # one batch per step; checked against the stored position below
    # A plan needs one batch's shapes and contents, not the resume position (skipping reads the data).
    data = BatchIterator(train_dataset_cfg, start_batch=0 if plan else start_batch)
    first = next(data)
    input_shapes = global_shapes(first)
    trainer = Trainer(
        model, partitioner, optimizer, total_steps=train_steps, input_shapes=input_shapes, microbatches=microbatches
    )
    summary = run_summary(
        model=model,
        trainer=trainer,
        model_dir=model_dir,
        train_steps=train_steps,
        data=train_dataset_cfg,
        input_shapes=input_shapes,
        latest=latest,
        restore_params_from=restore_params_from,
        microbatches=microbatches,
    )
    if plan:
        if ckpt is not None:
            ckpt.close()
        summary.update(_step_time(trainer, first, seed, summary["remaining_steps"], peak_flops_per_device))
        summaries.log("train plan (nothing runs):\n%s", format_summary(summary))
        return summary
    summaries.log("train:\n%s", format_summary(summary))

    if jax.process_index() == 0:
        if change:
            fileio.write_json(fileio.join(model_dir, CONFIG_CHANGES_FILE), change)
        if on_start is not None:
            _write_config_keeping_previous(model_dir, latest, on_start)
        fileio.write_text(fileio.join(model_dir, "model-info.txt"), trainer.model_info())
        fileio.write_json(fileio.join(model_dir, RUN_SUMMARY_FILE), summary)
        if model.config_dict() is not None:
            fileio.write_text(fileio.join(model_dir, "model.json"), json.dumps(model.config_dict(), indent=1))

    if latest is not None:
        state, data_state = ckpt.restore(latest, trainer.abstract_state)
        expected = data_state.get("batches_consumed", latest)
        if expected != start_batch:
            raise checkpoints.CheckpointError(
                f"checkpoint {latest} says the data position is {expected}, the iterator is at {start_batch}"
            )
        summaries.log("resumed from step %d in %s", latest, ckpt.directory)
    else:
        state = trainer.init_state(trainer.rng(seed))
        if restore_params_from:
            params, step = checkpoints.restore_params(restore_params_from, trainer.abstract_state.params)
            state = state.replace(params=params)
            summaries.log("initialised parameters from %s (step %d)", restore_params_from, step)
    if frozen:
        key, source = frozen
        values, step = checkpoints.restore_params(source, trainer.abstract_state.params[key])
        state = state.replace(params={**state.params, key: values})
        summaries.log("read the %s parameters from %s (step %d); they are not trained or saved", key, source, step)

    start_step = int(jax.device_get(state.step))
    summaries.log(
        "%s: %s parameters, mesh %s, global batch %d",
        type(model).__name__,
        f"{trainer.param_count():,}",
        dict(partitioner.mesh.shape),
        next(iter(input_shapes.values()))[0],
    )
    t_compile = time.perf_counter()
    step_fn = trainer.train_step
    flops = trainer.flops_per_step_per_device
    peak = mfu.peak_flops_per_device(peak_flops_per_device)
    summaries.log(
        "train step compiled in %.1fs; %s FLOPs/step/device",
        time.perf_counter() - t_compile,
        f"{flops:.3g}" if flops else "unknown",
    )

    writer = summaries.create_writer(fileio.join(model_dir, "train"))
    eval_writer = summaries.create_writer(fileio.join(model_dir, "eval")) if eval_dataset_cfg else None
    actions = [
        *default_actions(eval_dataset_cfg, eval_writer, eval_period=eval_period, eval_steps=eval_steps),
        *actions,
    ]
    progress = summaries.ProgressLine(train_steps, start_step)
    rng = trainer.rng(seed + 1)
    examples_per_step = next(iter(input_shapes.values()))[0]
    tokens_per_step = sum(int(np.prod(s)) for s in input_shapes.values())
    window_t, window_steps = time.perf_counter(), 0

    def log_step(ctx: StepContext) -> None:
        nonlocal window_t, window_steps
        values = {k: float(v) for k, v in jax.device_get(ctx.metrics).items() if k != "finite"}
        dt = (time.perf_counter() - window_t) / window_steps
        values["steps_per_sec"] = 1.0 / dt
        values["examples_per_sec"] = examples_per_step / dt
        values["tokens_per_sec"] = tokens_per_step / dt
        if flops:
            values["mfu"] = flops / dt / peak
        writer.write_scalars(ctx.step, values)
        summaries.log(progress.line(ctx.step, values))
        window_t, window_steps = time.perf_counter(), 0

    def save_step(ctx: StepContext) -> None:
        # One batch per step; the iterator itself has already read ahead by one.
        ckpt.save(ctx.step, ctx.state, {**data.state(), "batches_consumed": ctx.step})

    batch = first
    step = start_step
    sigterm = _SigtermNotice()
    stopped_at = None
    try:
        while step < train_steps:
            state, metrics = step_fn(state, partitioner.global_batch(batch), rng)
            step += 1
            window_steps += 1
            if step < train_steps:
                batch = next(data)
            log_now = step % log_period == 0 or step == train_steps
            preempted = sigterm.reached(step)
            save_now = ckpt.should_save(step) or step == train_steps or preempted
            ctx = StepContext(step, train_steps, state, metrics, trainer, ckpt, commit=log_now or save_now)
            stoppers = run_actions(actions, ActionMode.GUARD, ctx)  # never log or save a step that did not apply
            if log_now:
                log_step(ctx)
            if save_now:
                save_step(ctx)
            stoppers += run_actions(actions, ActionMode.TRAIN, ctx)
            if ctx.eval_results is not None:
                stoppers += run_actions(actions, ActionMode.TRAIN_EVAL, ctx)
                window_t = time.perf_counter()
            if preempted and step < train_steps:  # saved above; a relaunch resumes here
                summaries.log("stopped at step %d by SIGTERM (preemption or `tpu.py stop`): checkpoint saved", step)
                stopped_at = step
                break
            if stoppers and step < train_steps:  # ended early: recorded as the last step
                summaries.log("training ended at step %d by %s", step, ", ".join(type(a).__name__ for a in stoppers))
                if not ctx.commit:
                    ctx.commit = True
                    run_actions(actions, ActionMode.GUARD, ctx)
                if not log_now:
                    log_step(ctx)
                if not save_now:
                    save_step(ctx)
                break
    finally:
        sigterm.restore()
        ckpt.close()
        writer.close()  # flushes (and, for a bucket, uploads) the events
        if eval_writer:
            eval_writer.close()
    if stopped_at is not None:  # not done: a caller (the pipeline) must not record the run as finished
        raise StoppedBySignal(f"stopped at step {stopped_at} by SIGTERM; checkpoint saved, the same command resumes")
    return state


def default_actions(
    eval_dataset_cfg: Optional[DatasetConfig], eval_writer, *, eval_period: int, eval_steps: int
) -> list[BaseAction]:
    """The actions every run has: the NaN/Inf stop; with an eval split and a period, the periodic
    eval, its media and the model's warnings."""
    actions: list[BaseAction] = [TerminateOnNaN()]
    if eval_dataset_cfg and eval_period:
        cfg = eval_dataset_cfg
        batches = functools.partial(BatchIterator, cfg, repeat=False)
        name = f"split {cfg.split!r} of {cfg.mixture_or_task_name!r} in batches of {cfg.batch_size}"
        actions += [
            PeriodicEval(batches, period=eval_period, num_batches=eval_steps, writer=eval_writer, name=name),
            EvalMedia(batches, eval_writer),
            EvalWarnings(eval_writer),
        ]
    return actions


CONFIG_CHANGES_FILE = "config-changes.json"


class _SigtermNotice:
    """SIGTERM (a TPU maintenance event, `tpu_scripts/tpu.py stop`, a scheduler) as a request to
    save and stop, so nothing since the last periodic checkpoint is lost. On several hosts
    jax.distributed's preemption service holds the signal until every host reaches the same
    step; one process handles the signal itself (in the main thread; elsewhere it keeps
    Python's default, which ends the process)."""

    def __init__(self):
        self.received = False
        self._previous = None
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.received = True

    def reached(self, step: int) -> bool:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self.received

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


class StoppedBySignal(RuntimeError):
    """Training stopped early on SIGTERM, after saving the step it had reached."""


class ModelDirMismatchError(ValueError):
    """The model directory holds a model of another configuration."""


def first_difference(old, new, where: str = "") -> Optional[str]:
    """The first field where two JSON trees differ, as 'path: old -> new' (None if equal)."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new), key=str):
            if k not in old or k not in new:
                side = "absent" if k not in old else repr(old[k])
                return f"{where}{k}: {side} -> {'absent' if k not in new else repr(new[k])}"
            found = first_difference(old[k], new[k], f"{where}{k}.")
            if found:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            found = first_difference(a, b, f"{where}{i}.")
            if found:
                return found
        return None
    return None if old == new else f"{where.rstrip('.')}: {old!r} -> {new!r}"


def check_model_config(model_dir: str, config: Optional[dict], *, allow_change: bool, step: Optional[int]) -> list:
    """Compares `config` with model_dir's model.json before anything is written. Returns the
    updated list of recorded changes when a difference is allowed, else [] (nothing to record).
    Raises ModelDirMismatchError on a difference that is not allowed."""
    stored_path = fileio.join(model_dir, "model.json")
    if config is None or not fileio.exists(stored_path):
        return []
    new = json.loads(json.dumps(config))  # tuples -> lists, as stored
    diff = first_difference(fileio.read_json(stored_path), new)
    if diff is None:
        return []
    if not allow_change:
        raise ModelDirMismatchError(
            f"{model_dir} holds a model of another configuration (model.json), first difference {diff}; "
            "use a new MODEL_DIR, or --gin.train.allow_config_change=True to train on (recorded in "
            f"{CONFIG_CHANGES_FILE})"
        )
    summaries.warn_loudly(f"model configuration changed in {model_dir} at step {step or 0}: {diff}")
    changes_path = fileio.join(model_dir, CONFIG_CHANGES_FILE)
    changes = fileio.read_json(changes_path) if fileio.exists(changes_path) else []
    return [*changes, {"step": step or 0, "first_difference": diff, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}]


def _write_config_keeping_previous(model_dir: str, latest: Optional[int], write_config: Callable[[str], None]):
    """Writes config.gin (`write_config`); a resumed run whose config differs keeps the one it
    replaces as config-step<N>.gin."""
    path = fileio.join(model_dir, "config.gin")
    previous = fileio.read_text(path) if latest is not None and fileio.exists(path) else None
    write_config(model_dir)
    if previous is not None and fileio.exists(path) and fileio.read_text(path) != previous:
        fileio.write_text(fileio.join(model_dir, f"config-step{latest}.gin"), previous)
