"""Causal self-attention through the TPU's Pallas splash-attention kernel.

Splash attention computes softmax(q k^T) v block by block in VMEM, so the [heads, q, k]
logits and weights never reach HBM (neither in the forward pass nor as residuals for the
backward one). It takes masks, not an additive bias: it serves the stacks with
`position='rope'`, whose only bias is the causal mask. The T5 bias stays on XLA's attention.

The kernel sees one example's [heads, length, head_dim]; under a mesh it runs per device
through `shard_map` over the batch and heads axes the logical rules give the activations.
The length is padded to a multiple of 128: padded keys lie in every real query's future, so
the causal mask hides them; padded queries are cut off.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask
from jax.sharding import PartitionSpec

from musiclm_jax.nn import axes

Array = jax.Array

_ALIGN = 128


def _kernel(num_heads: int, length: int, interpret: bool):
    block = next(b for b in (512, 256, 128) if length % b == 0)
    sizes = splash.BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        block_q_dq=block,
        block_kv_dq=block,
    )
    mask = splash_mask.MultiHeadMask([splash_mask.CausalMask((length, length))] * num_heads)
    return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def _local(query: Array, key: Array, value: Array, interpret: bool) -> Array:
    """One device's share: [b, l, h, d] in and out (queries already scaled)."""
    length, heads = query.shape[1], query.shape[2]
    padded = -(-length // _ALIGN) * _ALIGN

    def heads_major(x):  # [b, l, h, d] -> [b, h, padded, d]
        return jnp.transpose(jnp.pad(x, ((0, 0), (0, padded - length), (0, 0), (0, 0))), (0, 2, 1, 3))

    out = jax.vmap(_kernel(heads, padded, interpret))(heads_major(query), heads_major(key), heads_major(value))
    return jnp.transpose(out, (0, 2, 1, 3))[:, :length]


def splash_causal_attention(query: Array, key: Array, value: Array, *, interpret: bool = False) -> Array:
    """Causal softmax(q k^T) v, [batch, length, heads, head_dim] in and out; queries already
    scaled; K/V with fewer heads are repeated to the query heads. `interpret` runs the kernel
    in Pallas' interpreter (any backend: the tests' path)."""
    groups = query.shape[2] // key.shape[2]
    if groups > 1:
        key, value = jnp.repeat(key, groups, axis=2), jnp.repeat(value, groups, axis=2)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return _local(query, key, value, interpret)
    spec = nn.logical_to_mesh_axes(axes.HEADS_ACT)
    if spec is None or spec[1] is not None:
        raise ValueError(f"splash attention needs the length axis unsharded; the rules give {spec}")
    spec = PartitionSpec(*spec)
    return jax.shard_map(
        lambda q, k, v: _local(q, k, v, interpret),
        mesh=mesh,
        in_specs=(spec, spec, spec),
        out_specs=spec,
        check_vma=False,
    )(query, key, value)
