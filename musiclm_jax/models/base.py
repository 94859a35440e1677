"""The model interface every trainable model implements (the shape of t5x's BaseModel).

The trainer knows only this interface. A model whose training is not one loss (SoundStream's
generator + discriminator) returns its own step from `custom_train_step`.
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
    """A trainable model: variables from shapes, loss, eval metrics, predict."""

    # Batch feature name -> dtype. The trainer builds dummy batches and input shardings from it.
    FEATURE_DTYPES: Mapping[str, Any] = {}

    @abc.abstractmethod
    def get_initial_variables(self, rng: jax.Array, input_shapes: Mapping[str, Sequence[int]]) -> Variables:
        """Returns the variables (at least {'params': ...}).

        Leaves are boxed in `flax.linen.LogicallyPartitioned` so that
        `flax.linen.get_partition_spec` yields their logical axis names. Called under
        `jax.eval_shape` and under a jitted init with output shardings, so it must be pure.
        """

    @abc.abstractmethod
    def loss_fn(self, params: Any, batch: Batch, dropout_rng: Optional[jax.Array]) -> tuple[jax.Array, Metrics]:
        """Returns (scalar loss to minimise, metrics). `dropout_rng=None` means deterministic."""

    def eval_fn(self, params: Any, batch: Batch) -> Metrics:
        """Metrics on one eval batch; by default the deterministic loss and its metrics."""
        loss, metrics = self.loss_fn(params, batch, None)
        return {"loss": loss, **metrics}

    @abc.abstractmethod
    def predict_batch(self, params: Any, batch: Batch, rng: Optional[jax.Array] = None, **kwargs) -> jax.Array:
        """Model output for a batch (sampled tokens, codes, embeddings...)."""

    def flops_per_example(self, input_shapes: Mapping[str, Sequence[int]]) -> Optional[float]:
        """Analytic training FLOPs per example, if known (used when XLA's cost analysis is missing)."""
        return None

    def optimizer_groups(self) -> Optional[Mapping[str, Optional[Mapping[str, Any]]]]:
        """Top-level parameter groups with their own optimiser: {group: overrides of the run's
        OptimizerConfig fields, or None for a group no optimiser touches}. None: one optimiser."""
        return None

    def custom_train_step(self, optimizers: Mapping[str, Any], schedule: Callable) -> Optional[Callable]:
        """A model with its own training (several losses/optimisers) returns
        `step(state, batch, rng) -> (new_state, metrics)` using `optimizers` (optax
        transformations by group, as `optimizer_groups` asked); None uses the default step.
        The metrics must include `loss`, `grad_norm`, `learning_rate` and `finite` (a step that
        is not finite must return the state unchanged)."""
        return None

    def config_dict(self) -> Optional[dict]:
        """The model's own configuration as JSON-able data, written to MODEL_DIR/model.json so
        that frozen-model users (tokenizers) can rebuild it without gin."""
        return None

    def write_eval_report(self, metrics: Mapping[str, float], output_dir: str, step: int) -> None:
        """Optional extra eval output (plots) beside eval-<step>.json."""

    def eval_media(self, params: Any, batch: Batch) -> dict[str, jax.Array]:
        """Waveforms to listen to at eval, {name: [examples, samples]} at `media_sample_rate()`
        (e.g. inputs and their reconstructions for the first few examples); {} for none. Jitted."""
        return {}

    def media_sample_rate(self) -> int:
        return 0

    def eval_outputs(self, params: Any, batch: Batch) -> dict[str, jax.Array]:
        """Per-example arrays {name: [batch, ...]} that the eval gathers over the whole eval pool
        for `summarize_eval_outputs` (e.g. embeddings for retrieval); {} for none. Jitted."""
        return {}

    def summarize_eval_outputs(self, outputs: Mapping[str, Any]) -> dict[str, float]:
        """Metrics of the concatenated `eval_outputs` of every eval batch (numpy arrays)."""
        return {}

    def eval_warning(self, history: Sequence[Mapping[str, float]]) -> Optional[str]:
        """A loud warning about training (e.g. stuck at chance) given every eval so far, or None."""
        return None


def dummy_batch(model: BaseModel, input_shapes: Mapping[str, Sequence[int]]) -> dict[str, jax.Array]:
    """Zeros of the right shapes and dtypes, for init and compilation."""
    return {k: jnp.zeros(tuple(s), model.FEATURE_DTYPES.get(k, jnp.int32)) for k, s in input_shapes.items()}
