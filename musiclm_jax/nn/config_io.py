"""Model configs (frozen dataclasses) <-> JSON-able data, for MODEL_DIR/model.json."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp


def to_plain(config) -> dict:
    """dataclasses.asdict with tuples as lists and dtypes as their names."""

    def plain(x):
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x if isinstance(x, (int, float, str, bool, type(None))) else jnp.dtype(x).name

    return plain(dataclasses.asdict(config))


def tuples(d: Mapping[str, Any]) -> dict:
    """JSON lists back to the tuples the configs hold."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def normalize_dtypes(config, *names: str) -> None:
    """In a frozen dataclass's __post_init__: 'bfloat16', jnp.bfloat16, ... -> hashable numpy
    dtypes (default fields: dtype, param_dtype)."""
    for name in names or ("dtype", "param_dtype"):
        object.__setattr__(config, name, jnp.dtype(getattr(config, name)))


def check_positive_ints(config, *names: str) -> None:
    """Raises ValueError naming the config and field unless each field is a positive int."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{type(config).__name__}.{name} must be a positive int, got {value!r}")
