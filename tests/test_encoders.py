"""MuLan tower building blocks (nn/encoders.py): shapes, masking, param counts, learning."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from musiclm_jax.nn.encoders import (
    EncoderConfig,
    ResNetAudioEncoder,
    ResNetConfig,
    SpectrogramTransformer,
    TextEncoder,
    TransformerEncoder,
)
from musiclm_jax.nn.transformer import count_params

TINY = EncoderConfig(num_layers=2, num_heads=2, head_dim=8, d_model=16, d_ff=32)


def _all_boxed(params) -> bool:
    """Every parameter carries logical axis names (one per dimension)."""
    leaves = jax.tree_util.tree_leaves(params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    return all(isinstance(x, nn.Partitioned) and len(x.names) == x.value.ndim for x in leaves)


def test_config_validation():
    assert EncoderConfig(dtype="bfloat16").dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="num_heads"):
        EncoderConfig(num_heads=0)
    with pytest.raises(ValueError, match="dropout_rate"):
        EncoderConfig(dropout_rate=1.0)
    with pytest.raises(ValueError, match="remat_policy"):
        EncoderConfig(remat_policy="some")
    with pytest.raises(ValueError, match="stage_sizes"):
        ResNetConfig(stage_sizes=(3, 0))


def test_transformer_encoder_masks_keys():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 16))
    mask = jnp.array([[True] * 4 + [False] * 2, [True] * 6])
    enc = TransformerEncoder(TINY)
    y, params = jax.jit(enc.init_with_output)(jax.random.PRNGKey(1), x, mask)
    assert _all_boxed(params["params"])
    assert y.shape == x.shape and bool(jnp.all(jnp.isfinite(y)))
    # Changing a masked position leaves the real positions unchanged, while a real position
    # is attended to by the others (bidirectional: also the earlier ones).
    y2 = jax.jit(enc.apply)(params, x.at[:, 5].set(100.0), mask)
    np.testing.assert_allclose(y2[0, :4], y[0, :4], atol=1e-5)
    assert not np.allclose(y2[1, :5], y[1, :5], atol=1e-3)


def test_text_encoder_shapes_and_padding_invariance():
    enc = TextEncoder(TINY, vocab_size=20, max_length=12)
    apply = jax.jit(enc.apply)
    tokens = [3, 7, 1, 9]
    ids = jnp.array([tokens + [-1] * 2, [3, 8, 1, 9, -1, -1], [5] + [-1] * 5, [-1] * 6], jnp.int32)
    out, params = jax.jit(enc.init_with_output)(jax.random.PRNGKey(0), ids)
    assert _all_boxed(params["params"])
    assert out.shape == (4, 16) and out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
    np.testing.assert_array_equal(out[3], 0.0)  # no real token -> zeros, not NaN
    assert not np.allclose(out[0], out[1], atol=1e-4)  # the real tokens do matter

    # Another negative pad value changes nothing.
    np.testing.assert_allclose(apply(params, jnp.where(ids < 0, -7, ids)), out, atol=1e-6)
    # Same tokens with 2 vs 6 trailing pads give the same embedding.
    long = jnp.array([tokens + [-1] * 6], jnp.int32)
    np.testing.assert_allclose(apply(params, long)[0], out[0], atol=1e-5)

    with pytest.raises(ValueError, match="exceeds max_length 12"):
        enc.apply(params, jnp.zeros((1, 13), jnp.int32))


def test_scan_and_loop_layers_agree():
    ids = jnp.array([[3, 7, 1, 9, -1, -1]], jnp.int32)
    scanned = TextEncoder(TINY, vocab_size=20, max_length=8)
    looped = TextEncoder(dataclasses.replace(TINY, scan_layers=False), vocab_size=20, max_length=8)
    ps = nn.meta.unbox(jax.jit(scanned.init)(jax.random.PRNGKey(0), ids)["params"])
    pl = jax.jit(looped.init)(jax.random.PRNGKey(0), ids)["params"]
    assert count_params(ps) == count_params(pl)
    # Unstacking the scanned params gives the looped model the same function.
    enc = dict(ps["encoder"])
    layers = enc.pop("layers")
    for i in range(TINY.num_layers):
        enc[f"layers_{i}"] = jax.tree_util.tree_map(lambda x, i=i: x[i], layers)
    unstacked = {**ps, "encoder": enc}
    assert jax.tree_util.tree_structure(unstacked) == jax.tree_util.tree_structure(nn.meta.unbox(pl))
    np.testing.assert_allclose(
        jax.jit(looped.apply)({"params": unstacked}, ids), jax.jit(scanned.apply)({"params": ps}, ids), atol=1e-5
    )


def test_remat_and_dropout_run():
    cfg = dataclasses.replace(TINY, remat_policy="dots", dropout_rate=0.1)
    enc = TextEncoder(cfg, vocab_size=20, max_length=8)
    ids = jnp.array([[3, 7, 1, -1]], jnp.int32)
    params = jax.jit(enc.init)(jax.random.PRNGKey(0), ids)

    def loss(p, rng):
        out = enc.apply(p, ids, deterministic=False, rngs={"dropout": rng})
        return jnp.sum(out**2), out

    grad = jax.jit(jax.grad(loss, has_aux=True))
    g, a = grad(params, jax.random.PRNGKey(1))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(g))
    _, b = grad(params, jax.random.PRNGKey(2))
    assert not np.allclose(a, b)  # dropout is on


def test_spectrogram_transformer_shapes_and_errors():
    model = SpectrogramTransformer(TINY, patch_frames=4, patch_mels=4, max_patches=8)
    spec = jax.random.normal(jax.random.PRNGKey(0), (2, 30, 16))  # 30 frames -> 7 time patches
    out, params = jax.jit(model.init_with_output)(jax.random.PRNGKey(1), spec)
    assert _all_boxed(params["params"])
    assert out.shape == (2, 16) and out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
    # Trailing frames that do not fill a patch are dropped; fewer time patches also work.
    apply = jax.jit(model.apply)
    np.testing.assert_allclose(apply(params, spec[:, :28]), out, atol=1e-6)
    assert apply(params, spec[:, :8]).shape == (2, 16)
    with pytest.raises(ValueError, match="not divisible by patch_mels 4"):
        model.apply(params, spec[:, :, :14])
    with pytest.raises(ValueError, match="max_patches 8"):
        model.apply(params, jnp.zeros((1, 36, 16)))


def test_resnet_shapes_and_tiny_config():
    cfg = ResNetConfig(stage_sizes=(1, 1, 1, 1), width=8)
    model = ResNetAudioEncoder(cfg)
    spec = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32))
    out, params = jax.jit(model.init_with_output)(jax.random.PRNGKey(1), spec)
    assert _all_boxed(params["params"])
    assert out.shape == (2, 4 * 8 * 8) == (2, cfg.output_dim)
    assert bool(jnp.all(jnp.isfinite(out))) and float(jnp.std(out)) > 0


def test_resnet50_param_count():
    model = ResNetAudioEncoder(ResNetConfig())
    spec = jax.ShapeDtypeStruct((1, 128, 64), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), spec)
    assert set(variables) == {"params"}  # no batch_stats
    n = count_params(variables["params"])
    # torchvision ResNet-50 without fc: 23,508,032; minus 2 input channels of the stem (6,272).
    assert 23.3e6 < n < 23.7e6, n
    assert jax.eval_shape(model.apply, variables, spec).shape == (1, 2048)


# ----------------------------------------------------------------------------------------
# Learning
# ----------------------------------------------------------------------------------------


def _train(model, make_batch, steps, lr, seed=0):
    """Adam on softmax cross-entropy; returns accuracy on a fresh batch of 512."""
    x0, _ = make_batch(jax.random.PRNGKey(seed), 2)
    params = jax.jit(model.init)(jax.random.PRNGKey(seed + 1), x0)
    opt = optax.adam(lr)
    state = opt.init(params)

    def loss_fn(p, x, y):
        logits = model.apply(p, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(p, s, key):
        x, y = make_batch(key, 64)
        g = jax.grad(loss_fn)(p, x, y)
        updates, s = opt.update(g, s, p)
        return optax.apply_updates(p, updates), s

    key = jax.random.PRNGKey(seed + 2)
    for i in range(steps):
        params, state = step(params, state, jax.random.fold_in(key, i))
    x, y = make_batch(jax.random.PRNGKey(seed + 3), 512)
    return float(jnp.mean(jnp.argmax(jax.jit(model.apply)(params, x), -1) == y))


class _Classify(nn.Module):
    encoder: nn.Module
    num_classes: int

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.num_classes)(self.encoder(x))


SMALL = EncoderConfig(num_layers=1, num_heads=2, head_dim=8, d_model=32, d_ff=64)


def test_text_encoder_learns_marker_token():
    length, vocab = 12, 16  # ids 0..3 are the markers, 4..15 filler, -1 padding

    def make_batch(key, n):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        label = jax.random.randint(k1, (n,), 0, 4)
        real = jax.random.randint(k2, (n, 1), 3, length + 1)
        where = jax.random.randint(k3, (n, 1), 0, 1 << 20) % real
        pos = jnp.arange(length)[None]
        ids = jax.random.randint(k4, (n, length), 4, vocab)
        ids = jnp.where(pos == where, label[:, None], ids)
        return jnp.where(pos < real, ids, -1).astype(jnp.int32), label

    model = _Classify(TextEncoder(SMALL, vocab_size=vocab, max_length=length), 4)
    assert _train(model, make_batch, steps=80, lr=3e-3) > 0.9


def test_spectrogram_transformer_learns_energy_band():
    def make_batch(key, n):
        k1, k2 = jax.random.split(key)
        label = jax.random.randint(k1, (n,), 0, 2)
        high_band = (jnp.arange(16) >= 8)[None, None, :]
        band = jnp.where(label[:, None, None] == 1, high_band, ~high_band)
        spec = jax.random.normal(k2, (n, 16, 16)) + 0.5 * band
        return spec, label

    model = _Classify(SpectrogramTransformer(SMALL, patch_frames=4, patch_mels=4, max_patches=4), 2)
    assert _train(model, make_batch, steps=60, lr=3e-3) > 0.9
