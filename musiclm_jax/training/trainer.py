"""Sharded state initialisation and the compiled train / eval steps, for any BaseModel.

The trainer knows only the model interface (models/base.py). Initialisation follows the
flax lm1b habit: `jax.eval_shape` -> logical partition specs -> mesh shardings -> a jitted
init with out_shardings, so no host ever holds the full unsharded state.
"""

from __future__ import annotations

import functools
from typing import Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from musiclm_jax.models.base import BaseModel, dummy_batch
from musiclm_jax.nn.axes import param_path
from musiclm_jax.training import mfu
from musiclm_jax.training.checkpoints import abstract_with_shardings
from musiclm_jax.training.optimizers import OptimizerConfig, by_group, make_group_optimizers, make_optimizer
from musiclm_jax.training.partitioning import Partitioner, logical_partition_specs, unbox
from musiclm_jax.training.train_state import TrainState


class NonFiniteError(FloatingPointError):
    """Loss or gradients became NaN/Inf; training stopped without applying the update."""


def _is_count(name: str) -> bool:
    return name.startswith("num_")  # summed over microbatches, not averaged


class Trainer:
    """One model's sharded state and compiled steps on a partitioner's mesh.

    Built from abstract shapes only: nothing is initialised or compiled until asked
    (`init_state`, `train_step`, `eval_step`, ...).
    """

    def __init__(
        self,
        model: BaseModel,
        partitioner: Partitioner,
        optimizer: OptimizerConfig,
        *,
        total_steps: int,
        input_shapes: Mapping[str, Sequence[int]],
        microbatches: int = 1,
    ):
        """Builds the abstract state, its shardings and the optimiser; compiles nothing.

        Args:
          model: the model (only its BaseModel interface is used).
          partitioner: the mesh and logical-axis rules.
          optimizer: the run's optimiser settings (per group overrides come from the model).
          total_steps: the run's length, for the learning-rate schedule.
          input_shapes: global batch shapes {feature: (batch, ...)}.
          microbatches: gradient accumulation: the batch is split into this many parts.

        Raises:
          ValueError: the batch does not divide into the microbatches or the data-parallel
            shards.
        """
        self.model = model
        self.partitioner = partitioner
        self.optimizer_cfg = optimizer
        groups = model.optimizer_groups()
        if groups is None:
            self.tx, self.schedule = make_optimizer(optimizer, total_steps)
            self.group_optimizers = None
        else:
            self.group_optimizers, self.schedule = make_group_optimizers(optimizer, total_steps, groups)
            self.tx = by_group(self.group_optimizers)
        self.input_shapes = {k: tuple(v) for k, v in input_shapes.items()}
        self.microbatches = int(microbatches)
        batch = next(iter(self.input_shapes.values()))[0]
        if self.microbatches < 1 or batch % self.microbatches:
            raise ValueError(f"batch size {batch} is not divisible into {self.microbatches} microbatches")
        if batch % partitioner.data_parallel_size:
            raise ValueError(
                f"global batch {batch} is not divisible by the {partitioner.data_parallel_size} data-parallel shards"
            )

        boxed = jax.eval_shape(self._boxed_init, jax.random.PRNGKey(0))
        self.logical_specs = logical_partition_specs(boxed)
        self.state_shardings = partitioner.shardings_for(unbox(boxed), self.logical_specs)
        self.abstract_state = abstract_with_shardings(unbox(boxed), self.state_shardings)
        self.batch_shardings = {k: partitioner.batch_sharding(len(s)) for k, s in self.input_shapes.items()}
        self._train_step = None
        self._eval_step = None

    # ---- state -------------------------------------------------------------------------
    def _boxed_init(self, rng):
        variables = self.model.get_initial_variables(rng, self.input_shapes)
        return TrainState.create(variables["params"], self.tx, use_ema=self.optimizer_cfg.ema_decay is not None)

    def init_state(self, rng: jax.Array) -> TrainState:
        """A fresh state, initialised directly into its shardings.

        Args:
          rng: the init PRNG key (`rng(seed)`).

        Returns:
          The TrainState at step 0.
        """
        init = self.partitioner.compile(
            lambda r: unbox(self._boxed_init(r)), self.partitioner.replicated, self.state_shardings
        )
        return init(rng)

    def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
        """Returns the global batch as ShapeDtypeStructs with the batch shardings (for lowering)."""
        dummy = jax.eval_shape(lambda: dummy_batch(self.model, self.input_shapes))
        return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=self.batch_shardings[k]) for k, v in dummy.items()}

    def param_count(self) -> int:
        """Returns the number of model parameters."""
        return sum(x.size for x in jax.tree.leaves(self.abstract_state.params))

    def model_info(self) -> str:
        """Returns the text of MODEL_DIR/model-info.txt: the parameter count, the mesh, and every
        parameter's shape, dtype, logical axes and mesh sharding."""
        opt_values = sum(x.size for x in jax.tree.leaves(self.abstract_state.opt_state))
        opt_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(self.abstract_state.opt_state))
        frozen = [k for k, v in (self.model.optimizer_groups() or {}).items() if v is None]
        frozen_count = sum(x.size for k in frozen for x in jax.tree.leaves(self.abstract_state.params[k]))
        lines = [
            f"parameters: {self.param_count():,}",
            f"trained parameters: {self.param_count() - frozen_count:,}"
            + (f" (no optimiser: {', '.join(frozen)})" if frozen else ""),
            f"optimiser state: {opt_values:,} values, {opt_bytes / 2**20:.1f} MiB "
            f"(Adam over every parameter: {2 * self.param_count() * 4 / 2**20:.1f} MiB)",
            f"mesh: {dict(self.partitioner.mesh.shape)}",
            "",
        ]
        flat_abstract = jax.tree_util.tree_flatten_with_path(self.abstract_state.params)[0]
        flat_logical = jax.tree.leaves(
            self.logical_specs.params, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
        )
        for (path, leaf), logical in zip(flat_abstract, flat_logical):
            name = param_path(path)
            shape, dtype = str(leaf.shape), str(leaf.dtype)
            lines.append(f"{name:<60} {shape:<22} {dtype:<9} logical={tuple(logical)} mesh={tuple(leaf.sharding.spec)}")
        return "\n".join(lines) + "\n"

    # ---- steps -------------------------------------------------------------------------
    def _grads(self, params, batch, rng):
        (loss, metrics), grads = jax.value_and_grad(self.model.loss_fn, has_aux=True)(params, batch, rng)
        return loss, metrics, grads

    def _accumulated_grads(self, params, batch, rng):
        m = self.microbatches
        if m == 1:
            return self._grads(params, batch, rng)

        def split(x):
            x = x.reshape((m, x.shape[0] // m) + x.shape[1:])
            return nn.with_logical_constraint(x, (None, "activation_batch") + (None,) * (x.ndim - 2))

        microbatches = jax.tree.map(split, batch)
        zeros = jax.tree.map(
            lambda s: jnp.zeros(s.shape, s.dtype),
            jax.eval_shape(self._grads, params, jax.tree.map(lambda x: x[0], microbatches), rng),
        )

        def body(acc, xs):
            i, mb = xs
            out = self._grads(params, mb, jax.random.fold_in(rng, i))
            return jax.tree.map(jnp.add, acc, out), None

        (loss, metrics, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(m), microbatches))
        metrics = {k: v if _is_count(k) else v / m for k, v in metrics.items()}
        return loss / m, metrics, jax.tree.map(lambda g: g / m, grads)

    def _train_step_fn(self, state: TrainState, batch, rng):
        rng = jax.random.fold_in(rng, state.step)
        loss, metrics, grads = self._accumulated_grads(state.params, batch, rng)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema_params
        if ema is not None:
            d = self.optimizer_cfg.ema_decay
            ema = jax.tree.map(lambda e, p: d * e + (1 - d) * p.astype(e.dtype), ema, params)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)
        # A non-finite step leaves the state as it was; the loop then stops training.
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state, state)
        metrics = {
            **metrics,
            "loss": loss,
            "grad_norm": grad_norm,
            "learning_rate": self.schedule(state.step),
            "finite": finite,
        }
        return new_state, metrics

    def train_step_fn(self):
        """Returns the uncompiled `(state, batch, rng) -> (state, metrics)`: the model's
        `custom_train_step`, else the default one (gradient of `loss_fn`, optax update, EMA).
        A step whose loss or gradients are not finite leaves the state unchanged and reports
        `finite` False in its metrics."""
        custom = self.model.custom_train_step(self.group_optimizers or {"params": self.tx}, self.schedule)
        return custom or self._train_step_fn

    def _jitted_train_step(self):
        return self.partitioner.compile(
            self.train_step_fn(),
            in_shardings=(self.state_shardings, self.batch_shardings, self.partitioner.replicated),
            out_shardings=(self.state_shardings, self.partitioner.replicated),
            donate_argnums=(0,),
        )

    def lower_train_step(self):
        """Returns the train step lowered on abstract inputs (for FLOPs, memory analysis, AOT)."""
        rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=self.partitioner.replicated)
        return self._jitted_train_step().lower(self.abstract_state, self.abstract_batch(), rng)

    @property
    def train_step(self):
        """Compiled `(state, batch, rng) -> (state, metrics)`; the state is donated.
        Compiled once, ahead of the first batch, and reused for the FLOPs count."""
        if self._train_step is None:
            self._train_step = self.lower_train_step().compile()
        return self._train_step

    def rng(self, seed: int) -> jax.Array:
        """Returns PRNGKey(seed), replicated over the mesh."""
        return jax.device_put(jax.random.PRNGKey(seed), self.partitioner.replicated)

    @property
    def eval_step(self):
        """Compiled `(params, batch) -> model.eval_fn(...)`, replicated."""
        if self._eval_step is None:
            self._eval_step = self.partitioner.compile(
                self.model.eval_fn,
                in_shardings=(self.state_shardings.params, self.batch_shardings),
                out_shardings=self.partitioner.replicated,
            )
        return self._eval_step

    @functools.cached_property
    def media_step(self):
        """Compiled `(params, batch) -> model.eval_media(...)`, replicated so every host can read it."""
        return self.partitioner.compile(
            self.model.eval_media,
            in_shardings=(self.state_shardings.params, self.batch_shardings),
            out_shardings=self.partitioner.replicated,
        )

    @functools.cached_property
    def outputs_step(self):
        """Compiled `(params, batch) -> model.eval_outputs(...)`, replicated."""
        return self.partitioner.compile(
            self.model.eval_outputs,
            in_shardings=(self.state_shardings.params, self.batch_shardings),
            out_shardings=self.partitioner.replicated,
        )

    @functools.cached_property
    def flops_per_step_per_device(self) -> Optional[float]:
        """Matmul/conv FLOPs of one train step per device, counted on its jaxpr (mfu.jaxpr_flops):
        XLA's cost analysis counts a scanned layer stack's body once, and on GPU misses the
        cuBLAS/cuDNN calls."""
        rng = jax.ShapeDtypeStruct((2,), jnp.uint32)
        flops = mfu.traced_flops(self.train_step_fn(), self.abstract_state, self.abstract_batch(), rng)
        return flops / self.partitioner.mesh.size if flops else None

    def eval_params(self, state: TrainState):
        """Returns the parameters to evaluate: the EMA ones when the state keeps them."""
        return state.ema_params if state.ema_params is not None else state.params
