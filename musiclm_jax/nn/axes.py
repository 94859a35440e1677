"""Logical axis names, the one place they are spelled (as maxtext's common_types.py).

Modules annotate parameters and activations with these; the partitioning rules (gin, and the
defaults in training/partitioning.py) map them to mesh axes. Weights and activations have
separate names so that a rule can shard a weight over 'fsdp' while its activations stay whole.
"""

# Weights.
EMBED = "embed"
MLP = "mlp"  # feed-forward hidden units (and the conformer conv module's channels)
HEADS = "heads"
KV_HEADS = "kv_heads"  # key/value heads shared by groups of query heads (grouped-query attention)
KV = "kv"  # per-head feature (head_dim)
VOCAB = "vocab"
LAYERS = "layers"  # the stacked axis of scanned layers
RELPOS_BUCKETS = "relpos_buckets"
CONV_KERNEL = "conv_kernel"  # 1-D conv taps
CONV_HEIGHT = "conv_height"
CONV_WIDTH = "conv_width"
CONV_IN = "conv_in"
CONV_OUT = "conv_out"

# Activations.
ACT_BATCH = "activation_batch"
ACT_LENGTH = "activation_length"
ACT_EMBED = "activation_embed"
ACT_HEADS = "activation_heads"
ACT_KV_HEADS = "activation_kv_heads"
ACT_KV = "activation_kv"
ACT_MLP = "activation_mlp"
ACT_VOCAB = "activation_vocab"

# Activation layouts.
EMBED_ACT = (ACT_BATCH, ACT_LENGTH, ACT_EMBED)  # [batch, length, d_model]
MLP_ACT = (ACT_BATCH, ACT_LENGTH, ACT_MLP)  # [batch, length, d_ff]
VOCAB_ACT = (ACT_BATCH, ACT_LENGTH, ACT_VOCAB)  # [batch, length, vocab] logits
HEADS_ACT = (ACT_BATCH, ACT_LENGTH, ACT_HEADS, ACT_KV)  # [batch, length, heads, head_dim]
KV_HEADS_ACT = (ACT_BATCH, ACT_LENGTH, ACT_KV_HEADS, ACT_KV)  # [batch, length, kv_heads, head_dim]
POOLED_ACT = (ACT_BATCH, ACT_EMBED)  # [batch, d_model]
IMAGE_ACT = (ACT_BATCH, ACT_LENGTH, None, None)  # [batch, time, freq, channels]
CONV1D_ACT = (ACT_BATCH, ACT_LENGTH, None)  # [batch, time, channels]


def param_path(path) -> str:
    """A parameter's name from its jax tree path: 'layers/attention/query', 'logits/kernel'."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
