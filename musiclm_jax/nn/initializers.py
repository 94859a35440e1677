"""Weight initialisers shared by the nn modules."""

from __future__ import annotations

import flax.linen as nn


def default_kernel_init() -> nn.initializers.Initializer:
    """LeCun normal, variance_scaling(1, 'fan_in', 'truncated_normal'): dense, attention and
    SEANet conv kernels."""
    return nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


def he_normal(mode: str = "fan_in") -> nn.initializers.Initializer:
    """variance_scaling(2, mode, 'normal'): convs followed by a ReLU."""
    return nn.initializers.variance_scaling(2.0, mode, "normal")
