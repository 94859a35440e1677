"""Optax optimisers and learning-rate schedules, configured as plain data (gin binds the fields)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from musiclm_jax.nn.axes import param_path


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    name: str = "adamw"  # 'adamw' | 'adafactor'
    learning_rate: float = 1e-3
    schedule: str = "cosine"  # 'cosine' (linear warmup + cosine decay) | 'rsqrt' | 'constant'
    warmup_steps: int = 100
    decay_steps: Optional[int] = None  # cosine: None decays over the whole run
    end_learning_rate_fraction: float = 0.1
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-9
    weight_decay: float = 0.01
    clip_grad_norm: Optional[float] = 1.0
    ema_decay: Optional[float] = None  # keep an EMA of the parameters when set
    # Parameters kept as they are (fine-tuning part of a model): regular expressions searched in
    # each parameter's path ('audio_tower/stem/kernel', 'layers/attention/query/kernel', ...).
    # They get no update and no optimiser state, and are left out of gradient clipping.
    frozen: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "frozen", tuple(self.frozen))
        for pattern in self.frozen:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"OptimizerConfig.frozen: {pattern!r} is not a regular expression: {e}") from e
        if self.name not in ("adamw", "adafactor"):
            raise ValueError(f"OptimizerConfig.name must be 'adamw' or 'adafactor', got {self.name!r}")
        if self.schedule not in ("cosine", "rsqrt", "constant"):
            raise ValueError(f"OptimizerConfig.schedule must be 'cosine', 'rsqrt' or 'constant', got {self.schedule!r}")
        if self.learning_rate <= 0:
            raise ValueError(f"OptimizerConfig.learning_rate must be positive, got {self.learning_rate}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"OptimizerConfig.ema_decay must be in (0, 1), got {self.ema_decay}")


def make_schedule(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    warmup = max(int(cfg.warmup_steps), 0)
    if cfg.schedule == "cosine":
        decay_steps = max(cfg.decay_steps or total_steps, warmup + 1)
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=cfg.learning_rate,
            warmup_steps=warmup,
            decay_steps=decay_steps,
            end_value=cfg.learning_rate * cfg.end_learning_rate_fraction,
        )
    if cfg.schedule == "rsqrt":
        # Linear warmup, then peak * sqrt(warmup / step) (T5's inverse square root).
        w = max(warmup, 1)

        def rsqrt(step):
            step = jnp.maximum(step.astype(jnp.float32) if hasattr(step, "astype") else float(step), 1.0)
            return cfg.learning_rate * jnp.minimum(step / w, jnp.sqrt(w / step))

        return rsqrt
    if warmup:
        return optax.linear_schedule(0.0, cfg.learning_rate, warmup)
    return optax.constant_schedule(cfg.learning_rate)


def make_optimizer(cfg: OptimizerConfig, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optimizer, schedule). Clipping by global norm comes first in the chain."""
    schedule = make_schedule(cfg, total_steps)
    if cfg.name == "adamw":
        core = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
    else:
        core = optax.adafactor(
            learning_rate=schedule,
            multiply_by_parameter_scale=False,
            weight_decay_rate=cfg.weight_decay or None,
            eps=1e-30,
        )
    chain = [optax.clip_by_global_norm(cfg.clip_grad_norm)] if cfg.clip_grad_norm else []
    tx = optax.chain(*chain, core)
    if cfg.frozen:
        tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, _frozen_labels(cfg.frozen))
    return tx, schedule


def _frozen_labels(patterns: tuple):
    compiled = [re.compile(p) for p in patterns]

    def labels(params: Any):
        def label(path, _):
            name = param_path(path)
            return "frozen" if any(p.search(name) for p in compiled) else "trained"

        # A parameter boxed with its logical axes (flax's Partitioned) is one leaf: the labels then
        # fit the boxed tree (the trainer's abstract init) and the unboxed one alike.
        tree = jax.tree_util.tree_map_with_path(label, params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
        if "trained" not in jax.tree.leaves(tree):
            raise ValueError(f"OptimizerConfig.frozen {patterns} matches every parameter: nothing would train")
        if "frozen" not in jax.tree.leaves(tree):
            example = param_path(jax.tree_util.tree_flatten_with_path(params)[0][0][0])
            raise ValueError(f"OptimizerConfig.frozen {patterns} matches no parameter (paths look like {example!r})")
        return tree

    return labels


def by_group(optimizers: Mapping[str, optax.GradientTransformation]) -> optax.GradientTransformation:
    """One optimiser per top-level parameter group ({'generator': ..., 'discriminator': ...}).
    The state is a dict by group, so a model's own train step can update groups separately."""

    def init(params):
        return {k: tx.init(params[k]) for k, tx in optimizers.items()}

    def update(updates, state, params=None):
        out = {
            k: tx.update(updates[k], state[k], None if params is None else params[k]) for k, tx in optimizers.items()
        }
        return {k: u for k, (u, _) in out.items()}, {k: s for k, (_, s) in out.items()}

    return optax.GradientTransformation(init, update)


def make_group_optimizers(
    cfg: OptimizerConfig, total_steps: int, groups: Mapping[str, Optional[Mapping]]
) -> tuple[dict[str, optax.GradientTransformation], optax.Schedule]:
    """Per-group optimisers: the run's config with each group's overrides; None freezes a group
    (its values are changed by the model's own step, e.g. EMA codebooks). Returns the first
    trained group's schedule for logging."""
    txs, schedule = {}, None
    for name, overrides in groups.items():
        if overrides is None:
            txs[name] = optax.set_to_zero()
            continue
        tx, sched = make_optimizer(dataclasses.replace(cfg, **dict(overrides)), total_steps)
        txs[name] = tx
        schedule = schedule or sched
    if schedule is None:
        raise ValueError("optimizer groups: at least one group must be trained")
    return txs, schedule
