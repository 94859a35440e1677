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
