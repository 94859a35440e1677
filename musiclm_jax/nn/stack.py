"""What every layer stack shares: its config fields (declared once, in `StackConfig`) and the
loop over its layers (`stack_layers`: `nn.scan` or a Python loop, optionally rematerialised).

The model configs extend these frozen dataclasses and keep their fields flat, so gin binds
`StageConfig.num_layers`, `text/EncoderConfig.d_model`, `ConformerConfig.num_heads`, ... and
model.json holds one flat dict per config.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from musiclm_jax.nn import axes, config_io

REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims")
ATTENTION_KERNELS = ("xla", "fused")
POSITION_SCHEMES = ("relative_bias", "rope")


def remat_policy(name: str) -> Optional[Any]:
    """The `jax.checkpoint` policy for a name ('full' saves nothing -> None policy)."""
    if name == "full":
        return None
    if name == "dots":
        return jax.checkpoint_policies.checkpoint_dots
    if name == "dots_with_no_batch_dims":
        return jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims
    raise ValueError(f"unknown remat_policy {name!r}; expected one of {REMAT_POLICIES}")


@dataclasses.dataclass(frozen=True)
class StackConfig:
    """A stack of pre-norm transformer-style layers. `dtype` = activations, `param_dtype` =
    weights; `scan_layers` stacks the layers' params on a leading 'layers' axis under `nn.scan`
    (else layers_0, layers_1, ...); `scan_unroll` layers per scan iteration (`num_layers` = a
    straight-line stack with the scanned param layout: on CPU the loop's stacked residuals cost
    ~20% of a small model's train step; on TPU keep 1, compile time grows with it);
    `remat_policy` one of REMAT_POLICIES; `num_kv_heads` key/value heads (None: `num_heads`;
    fewer = grouped-query attention, see nn/attention.py); `attention_kernel` 'xla' (einsum +
    softmax) or 'fused' (`jax.nn.dot_product_attention`: cuDNN flash attention on GPU where it
    applies; no dropout on the attention weights)."""

    num_layers: int = 2
    num_heads: int = 4
    head_dim: int = 16
    num_kv_heads: Optional[int] = None
    d_model: int = 64
    d_ff: int = 256
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scan_layers: bool = True
    scan_unroll: int = 1
    remat_policy: str = "none"
    attention_kernel: str = "xla"

    def __post_init__(self):
        config_io.normalize_dtypes(self)
        if self.attention_kernel not in ATTENTION_KERNELS:
            raise ValueError(f"unknown attention_kernel {self.attention_kernel!r}; expected one of {ATTENTION_KERNELS}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"unknown remat_policy {self.remat_policy!r}; expected one of {REMAT_POLICIES}")
        config_io.check_positive_ints(self, "num_layers", "num_heads", "head_dim", "d_model", "d_ff", "scan_unroll")
        if self.num_kv_heads is not None and (self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads):
            raise ValueError(
                f"{type(self).__name__}.num_kv_heads must divide num_heads ({self.num_heads}), got {self.num_kv_heads}"
            )
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"{type(self).__name__}.dropout_rate must be in [0, 1), got {self.dropout_rate}")

    @property
    def dtypes(self) -> dict:
        """{'dtype', 'param_dtype'}: keyword arguments of the nn/layers.py helpers."""
        return {"dtype": self.dtype, "param_dtype": self.param_dtype}


@dataclasses.dataclass(frozen=True)
class RelPosStackConfig(StackConfig):
    """A stack with a T5-style bucketed relative position bias (nn/position.py), or, with
    `position='rope'` (decoder stacks only), rotary embeddings on queries and keys and no bias
    but the causal mask: what fused attention kernels take whole."""

    relpos_num_buckets: int = 32
    relpos_max_distance: int = 128
    position: str = "relative_bias"
    rope_max_wavelength: float = 10_000.0

    def __post_init__(self):
        super().__post_init__()
        config_io.check_positive_ints(self, "relpos_num_buckets", "relpos_max_distance")
        if self.position not in POSITION_SCHEMES:
            raise ValueError(f"unknown position {self.position!r}; expected one of {POSITION_SCHEMES}")
        if self.position == "rope" and self.head_dim % 2:
            raise ValueError(f"position='rope' needs an even head_dim, got {self.head_dim}")


def stack_layers(
    layer_cls: type[nn.Module], config: StackConfig, *, num_broadcast: int = 1, **layer_kwargs
) -> Callable:
    """`config.num_layers` layers `layer_cls(config, **layer_kwargs)` as one function
    (x, *args) -> (x, ys); call it inside the parent's compact method.

    Each layer maps (x, *args) -> (x, y); the `num_broadcast` args are the same for every layer.
    Scanned (`config.scan_layers`): one module 'layers' whose params and 'cache' variables are
    stacked on a leading axis (logical name 'layers'), ys stacked the same way (None stays None).
    Else modules layers_0, layers_1, ... and ys a list. Rematerialised unless remat_policy='none'.
    """
    if config.remat_policy != "none":
        layer_cls = nn.remat(layer_cls, policy=remat_policy(config.remat_policy), prevent_cse=not config.scan_layers)
    if config.scan_layers:
        return nn.scan(
            layer_cls,
            variable_axes={"params": 0, "cache": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast,) * num_broadcast,
            length=config.num_layers,
            unroll=min(config.scan_unroll, config.num_layers),
            metadata_params={nn.PARTITION_NAME: axes.LAYERS},
        )(config, name="layers", **layer_kwargs)
    layers = [layer_cls(config, name=f"layers_{i}", **layer_kwargs) for i in range(config.num_layers)]

    def run(x, *args):
        ys = []
        for layer in layers:
            x, y = layer(x, *args)
            ys.append(y)
        return x, ys

    return run
