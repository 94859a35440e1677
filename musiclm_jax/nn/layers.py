"""Shared building blocks: a Dense and a norm with logical axis names, the feed-forward block
of every stack, a masked mean, L2 normalisation and the additive-mask constant."""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from musiclm_jax.nn import axes
from musiclm_jax.nn.initializers import default_kernel_init
from musiclm_jax.nn.stack import StackConfig

Array = jax.Array

# Additive attention bias of a masked key (and logit of an invalid candidate): finite, so a row
# with every entry masked gives a uniform softmax rather than NaN.
NEG_INF = -1e10


def matmul(x: Array, kernel: Array, num_contract: int = 1, preferred_element_type: Any = None) -> Array:
    """x [..., *in] times kernel [*in, *out] -> [..., *out], as one 2-D matmul over flattened rows.

    Why not einsum: XLA:CPU computes the kernel gradient of a dot whose rows span several axes
    (contracting batch and length together) 2-3x slower than the same product on flattened
    rows; on TPU and GPU, XLA flattens such dots itself, so the reshape costs nothing there.
    """
    ins = x.shape[x.ndim - num_contract :]
    if tuple(kernel.shape[:num_contract]) != tuple(ins):
        raise ValueError(f"matmul: x's last dims {ins} do not match the kernel's first {kernel.shape[:num_contract]}")
    rows, outs = x.shape[: x.ndim - num_contract], kernel.shape[num_contract:]
    y = jnp.dot(
        x.reshape(math.prod(rows), math.prod(ins)),
        kernel.reshape(math.prod(ins), math.prod(outs)),
        preferred_element_type=preferred_element_type,
    )
    return y.reshape(rows + outs)


def flat_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """`lax.dot_general` for nn.Dense (`dot_general=`): its last-axis product goes through
    `matmul`; any other contraction is passed on unchanged."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    if lhs_batch or rhs_batch or tuple(lhs_contract) != (lhs.ndim - 1,) or tuple(rhs_contract) != (0,) or precision:
        return jax.lax.dot_general(
            lhs, rhs, dimension_numbers, precision=precision, preferred_element_type=preferred_element_type
        )
    return matmul(lhs, rhs, 1, preferred_element_type)


def dense(
    features: int,
    names: Sequence[Optional[str]],
    name: str,
    *,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    use_bias: bool = False,
    kernel_init: Any = None,
) -> nn.Dense:
    """nn.Dense whose kernel has the logical axes `names` (in, out) and its bias names[-1:]."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nn.with_logical_partitioning(kernel_init or default_kernel_init(), tuple(names)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, tuple(names)[-1:]),
        dot_general=flat_dot_general,
        name=name,
    )


def norm(
    name: str,
    *,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    rms: bool = False,
    axis: str = axes.EMBED,
    epsilon: float = 1e-6,
) -> nn.Module:
    """LayerNorm (scale and bias), or RMSNorm (scale only) with `rms`, over a feature axis
    with logical name `axis`."""
    scale_init = nn.with_logical_partitioning(nn.initializers.ones, (axis,))
    if rms:
        return nn.RMSNorm(epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, scale_init=scale_init, name=name)
    return nn.LayerNorm(
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=scale_init,
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axis,)),
        name=name,
    )


class Mlp(nn.Module):
    """The feed-forward block: [norm ->] wi -> activation -> dropout -> wo [-> dropout].

    gated (T5 v1.1): wo(activation(x @ wi_0) * (x @ wi_1)); else wo(activation(x @ wi)).
    Kernels ('embed', 'mlp') and ('mlp', 'embed'), sizes from the config (d_model -> d_ff ->
    d_model); biases only with `use_bias`. `pre_norm` applies a LayerNorm 'norm' first and
    `output_dropout` a dropout last (the conformer's feed-forward module).
    """

    config: StackConfig
    activation: Callable[[Array], Array] = nn.gelu
    gated: bool = False
    use_bias: bool = False
    pre_norm: bool = False
    output_dropout: bool = False
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config

        def proj(features, names, name):
            return dense(features, names, name, use_bias=self.use_bias, **cfg.dtypes)

        if self.pre_norm:
            x = norm("norm", **cfg.dtypes)(x)
        if self.gated:
            h = nn.with_logical_constraint(proj(cfg.d_ff, (axes.EMBED, axes.MLP), "wi_0")(x), axes.MLP_ACT)
            gate = nn.with_logical_constraint(proj(cfg.d_ff, (axes.EMBED, axes.MLP), "wi_1")(x), axes.MLP_ACT)
            h = self.activation(h) * gate
        else:
            h = self.activation(
                nn.with_logical_constraint(proj(cfg.d_ff, (axes.EMBED, axes.MLP), "wi")(x), axes.MLP_ACT)
            )
        h = nn.Dropout(rate=cfg.dropout_rate)(h, deterministic=self.deterministic)
        h = nn.with_logical_constraint(h, axes.MLP_ACT)
        out = proj(cfg.d_model, (axes.MLP, axes.EMBED), "wo")(h)
        if self.output_dropout:
            out = nn.Dropout(rate=cfg.dropout_rate)(out, deterministic=self.deterministic)
        return nn.with_logical_constraint(out, axes.EMBED_ACT)


def masked_mean(x: Array, mask: Optional[Array], axis: Optional[int] = None) -> Array:
    """float32 mean of x over `axis` (None = all) counting only where `mask` is True.

    `mask` has x's leading dims (it is broadcast over the trailing ones); None = all True. A
    mean over no True position is 0 (the count is clamped to 1), never NaN.
    """
    x = x.astype(jnp.float32)
    if mask is None:
        return jnp.mean(x, axis=axis)
    m = mask.astype(jnp.float32)
    m = m.reshape(m.shape + (1,) * (x.ndim - m.ndim))
    return jnp.sum(x * m, axis=axis) / jnp.maximum(jnp.sum(m, axis=axis), 1.0)


def l2_normalize(x: Array) -> Array:
    """x / |x| over the last axis, in float32 (|x| floored at 1e-6: a zero vector stays zero)."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), 1e-12))
