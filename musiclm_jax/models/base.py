"""The model interface every trainable model implements (the shape of t5x's BaseModel).

The trainer knows only this interface. A model whose training is not one loss (SoundStream's
generator + discriminator) returns its own step from `custom_train_step`. `BaseModel`'s
docstring lists the core methods, the optional training hooks and the optional eval-reporting
protocol.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp

Batch = Mapping[str, jax.Array]
Variables = Mapping[str, Any]
Metrics = dict[str, jax.Array]


class BaseModel(abc.ABC):
    """A trainable model: variables from shapes, loss, eval metrics, predict.

    Core (the trainer calls these for every model):
      FEATURE_DTYPES, get_initial_variables, loss_fn, eval_fn, predict_batch.
    Optional training hooks (defaults: nothing special):
      optimizer_groups + custom_train_step  a training that is not one loss and one optimiser
      flops_per_example                      MFU when XLA cannot count the step's FLOPs
      requires_trained_params                refuse a fresh init (fine-tuning only)
      frozen_params_source                   a parameter subtree read from elsewhere, never saved
      config_dict                            MODEL_DIR/model.json, to rebuild the model without gin
    Optional eval reporting, one protocol (defaults: report nothing beyond eval_fn's metrics):
      eval_outputs + summarize_eval_outputs  metrics over the whole eval pool (e.g. retrieval)
      eval_media + media_sample_rate         waveforms to listen to (TensorBoard audio and
                                             spectrograms; WAV/PNG files at `musiclm eval`)
      eval_warning                           a loud warning from the evals so far (train only)
      write_eval_report                      extra files beside eval-<step>.json (eval only)
    """

    # Batch feature name -> dtype. The trainer builds dummy batches and input shardings from it.
    FEATURE_DTYPES: Mapping[str, Any] = {}

    # ---- core -------------------------------------------------------------------------------
    @abc.abstractmethod
    def get_initial_variables(self, rng: jax.Array, input_shapes: Mapping[str, Sequence[int]]) -> Variables:
        """The model's initial variables.

        Called under `jax.eval_shape` and under a jitted init with output shardings, so it
        must be pure.

        Args:
          rng: the init PRNG key.
          input_shapes: global batch shapes {feature: (batch, ...)}.

        Returns:
          The variables, at least {'params': ...}, with leaves boxed in
          `flax.linen.LogicallyPartitioned` so that `flax.linen.get_partition_spec` yields
          their logical axis names.
        """

    @abc.abstractmethod
    def loss_fn(self, params: Any, batch: Batch, dropout_rng: Optional[jax.Array]) -> tuple[jax.Array, Metrics]:
        """The training objective on one batch (traced inside the train step).

        Args:
          params: the model parameters.
          batch: {feature: global array}.
          dropout_rng: PRNG key for dropout; None means deterministic.

        Returns:
          (scalar loss to minimise, {name: scalar metric}).
        """

    def eval_fn(self, params: Any, batch: Batch) -> Metrics:
        """Metrics on one eval batch (jitted); by default the deterministic loss and its metrics.

        Args:
          params: the model parameters (the EMA ones when the run keeps them).
          batch: {feature: global array}.

        Returns:
          {name: scalar}; the eval averages them over batches (counts, named num_*, are summed).
        """
        loss, metrics = self.loss_fn(params, batch, None)
        return {"loss": loss, **metrics}

    @abc.abstractmethod
    def predict_batch(self, params: Any, batch: Batch, rng: Optional[jax.Array] = None, **kwargs) -> jax.Array:
        """The model's output for a batch.

        Args:
          params: the model parameters.
          batch: {feature: array}.
          rng: PRNG key for sampling, if the model samples.
          **kwargs: model-specific options (e.g. SoundStream's num_levels).

        Returns:
          Sampled tokens, codes or embeddings, [batch, ...].
        """

    # ---- optional training hooks --------------------------------------------------------------
    def optimizer_groups(self) -> Optional[Mapping[str, Optional[Mapping[str, Any]]]]:
        """Top-level parameter groups with an optimiser of their own.

        Returns:
          {group: overrides of the run's OptimizerConfig fields, or None for a group no
          optimiser touches}; None (the default): one optimiser for all parameters.
        """
        return None

    def custom_train_step(self, optimizers: Mapping[str, Any], schedule: Callable) -> Optional[Callable]:
        """The model's own train step, for a training that is not one loss.

        Args:
          optimizers: optax transformations by group, as `optimizer_groups` asked ({'params':
            tx} without groups).
          schedule: the learning-rate schedule, step -> rate.

        Returns:
          `step(state, batch, rng) -> (new_state, metrics)`, or None (the default) for the
          trainer's step. The metrics must include `loss`, `grad_norm`, `learning_rate` and
          `finite`; a step that is not finite must return the state unchanged.
        """
        return None

    def flops_per_example(self, input_shapes: Mapping[str, Sequence[int]]) -> Optional[float]:
        """Analytic training FLOPs per example, used when XLA's cost analysis is missing.

        Args:
          input_shapes: global batch shapes {feature: (batch, ...)}.

        Returns:
          FLOPs of one example's forward and backward pass, or None (the default) if unknown.
        """
        return None

    def requires_trained_params(self) -> Optional[str]:
        """Whether this model may only train from trained parameters (a checkpoint to resume
        or train's `restore_params_from`), e.g. a decoder fine-tuning.

        Returns:
          None (the default) if a fresh init is fine; else why not, the start of the error
          train raises when it would initialise from scratch.
        """
        return None

    def frozen_params_source(self) -> Optional[tuple[str, str]]:
        """(top-level parameter key, checkpoint directory) of parameters that are read, never
        trained or saved: the trainer loads that subtree from the directory at every start and
        resume and leaves it out of its checkpoints (LoRA's base model). None: none."""
        return None

    def config_dict(self) -> Optional[dict]:
        """The model's own configuration, written to MODEL_DIR/model.json so that frozen-model
        users (tokenizers) can rebuild it without gin.

        Returns:
          JSON-able data, or None (the default) to write no model.json.
        """
        return None

    # ---- optional eval reporting ------------------------------------------------------------
    def eval_outputs(self, params: Any, batch: Batch) -> dict[str, jax.Array]:
        """Per-example arrays that the eval gathers over the whole eval pool (jitted).

        Args:
          params: the model parameters.
          batch: {feature: global array}.

        Returns:
          {name: [batch, ...]} (e.g. embeddings for retrieval), concatenated over every eval
          batch for `summarize_eval_outputs`; {} (the default) for none.
        """
        return {}

    def summarize_eval_outputs(self, outputs: Mapping[str, Any]) -> dict[str, float]:
        """Metrics of the whole eval pool.

        Args:
          outputs: the `eval_outputs` of every eval batch, concatenated (numpy arrays).

        Returns:
          {name: float}, added to the eval's metrics.
        """
        return {}

    def eval_media(self, params: Any, batch: Batch) -> dict[str, jax.Array]:
        """Waveforms to listen to at eval (jitted), e.g. the first few inputs and their
        reconstructions.

        Args:
          params: the model parameters.
          batch: {feature: global array} (the first eval batch).

        Returns:
          {name: [examples, samples]} at `media_sample_rate()`; {} (the default) for none.
        """
        return {}

    def media_sample_rate(self) -> int:
        """Returns the sample rate of `eval_media`'s waveforms in Hz (0 when there are none)."""
        return 0

    def eval_warning(self, history: Sequence[Mapping[str, float]]) -> Optional[str]:
        """A loud warning about training, checked after every eval of a training run.

        Args:
          history: the metrics of every eval of this run so far, oldest first.

        Returns:
          The warning (e.g. "stuck at chance"), shown framed on the console and written as
          TensorBoard text; None (the default) when all is well.
        """
        return None

    def write_eval_report(self, metrics: Mapping[str, float], output_dir: str, step: int) -> None:
        """Extra output of `musiclm eval` (e.g. plots) beside eval-<step>.json.

        Args:
          metrics: the eval's metrics.
          output_dir: where to write (the model dir).
          step: the evaluated checkpoint's step, for the file names.
        """


def dummy_batch(model: BaseModel, input_shapes: Mapping[str, Sequence[int]]) -> dict[str, jax.Array]:
    """Zeros of the right shapes and dtypes, for init and compilation."""
    return {k: jnp.zeros(tuple(s), model.FEATURE_DTYPES.get(k, jnp.int32)) for k, s in input_shapes.items()}
