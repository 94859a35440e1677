"""The training state: step, parameters, optimiser state and an optional parameter EMA."""

from __future__ import annotations

from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax


class TrainState(flax.struct.PyTreeNode):
    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Optional[Any] = None

    @classmethod
    def create(cls, params: Any, tx: optax.GradientTransformation, use_ema: bool = False) -> "TrainState":
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            ema_params=jax.tree.map(jnp.copy, params) if use_ema else None,
        )
