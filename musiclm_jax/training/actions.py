"""What the train loop does besides stepping, logging and checkpointing, as small action objects
(the shape of t5x's `BaseAction`): stop on a non-finite step, evaluate every so often, write
the model's eval media, raise the model's eval warnings. `train()` builds the default actions
from its arguments; a caller adds its own with `train(actions=...)`.

When an action runs is its `mode`:
  GUARD       after every train step, before the loop logs or checkpoints that step. A guard
              stops a bad step from being recorded by raising (TerminateOnNaN).
  TRAIN       after the step is logged and checkpointed (PeriodicEval).
  TRAIN_EVAL  after an eval of this step, with its metrics in `ctx.eval_results` (EvalMedia,
              EvalWarnings).
Within its mode an action runs on the steps that are multiples of its `period` and on the last
step (period 0: never); actions of one mode run in the order they were given. `run` returning
True ends training after this step: the loop then logs and checkpoints the step as it does the
last one, after running the guards again on it with `ctx.commit` set.

Also here: the eval pass itself (`run_eval_batches`, `eval_media`), shared with `musiclm eval`.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import jax
import numpy as np
from clu import metric_writers

from musiclm_jax.models.base import Batch
from musiclm_jax.training import summaries
from musiclm_jax.training.checkpoints import Checkpointer
from musiclm_jax.training.train_state import TrainState
from musiclm_jax.training.trainer import NonFiniteError, Trainer


class ActionMode(enum.Enum):
    """Where in a train step an action runs (see the module docstring)."""

    GUARD = "guard"
    TRAIN = "train"
    TRAIN_EVAL = "train_eval"


@dataclasses.dataclass
class StepContext:
    """What an action sees after a train step.

    Attributes:
      step: steps done so far (the state's step).
      last_step: the step training ends at (train's `train_steps`).
      state: the train state after this step.
      metrics: this step's train metrics, still on device (reading one waits for the step).
      trainer: the run's Trainer (its model, partitioner and compiled steps).
      checkpointer: the run's Checkpointer.
      commit: True when the loop logs or checkpoints this step right after the guards; a
        guard must then have checked it.
      eval_results: the metrics of the eval run at this step (set by PeriodicEval), else None.
    """

    step: int
    last_step: int
    state: TrainState
    metrics: Mapping[str, jax.Array]
    trainer: Trainer
    checkpointer: Checkpointer
    commit: bool = False
    eval_results: Optional[dict[str, float]] = None


class BaseAction(abc.ABC):
    """One thing the train loop does at its `mode`'s point, every `period` steps."""

    mode: ActionMode = ActionMode.TRAIN
    period: int = 1

    def is_due(self, step: int, last_step: int) -> bool:
        """Whether the action runs after `step`.

        Args:
          step: steps done so far.
          last_step: the step training ends at.

        Returns:
          True on multiples of `period` and on the last step (never when `period` is 0).
        """
        return self.period > 0 and (step % self.period == 0 or step == last_step)

    @abc.abstractmethod
    def run(self, ctx: StepContext) -> bool:
        """Does the action after a train step.

        Args:
          ctx: the step (state, metrics, trainer, checkpointer; eval results in TRAIN_EVAL).

        Returns:
          True to end training after this step.
        """


def run_actions(actions: Sequence[BaseAction], mode: ActionMode, ctx: StepContext) -> list[BaseAction]:
    """Runs the actions of `mode` that are due at `ctx.step`, in order.

    Args:
      actions: every action of the run.
      mode: which point of the step this is.
      ctx: the step.

    Returns:
      The actions that asked to end training.
    """
    due = [a for a in actions if a.mode is mode and a.is_due(ctx.step, ctx.last_step)]
    return [a for a in due if a.run(ctx)]


class TerminateOnNaN(BaseAction):
    """Stops training with NonFiniteError when a step's loss or gradients are not finite.

    Such a step did not apply (the train step returns the state unchanged). The `finite` metric
    is read one step late, so that the next step is already dispatched when the host waits,
    except on a step the loop is about to log or checkpoint (`ctx.commit`): a step that did not
    apply is never saved. The error names the step and the latest checkpoint, the last good one.
    """

    mode = ActionMode.GUARD
    period = 1

    def __init__(self):
        self._pending: Optional[tuple[int, Mapping[str, jax.Array]]] = None  # not checked yet

    def run(self, ctx: StepContext) -> bool:
        if self._pending is not None:
            self._check(*self._pending, ctx.checkpointer)
        self._pending = (ctx.step, ctx.metrics)
        if ctx.commit:
            self._check(ctx.step, ctx.metrics, ctx.checkpointer)
            self._pending = None
        return False

    @staticmethod
    def _check(step: int, metrics: Mapping[str, jax.Array], ckpt: Checkpointer) -> None:
        if bool(jax.device_get(metrics["finite"])):
            return
        ckpt.wait()
        latest = ckpt.latest_step()
        where = (
            f"the latest checkpoint is step {latest} in {ckpt.directory}"
            if latest is not None
            else "no checkpoint was written"
        )
        raise NonFiniteError(
            f"loss or gradients are not finite at step {step} (loss={float(metrics['loss'])}, "
            f"grad_norm={float(metrics['grad_norm'])}); training stopped without applying that update; {where}"
        )


class PeriodicEval(BaseAction):
    """Every `period` steps: the eval metrics of the (EMA) parameters over the first
    `num_batches` eval batches, as TensorBoard scalars and one log line; they are then in
    `ctx.eval_results` for the TRAIN_EVAL actions."""

    mode = ActionMode.TRAIN

    def __init__(
        self,
        batches: Callable[[], Iterable[Batch]],
        *,
        period: int,
        num_batches: int,
        writer: metric_writers.MetricWriter,
        name: str = "the eval split",
    ):
        """An eval every `period` steps.

        Args:
          batches: starts a fresh pass over this host's eval batches.
          period: steps between evals (0: never).
          num_batches: eval batches per eval.
          writer: the eval TensorBoard writer.
          name: names the eval split in errors.
        """
        self.batches, self.period, self.num_batches, self.writer, self.name = batches, period, num_batches, writer, name

    def run(self, ctx: StepContext) -> bool:
        params = ctx.trainer.eval_params(ctx.state)
        results = run_eval_batches(ctx.trainer, params, self.batches(), self.num_batches, self.name)
        self.writer.write_scalars(ctx.step, results)
        summaries.log("eval at step %d: %s", ctx.step, ", ".join(f"{k} {v:.4f}" for k, v in sorted(results.items())))
        ctx.eval_results = results
        return False


class EvalMedia(BaseAction):
    """After each eval: the model's eval media (`BaseModel.eval_media`) of the first eval batch,
    as TensorBoard audio and spectrogram images."""

    mode = ActionMode.TRAIN_EVAL

    def __init__(self, batches: Callable[[], Iterable[Batch]], writer: metric_writers.MetricWriter):
        """Media after every eval.

        Args:
          batches: starts a fresh pass over this host's eval batches (the first one is kept).
          writer: the eval TensorBoard writer.
        """
        self.batches, self.writer = batches, writer
        self._batch = None

    def run(self, ctx: StepContext) -> bool:
        if self._batch is None:
            self._batch = next(iter(self.batches()))
        media = eval_media(ctx.trainer, ctx.trainer.eval_params(ctx.state), self._batch)
        summaries.write_eval_media(self.writer, ctx.step, media, ctx.trainer.model.media_sample_rate())
        return False


class EvalWarnings(BaseAction):
    """After each eval: the model's warning about the evals so far (`BaseModel.eval_warning`,
    e.g. stuck at chance, collapsed codebook), framed on the console and as TensorBoard text."""

    mode = ActionMode.TRAIN_EVAL

    def __init__(self, writer: metric_writers.MetricWriter):
        """Warnings after every eval.

        Args:
          writer: the eval TensorBoard writer.
        """
        self.writer = writer
        self.history: list[dict[str, float]] = []

    def run(self, ctx: StepContext) -> bool:
        self.history.append(ctx.eval_results)
        warning = ctx.trainer.model.eval_warning(self.history)
        if warning:
            summaries.warn_loudly(warning)
            self.writer.write_texts(ctx.step, {"warning": warning})
        return False


# ---- the eval pass ----------------------------------------------------------------------------
def run_eval_batches(
    trainer: Trainer, params: Any, batches: Iterable[Batch], num_batches: int, name: str = "the eval split"
) -> dict[str, float]:
    """The eval metrics of `params` over the first `num_batches` batches.

    Args:
      trainer: compiles the model's eval step and eval outputs.
      params: the parameters to evaluate.
      batches: this host's eval batches.
      num_batches: how many to use at most.
      name: names the batches' source in the error when there is none.

    Returns:
      The mean of each eval metric (counts, named num_*, summed), plus the model's
      `summarize_eval_outputs` of its `eval_outputs` gathered over all those batches.
    """
    totals: dict[str, float] = {}
    outputs: dict[str, list] = {}
    n = 0
    for batch in batches:
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
        raise ValueError(f"{name} yielded no full batch")
    results = {k: v if k.startswith("num_") else v / n for k, v in totals.items()}
    if outputs:
        results.update(trainer.model.summarize_eval_outputs({k: np.concatenate(v) for k, v in outputs.items()}))
    return results


def eval_media(trainer: Trainer, params: Any, local_batch: Batch) -> dict[str, np.ndarray]:
    """The model's eval waveforms for one batch.

    Args:
      trainer: compiles the model's `eval_media`.
      params: the parameters to listen to.
      local_batch: this host's share of the batch.

    Returns:
      {name: [examples, samples]} on the host, at `model.media_sample_rate()`.
    """
    return jax.device_get(trainer.media_step(params, trainer.partitioner.global_batch(local_batch)))
